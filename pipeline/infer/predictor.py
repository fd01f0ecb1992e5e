"""Segment one scan: the model's own preprocessing, sliding windows over every fold (optionally
mirrored), and the inverse of the preprocessing back to the scan's voxel grid.

What is resampled back is each foreground class's log-odds against the background, as nnU-Net
resamples the logits, not the probabilities: a linear interpolation of saturated probabilities
puts every boundary half-way between two voxels of the coarser grid, one of log-odds where the
evidence for the two classes crosses, inside the voxel. On the synthetic CT's test cases this
gave a higher Dice for the organ and the lesion with the same weights (README, Performance)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import Compose, Invertd
from torch import nn

from pipeline.errors import ConfigError
from pipeline.evaluate.calibration import apply_temperature
from pipeline.infer.memory import check_device_memory, prediction_bytes, window_bytes
from pipeline.io import Volume
from pipeline.models.model_dir import ModelDescription, load_description, load_fold_networks
from pipeline.preprocess.reader import VolumeReader
from pipeline.preprocess.transforms import build_preprocessing
from pipeline.review.model_calibration import Calibration
from pipeline.review.uncertainty import fold_disagreement, foreground_entropy

# The spatial axes of a (batch, channel, x, y, z) window, and every non-empty set of them:
# nnU-Net's mirroring test-time augmentation averages the network over these 7 flips and none.
SPATIAL_AXES = (2, 3, 4)
MIRRORS = [axes for n in (1, 2, 3) for axes in combinations(SPATIAL_AXES, n)]


# Log-odds are resampled back raised by this, so that the zeros that undoing the crop to the
# non-zero box pads with read as certain background (log-odds -LOG_ODDS_OFFSET). It exceeds
# every log-odds of float32 probabilities clamped at the smallest normal number (|x| < 87.4).
LOG_ODDS_OFFSET = 100.0

Precision = Literal["auto", "fp32", "bf16", "fp16"]
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Prediction:
    label: np.ndarray  # uint8, the scan's own voxel grid
    probabilities: np.ndarray  # float32, (classes, *grid); calibrated when the model has a temperature
    uncertainty: float | None = None  # review/uncertainty.py, of the probabilities before calibration
    fold_disagreement: float | None = None


def resolve_device(name: str) -> torch.device:
    """A device this machine has, or one line saying why not (rather than a traceback at the
    first window)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:<index>, got {name!r}")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device: no {name} here (CUDA devices: {torch.cuda.device_count()})")
    return device


