"""Typed, validated parameters, read once from params.yaml.

Every stage receives only its own section. Unknown keys and wrong types are errors that name
the key (``train.max_epochs: expected an integer, got 'ten'``) instead of being ignored.
"""

from __future__ import annotations

import re
import reprlib
from pathlib import Path
from typing import Annotated, ClassVar, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from pipeline.errors import ConfigError

PRESET_DIR = Path("configs/models")

PositiveFloat = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(gt=0, le=1)]
PositiveInt = Annotated[int, Field(gt=0)]
Triple = Annotated[list[PositiveFloat], Field(min_length=3, max_length=3)]
IntTriple = Annotated[list[PositiveInt], Field(min_length=3, max_length=3)]
Fraction = Annotated[float, Field(ge=0, le=1)]
# Upper bounds on a network's sizes: far above any 3D segmentation network in use (nnU-Net's
# largest has 320 features and 6 blocks a stage), far below what a hostile model.json would
# need to exhaust memory or to hang while the network is built.
MAX_FEATURES = 2048
MAX_BLOCKS = 32
MAX_LEVELS = 10
Features = Annotated[int, Field(gt=0, le=MAX_FEATURES)]
# [low, high]
Range = Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=2, max_length=2)]


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


class ResidualUnitUNetParams(Section):
    """MONAI's UNet with a stack of residual units at every level."""

    architecture: Literal["residual_unit_unet"] = "residual_unit_unet"
    channels: Annotated[list[Features], Field(min_length=2, max_length=MAX_LEVELS)] = [16, 32, 64, 128]
    strides: Annotated[list[PositiveInt], Field(min_length=1)] = [2, 2, 2]
    num_res_units: Annotated[int, Field(ge=0, le=MAX_BLOCKS)] = 2
    norm: Literal["instance", "batch"] = "instance"
    dropout: Fraction = 0.0
    # Not a key: every architecture answers it, so training asks them all alike.
    deep_supervision: ClassVar[bool] = False

    @model_validator(mode="after")
    def _one_stride_per_downsampling(self) -> ResidualUnitUNetParams:
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"needs one stride per level below the top: {len(self.channels) - 1} "
                f"for {len(self.channels)} channels, got {len(self.strides)}"
            )
        return self


class ResidualEncoderUNetParams(Section):
    """nnU-Net's residual-encoder U-Net; strides and kernels follow the plan (models/topology.py)."""

    architecture: Literal["residual_encoder_unet"] = "residual_encoder_unet"
    # Residual blocks per encoder stage. Its length is the most stages the network may have;
    # a small or thick-sliced patch allows fewer, and the list is then cut short.
    blocks_per_stage: Annotated[
        list[Annotated[int, Field(gt=0, le=MAX_BLOCKS)]], Field(min_length=2, max_length=MAX_LEVELS)
    ] = [1, 3, 4, 6, 6, 6]
    # Stage s has min(base_features * 2**s, max_features) channels.
    base_features: Features = 32
    max_features: Features = 320
    # In training, one output per decoder resolution (full resolution first).
    deep_supervision: bool = True


class ResNetUNetParams(Section):
    """A U-Net with a MONAI 3D ResNet encoder (FlexibleUNet; models/resnet_unet.py)."""

    architecture: Literal["resnet_unet"] = "resnet_unet"
    depth: Literal[10, 18, 34, 50] = 18
    # One per upsampling, deepest first; the encoder downsamples five times.
    decoder_channels: Annotated[list[Features], Field(min_length=5, max_length=5)] = [256, 128, 64, 32, 16]
    deep_supervision: ClassVar[bool] = False


# A preset or model.json picks its class by "architecture" (model.json through parse_network(), a
# preset through resolve_network()).
NetworkParams = Annotated[
    ResidualUnitUNetParams | ResidualEncoderUNetParams | ResNetUNetParams, Field(discriminator="architecture")
]
_NETWORK = TypeAdapter(NetworkParams)
# pydantic puts the architecture it tried into an error's location; the user wrote only the key.
_ARCHITECTURES = {cls.model_fields["architecture"].default for cls in get_args(get_args(NetworkParams)[0])}


