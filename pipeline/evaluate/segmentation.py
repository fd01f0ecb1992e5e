"""Per-case segmentation metrics: Dice, HD95 in mm and normalised surface Dice (NSD), per label.

Every score comes from MONAI (compute_dice, compute_hausdorff_distance, compute_surface_dice);
distances are in millimetres through the voxel spacing, given in the order of the array's axes.

- HD95 is MONAI's: the larger of the two directed 95th percentiles of the distances between
  the boundary voxels (mask voxels with a face neighbour outside the mask) of the two masks.
- NSD counts boundary voxels (MONAI's default, ``use_subvoxels=False``): the fraction of both
  boundaries that lies within the label's tolerance (in mm, inclusive) of the other boundary.

Convention when a label is absent, nnU-Net's for Dice and the Metrics Reloaded recommendations
(Maier-Hein et al., Nature Methods 2024) for the rest; reported per case as ``status`` so that
the summaries count each kind, and no NaN or inf is ever averaged in:

============================  ======  ======  ==============================================
status                        Dice    NSD     HD95 (mm)
============================  ======  ======  ==============================================
``both_present``              MONAI   MONAI   MONAI
``both_empty``                None    None    None: nothing to score, so no score (nnU-Net's
                                              Dice is NaN); left out of the means, counted
``reference_empty``           0.0     0.0     the scan's diagonal: the worst case
``prediction_empty``          0.0     0.0     the scan's diagonal: the worst case
============================  ======  ======  ==============================================

A both-empty label scored 1 would lift every mean with the cases that lack the structure; a
missed or spurious one left out of the HD95 would hide the worst errors. The scan's diagonal,
``sqrt(sum((shape * spacing) ** 2))`` of the reference, bounds every distance within the scan.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

# MONAI's surface distances pass an argument MONAI itself has deprecated: a warning per case and
# label on every `resseg evaluate`, about nothing the user can change.
warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)

BOTH_PRESENT = "both_present"
BOTH_EMPTY = "both_empty"
REFERENCE_EMPTY = "reference_empty"
PREDICTION_EMPTY = "prediction_empty"
STATUSES = (BOTH_PRESENT, BOTH_EMPTY, REFERENCE_EMPTY, PREDICTION_EMPTY)


@dataclass(frozen=True)
class LabelScores:
    """The scores of one label on one case; ``status`` says which convention applied, and None
    means not scored (``both_empty``)."""

    status: str
    dice: float | None
    nsd: float | None
    hd95_mm: float | None


NOT_SCORED = LabelScores(BOTH_EMPTY, None, None, None)


def dice_per_label(
    reference: np.ndarray, prediction: np.ndarray, labels: list[int]
) -> dict[int, float | None]:
    """Dice of each foreground label value on one case; None for a value absent from both masks."""
    if not labels:
        return {}
    ref, pred = _one_hot(reference, labels), _one_hot(prediction, labels)
    dice = compute_dice(pred, ref, include_background=True, ignore_empty=False)[0]
    scored = (ref | pred).flatten(2).any(-1)[0]
    return {v: float(d) if s else None for v, d, s in zip(labels, dice, scored, strict=True)}


def volume_ml(mask: np.ndarray, spacing: tuple[float, ...]) -> float:
    return float(mask.sum() * np.prod(spacing) / 1000.0)


def scan_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The worst-case HD95: the diagonal of the scan's extent, no two voxels being further apart."""
    return float(np.sqrt(np.sum((np.asarray(shape) * np.asarray(spacing, dtype=float)) ** 2)))


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
    worst_hd95_mm = scan_diagonal_mm(reference.shape, spacing)
    scores = {}
    for v in labels:
        if status[v] == BOTH_PRESENT:
            scores[v] = LabelScores(status[v], dice[v], nsd[v], hd95[v])
        elif status[v] == BOTH_EMPTY:
            scores[v] = NOT_SCORED
        else:
            scores[v] = LabelScores(status[v], 0.0, 0.0, worst_hd95_mm)
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