def resolve_precision(precision: Precision, device: torch.device) -> Literal["fp32", "bf16", "fp16"]:
    """``auto``: the mixed precision the device computes fastest, as nnU-Net autocasts on CUDA;
    bfloat16 on CPUs with native bfloat16 arithmetic (AVX512-BF16, AMX), float32 on other CPUs."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    return "bf16" if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


class Predictor:
    def __init__(
        self,
        description: ModelDescription,
        networks: list[nn.Module],
        overlap: float = 0.5,
        sw_batch_size: int = 1,
        device: str = "auto",
        mirror: bool = False,
        precision: Precision = "auto",
        calibration: Calibration | None = None,
    ):
        """``calibration``: what the calibrate stage fitted on the model's out-of-fold predictions
        (review/calibrate.py): its temperature scales the probabilities, its lesion thresholds
        count the lesions; None leaves the probabilities as the networks give them."""
        self.description = description
        self.calibration = calibration
        self.temperature = calibration.temperature if calibration else 1.0
        self.device = resolve_device(device)
        self.networks = [network.to(self.device).eval() for network in networks]
        self.overlap = overlap
        self.sw_batch_size = sw_batch_size
        self.mirror = mirror
        self.precision = resolve_precision(precision, self.device)
        self.preprocessing = build_preprocessing(description.plans, keys=("image",))
        # Volumes come in already read (any format, DICOM included): skip the chain's loading step.
        self.preprocess_loaded = Compose(self.preprocessing.transforms[1:])
        self.inverse = Invertd("log_odds", self.preprocessing, orig_keys="image", nearest_interp=False)
        activations = window_bytes(description, sw_batch_size)
        if self.device.type == "cuda":  # no scan changes what a window needs: checked once
            check_device_memory(activations, torch.cuda.mem_get_info(self.device)[0], self.device)
        # On the CPU the network's activations share the host memory with the scan's arrays.
        self.activation_bytes = activations if self.device.type == "cpu" else 0

    @classmethod
    def from_model_dir(
        cls, model_dir: str | Path, folds: list[int] | None = None, calibrate: bool = True, **options
    ) -> Predictor:
        """``calibrate``: apply the model directory's calibration, when it has one."""
        description = load_description(Path(model_dir), folds)
        calibration = Calibration.load(Path(model_dir)) if calibrate else None
        networks = load_fold_networks(Path(model_dir), description, folds)
        return cls(description, networks, calibration=calibration, **options)

    @torch.no_grad()
    def predict(self, channels: Volume | Sequence[Volume]) -> Prediction:
        """Segment a scan given as one volume, or one volume per channel of a multi-channel model."""
        channels = [channels] if isinstance(channels, Volume) else list(channels)
        data = self.preprocess_loaded({"image": as_meta_tensor(channels)})
        image = data["image"]
        # The volume stays in host memory; only the windows go to the device.
        batch = image.as_tensor().unsqueeze(0)
        probabilities = self._window_probabilities(self.networks[0], batch)
        fold_foregrounds = [_foreground(probabilities)] if len(self.networks) > 1 else []
        for network in self.networks[1:]:
            fold = self._window_probabilities(network, batch)
            fold_foregrounds.append(_foreground(fold))
            probabilities += fold
        probabilities /= len(self.networks)
        # With one fold there is nothing to disagree: no argmax over the ensemble's grid.
        disagreement = (
            fold_disagreement(fold_foregrounds, _foreground(probabilities)) if fold_foregrounds else None
        )
        data["log_odds"] = MetaTensor(
            raised_log_odds(probabilities[0]), meta=image.meta, applied_operations=image.applied_operations
        )
        del probabilities
        # Log-odds are resampled back (linearly), the classes' scores and argmax taken on the scan's grid.
        scores = scores_from_raised_log_odds(self.inverse(data)["log_odds"].as_tensor().float())
        # max().indices, not argmax(): the same first maximum, over 10x faster across channels.
        label = scores.max(0).indices.to(torch.uint8).numpy()
        restored = softmax_(scores).numpy()
        uncertainty = foreground_entropy(restored, label)
        # After the mask: the temperature keeps every voxel's order of classes, and so the mask,
        # but a tie between two classes that it rounds apart must not change a voxel.
        calibrated = apply_temperature(restored, self.temperature)
        return Prediction(label, calibrated, uncertainty, disagreement)

    def memory_needed(self, channels: Sequence[Volume]) -> int:
        """Bytes of host memory that predicting this scan takes, at most (memory.py)."""
        plans, scan = self.description.plans, channels[0]
        arrays = prediction_bytes(
            scan.shape, scan.spacing, plans.target_spacing, len(channels), len(plans.labels)
        )
        return arrays + self.activation_bytes

    def _window_probabilities(self, network: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        logits = sliding_window_inference(
            batch,
            self.description.patch_size,
            self.sw_batch_size,
            self._window_logits(network),
            overlap=self.overlap,
            mode="gaussian",
            sw_device=self.device,
            device="cpu",
        )
        return torch.softmax(logits, dim=1)

    def _window_logits(self, network: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """The network over a batch of windows, in float32 whatever the precision of its arithmetic
        (the blended volume accumulates in float32); with mirroring, averaged over the window and
        its 7 mirror images, each flipped back."""
        dtype = AUTOCAST_DTYPES.get(self.precision)
        mirrors = MIRRORS if self.mirror else []

        def forward(windows: torch.Tensor) -> torch.Tensor:
            with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                logits = network(windows).float()
                for axes in mirrors:
                    logits += torch.flip(network(torch.flip(windows, axes)), axes).float()
            return logits / (len(mirrors) + 1)

        return forward


def raised_log_odds(probabilities: torch.Tensor) -> torch.Tensor:
    """(classes, ...) probabilities -> (classes - 1, ...): each foreground class's log-odds
    against the background, plus LOG_ODDS_OFFSET."""
    logs = probabilities.clamp(min=torch.finfo(torch.float32).tiny).log_()
    return logs[1:].sub_(logs[:1]).add_(LOG_ODDS_OFFSET)


def scores_from_raised_log_odds(raised: torch.Tensor) -> torch.Tensor:
    """The inverse of ``raised_log_odds`` up to a constant per voxel: (classes, ...) scores whose
    softmax is the probabilities, the background's 0."""
    return torch.cat([torch.zeros_like(raised[:1]), raised.sub_(LOG_ODDS_OFFSET)])


def softmax_(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the classes (dimension 0), in place: on the scan's grid a copy would be the
    largest array of the prediction."""
    scores.sub_(scores.max(0).values).exp_()
    return scores.div_(scores.sum(0))


def _foreground(probabilities: torch.Tensor) -> np.ndarray:
    """Voxels whose most probable class is not the background, of a (1, classes, ...) batch."""
    return (probabilities[0].max(0).indices > 0).numpy()


def as_meta_tensor(volumes: Sequence[Volume]) -> MetaTensor:
    """Volumes already in memory (one per channel file, or one) as ``LoadImaged`` loads files,
    for the chain of ``build_preprocessing`` after its loading step."""
    array, meta = VolumeReader().get_data(list(volumes))
    return MetaTensor.ensure_torch_and_prune_meta(array, meta)
