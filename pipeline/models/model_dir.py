"""The model directory: everything inference needs, so a model travels as one folder.

models/<name>/fold_<k>/
    model.json           network, plan (preprocessing + labels), patch size, resolved training
                         parameters, fold, best validation Dice, what init_from loaded, the
                         software versions it was trained with
    weights.pt           the best checkpoint's network weights (tensors only)
    cohort_profile.json  what the training cohort looked like (no patient data; pipeline/review)
    checkpoints/         Lightning's best.ckpt and last.ckpt, for resuming
models/<name>/calibration.json                the folds' temperature and review limits (calibrate)
models/<name>/model_card.json, MODEL_CARD.md  what the model is, was trained on and measured (card.py)

Each fold directory is complete on its own (DVC writes one per stage); a model is the set of
its folds, which must agree on network, plan and patch size to be averaged.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

import pipeline
from pipeline.config import NetworkParams, TrainParams, parse_network
from pipeline.errors import ConfigError, InputDataError
from pipeline.io import atomic_output, write_json
from pipeline.models.networks import build_network
from pipeline.preprocess.plans import Plans
from pipeline.preprocess.reader import MAX_CHANNELS
from pipeline.review.model_calibration import CALIBRATION_JSON
from pipeline.review.profile import PROFILE_JSON, CohortProfile

MODEL_JSON = "model.json"
WEIGHTS = "weights.pt"
MODEL_CARD_JSON = "model_card.json"
MODEL_CARD_MD = "MODEL_CARD.md"
# The libraries whose versions can change what a model learns, recorded in model.json by training.
TRAINING_SOFTWARE = ("torch", "lightning", "monai", "numpy", "scipy", "SimpleITK", "nibabel")
# fold_0, fold_1 ...: a copy kept beside them (fold_0_old, fold_1.bak) is not a fold.
FOLD_DIR = re.compile(r"fold_(0|[1-9][0-9]*)")
# A mask holds uint8 label values; 256^3 voxels is 8 times the planner's default bound on a
# patch (preprocess.max_patch_voxels); 2^30 parameters (4 GiB of float32 a fold) is over 4 times the
# largest preset, resenc_l (230 million at a 128^3 patch).
MAX_CLASSES = 256
MAX_PATCH_VOXELS = 256**3
MAX_PARAMETERS = 2**30
# What preprocess/transforms.py knows how to apply.
NORMALIZATION_SCHEMES = ("ct", "zscore")


@dataclass(frozen=True)
class ModelDescription:
    network: NetworkParams
    plans: Plans
    patch_size: list[int]

    def build(self) -> nn.Module:
        return build_network(
            self.network,
            self.plans.n_channels,
            len(self.plans.labels),
            patch_size=self.patch_size,
            spacing=self.plans.target_spacing,
        )


def save_fold(
    fold_path: Path,
    description: ModelDescription,
    network: nn.Module,
    profile: CohortProfile | None = None,
    **extra,
) -> None:
    """Weights and the training cohort's profile first, then model.json: a fold directory with a
    model.json is complete."""
    # Saved through a file object: given a path, torch names the archive's records after the
    # (temporary, per-process) file name, and the same weights would differ byte for byte.
    with atomic_output(fold_path / WEIGHTS) as tmp, tmp.open("wb") as handle:
        torch.save(network.state_dict(), handle)
    if profile is not None:
        profile.save(fold_path / PROFILE_JSON)
    write_json(
        fold_path / MODEL_JSON,
        {
            "resseg_version": pipeline.__version__,
            "network": description.network.model_dump(),
            "plans": description.plans.to_dict(),
            "patch_size": description.patch_size,
            **extra,
        },
    )


def fold_dirs(model_dir: Path, folds: list[int] | None = None) -> list[Path]:
    """The trained folds of a model directory (or the fold directory itself), optionally chosen."""
    model_dir = Path(model_dir)
    if (model_dir / MODEL_JSON).is_file():
        return [model_dir]
    found = {
        int(match[1]): p.parent
        for p in model_dir.glob(f"fold_*/{MODEL_JSON}")
        if (match := FOLD_DIR.fullmatch(p.parent.name))
    }
    if not found:
        raise InputDataError(f"{model_dir}: no fold_*/{MODEL_JSON}; is it a trained resseg model directory?")
    if folds is None:
        return [found[k] for k in sorted(found)]
    missing = sorted(set(folds) - set(found))
    if missing:
        raise InputDataError(f"{model_dir}: no trained fold {missing} (trained: {sorted(found)})")
    return [found[k] for k in folds]


def model_sha256(model_dir: Path, folds: list[int] | None = None) -> str:
    """The model's identity: the SHA-256 of the chosen folds' model.json, weights and training
    cohort profile and of the model's calibration, so equal hashes mean equal predictions and
    review columns."""
    digest = hashlib.sha256()
    for path in fold_dirs(Path(model_dir), folds):
        for name in (MODEL_JSON, WEIGHTS, PROFILE_JSON):
            digest.update((path / name).read_bytes() if (path / name).is_file() else b"")
    calibration = Path(model_dir) / CALIBRATION_JSON
    digest.update(calibration.read_bytes() if calibration.is_file() else b"")
    return digest.hexdigest()


def card_sha256(model_dir: Path, model: str | None = None) -> str | None:
    """The SHA-256 of the model's model_card.json, if the card describes these weights (its
    model.sha256 is the model's, all folds: ``model`` where already computed); None when the model
    has no card, or has a card left from an earlier training."""
    path = Path(model_dir) / MODEL_CARD_JSON
    if not path.is_file():
        return None
    content = path.read_bytes()
    try:
        described = json.loads(content)["model"]["sha256"]
    except (ValueError, KeyError, TypeError):
        raise InputDataError(
            f"{path}: not a model card written by resseg card (rewrite it, or predict with --no-card)"
        ) from None
    model = model or model_sha256(model_dir)
    return hashlib.sha256(content).hexdigest() if described == model else None


def software_versions(distributions: tuple[str, ...] = TRAINING_SOFTWARE) -> dict[str, str | None]:
    """Python's version and each installed distribution's (None where one is not installed)."""

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), **{name: version(name) for name in distributions}}


def load_description(model_dir: Path, folds: list[int] | None = None) -> ModelDescription:
    """The description shared by the chosen folds; folds that disagree are refused, and so are
    folds trained with another recipe (a fold left from an earlier experiment on the same plan
    would otherwise be averaged in silently)."""
    read = {path: _read_fold(path / MODEL_JSON) for path in fold_dirs(model_dir, folds)}
    (first_path, (first, first_recipe)), *others = read.items()
    for path, (other, recipe) in others:
        if other != first:
            raise InputDataError(f"{path}: network, plan or patch size differs from {first_path}")
        if differing := sorted(
            key for key in first_recipe.keys() | recipe.keys() if first_recipe.get(key) != recipe.get(key)
        ):
            key = differing[0]
            raise InputDataError(
                f"{path}: trained with other parameters than {first_path} (train.{key}: "
                f"{recipe.get(key)!r} against {first_recipe.get(key)!r}); a fold of an earlier "
                "experiment? Remove it, or choose the folds (--folds)"
            )
    _check_numbers(first_path / MODEL_JSON, first)
    _check_sizes(first_path / MODEL_JSON, first)
    return first


def load_fold_networks(
    model_dir: Path, description: ModelDescription, folds: list[int] | None = None
) -> list[nn.Module]:
    """Every chosen fold's network, in eval mode; weights load as tensors only (no pickled code)."""
    networks = []
    for path in fold_dirs(model_dir, folds):
        network = description.build()
        try:
            network.load_state_dict(_finite(path / WEIGHTS, load_state_dict(path / WEIGHTS)))
        except RuntimeError as err:  # missing, unexpected or mis-shaped tensors
            first_line = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
            raise InputDataError(f"{path / WEIGHTS}: does not fit {MODEL_JSON} ({first_line})") from None
        networks.append(network.eval())
    return networks


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Network weights from weights.pt or a Lightning checkpoint, without executing pickled code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputDataError(f"{path}: not found") from None
    except Exception as err:
        raise InputDataError(f"{path}: cannot load weights ({err.__class__.__name__}: {err})") from None
    if "state_dict" in state:  # a Lightning checkpoint: the network sits under "network."
        prefix = "network."
        state = {k.removeprefix(prefix): v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    return state


def _check_numbers(path: Path, description: ModelDescription) -> None:
    """Values that would not fail until inference, and then give a traceback or an empty mask:
    a zero std or a NaN clip value turns every voxel into NaN, a non-positive patch or spacing
    has no windows. Named by their key in model.json."""

    def refuse(key: str, value, expected: str):
        raise InputDataError(f"{path}: {key} is {value}, expected {expected}")

    plans = description.plans
    for key, sizes in (("patch_size", description.patch_size), ("plans.patch_size", plans.patch_size)):
        if not all(n >= 1 for n in sizes):
            refuse(key, sizes, "positive sizes")
    if not all(s > 0 for s in plans.target_spacing):  # False for NaN too
        refuse("plans.target_spacing", list(plans.target_spacing), "positive spacings in mm")
    for channel, norm in enumerate(plans.normalization):
        key = f"plans.normalization[{channel}]"
        if norm.scheme not in NORMALIZATION_SCHEMES:
            refuse(f"{key}.scheme", repr(norm.scheme), " or ".join(NORMALIZATION_SCHEMES))
        if norm.scheme != "ct":
            continue
        for name in ("clip_low", "clip_high", "mean", "std"):
            value = getattr(norm, name)
            if not (isinstance(value, int | float) and math.isfinite(value)):
                refuse(f"{key}.{name}", value, "a finite number")
        if norm.std <= 0:
            refuse(f"{key}.std", norm.std, "a positive number")
        if norm.clip_low >= norm.clip_high:
            refuse(f"{key}.clip_low", norm.clip_low, f"less than clip_high ({norm.clip_high})")


def _check_sizes(path: Path, description: ModelDescription) -> None:
    """Sizes that would allocate tens of GB, or hang, once the network is built or run. The
    network's own widths and depths are bounded by its parameter types (config.py); the
    parameters they add up to are counted on the meta device, where tensors take no memory."""
    plans = description.plans
    _at_most(path, "plans.labels", len(plans.labels), MAX_CLASSES, "classes")
    _at_most(path, "plans.channel_names", plans.n_channels, MAX_CHANNELS, "channels")
    _at_most(path, "patch_size", math.prod(description.patch_size), MAX_PATCH_VOXELS, "voxels")
    _at_most(path, "plans.patch_size", math.prod(plans.patch_size), MAX_PATCH_VOXELS, "voxels")
    with torch.device("meta"):
        parameters = sum(p.numel() for p in description.build().parameters())
    _at_most(path, "network", parameters, MAX_PARAMETERS, "parameters")


def _at_most(path: Path, key: str, count: int, most: int, what: str) -> None:
    if count > most:
        raise InputDataError(f"{path}: {key} has {count} {what}, expected at most {most}")


def _finite(path: Path, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights holding NaN or infinities make every prediction NaN: an empty mask."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise InputDataError(f"{path}: tensor {name} holds NaN or infinite values")
    return state


def _read_fold(path: Path) -> tuple[ModelDescription, dict]:
    """A fold's model.json: its description, and the training parameters that decide what it
    learned (not where it ran)."""
    try:
        data = json.loads(path.read_text())
        description = ModelDescription(
            network=parse_network(data["network"]),
            plans=Plans.from_dict(data["plans"]),
            patch_size=list(data["patch_size"]),
        )
        training = data.get("training") or {}
        return description, {key: value for key, value in training.items() if key not in TrainParams.RUNTIME}
    except ConfigError as err:
        raise InputDataError(f"{path}: {err}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise InputDataError(f"{path}: missing or malformed entry ({err})") from None
