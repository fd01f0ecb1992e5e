"""Evaluate one case: its segmentation scores per label and its lesion detections per lesion label."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import DetectionParams
from pipeline.errors import ConfigError, InputDataError
from pipeline.evaluate.detection import CaseDetections, extract_candidates, match_lesions, reference_lesions
from pipeline.evaluate.segmentation import LabelScores, label_scores, volume_ml
from pipeline.io import Volume, read_probability, read_volume

# Affines of a prediction and its reference may differ by float round-off, not more.
AFFINE_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case; ``probabilities`` (class c in volume c of the 4th axis) and ``image``
    are optional."""

    name: str
    reference: Path
    prediction: Path
    probabilities: Path | None = None
    image: Path | None = None


@dataclass(frozen=True)
class CaseResult:
    name: str
    scores: dict[int, LabelScores]  # per label value
    reference_ml: dict[int, float]
    predicted_ml: dict[int, float]
    detections: dict[int, CaseDetections]  # per lesion label value


def evaluate_case(
    files: CaseFiles,
    label_values: list[int] | None,
    nsd_tolerance_mm: Mapping[int, float] | float,
    lesion_values: list[int],
    detection: DetectionParams,
) -> CaseResult:
    """Scores of ``label_values`` (None: every value in the reference or the prediction) and the
    detections of ``lesion_values``.

    Candidates come from the lesion label's probability map when the case has one; otherwise
    from the predicted mask itself, each candidate with confidence 1.
    """
    reference, prediction = read_volume(files.reference), read_volume(files.prediction)
    _check_same_geometry(files.prediction, prediction, files.reference, reference)
    ref, pred = np.asarray(reference.array), np.asarray(prediction.array)
    for path, mask in ((files.reference, ref), (files.prediction, pred)):
        _check_label_values(path, mask, label_values)
    spacing = reference.spacing
    if label_values is None:
        label_values = sorted((set(np.unique(ref)) | set(np.unique(pred))) - {0})
    if isinstance(nsd_tolerance_mm, Mapping):
        missing = [v for v in label_values if v not in nsd_tolerance_mm]
        if missing:
            raise ConfigError(f"evaluate.nsd_tolerance_mm: no tolerance for label value(s) {missing}")
        nsd_tolerance_mm = {v: nsd_tolerance_mm[v] for v in label_values}
    detections = {}
    for value in lesion_values:
        probability = _lesion_probability(files, value, pred, reference)
        candidates = extract_candidates(
            probability,
            spacing,
            threshold=detection.candidate_threshold,
            dynamic=detection.dynamic_threshold,
            dynamic_fraction=detection.dynamic_fraction,
            min_volume_mm3=detection.min_candidate_volume_mm3,
        )
        detections[value] = match_lesions(
            candidates, reference_lesions(ref == value, spacing), detection.iou_threshold
        )
    return CaseResult(
        name=files.name,
        scores=label_scores(ref, pred, label_values, spacing, nsd_tolerance_mm),
        reference_ml={v: volume_ml(ref == v, spacing) for v in label_values},
        predicted_ml={v: volume_ml(pred == v, spacing) for v in label_values},
        detections=detections,
    )


def _lesion_probability(
    files: CaseFiles, value: int, prediction: np.ndarray, reference: Volume
) -> np.ndarray:
    if files.probabilities is None:
        return (prediction == value).astype(np.float32)
    probability = read_probability(files.probabilities, value)
    _check_same_geometry(files.probabilities, probability, files.reference, reference)
    return probability.array


def _check_label_values(path: Path, mask: np.ndarray, declared: list[int] | None) -> None:
    """A mask holds whole label values from 0, each declared in dataset.json where one is given:
    a 0.5 or a NaN (a probability map, a mask resampled linearly) or an undeclared 7 or 255 would
    otherwise be scored, or dropped, as if it meant something."""
    values = np.unique(mask)  # NaNs collapse into one
    odd = [v for v in values.tolist() if not (math.isfinite(v) and v >= 0 and v == int(v))]
    if odd:
        raise InputDataError(f"{path}: holds {odd[:3]}, not label values (whole numbers from 0)")
    undeclared = sorted({int(v) for v in values} - {0, *(declared or [])})
    if declared is not None and undeclared:
        raise InputDataError(
            f"{path}: holds label value(s) {undeclared} that dataset.json does not declare ({declared})"
        )


def _check_same_geometry(path: Path, volume: Volume, reference_path: Path, reference: Volume) -> None:
    if volume.shape != reference.shape:
        difference = f"shape {volume.shape} vs {reference.shape}"
    elif not np.allclose(volume.affine, reference.affine, atol=AFFINE_TOLERANCE_MM):
        difference = "same shape, different affine (spacing, origin or direction)"
    else:
        return
    raise InputDataError(f"{path}: geometry differs from its reference {reference_path}: {difference}")
