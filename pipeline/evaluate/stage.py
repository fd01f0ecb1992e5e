"""The evaluate stage: compare a folder of predicted masks with a folder of reference labels.

Writes ``metrics.json`` (aggregates; schema in the README) and ``per_case.csv`` (one row per
case). Cases are matched by file name.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from pipeline.errors import InputDataError
from pipeline.evaluate.segmentation import dice_per_label, volume_ml
from pipeline.io import atomic_output, read_volume, write_json

NIFTI_ENDINGS = (".nii.gz", ".nii")
# Affines of a prediction and its reference may differ by float round-off, not more.
AFFINE_TOLERANCE_MM = 1e-3


def run(
    labels_dir: str | Path,
    predictions_dir: str | Path,
    out_dir: str | Path,
    dataset_json: str | Path | None = None,
) -> dict:
    return evaluate_pairs(_match_cases(Path(labels_dir), Path(predictions_dir)), out_dir, dataset_json)


def evaluate_pairs(
    pairs: list[tuple[str, Path, Path]], out_dir: str | Path, dataset_json: str | Path | None = None
) -> dict:
    """Metrics of (case, reference, prediction) triples, written to ``out_dir``."""
    names = _label_names(dataset_json)
    rows = [_evaluate_case(name, ref, pred, names) for name, ref, pred in pairs]
    label_values = sorted({v for row in rows for v in row["dice"]})
    metrics = {
        "n_cases": len(rows),
        "segmentation": {
            "dice": {
                _name(names, v): _aggregate(
                    [row["dice"][v] for row in rows], n_empty=sum(row["reference_ml"][v] == 0 for row in rows)
                )
                for v in label_values
            }
        },
    }
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


def _evaluate_case(name: str, reference_path: Path, prediction_path: Path, names: dict[int, str]) -> dict:
    reference, prediction = read_volume(reference_path), read_volume(prediction_path)
    if reference.array.shape != prediction.array.shape or not np.allclose(
        reference.affine, prediction.affine, atol=AFFINE_TOLERANCE_MM
    ):
        raise InputDataError(f"{prediction_path}: geometry differs from its reference {reference_path}")
    ref, pred = np.asarray(reference.array), np.asarray(prediction.array)
    values = sorted(set(names) - {0}) if names else sorted(set(np.unique(ref)) - {0})
    return {
        "case": name,
        "dice": dice_per_label(ref, pred, values),
        "reference_ml": {v: volume_ml(ref == v, reference.spacing) for v in values},
        "predicted_ml": {v: volume_ml(pred == v, reference.spacing) for v in values},
    }


def _aggregate(values: list[float], n_empty: int) -> dict:
    array = np.array(values)
    return {
        "mean": float(array.mean()),
        "median": float(np.median(array)),
        "std": float(array.std()),
        "n_cases": len(values),
        "n_empty_reference": int(n_empty),
    }


def _write_per_case(path: Path, rows: list[dict], label_values: list[int], names: dict[int, str]) -> None:
    columns = ["case"]
    for v in label_values:
        label = _name(names, v)
        columns += [f"dice_{label}", f"reference_ml_{label}", f"predicted_ml_{label}"]
    with atomic_output(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            cells = [row["case"]]
            for v in label_values:
                cells += [
                    f"{row['dice'][v]:.4f}",
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
