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


class PreprocessParams(Section):
    target_spacing: Triple = [2.0, 2.0, 4.0]
    # CT: clip to these percentiles of the cohort's foreground intensities, then z-score.
    clip_percentiles: Annotated[list[float], Field(min_length=2, max_length=2)] = [0.5, 99.5]


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
    patch_size: IntTriple = [64, 64, 32]
    batch_size: PositiveInt = 2
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
    synth: SynthParams = SynthParams()
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
    problems = err.errors()
    first = problems[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        reason = "unknown key"
    elif first["type"] == "value_error":  # our own validators already say what they got
        reason = first["msg"].removeprefix("Value error, ")
    else:
        reason = f"{first['msg'].lower()}, got {first['input']!r}"
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return f"{key}: {reason}{more}"
