"""The calibrate stage: what a model learns about itself from its out-of-fold predictions.

Each fold's crossval stage segments the training cases that fold did not train on, exactly as
``resseg predict`` would (before any calibration). From those predictions and their labels:

- a temperature for the fold ensemble's probabilities (evaluate/calibration.py), applied by
  ``resseg predict`` unless told not to: the masks stay the same, the probabilities (and the
  lesion candidates drawn from them) come out as often right as they claim;
- the uncertainty limit: a new scan whose foreground entropy (review/uncertainty.py) lies beyond
  UNCERTAINTY_MARGIN times the 99th percentile of the out-of-fold cases' is flagged for review;
- the expected calibration error per label before and after, on these same cases (where the
  temperature was fitted: the evaluate stage measures it on the test cases).

Written to ``<model>/calibration.json``, beside the fold directories.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.cohort.dataset import load_cohort
from pipeline.errors import InputDataError
from pipeline.evaluate.calibration import apply_temperature, calibration_errors, fit_temperature
from pipeline.infer.outputs import PROBABILITIES_FOLDER
from pipeline.io import read_probabilities, read_volume, write_json
from pipeline.review.uncertainty import foreground_entropy

UNCERTAINTY_MARGIN = 1.25
# Saved probabilities are uint16 steps of 1/65535: a class stored as 0 had a probability below
# one step, not none, and its log-likelihood is taken at half a step.
STORED_FLOOR = 0.5 / 65535


def run(crossval_dirs: list[Path], cohort_dir: str | Path, out_path: str | Path) -> dict:
    cohort = load_cohort(cohort_dir)
    labels = {case.name: case.label for case in cohort.training}
    files = _out_of_fold_files(crossval_dirs, labels)
    cases = [(_read_probabilities(path), np.asarray(read_volume(labels[name]).array)) for name, path in files]
    temperature = fit_temperature(cases)
    entropies = [foreground_entropy(p, p.argmax(0)) for p, _ in cases]
    entropies = [e for e in entropies if e is not None]
    label_names = {value: name for value, name in cohort.labels.items() if value}
    result = {
        "temperature": temperature,
        "n_cases": len(cases),
        "cases": [name for name, _ in files],
        "uncertainty": {
            "limit": UNCERTAINTY_MARGIN * float(np.percentile(entropies, 99)) if entropies else None,
            "out_of_fold": entropies,
        },
        "ece": {
            "before": _mean_errors(cases, 1.0, label_names),
            "after": _mean_errors(cases, temperature, label_names),
        },
    }
    write_json(Path(out_path), result)
    return result


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


def _mean_errors(cases, temperature: float, label_names: dict[int, str]) -> dict[str, float | None]:
    """Each label's expected calibration error, averaged over the cases that define it."""
    per_label = {value: [] for value in label_names}
    for probabilities, label in cases:
        errors = calibration_errors(apply_temperature(probabilities, temperature), label)
        for value, error in errors.items():
            if error is not None and value in per_label:
                per_label[value].append(error)
    return {name: float(np.mean(per_label[v])) if per_label[v] else None for v, name in label_names.items()}
