"""Per-case segmentation metrics: Dice, HD95 in mm and normalised surface Dice (NSD), per label.

Every score comes from MONAI (compute_dice, compute_hausdorff_distance, compute_surface_dice);
distances are in millimetres through the voxel spacing, given in the order of the array's axes.

- HD95 is MONAI's: the larger of the two directed 95th percentiles of the distances between
  the boundary voxels (mask voxels with a face neighbour outside the mask) of the two masks.
- NSD counts boundary voxels (MONAI's default, ``use_subvoxels=False``): the fraction of both
  boundaries that lies within the label's tolerance (in mm, inclusive) of the other boundary.

Convention when a label is absent, reported per case as ``status`` so that the report can count
each kind and no NaN or inf is ever averaged in:

============================  ======  ======  ==========================================
status                        Dice    NSD     HD95 (mm)
============================  ======  ======  ==========================================
``both_present``              MONAI   MONAI   MONAI
``both_empty``                1.0     1.0     0.0 (perfect agreement, as Dice says)
``reference_empty``           0.0     0.0     None: no distance to an absent structure
``prediction_empty``          0.0     0.0     None: no distance to an absent structure
============================  ======  ======  ==========================================

Summaries (``statistics.summarize``) leave the None values out and count them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

BOTH_PRESENT = "both_present"
BOTH_EMPTY = "both_empty"
REFERENCE_EMPTY = "reference_empty"
PREDICTION_EMPTY = "prediction_empty"


@dataclass(frozen=True)
class LabelScores:
    """The scores of one label on one case; ``status`` says which convention applied."""

    status: str
    dice: float
    nsd: float
    hd95_mm: float | None


def dice_per_label(reference: np.ndarray, prediction: np.ndarray, labels: list[int]) -> dict[int, float]:
    """Dice of each foreground label value, on one case."""
    dice = compute_dice(
        _one_hot(prediction, labels), _one_hot(reference, labels), include_background=True, ignore_empty=False
    )[0]
    return {value: float(d) for value, d in zip(labels, dice, strict=True)}


def volume_ml(mask: np.ndarray, spacing: tuple[float, ...]) -> float:
    return float(mask.sum() * np.prod(spacing) / 1000.0)


def label_scores(
    reference: np.ndarray,
    prediction: np.ndarray,
    labels: list[int],
    spacing: Sequence[float],
    nsd_tolerance_mm: float | Mapping[int, float],
) -> dict[int, LabelScores]:
    """Dice, NSD and HD95 of each foreground label value on one case (conventions: module docstring).

    ``nsd_tolerance_mm`` is one tolerance for every label or one per label value.
    """
    tolerance = (
        nsd_tolerance_mm if isinstance(nsd_tolerance_mm, Mapping) else dict.fromkeys(labels, nsd_tolerance_mm)
    )
    status = {v: _status((reference == v).any(), (prediction == v).any()) for v in labels}
    present = [v for v in labels if status[v] == BOTH_PRESENT]
    hd95, nsd = _surface_scores(reference, prediction, present, spacing, [tolerance[v] for v in present])
    dice = dice_per_label(reference, prediction, labels)
    scores = {}
    for v in labels:
        if status[v] == BOTH_PRESENT:
            scores[v] = LabelScores(status[v], dice[v], nsd[v], hd95[v])
        elif status[v] == BOTH_EMPTY:
            scores[v] = LabelScores(status[v], 1.0, 1.0, 0.0)
        else:
            scores[v] = LabelScores(status[v], 0.0, 0.0, None)
    return scores


def _status(in_reference: bool, in_prediction: bool) -> str:
    if in_reference and in_prediction:
        return BOTH_PRESENT
    if in_reference:
        return PREDICTION_EMPTY
    return REFERENCE_EMPTY if in_prediction else BOTH_EMPTY


def _surface_scores(
    reference: np.ndarray,
    prediction: np.ndarray,
    labels: list[int],
    spacing: Sequence[float],
    tolerances_mm: list[float],
) -> tuple[dict[int, float], dict[int, float]]:
    """HD95 and NSD of labels present in both masks (MONAI gives inf or NaN for the others)."""
    if not labels:
        return {}, {}
    ref, pred = _one_hot(reference, labels), _one_hot(prediction, labels)
    spacing = [float(s) for s in spacing]
    hd95 = compute_hausdorff_distance(pred, ref, include_background=True, percentile=95, spacing=spacing)[0]
    nsd = compute_surface_dice(pred, ref, tolerances_mm, include_background=True, spacing=spacing)[0]
    return (
        {v: float(d) for v, d in zip(labels, hd95, strict=True)},
        {v: float(s) for v, s in zip(labels, nsd, strict=True)},
    )


def _one_hot(volume: np.ndarray, labels: list[int]) -> torch.Tensor:
    """Batch of one case, one channel per label value: the layout MONAI's metrics take."""
    return torch.as_tensor(np.stack([volume == v for v in labels]))[None]
