"""``resseg compare``: may model B replace model A? Both models' predictions of the same cases,
scored against the same references, with paired statistics.

Each case is scored as ``resseg evaluate`` scores it (stage.score_cases: the same conventions for
absent structures, the same detection matching). For every label and metric, the cohort value of
each model is the one ``resseg evaluate`` reports (a mean over the scored cases; AP, CPM and AUROC
over all), and the difference B - A comes with a paired bootstrap interval and a paired
permutation p-value over cases (statistics.paired_difference). Given a margin for a metric, the
verdict is a non-inferiority test on the interval:

    non-inferior   the whole interval is above -margin (below +margin for HD95, where less is better)
    inferior       the whole interval is below -margin (above +margin for HD95)
    inconclusive   the interval straddles the margin, or is undefined

Writes to the output folder:

    compare.json    per label and metric: A, B, B - A, interval, p-value, margin and verdict (a DVC
                    metric: ``labels.<label>.<metric>.difference`` ...)
    compare.csv     the same as a table
    report.html     the table, and each case's Dice under both models
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.config import EvaluateParams
from pipeline.errors import ConfigError
from pipeline.evaluate.case import CaseResult
from pipeline.evaluate.detection import CaseDetections, case_auroc, cpm, lesion_ap
from pipeline.evaluate.report import escape, html_table, write_page
from pipeline.evaluate.segmentation import NOT_SCORED
from pipeline.evaluate.stage import Scored, match_cases, score_cases
from pipeline.evaluate.statistics import Estimate, PairedDifference, paired_difference
from pipeline.io import atomic_output, write_json

# Each metric compared, and whether more is better.
SEGMENTATION_METRICS = {"dice": True, "nsd": True, "hd95_mm": False}
DETECTION_METRICS = {"lesion_ap": True, "cpm": True, "auroc": True}
COLUMNS = (
    "label",
    "metric",
    "a",
    "b",
    "difference",
    "ci95_low",
    "ci95_high",
    "p_value",
    "margin",
    "verdict",
)
NON_INFERIOR, INFERIOR, INCONCLUSIVE = "non-inferior", "inferior", "inconclusive"


def run(
    params: EvaluateParams,
    labels_dir: str | Path,
    predictions: tuple[Path, Path],
    out_dir: str | Path,
    dataset_json: str | Path | None = None,
    probabilities: tuple[Path, Path] | None = None,
    margins: dict[str, float] | None = None,
) -> dict:
    """Compare model A's predictions (``predictions[0]``, the model in use) with model B's."""
    margins = margins or {}
    unknown = sorted(set(margins) - set(SEGMENTATION_METRICS) - set(DETECTION_METRICS))
    if unknown:
        known = ", ".join([*SEGMENTATION_METRICS, *DETECTION_METRICS])
        raise ConfigError(f"--margin: {unknown[0]!r} is not a compared metric ({known})")
    scored = [
        score_cases(
            params,
            match_cases(Path(labels_dir), Path(folder), None if probabilities is None else probabilities[i]),
            dataset_json,
        )
        for i, folder in enumerate(predictions)
    ]
    result = {
        "a": str(predictions[0]),
        "b": str(predictions[1]),
        "n_cases": len(scored[0].results),
        "margins": margins,
        "labels": compare_scores(params, *scored, margins),
    }
    out_dir = Path(out_dir)
    write_json(out_dir / "compare.json", result)
    with atomic_output(out_dir / "compare.csv") as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(_table_rows(result))
    _write_report(out_dir / "report.html", result, scored)
    return result


def compare_scores(
    params: EvaluateParams, a: Scored, b: Scored, margins: dict[str, float]
) -> dict[str, dict[str, dict]]:
    """Label name -> metric -> the comparison; segmentation metrics for every label, detection
    metrics for the lesion labels."""
    compared: dict[str, dict[str, dict]] = {}
    for value in sorted(set(a.label_values) | set(b.label_values)):
        compared[a.name(value)] = {
            metric: _compared(_paired(params, a, b, _mean_score(value, metric)), margins.get(metric), better)
            for metric, better in SEGMENTATION_METRICS.items()
        }
    detection_metrics = {
        "lesion_ap": lesion_ap,
        "cpm": cpm,
        "auroc": lambda cases: case_auroc(cases, params.detection.case_score),
    }
    for value in a.lesion_values:
        compared.setdefault(a.name(value), {}).update(
            {
                metric: _compared(
                    _paired(params, a, b, _detection_estimate(value, estimate)),
                    margins.get(metric),
                    DETECTION_METRICS[metric],
                )
                for metric, estimate in detection_metrics.items()
            }
        )
    return compared


def verdict(low: float | None, high: float | None, margin: float, higher_is_better: bool) -> str:
    """Non-inferiority of B to A at ``margin``, from the interval of B - A."""
    if low is None or high is None:
        return INCONCLUSIVE
    if not higher_is_better:  # HD95: a difference of +margin is as bad as -margin elsewhere
        low, high = -high, -low
    if low > -margin:
        return NON_INFERIOR
    if high < -margin:
        return INFERIOR
    return INCONCLUSIVE


def parse_margins(text: str) -> dict[str, float]:
    """``dice=0.01,auroc=0.02``: each metric's non-inferiority margin, in its own unit."""
    margins = {}
    for item in text.split(","):
        metric, _, value = item.partition("=")
        try:
            margin = float(value)
        except ValueError:
            margin = math.nan
        if not metric.strip() or not (math.isfinite(margin) and margin >= 0):
            raise ConfigError(f"--margin: expected metric=non-negative number, got {item.strip()!r}")
        margins[metric.strip()] = margin
    return margins