def parse_network(data: dict) -> NetworkParams:
    """Validate model.json's "network"; a problem is one line naming the key ("network.channels.0")."""
    try:
        return _NETWORK.validate_python(data)
    except ValidationError as err:
        raise ConfigError(f"network.{_describe(err)}") from None


class AugmentationParams(Section):
    """nnU-Net's training augmentation, each transform with its probability per patch."""

    # Rotation and scaling in one resampling; rotation is in-plane only when the plan's spacing
    # is anisotropic (thick slices), as nnU-Net does.
    affine_prob: Fraction = 0.2
    rotation_degrees: Annotated[float, Field(ge=0, le=180)] = 30.0
    scale_range: Range = [0.7, 1.4]
    elastic_prob: Fraction = 0.0
    mirror_axes: Annotated[list[Annotated[int, Field(ge=0, le=2)]], Field(max_length=3)] = [0, 1, 2]
    noise_prob: Fraction = 0.1
    noise_std: Annotated[float, Field(ge=0)] = 0.1
    # Blur and low resolution: nnU-Net draws them with 0.2 and 0.25, then each channel with 0.5;
    # these are the chances that a given channel is changed.
    blur_prob: Fraction = 0.1
    blur_sigma: Range = [0.5, 1.0]
    brightness_prob: Fraction = 0.15
    brightness_range: Range = [0.75, 1.25]
    contrast_prob: Fraction = 0.15
    contrast_range: Range = [0.75, 1.25]
    low_resolution_prob: Fraction = 0.125
    low_resolution_zoom: Range = [0.5, 1.0]
    gamma_prob: Fraction = 0.3
    inverted_gamma_prob: Fraction = 0.1
    gamma_range: Range = [0.7, 1.5]


class TrainParams(Section):
    # The keys that say where and how fast a run goes, not what it learns: they may change
    # between an interruption and its resumption, and differ between folds of one model.
    RUNTIME: ClassVar[frozenset[str]] = frozenset(
        {"resume", "num_workers", "threads", "accelerator", "devices", "num_nodes", "strategy"}
    )

    model: str = "resunet_small"
    model_overrides: dict = {}
    # "auto": the plan's patch size and batch size (see preprocess). The batch is per process.
    patch_size: Literal["auto"] | IntTriple = "auto"
    batch_size: Literal["auto"] | PositiveInt = "auto"
    # Optimiser steps per epoch on each process, as in nnU-Net, whatever the cohort size.
    iterations_per_epoch: PositiveInt = 250
    # nnU-Net's oversample_foreground_percent: patches centred on foreground (a class the case
    # holds first, then a voxel of it), counted per batch as nnU-Net does (augmentation.foreground_share).
    foreground_fraction: Fraction = 0.33
    augmentation: AugmentationParams = AugmentationParams()
    max_epochs: PositiveInt = 1000
    # nnU-Net: SGD with Nesterov momentum 0.99, polynomial decay of the learning rate.
    optimizer: Literal["sgd", "adamw"] = "sgd"
    learning_rate: PositiveFloat = 1e-2
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.99
    weight_decay: Annotated[float, Field(ge=0)] = 3e-5
    poly_power: PositiveFloat = 0.9
    gradient_clip: Annotated[float, Field(ge=0)] = 12.0
    val_every_n_epochs: PositiveInt = 50
    seed: int = 0
    # "auto": continue from the fold's last checkpoint when it was made with these parameters.
    resume: Literal["auto", "never"] = "auto"
    # Fine-tuning: a model directory, fold directory, weights.pt or Lightning .ckpt to start from.
    init_from: str | None = None
    freeze_encoder_epochs: Annotated[int, Field(ge=0)] = 0
    num_workers: Annotated[int, Field(ge=0)] = 0
    # Compute threads, loader workers included; null: the cores this process may use
    # (pipeline/threads.py: affinity, cgroup quota, SLURM_CPUS_PER_TASK).
    threads: PositiveInt | None = None
    # Passed to Lightning's Trainer; "auto" precision is 16-bit mixed on GPU, 32-bit on CPU.
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: Literal["auto"] | PositiveInt = 1
    num_nodes: PositiveInt = 1
    strategy: Literal["auto", "ddp", "ddp_spawn"] = "auto"
    precision: Literal["auto", "32-true", "16-mixed", "bf16-mixed"] = "auto"


