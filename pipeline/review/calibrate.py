"""The calibrate stage: what a model learns about itself from its out-of-fold predictions.

Each fold's crossval stage segments the training cases that fold did not train on, exactly as
``resseg predict`` would (before any calibration). From those predictions and their labels:

- a temperature for the fold ensemble's probabilities (evaluate/calibration.py), applied by
  ``resseg predict`` unless told not to: the masks stay the same, the probabilities (and the
  lesion candidates drawn from them) come out as often right as they claim. It is fitted by
  least negative log-likelihood and kept only if it lowers the labels' mean expected
  calibration error on these cases; otherwise the temperature is 1 (``fitted_temperature``
  and ``ece.fitted`` say what it would have done);
- the uncertainty limit: a new scan whose foreground entropy (review/uncertainty.py) lies beyond
  UNCERTAINTY_MARGIN times the 99th percentile of the out-of-fold cases' is flagged for review;
- the expected calibration error per label before and after, on these same cases (where the
  temperature was fitted: the evaluate stage measures it on the test cases);
- with ``calibrate.target_sensitivity`` or ``target_fp_per_scan``, each lesion label's operating
  threshold on the calibrated probabilities, from the out-of-fold FROC (evaluate/detection.py),
  which ``resseg predict`` then counts lesions at.

Written to ``<model>/calibration.json``, beside the fold directories.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.cohort.dataset import load_cohort
from pipeline.config import CalibrateParams, DetectionParams
from pipeline.errors import ConfigError, InputDataError
from pipeline.evaluate.calibration import apply_temperature, calibration_errors, fit_temperature
from pipeline.evaluate.detection import extract_candidates, froc, match_lesions, reference_lesions
from pipeline.infer.outputs import PROBABILITIES_FOLDER
from pipeline.io import read_probabilities, read_volume, write_json
from pipeline.review.uncertainty import foreground_entropy

UNCERTAINTY_MARGIN = 1.25
# Saved probabilities are uint16 steps of 1/65535: a class stored as 0 had a probability below
# one step, not none, and its log-likelihood is taken at half a step.
STORED_FLOOR = 0.5 / 65535


def run(
    params: CalibrateParams,
    detection: DetectionParams,
    crossval_dirs: list[Path],
    cohort_dir: str | Path,
    out_path: str | Path,
) -> dict:
    cohort = load_cohort(cohort_dir)
    labels = {case.name: case.label for case in cohort.training}
    files = _out_of_fold_files(crossval_dirs, labels)
    references = [read_volume(labels[name]) for name, _ in files]
    cases = [
        (_read_probabilities(path), np.asarray(reference.array))
        for (_, path), reference in zip(files, references, strict=True)
    ]
    label_names = {value: name for value, name in cohort.labels.items() if value}
    fitted = fit_temperature(cases)
    before = _mean_errors(cases, 1.0, label_names)
    with_fitted = _mean_errors(cases, fitted, label_names)
    # The least negative log-likelihood need not be the least calibration error: a few voxels
    # confidently wrong (a boundary off by one) pull T up while the rest were calibrated. A
    # temperature that raises the out-of-fold error is not applied.
    temperature = fitted if _overall(with_fitted) < _overall(before) else 1.0
    entropies = [foreground_entropy(p, p.argmax(0)) for p, _ in cases]
    entropies = [e for e in entropies if e is not None]
    result = {
        "temperature": temperature,
        "fitted_temperature": fitted,
        "n_cases": len(cases),  # no case names: the model directory holds no patient's
        "uncertainty": {
            "limit": UNCERTAINTY_MARGIN * float(np.percentile(entropies, 99)) if entropies else None,
            "out_of_fold": entropies,
        },
        "ece": {
            "before": before,
            "after": with_fitted if temperature != 1.0 else before,
            "fitted": with_fitted,
        },
        "lesion_thresholds": _lesion_thresholds(
            params, detection, cases, [r.spacing for r in references], temperature, cohort.labels
        ),
    }
    write_json(Path(out_path), result)
    return result


def _lesion_thresholds(
    params: CalibrateParams,
    detection: DetectionParams,
    cases: list[tuple[np.ndarray, np.ndarray]],
    spacings: list,
    temperature: float,
    labels: dict[int, str],
) -> dict[str, dict]:
    """Per lesion label: the operating threshold meeting the target on the out-of-fold FROC, and
    the sensitivity and false positives per scan it gives there; threshold None (with the reason)
    where no threshold meets it."""
    if params.target_sensitivity is None and params.target_fp_per_scan is None:
        return {}
    values = {name: value for value, name in labels.items() if value}
    chosen = {}
    for name in detection.lesion_labels:
        if name not in values:
            raise ConfigError(
                f"evaluate.detection.lesion_labels: {name!r} is not one of the cohort's labels {list(values)}"
            )
        value = values[name]
        detections = [
            match_lesions(
                extract_candidates(
                    apply_temperature(probabilities, temperature)[value],
                    spacing,
                    threshold=detection.candidate_threshold,
                    dynamic=detection.dynamic_threshold,
                    dynamic_fraction=detection.dynamic_fraction,
                    min_volume_mm3=detection.min_candidate_volume_mm3,
                ),
                reference_lesions(label == value, spacing),
                detection.iou_threshold,
            )
            for (probabilities, label), spacing in zip(cases, spacings, strict=True)
        ]
        chosen[name] = _operating_point(froc(detections), params)
    return chosen


def _operating_point(curve: dict[str, list[float]], params: CalibrateParams) -> dict:
    """FROC points run from the highest threshold down, sensitivity and false positives rising."""
    points = list(zip(curve["threshold"], curve["sensitivity"], curve["fps_per_scan"], strict=True))
    if params.target_sensitivity is not None:
        target = {"target_sensitivity": params.target_sensitivity}
        meeting = [p for p in points if p[1] >= params.target_sensitivity][:1]
    else:
        target = {"target_fp_per_scan": params.target_fp_per_scan}
        meeting = [p for p in points if p[2] <= params.target_fp_per_scan][-1:]
    if not meeting:
        reason = "no reference lesion out of fold" if not points else "no threshold meets the target"
        return target | {"threshold": None, "reason": reason}
    threshold, sensitivity, fp_per_scan = meeting[0]
    return target | {"threshold": threshold, "sensitivity": sensitivity, "fp_per_scan": fp_per_scan}


def _out_of_fold_files(crossval_dirs: list[Path], labels: dict[str, Path]) -> list[tuple[str, Path]]:
    """The probability files of each crossval folder; a folder of them (data/crossval, holding
    fold_0, fold_1 ...) stands for every fold in it, so that the DVC stage need not list folds."""
    folders = []
    for folder in map(Path, crossval_dirs):
        holds_folds = not (folder / PROBABILITIES_FOLDER).is_dir() and any(folder.glob("fold_*"))
        folders += sorted(folder.glob("fold_*")) if holds_folds else [folder]
    files = []
    for folder in folders:
        found = sorted((Path(folder) / PROBABILITIES_FOLDER).glob("*.nii.gz"))
        if not found:
            raise InputDataError(f"{folder}: no {PROBABILITIES_FOLDER}/*.nii.gz; is it a crossval output?")
        for path in found:
            name = path.name.removesuffix(".nii.gz")
            if name not in labels:
                raise InputDataError(f"{path}: no training case {name!r} in the cohort to compare with")
            files.append((name, path))
    return files


def _read_probabilities(path: Path) -> np.ndarray:
    """(classes, x, y, z) float32, floored at half a stored step and summing to 1 again."""
    probabilities = np.maximum(read_probabilities(path), STORED_FLOOR)
    return probabilities / probabilities.sum(0, keepdims=True)


def _overall(errors: dict[str, float | None]) -> float:
    """The labels' calibration errors as one figure: their mean, over those defined."""
    defined = [e for e in errors.values() if e is not None]
    return float(np.mean(defined)) if defined else 0.0


def _mean_errors(cases, temperature: float, label_names: dict[int, str]) -> dict[str, float | None]:
    """Each label's expected calibration error, averaged over the cases that define it."""
    per_label = {value: [] for value in label_names}
    for probabilities, label in cases:
        errors = calibration_errors(apply_temperature(probabilities, temperature), label)
        for value, error in errors.items():
            if error is not None and value in per_label:
                per_label[value].append(error)
    return {name: float(np.mean(per_label[v])) if per_label[v] else None for v, name in label_names.items()}
