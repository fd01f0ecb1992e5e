"""The evaluate stage: compare a folder of predicted masks with a folder of reference labels.

Writes ``metrics.json`` (aggregates; schema in the README) and ``per_case.csv`` (one row per
case). Cases are matched by file name.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.config import EvaluateParams
from pipeline.errors import InputDataError
from pipeline.evaluate.segmentation import label_scores, volume_ml
from pipeline.evaluate.statistics import summarize
from pipeline.io import atomic_output, read_volume, write_json

NIFTI_ENDINGS = (".nii.gz", ".nii")
# Affines of a prediction and its reference may differ by float round-off, not more.
AFFINE_TOLERANCE_MM = 1e-3
# per_case.csv: these columns for each label, suffixed with its name ("dice_organ").
PER_CASE_COLUMNS = ("status", "dice", "nsd", "hd95_mm", "reference_ml", "predicted_ml")


def run(
    params: EvaluateParams,
    labels_dir: str | Path,
    predictions_dir: str | Path,
    out_dir: str | Path,
    dataset_json: str | Path | None = None,
) -> dict:
    pairs = _match_cases(Path(labels_dir), Path(predictions_dir))
    return evaluate_pairs(params, pairs, out_dir, dataset_json)


def evaluate_pairs(
    params: EvaluateParams,
    pairs: list[tuple[str, Path, Path]],
    out_dir: str | Path,
    dataset_json: str | Path | None = None,
) -> dict:
    """Metrics of (case, reference, prediction) triples, written to ``out_dir``."""
    names = _label_names(dataset_json)
    rows = [_evaluate_case(params, name, ref, pred, names) for name, ref, pred in pairs]
    label_values = sorted({v for row in rows for v in row["scores"]})

    def summary(metric: str, value: int) -> dict:
        values = [getattr(row["scores"][value], metric) for row in rows]
        return summarize(values, n_resamples=params.bootstrap_resamples, seed=params.seed)

    segmentation = {
        metric: {_name(names, v): summary(attribute, v) for v in label_values}
        for metric, attribute in (("dice", "dice"), ("nsd", "nsd"), ("hd95_mm", "hd95_mm"))
    }
    # How many cases fell under each convention of segmentation.py, per label.
    segmentation["cases"] = {
        _name(names, v): dict(Counter(row["scores"][v].status for row in rows)) for v in label_values
    }
    metrics = {"n_cases": len(rows), "segmentation": segmentation}
    out_dir = Path(out_dir)
    write_json(out_dir / "metrics.json", metrics)
    _write_per_case(out_dir / "per_case.csv", rows, label_values, names)
    return metrics


def _match_cases(labels_dir: Path, predictions_dir: Path) -> list[tuple[str, Path, Path]]:
    references = sorted(p for p in labels_dir.iterdir() if p.name.endswith(NIFTI_ENDINGS))
    if not references:
        raise InputDataError(f"{labels_dir}: no reference label (.nii, .nii.gz) found")
    missing = [p.name for p in references if not (predictions_dir / p.name).is_file()]
    if missing:
        raise InputDataError(
            f"{predictions_dir}: no prediction for {len(missing)} case(s): {', '.join(missing[:5])}"
        )
    return [(p.name.split(".nii")[0], p, predictions_dir / p.name) for p in references]


def _evaluate_case(
    params: EvaluateParams, name: str, reference_path: Path, prediction_path: Path, names: dict[int, str]
) -> dict:
    reference, prediction = read_volume(reference_path), read_volume(prediction_path)
    if reference.array.shape != prediction.array.shape or not np.allclose(
        reference.affine, prediction.affine, atol=AFFINE_TOLERANCE_MM
    ):
        raise InputDataError(f"{prediction_path}: geometry differs from its reference {reference_path}")
    ref, pred = np.asarray(reference.array), np.asarray(prediction.array)
    values = sorted(set(names) - {0}) if names else sorted(set(np.unique(ref)) - {0})
    return {
        "case": name,
        "scores": label_scores(ref, pred, values, reference.spacing, params.nsd_tolerance_mm),
        "reference_ml": {v: volume_ml(ref == v, reference.spacing) for v in values},
        "predicted_ml": {v: volume_ml(pred == v, reference.spacing) for v in values},
    }


def _write_per_case(path: Path, rows: list[dict], label_values: list[int], names: dict[int, str]) -> None:
    columns = ["case"]
    for v in label_values:
        label = _name(names, v)
        columns += [f"{column}_{label}" for column in PER_CASE_COLUMNS]
    with atomic_output(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            cells = [row["case"]]
            for v in label_values:
                scores = row["scores"][v]
                hd95 = "" if scores.hd95_mm is None else f"{scores.hd95_mm:.2f}"
                cells += [
                    scores.status,
                    f"{scores.dice:.4f}",
                    f"{scores.nsd:.4f}",
                    hd95,
                    f"{row['reference_ml'][v]:.3f}",
                    f"{row['predicted_ml'][v]:.3f}",
                ]
            writer.writerow(cells)


def _label_names(dataset_json: str | Path | None) -> dict[int, str]:
    if dataset_json is None:
        return {}
    try:
        return {int(v): n for v, n in json.loads(Path(dataset_json).read_text())["labels"].items()}
    except (OSError, ValueError, KeyError) as err:
        raise InputDataError(f"{dataset_json}: cannot read label names ({err})") from None


def _name(names: dict[int, str], value: int) -> str:
    return names.get(value, f"label_{value}")
