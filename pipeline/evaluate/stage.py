"""The evaluate stage: compare a folder of predicted masks with a folder of reference labels.

Cases are matched by file name. Writes to the output folder (schemas in the README):

    metrics.json            aggregates: segmentation per label, detection per lesion label; the
                            same for each site and group that dataset.json gives ("sites", "groups")
    per_case.csv            one row per case: its site and group (where dataset.json gives them),
                            every score, volumes, lesion counts, case score
    curves/<label>/*.csv    FROC, lesion PR, case ROC and case PR of each lesion label (DVC plots)
    report.html             the tables, the curves and QC pictures of the best, median and worst cases
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cohort.dataset import UNSPECIFIED, case_subgroups
from pipeline.config import EvaluateParams
from pipeline.errors import ConfigError, InputDataError
from pipeline.evaluate.calibration import calibration_errors, reliability_bins, undo_temperature
from pipeline.evaluate.case import CaseFiles, CaseResult, evaluate_case
from pipeline.evaluate.detection import case_score, detection_metrics
from pipeline.evaluate.report import QCCase, select_qc_cases, write_report
from pipeline.evaluate.segmentation import NOT_SCORED, PREDICTION_EMPTY, REFERENCE_EMPTY, STATUSES
from pipeline.evaluate.statistics import summarize
from pipeline.io import atomic_output, read_probabilities, read_volume, write_json
from pipeline.io.volumes import case_name, volume_ending

# per_case.csv: these columns for each label, suffixed with its name ("dice_organ") ...
SEGMENTATION_COLUMNS = ("status", "dice", "nsd", "hd95_mm", "reference_ml", "predicted_ml")
# ... and these for each lesion label: reference lesions, candidates, those matched and unmatched
# at the operating threshold, and the case score.
DETECTION_COLUMNS = ("lesions", "candidates", "detected", "false_positives", "case_score")
CURVES = ("froc", "lesion_pr", "roc", "case_pr")
# metrics.json's key for the metrics of each site, or group, that dataset.json gives its cases.
SUBGROUP_METRICS = {"site": "sites", "group": "groups"}

# A label name usable as a folder name: not empty, "." or "..", without separators or NUL.
FOLDER_NAME = re.compile(r"(?!\.\.?$)[^/\\\0]+")


def run(
    params: EvaluateParams,
    labels_dir: str | Path,
    predictions_dir: str | Path,
    out_dir: str | Path,
    dataset_json: str | Path | None = None,
    probabilities_dir: str | Path | None = None,
    images_dir: str | Path | None = None,
    temperature: float = 1.0,
) -> dict:
    """``temperature``: the one the probabilities were calibrated with (the model's), so that the
    calibration error can be reported before and after it."""
    cases = match_cases(Path(labels_dir), Path(predictions_dir), probabilities_dir, images_dir)
    return evaluate_cases(
        params,
        cases,
        out_dir,
        dataset_json,
        title=f"{predictions_dir} against {labels_dir}",
        temperature=temperature,
    )


def match_cases(
    labels_dir: Path,
    predictions_dir: Path,
    probabilities_dir: str | Path | None = None,
    images_dir: str | Path | None = None,
) -> list[CaseFiles]:
    """Every reference label with the prediction of the same file name; its probabilities (same
    name) and image (same name, or nnU-Net's ``<case>_0000``) when those folders are given."""
    if not labels_dir.is_dir():
        raise InputDataError(f"{labels_dir}: not a folder")
    references = sorted(p for p in labels_dir.iterdir() if volume_ending(p))
    if not references:
        raise InputDataError(f"{labels_dir}: no reference label found")
    for folder, what in ((predictions_dir, "prediction"), (probabilities_dir, "probabilities")):
        if folder is None:
            continue
        missing = [p.name for p in references if not (Path(folder) / p.name).is_file()]
        if missing:
            raise InputDataError(f"{folder}: no {what} for {len(missing)} case(s): {', '.join(missing[:5])}")
    return [
        CaseFiles(
            name=case_name(p),
            reference=p,
            prediction=predictions_dir / p.name,
            probabilities=None if probabilities_dir is None else Path(probabilities_dir) / p.name,
            image=None if images_dir is None else _find_image(Path(images_dir), p),
        )
        for p in references
    ]


@dataclass(frozen=True)
class Scored:
    """Every case's scores, with the labels they were scored on and their names."""

    results: list[CaseResult]
    label_values: list[int]
    lesion_values: list[int]
    names: dict[int, str]

    def name(self, value: int) -> str:
        return _name(self.names, value)


def score_cases(params: EvaluateParams, cases: list[CaseFiles], dataset_json: str | Path | None) -> Scored:
    """Each case's segmentation scores and lesion detections, under the labels of ``dataset_json``
    (without it, those found in the masks)."""
    names = _label_names(dataset_json)
    declared = sorted(v for v in names if v != 0) or None
    lesion_values = [
        _label_value("evaluate.detection.lesion_labels", n, names) for n in params.detection.lesion_labels
    ]
    tolerance = params.nsd_tolerance_mm
    if isinstance(tolerance, dict):
        tolerance = {_label_value("evaluate.nsd_tolerance_mm", n, names): t for n, t in tolerance.items()}
    results = [evaluate_case(files, declared, tolerance, lesion_values, params.detection) for files in cases]
    label_values = declared or sorted({v for r in results for v in r.scores})
    results = [_with_absent_labels(r, label_values) for r in results]
    return Scored(results, label_values, lesion_values, names)


def evaluate_cases(
    params: EvaluateParams,
    cases: list[CaseFiles],
    out_dir: str | Path,
    dataset_json: str | Path | None = None,
    title: str = "evaluation",
    temperature: float = 1.0,
) -> dict:
    """Evaluate ``cases`` and write every output of the stage to ``out_dir``; returns metrics.json."""
    scored = score_cases(params, cases, dataset_json)
    metrics, curves = cohort_metrics(params, scored, range(len(cases)))
    subgroups = _subgroups(dataset_json, [files.name for files in cases])
    for key, case_values in subgroups.items():
        metrics[SUBGROUP_METRICS[key]] = {
            value: cohort_metrics(params, scored, [i for i, v in enumerate(case_values) if v == value])[0]
            for value in sorted(set(case_values))
        }
    reliability = {}
    if cases and all(files.probabilities is not None for files in cases):
        metrics["calibration"], reliability = calibration_summary(
            cases, {v: scored.name(v) for v in scored.label_values}, temperature
        )

    out_dir = Path(out_dir)
    columns, rows = _per_case_table(params, scored, subgroups)
    write_json(out_dir / "metrics.json", metrics)
    _write_csv(out_dir / "per_case.csv", columns, rows)
    # The folder is a DVC output, there even when no lesion label is scored.
    (out_dir / "curves").mkdir(exist_ok=True)
    for label, label_curves in curves.items():
        for curve in CURVES:
            data = label_curves[curve]
            _write_csv(
                out_dir / "curves" / label / f"{curve}.csv", list(data), zip(*data.values(), strict=True)
            )
    write_report(
        out_dir / "report.html",
        title=title,
        metrics=metrics,
        label_names={v: scored.name(v) for v in scored.label_values},
        per_case_columns=columns,
        per_case_rows=rows,
        curves=curves,
        reliability=reliability,
        qc_cases=_qc_cases(cases, scored.results, scored.lesion_values or scored.label_values),
    )
    return metrics


def cohort_metrics(params: EvaluateParams, scored: Scored, indices) -> tuple[dict, dict]:
    """The segmentation and detection metrics of the cases at ``indices``, with their intervals,
    and the detection curves of each lesion label."""
    results = [scored.results[i] for i in indices]
    metrics = {
        "n_cases": len(results),
        "segmentation": _segmentation_summary(params, results, scored.label_values, scored.names),
        "detection": {},
    }
    curves = {}
    for value in scored.lesion_values:
        detection = detection_metrics(
            [r.detections[value] for r in results],
            operating_threshold=params.detection.operating_threshold,
            case_score=params.detection.case_score,
            n_resamples=params.bootstrap_resamples,
            seed=params.seed,
        )
        curves[scored.name(value)] = detection.pop("curves")
        metrics["detection"][scored.name(value)] = detection
    return metrics, curves


def _subgroups(dataset_json: str | Path | None, case_names: list[str]) -> dict[str, list[str]]:
    """SUBGROUP_KEY -> the value of each case, in order, for each key dataset.json gives."""
    if dataset_json is None:
        return {}
    given = case_subgroups(Path(dataset_json))
    return {key: [values.get(name, UNSPECIFIED) for name in case_names] for key, values in given.items()}


def calibration_summary(
    cases: list[CaseFiles], label_names: dict[int, str], temperature: float
) -> tuple[dict, dict]:
    """Each label's expected calibration error (evaluate/calibration.py) averaged over the cases,
    of the probabilities as given (``after`` the model's temperature) and as its networks gave
    them (``before``: the temperature undone); and the reliability bins pooled over the cases."""
    errors = {when: {v: [] for v in label_names} for when in ("before", "after")}
    pooled = {when: {v: None for v in label_names} for when in ("before", "after")}
    for files in cases:
        after = read_probabilities(files.probabilities)
        reference = np.asarray(read_volume(files.reference).array)
        for when, probabilities in (("after", after), ("before", undo_temperature(after, temperature))):
            for value, error in calibration_errors(probabilities, reference).items():
                if error is not None and value in label_names:
                    errors[when][value].append(error)
            for value in label_names:
                bins = reliability_bins(probabilities, reference, value)
                pooled[when][value] = _pooled(pooled[when][value], bins)
    summary = {
        "temperature": temperature,
        "ece": {
            when: {
                name: float(np.mean(errors[when][v])) if errors[when][v] else None
                for v, name in label_names.items()
            }
            for when in errors
        },
    }
    reliability = {name: {when: pooled[when][v] for when in pooled} for v, name in label_names.items()}
    return summary, reliability


def _pooled(total: list[dict] | None, bins: list[dict]) -> list[dict]:
    """Reliability bins of several cases as one: counts added, means weighted by them."""
    if total is None:
        return bins
    pooled = []
    for a, b in zip(total, bins, strict=True):
        count = a["count"] + b["count"]
        pooled.append(
            {"low": a["low"], "high": a["high"], "count": count}
            | {
                key: (a[key] or 0) * a["count"] / count + (b[key] or 0) * b["count"] / count
                if count
                else None
                for key in ("mean_confidence", "frequency")
            }
        )
    return pooled


def _segmentation_summary(
    params: EvaluateParams, results: list[CaseResult], label_values: list[int], names: dict[int, str]
) -> dict:
    def summary(metric: str, value: int) -> dict:
        values = [getattr(r.scores[value], metric) for r in results]
        return summarize(values, n_resamples=params.bootstrap_resamples, seed=params.seed)

    segmentation = {
        metric: {_name(names, v): summary(metric, v) for v in label_values}
        for metric in ("dice", "nsd", "hd95_mm")
    }
    # How many cases fell under each convention of segmentation.py, per label; every status is
    # listed, so that a DVC metrics diff finds the same keys in every run.
    segmentation["cases"] = {}
    for v in label_values:
        counts = Counter(r.scores[v].status for r in results)
        segmentation["cases"][_name(names, v)] = {status: counts[status] for status in STATUSES}
        segmentation["hd95_mm"][_name(names, v)]["n_worst_case"] = (
            counts[REFERENCE_EMPTY] + counts[PREDICTION_EMPTY]
        )
    return segmentation


def _with_absent_labels(result: CaseResult, label_values: list[int]) -> CaseResult:
    """Without dataset.json a case is scored on the labels it holds; a label found only in other
    cases is absent from both of its masks here."""
    absent = [v for v in label_values if v not in result.scores]
    if not absent:
        return result
    return CaseResult(
        name=result.name,
        scores=result.scores | dict.fromkeys(absent, NOT_SCORED),
        reference_ml=result.reference_ml | dict.fromkeys(absent, 0.0),
        predicted_ml=result.predicted_ml | dict.fromkeys(absent, 0.0),
        detections=result.detections,
    )


def _per_case_table(
    params: EvaluateParams, scored: Scored, subgroups: dict[str, list[str]]
) -> tuple[list[str], list[list[str]]]:
    label_values, lesion_values = scored.label_values, scored.lesion_values
    columns = ["case", *subgroups]
    columns += [f"{column}_{scored.name(v)}" for v in label_values for column in SEGMENTATION_COLUMNS]
    columns += [f"{column}_{scored.name(v)}" for v in lesion_values for column in DETECTION_COLUMNS]
    threshold = params.detection.operating_threshold
    rows = []
    for i, r in enumerate(scored.results):
        row = [r.name, *(values[i] for values in subgroups.values())]
        for v in label_values:
            scores = r.scores[v]
            row += [
                scores.status,
                _cell(scores.dice, 4),
                _cell(scores.nsd, 4),
                _cell(scores.hd95_mm, 2),
                f"{r.reference_ml[v]:.3f}",
                f"{r.predicted_ml[v]:.3f}",
            ]
        for v in lesion_values:
            case = r.detections[v]
            kept = [c >= threshold for c in case.confidences]
            detected = sum(c is not None and c >= threshold for c in case.reference_confidences)
            false_positives = sum(k and not m for k, m in zip(kept, case.matched, strict=True))
            score = case_score(case, params.detection.case_score)
            row += [
                str(case.n_references),
                str(len(case.confidences)),
                str(detected),
                str(false_positives),
                f"{score:.4f}",
            ]
        rows.append(row)
    return columns, rows


def _qc_cases(cases: list[CaseFiles], results: list[CaseResult], focus_values: list[int]) -> list[QCCase]:
    """The best, median and worst cases by mean Dice over the focus labels (lesion labels when
    there are any), over the labels scored on the case; none without images."""
    if not focus_values or any(files.image is None for files in cases):
        return []
    scores = {}
    for r in results:
        dice = [r.scores[v].dice for v in focus_values if r.scores[v].dice is not None]
        scores[r.name] = float(np.mean(dice)) if dice else None
    files_by_name = {files.name: files for files in cases}
    qc = []
    for rank, name in select_qc_cases(scores):
        files = files_by_name[name]
        image = read_volume(files.image, max_channels=16)
        qc.append(
            QCCase(
                case=name,
                rank=rank,
                score_text=f"mean Dice {scores[name]:.3f}",
                image=image.array if image.array.ndim == 3 else image.array[..., 0],
                reference=np.asarray(read_volume(files.reference).array),
                prediction=np.asarray(read_volume(files.prediction).array),
                affine=image.affine,
                focus_label=focus_values[0],
            )
        )
    return qc


def _cell(value: float | None, decimals: int) -> str:
    """A per_case.csv cell: empty for a label not scored on the case."""
    return "" if value is None else f"{value:.{decimals}f}"


def _find_image(images_dir: Path, label_path: Path) -> Path:
    name, ending = case_name(label_path), volume_ending(label_path)
    for candidate in (images_dir / f"{name}{ending}", images_dir / f"{name}_0000{ending}"):
        if candidate.is_file():
            return candidate
    raise InputDataError(f"{images_dir}: no image for case {name} ({name}{ending} or {name}_0000{ending})")


def _write_csv(path: Path, columns: list[str], rows) -> None:
    with atomic_output(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)


def _label_names(dataset_json: str | Path | None) -> dict[int, str]:
    if dataset_json is None:
        return {}
    try:
        names = {int(v): n for v, n in json.loads(Path(dataset_json).read_text())["labels"].items()}
    except (OSError, ValueError, KeyError) as err:
        raise InputDataError(f"{dataset_json}: cannot read label names ({err})") from None
    # A name becomes a folder of the output (curves/<label>/): "../x" or "a/b" would lead out of it.
    unsafe = [n for n in names.values() if not (isinstance(n, str) and FOLDER_NAME.fullmatch(n))]
    if unsafe:
        raise InputDataError(f"{dataset_json}: label name {unsafe[0]!r} cannot be a folder's name")
    return names


def _label_value(parameter: str, name: str, names: dict[int, str]) -> int:
    """A label given by its name in dataset.json or, without one, as ``label_<value>`` or ``<value>``."""
    by_name = {n: v for v, n in names.items() if v != 0}
    if name in by_name:
        return by_name[name]
    match = re.fullmatch(r"(?:label_)?(\d+)", name)
    if match and not names and int(match[1]) > 0:
        return int(match[1])
    known = ", ".join(by_name) if names else "label_<value> (no dataset.json given)"
    raise ConfigError(f"{parameter}: {name!r} is not a label (labels: {known})")


def _name(names: dict[int, str], value: int) -> str:
    return names.get(value, f"label_{value}")