class PredictParams(Section):
    # Sliding windows: the fraction by which neighbours overlap (Gaussian-weighted blending).
    overlap: Annotated[float, Field(ge=0, lt=1)] = 0.5
    # Windows per forward pass: on the development CPU one is fastest (benchmarks/README.md,
    # "Inference"); a GPU may want more.
    sw_batch_size: PositiveInt = 1
    # The network's arithmetic: auto is mixed precision where the device has it (float16 on CUDA,
    # bfloat16 on CPUs with native bfloat16), else fp32; or fp32, bf16, fp16.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Test-time augmentation: average the network over the 8 mirror images of each window (8x slower).
    tta: bool = False
    # Compute threads; null: the cores this process may use (pipeline/threads.py).
    threads: PositiveInt | None = None


class DetectionParams(Section):
    """Lesion detection (pipeline/evaluate/detection.py gives every definition)."""

    # Label names (from dataset.json) scored as lesions; [] scores no detection metric.
    lesion_labels: list[str] = []
    # Candidates: components of the lesion probability >= this, each scored by its maximum.
    candidate_threshold: Probability = 0.1
    # PI-CAI's dynamic extraction: grow each peak p at dynamic_fraction * p instead.
    dynamic_threshold: bool = False
    dynamic_fraction: Probability = 0.4
    min_candidate_volume_mm3: Annotated[float, Field(ge=0)] = 10.0
    # A candidate and a reference lesion match when their IoU reaches this.
    iou_threshold: Probability = 0.1
    # Sensitivity, precision, F1 and case sensitivity/specificity are reported at this confidence.
    operating_threshold: Probability = 0.5
    case_score: Literal["max_candidate", "max_probability"] = "max_candidate"


class EvaluateParams(Section):
    # Normalised surface Dice: boundary voxels within this distance of the other boundary agree;
    # one tolerance for every label, or one per label name ({organ: 2.0, lesion: 1.0}).
    nsd_tolerance_mm: PositiveFloat | dict[str, PositiveFloat] = 2.0
    detection: DetectionParams = DetectionParams()
    # 95% confidence intervals: bootstrap over cases.
    bootstrap_resamples: PositiveInt = 1000
    seed: int = 0


class CalibrateParams(Section):
    # The lesion operating threshold chosen on the out-of-fold predictions (calibrated), stored in
    # calibration.json for resseg predict's lesion counts: the highest threshold whose sensitivity
    # reaches target_sensitivity, or the lowest whose false positives per scan stay at or below
    # target_fp_per_scan. Neither: evaluate.detection.operating_threshold.
    target_sensitivity: Annotated[float, Field(gt=0, le=1)] | None = None
    target_fp_per_scan: Annotated[float, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _one_target(self) -> CalibrateParams:
        if self.target_sensitivity is not None and self.target_fp_per_scan is not None:
            raise ValueError("give target_sensitivity or target_fp_per_scan, not both")
        return self


class CompareParams(Section):
    # Retraining on a new site: the model in use (a model directory), compared with this
    # pipeline's model on the test split of each cohort listed (dvc.yaml's compare stages).
    baseline: str | None = None
    cohorts: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]] = []
    # Non-inferiority margin per metric (resseg compare --margin): dice, nsd, hd95_mm (mm),
    # lesion_ap, cpm, auroc.
    margins: dict[
        Literal["dice", "nsd", "hd95_mm", "lesion_ap", "cpm", "auroc"], Annotated[float, Field(ge=0)]
    ] = {}

    @model_validator(mode="after")
    def _baseline_to_compare(self) -> CompareParams:
        if self.cohorts and self.baseline is None:
            raise ValueError("cohorts to compare on need a baseline model")
        return self


