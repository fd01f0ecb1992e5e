"""The crossval stage: a fold's out-of-fold predictions, and their metrics.

Each trained fold segments the training cases it did not train on (its validation cases),
from the raw scans and back in their own geometry, exactly as ``resseg predict`` would; the
masks are kept for evaluation and scored against the training labels:

    <masks>/<case>.nii.gz                  one mask per validation case of the fold
    <masks>/probabilities/<case>.nii.gz    its class probabilities, for the detection metrics
    <masks>/summary.csv, run.json          as resseg predict writes them
    <report>/...                           the evaluate stage's outputs over those cases
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.cohort.dataset import load_cohort
from pipeline.config import EvaluateParams
from pipeline.errors import ConfigError, InputDataError
from pipeline.evaluate.case import CaseFiles
from pipeline.evaluate.stage import evaluate_cases
from pipeline.infer import batch
from pipeline.infer.inputs import Scan
from pipeline.infer.outputs import PROBABILITIES_FOLDER
from pipeline.infer.predictor import Predictor
from pipeline.io import atomic_directory


def run(
    params: EvaluateParams,
    predictor: Predictor,
    model: dict,
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
    scans = [Scan(case.name, (case.image,), ".nii.gz") for case in cases]
    options = batch.BatchOptions(save_probabilities=True)
    with atomic_directory(masks_dir) as tmp:
        result = batch.predict_scans(predictor, model, scans, [], cohort.root, tmp, options, params.detection)
        if result.failed:
            raise InputDataError(f"{cohort.root}: cases {', '.join(result.failed)} could not be segmented")
    masks_dir = Path(masks_dir)
    files = [
        CaseFiles(
            name=case.name,
            reference=case.label,
            prediction=masks_dir / f"{case.name}.nii.gz",
            probabilities=masks_dir / PROBABILITIES_FOLDER / f"{case.name}.nii.gz",
            image=case.image,
        )
        for case in cases
    ]
    title = f"Cross-validation fold {fold}: out-of-fold predictions"
    return evaluate_cases(params, files, report_dir, cohort.root / "dataset.json", title=title)
