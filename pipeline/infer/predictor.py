"""Segment one scan: the model's own preprocessing, sliding windows over every fold, and the
inverse of the preprocessing back to the scan's voxel grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import Invertd
from torch import nn

from pipeline.models.model_dir import ModelDescription, load_description, load_fold_networks
from pipeline.preprocess.transforms import build_preprocessing


@dataclass(frozen=True)
class Prediction:
    label: np.ndarray  # uint8, the scan's own voxel grid
    probabilities: np.ndarray  # float32, (classes, *grid)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Predictor:
    def __init__(
        self,
        description: ModelDescription,
        networks: list[nn.Module],
        overlap: float = 0.5,
        sw_batch_size: int = 2,
        device: str = "auto",
    ):
        self.description = description
        self.device = resolve_device(device)
        self.networks = [network.to(self.device).eval() for network in networks]
        self.overlap = overlap
        self.sw_batch_size = sw_batch_size
        self.preprocessing = build_preprocessing(description.plans, keys=("image",))
        self.inverse = Invertd("probabilities", self.preprocessing, orig_keys="image", nearest_interp=False)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, folds: list[int] | None = None, **options) -> Predictor:
        description = load_description(Path(model_dir), folds)
        return cls(description, load_fold_networks(Path(model_dir), description, folds), **options)

    @torch.no_grad()
    def predict(self, image_path: str | Path) -> Prediction:
        data = self.preprocessing({"image": str(image_path)})
        image = data["image"]
        # The volume stays in host memory; only the windows go to the device.
        batch = image.as_tensor().unsqueeze(0)
        probabilities = sum(self._window_probabilities(net, batch) for net in self.networks)
        probabilities /= len(self.networks)
        data["probabilities"] = MetaTensor(
            probabilities[0], meta=image.meta, applied_operations=image.applied_operations
        )
        # Probabilities are resampled back (linearly), then the argmax taken on the scan's grid.
        restored = self.inverse(data)["probabilities"].as_tensor().float()
        # Undoing the crop to the non-zero box pads with zeros: that border is background.
        restored[0] += (1 - restored.sum(0)).clamp(min=0)
        return Prediction(label=restored.argmax(0).numpy().astype(np.uint8), probabilities=restored.numpy())

    def _window_probabilities(self, network: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        logits = sliding_window_inference(
            batch,
            self.description.patch_size,
            self.sw_batch_size,
            network,
            overlap=self.overlap,
            mode="gaussian",
            sw_device=self.device,
            device="cpu",
        )
        return torch.softmax(logits, dim=1)
