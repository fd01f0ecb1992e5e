"""Per-case segmentation metrics.

Convention when a structure is absent (counted in the report, never averaged in as NaN):
reference and prediction both empty -> Dice 1.0; only one of them empty -> Dice 0.0.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_dice


def dice_per_label(reference: np.ndarray, prediction: np.ndarray, labels: list[int]) -> dict[int, float]:
    """Dice of each foreground label value, on one case."""
    ref = torch.as_tensor(np.stack([reference == v for v in labels]))[None]
    pred = torch.as_tensor(np.stack([prediction == v for v in labels]))[None]
    dice = compute_dice(pred, ref, include_background=True, ignore_empty=False)[0]
    return {value: float(d) for value, d in zip(labels, dice, strict=True)}


def volume_ml(mask: np.ndarray, spacing: tuple[float, ...]) -> float:
    return float(mask.sum() * np.prod(spacing) / 1000.0)
