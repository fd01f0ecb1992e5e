"""Typed, validated parameters, read once from params.yaml.

Every stage receives only its own section. Unknown keys and wrong types are errors that name
the key (``train.max_epochs: expected an integer, got 'ten'``) instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ConfigError

PRESET_DIR = Path("configs/models")

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
Triple = Annotated[list[PositiveFloat], Field(min_length=3, max_length=3)]
IntTriple = Annotated[list[PositiveInt], Field(min_length=3, max_length=3)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class Section(BaseModel):
    # strict: YAML's "10" must not silently become 10; frozen: stages cannot mutate params.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SynthParams(Section):
    seed: int = 0
    n_train: PositiveInt = 24
    n_test: PositiveInt = 8
    lesion_free_fraction: Fraction = 0.25
    max_lesions: Annotated[int, Field(ge=1)] = 3
    field_of_view_mm: Triple = [128.0, 128.0, 112.0]
    inplane_spacing_mm: Annotated[list[PositiveFloat], Field(min_length=2, max_length=2)] = [1.6, 2.2]
    slice_spacing_mm: Annotated[list[PositiveFloat], Field(min_length=2, max_length=2)] = [3.0, 5.0]
    noise_hu: PositiveFloat = 20.0
    flipped_fraction: Fraction = 0.5


class ValidateParams(Section):
    # Image and label affines may differ by float round-off, not by a misregistration.
    affine_tolerance_mm: Annotated[float, Field(ge=0)] = 1e-3
    # Leave out the cases with errors (listed in the report) instead of stopping.
    skip_invalid: bool = False
    num_workers: PositiveInt = 2


class PreprocessParams(Section):
    # "auto": the cohort's median spacing.
    target_spacing: Literal["auto"] | Triple = "auto"
    # CT: clip to these percentiles of the cohort's foreground intensities, then z-score.
    clip_percentiles: Annotated[list[float], Field(min_length=2, max_length=2)] = [0.5, 99.5]
    # Patch planning: at most this many voxels per patch, each axis a multiple of the divisor
    # (which must be a multiple of the network's total downsampling).
    max_patch_voxels: PositiveInt = 128**3
    patch_divisor: PositiveInt = 16
    # Batch planning (nnU-Net's rule): at least 2, at most this many voxels per batch, and at
    # most 5% of the cohort's voxels, so small cohorts are not seen whole in one step.
    max_batch_voxels: PositiveInt = 2 * 128**3
    num_workers: PositiveInt = 2


class SplitParams(Section):
    n_folds: Annotated[int, Field(ge=2)] = 5
    seed: int = 0


class NetworkParams(Section):
    architecture: Literal["residual_unit_unet"] = "residual_unit_unet"
    channels: Annotated[list[PositiveInt], Field(min_length=2)] = [16, 32, 64, 128]
    strides: Annotated[list[PositiveInt], Field(min_length=1)] = [2, 2, 2]
    num_res_units: Annotated[int, Field(ge=0)] = 2
    norm: Literal["instance", "batch"] = "instance"
    dropout: Fraction = 0.0

    @model_validator(mode="after")
    def _one_stride_per_downsampling(self) -> NetworkParams:
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"needs one stride per level below the top: {len(self.channels) - 1} "
                f"for {len(self.channels)} channels, got {len(self.strides)}"
            )
        return self


class TrainParams(Section):
    fold: Annotated[int, Field(ge=0)] = 0
    model: str = "resunet_small"
    model_overrides: dict = {}
    # "auto": the plan's patch size and batch size (see preprocess).
    patch_size: Literal["auto"] | IntTriple = "auto"
    batch_size: Literal["auto"] | PositiveInt = "auto"
    iterations_per_epoch: PositiveInt = 25
    foreground_fraction: Fraction = 0.33
    max_epochs: PositiveInt = 40
    learning_rate: PositiveFloat = 2e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-5
    val_every_n_epochs: PositiveInt = 5
    seed: int = 0
    num_workers: Annotated[int, Field(ge=0)] = 0
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"


class PredictParams(Section):
    overlap: Annotated[float, Field(ge=0, lt=1)] = 0.5
    sw_batch_size: PositiveInt = 2


class EvaluateParams(Section):
    pass


class Params(Section):
    # The cohort the pipeline runs on: a folder name under data/raw/ (dvc.yaml reads it).
    cohort: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = "synthetic"
    synth: SynthParams = SynthParams()
    # "validate" would shadow a pydantic method, hence the alias.
    validation: ValidateParams = Field(ValidateParams(), alias="validate")
    preprocess: PreprocessParams = PreprocessParams()
    split: SplitParams = SplitParams()
    train: TrainParams = TrainParams()
    predict: PredictParams = PredictParams()
    evaluate: EvaluateParams = EvaluateParams()


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate the whole parameter file; the first problem found is the error."""
    return _validate(Params, _read_yaml(Path(path)), source=str(path))


def resolve_network(train: TrainParams, preset_dir: Path = PRESET_DIR) -> NetworkParams:
    """The network preset named by ``train.model``, with ``train.model_overrides`` applied."""
    preset_path = preset_dir / f"{train.model}.yaml"
    if not preset_path.is_file():
        available = sorted(p.stem for p in preset_dir.glob("*.yaml"))
        raise ConfigError(
            f"train.model: no preset named {train.model!r} in {preset_dir} (available: {available})"
        )
    merged = {**_read_yaml(preset_path), **train.model_overrides}
    return _validate(NetworkParams, merged, source=f"{preset_path} + train.model_overrides")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err.__class__.__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def _validate(model: type[Section], data: dict, source: str):
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_describe(err)}") from None


def _describe(err: ValidationError) -> str:
    """One line: the first offending key, and every way its value failed (one per union branch)."""
    problems = err.errors()
    key = _key(problems[0])
    same_key = [p for p in problems if _key(p) == key]
    more = len(problems) - len(same_key)
    suffix = f" (and {more} more problems)" if more else ""
    if same_key[0]["type"] == "extra_forbidden":
        return f"{key}: unknown key{suffix}"
    if same_key[0]["type"] == "value_error":  # our own validators already say what they got
        return f"{key}: {same_key[0]['msg'].removeprefix('Value error, ')}{suffix}"
    reasons = " or ".join(dict.fromkeys(p["msg"].lower() for p in same_key))
    return f"{key}: {reasons}, got {same_key[0]['input']!r}{suffix}"


def _key(problem: dict) -> str:
    # pydantic adds the union branch it tried ("literal['auto']", "list[constrained-int]") to
    # the location; the user wrote only the key.
    parts = [str(p) for p in problem["loc"] if not _is_union_branch(p)]
    return ".".join(parts) or "(top level)"


def _is_union_branch(part) -> bool:
    return isinstance(part, str) and ("[" in part or part.startswith("constrained-"))