def table(result: dict) -> str:
    """compare.json as a table for the terminal."""
    rows = [COLUMNS, *_table_rows(result)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    header = f"B ({result['b']}) against A ({result['a']}) on {result['n_cases']} cases; difference B - A"
    return "\n".join([header, *lines])


def _mean_score(value: int, metric: str) -> Callable[[Sequence[CaseResult]], float | None]:
    """The cohort's mean of a per-case score, over the cases it is defined on (as evaluate's)."""

    def mean(results: Sequence[CaseResult]) -> float | None:
        scores = [getattr(r.scores.get(value, NOT_SCORED), metric) for r in results]
        defined = [s for s in scores if s is not None]
        return sum(defined) / len(defined) if defined else None

    return mean


def _detection_estimate(
    value: int, estimate: Callable[[Sequence[CaseDetections]], Estimate]
) -> Callable[[Sequence[CaseResult]], float | None]:
    """A cohort-level detection metric of a lesion label (None where undefined)."""
    return lambda results: estimate([r.detections[value] for r in results]).value


def _paired(
    params: EvaluateParams, a: Scored, b: Scored, statistic: Callable[[Sequence[CaseResult]], float | None]
) -> PairedDifference:
    return paired_difference(
        statistic, a.results, b.results, n_resamples=params.bootstrap_resamples, seed=params.seed
    )


def _compared(difference: PairedDifference, margin: float | None, higher_is_better: bool) -> dict:
    interval = difference.interval
    return {
        "higher_is_better": higher_is_better,
        **difference.as_json(),
        "margin": margin,
        "verdict": None if margin is None else verdict(interval.low, interval.high, margin, higher_is_better),
    }


def _table_rows(result: dict) -> list[list[str]]:
    """compare.json's comparisons as rows of COLUMNS."""
    return [
        _cells(label, metric, row)
        for label, metrics in result["labels"].items()
        for metric, row in metrics.items()
    ]


def _cells(label: str, metric: str, row: dict) -> list[str]:
    def number(key: str, decimals: int = 4) -> str:
        return "" if row[key] is None else f"{row[key]:.{decimals}f}"

    return [
        label,
        metric,
        number("a"),
        number("b"),
        number("difference"),
        number("ci95_low"),
        number("ci95_high"),
        number("p_value", 3),
        number("margin"),
        row["verdict"] or "",
    ]


def _write_report(path: Path, result: dict, scored: list[Scored]) -> None:
    a, b = scored
    title = f"{result['b']} (B) against {result['a']} (A)"
    per_case_columns = ["case"] + [
        f"Dice {a.name(v)} {model}" for v in a.label_values for model in ("A", "B")
    ]
    per_case_rows = [
        [ra.name]
        + [
            "" if s.dice is None else f"{s.dice:.4f}"
            for v in a.label_values
            for s in (ra.scores.get(v, NOT_SCORED), rb.scores.get(v, NOT_SCORED))
        ]
        for ra, rb in zip(a.results, b.results, strict=True)
    ]
    write_page(
        path,
        title,
        [
            f"<h1>{escape(title)}</h1>",
            f"<p>{result['n_cases']} cases. Difference B - A, with a paired bootstrap 95% interval over "
            "cases and a paired permutation p-value; the verdict tests non-inferiority of B at the "
            "margin given.</p>",
            html_table(COLUMNS, _table_rows(result)),
            "<h2>Per case</h2>",
            html_table(per_case_columns, per_case_rows),
        ],
    )
