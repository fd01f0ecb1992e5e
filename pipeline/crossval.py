"""The crossval stage: a fold's out-of-fold predictions, and their metrics.

Each trained fold segments the training cases it did not train on (its validation cases),
from the raw scans and back in their own geometry, exactly as ``resseg predict`` would; the
masks are kept for evaluation and scored against the training labels:

    <masks>/<case>.nii.gz       one mask per validation case of the fold
    <report>/metrics.json       the evaluate stage's metrics over those cases
    <report>/per_case.csv
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.cohort.dataset import load_cohort
from pipeline.config import EvaluateParams
from pipeline.errors import ConfigError
from pipeline.evaluate.stage import evaluate_pairs
from pipeline.infer.folder import predict_scans
from pipeline.infer.predictor import Predictor
from pipeline.io import atomic_directory


def run(
    params: EvaluateParams,
    predictor: Predictor,
    cohort_dir: str | Path,
    splits_path: str | Path,
    fold: int,
    masks_dir: str | Path,
    report_dir: str | Path,
) -> dict:
    cohort = load_cohort(cohort_dir)
    folds = json.loads(Path(splits_path).read_text())
    if fold >= len(folds):
        raise ConfigError(f"--fold: {fold} but {splits_path} has folds 0-{len(folds) - 1}")
    validation = set(folds[fold]["val"])
    cases = [case for case in cohort.training if case.name in validation]
    with atomic_directory(masks_dir) as tmp:
        predict_scans(predictor, [case.image for case in cases], tmp)
    pairs = [(case.name, case.label, Path(masks_dir) / case.image.name) for case in cases]
    return evaluate_pairs(params, pairs, report_dir, cohort.root / "dataset.json")