class CardParams(Section):
    """What the team states in the model card (pipeline/card.py); an empty field reads "not stated"."""

    title: str = ""  # "": the model directory's name
    intended_use: str = ""
    out_of_scope: str = ""
    limitations: str = ""
    contact: str = ""
    license: str = ""


class Params(Section):
    # The cohort the pipeline runs on: a folder name under data/raw/ (dvc.yaml reads it).
    cohort: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = "synthetic"
    # The cross-validation folds that dvc.yaml trains (one stage each) and prediction averages.
    folds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] = [0]
    synth: SynthParams = SynthParams()
    # "validate" would shadow a pydantic method, hence the alias.
    validation: ValidateParams = Field(ValidateParams(), alias="validate")
    preprocess: PreprocessParams = PreprocessParams()
    split: SplitParams = SplitParams()
    train: TrainParams = TrainParams()
    predict: PredictParams = PredictParams()
    evaluate: EvaluateParams = EvaluateParams()
    calibrate: CalibrateParams = CalibrateParams()
    compare: CompareParams = CompareParams()
    card: CardParams = CardParams()


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate the whole parameter file; the first problem found is the error."""
    return validate_section(Params, _read_yaml(Path(path)), source=str(path))


def resolve_network(train: TrainParams, preset_dir: Path = PRESET_DIR) -> NetworkParams:
    """The network preset named by ``train.model``, with ``train.model_overrides`` applied."""
    preset_path = preset_dir / f"{train.model}.yaml"
    if not preset_path.is_file():
        available = sorted(p.stem for p in preset_dir.glob("*.yaml"))
        raise ConfigError(
            f"train.model: no preset named {train.model!r} in {preset_dir} (available: {available})"
        )
    merged = {**_read_yaml(preset_path), **train.model_overrides}
    return validate_section(NetworkParams, merged, source=f"{preset_path} + train.model_overrides")


class _Yaml12Floats(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where a float needs a dot: ``1e-3`` and ``5E-4`` would be strings
    (and rejected as numbers). YAML 1.2, which DVC's own parser speaks, reads them as floats."""


_Yaml12Floats.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.load(path.read_text(), Loader=_Yaml12Floats)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err.__class__.__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def validate_section(schema, data: dict, source: str):
    # A TypeAdapter validates a Section and a union of Sections (NetworkParams) alike.
    try:
        return TypeAdapter(schema).validate_python(data)
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
    if same_key[0]["type"] == "union_tag_invalid":  # e.g. an unknown network architecture
        ctx = same_key[0]["ctx"]
        return f"{key}: expected one of {ctx['expected_tags']}, got {ctx['tag']!r}{suffix}"
    if same_key[0]["type"] == "union_tag_not_found":
        return f"{key}: missing{suffix}"
    reasons = " or ".join(dict.fromkeys(p["msg"].lower() for p in same_key))
    # reprlib: a list of a million items is shown by its first few, keeping the message one line.
    return f"{key}: {reasons}, got {reprlib.repr(same_key[0]['input'])}{suffix}"


def _key(problem: dict) -> str:
    # pydantic adds the union branch it tried ("literal['auto']", "list[constrained-int]") to
    # the location; the user wrote only the key.
    parts = [str(p) for p in problem["loc"] if not _is_union_branch(p)]
    if problem["type"].startswith("union_tag_"):  # the key that picks the branch is itself wrong
        parts.append(problem["ctx"]["discriminator"].strip("'"))
    return ".".join(parts) or "(top level)"


def _is_union_branch(part) -> bool:
    return isinstance(part, str) and (
        "[" in part or part.startswith("constrained-") or part in _ARCHITECTURES
    )
