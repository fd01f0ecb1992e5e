"""``report.html``: one self-contained page that a clinician-researcher reads after an evaluation.

The page holds, from top to bottom:

- the title and the number of cases (no date: the same inputs give the same page, as DVC expects);
- Segmentation: per label, Dice, NSD and HD95 (mm) as mean [95% bootstrap interval], median and
  how many cases were scored or left out (both masks empty), then how many cases fell under each
  convention for an absent structure (``pipeline.evaluate.segmentation``), which says how many
  were left out and how many took the worst-case HD95;
- Detection, per lesion label: CPM, lesion AP, the operating point, the sensitivity at each FP
  rate, case AUROC, AP, sensitivity and specificity, and the counts behind them
  (``pipeline.evaluate.detection``); a metric a cohort cannot define shows as "—" with its reason;
- Per site and per group (where dataset.json gives its cases a site or group): the headline
  metrics of each beside the pooled ones;
- the curves of each lesion label: FROC, lesion precision-recall, case ROC and case precision-recall;
- QC pictures of the best, median and worst case: axial, coronal and sagittal slices through the
  largest lesion, reference contours in green and prediction contours in red;
- the per-case table (``per_case.csv``).

The page opens offline: no link to anything outside it, inline CSS, pictures as base64 PNG data
URIs drawn by matplotlib's Agg renderer through ``matplotlib.figure.Figure`` (no pyplot, so no
GUI backend and no global state).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation
from scipy import ndimage

from pipeline.evaluate.detection import FULL_CONNECTIVITY
from pipeline.evaluate.segmentation import BOTH_EMPTY, BOTH_PRESENT, PREDICTION_EMPTY, REFERENCE_EMPTY
from pipeline.io import atomic_output

DASH = "—"
QC_RANKS = ("best", "median", "worst")
QC_FIGSIZE_IN = (9.0, 3.0)
CURVE_FIGSIZE_IN = (3.0, 2.7)
DPI = 80  # small pictures keep a report of a few cases at a few MB
REFERENCE_COLOUR = "lime"
PREDICTION_COLOUR = "red"
FOCUS_LINE_WIDTH = 2.0
OTHER_LINE_WIDTH = 0.8
# FROC x axis: FPs per scan on a log2 scale, a rate below or above it drawn at its edge.
# metrics.json's key of per-subgroup metrics, and the heading of their table.
SUBGROUP_HEADINGS = {"sites": "Per site", "groups": "Per group"}
FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
FROC_X_LIMITS = (1 / 16, 16.0)
STATUS_COLUMNS = {
    BOTH_PRESENT: "both present",
    BOTH_EMPTY: "both empty (not scored)",
    REFERENCE_EMPTY: "reference empty (spurious: worst-case HD95)",
    PREDICTION_EMPTY: "prediction empty (missed: worst-case HD95)",
}
STATUS_NOTE = (
    "Cases per label under each convention for an absent structure, nnU-Net's and Metrics "
    "Reloaded's: a label absent from both masks is not scored and is left out of that label's means; "
    "a missed or spurious one scores Dice 0, NSD 0 and HD95 the scan's diagonal in mm, the worst case."
)
# Each view: the RAS axis it cuts and the letters at its left, right, top and bottom edges.
# Slices are shown from the feet (axial) and from the front (coronal), radiologically, and the
# sagittal view faces left, as a radiology workstation shows them.
VIEWS = {
    "axial": (2, ("R", "L", "A", "P")),
    "coronal": (1, ("R", "L", "S", "I")),
    "sagittal": (0, ("A", "P", "S", "I")),
}
CONVENTION = (
    "Radiological convention: the patient's right on the image's left; axial seen from the feet "
    "with anterior up, coronal seen from the front, sagittal with anterior on the left. "
    "Green: reference, red: prediction; thick lines: the focus label."
)
CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }
th { background: #f2f2f2; }
.scroll { overflow-x: auto; }
.row { display: flex; flex-wrap: wrap; gap: 0.5em; }
figure { margin: 0 0 1em; }
figcaption { font-size: 0.9em; }
.note { color: #555; font-size: 0.85em; }
"""


@dataclass(frozen=True)
class QCCase:
    case: str  # case id
    rank: str  # "best", "median" or "worst"
    score_text: str  # e.g. "mean Dice 0.912" (already formatted by the caller)
    image: np.ndarray  # 3D float image, indexed (x, y, z) as stored in its NIfTI file
    reference: np.ndarray  # 3D integer label map, same shape
    prediction: np.ndarray  # 3D integer label map, same shape
    affine: np.ndarray  # 4x4 voxel -> RAS mm affine shared by the three arrays
    focus_label: int  # label value whose largest lesion the slices go through


def select_qc_cases(case_scores: Mapping[str, float | None]) -> list[tuple[str, str]]:
    """[("best", case), ("median", case), ("worst", case)] by score (higher is better).

    Cases are ranked by score, descending, tied scores by case name; the median is the middle of
    that ranking (the better of the two middle cases for an even count). None scores are left out
    and a case appears once, so fewer than three scored cases give fewer entries.
    """
    ranking = sorted(
        (case for case, score in case_scores.items() if score is not None), key=lambda c: (-case_scores[c], c)
    )
    if not ranking:
        return []
    rank_of: dict[str, str] = {}  # the first rank a case takes, in the order of QC_RANKS
    for rank, case in zip(QC_RANKS, (ranking[0], ranking[(len(ranking) - 1) // 2], ranking[-1]), strict=True):
        rank_of.setdefault(case, rank)
    return [(rank, case) for case, rank in rank_of.items()]


def slice_centre(reference: np.ndarray, prediction: np.ndarray, focus_label: int) -> tuple[int, int, int]:
    """Voxel index the QC slices go through.

    The centre of the largest 26-connected component of ``reference == focus_label``; if the
    reference has none, of ``prediction == focus_label``; if neither, of any foreground
    (``reference > 0``, then ``prediction > 0``); else the volume's centre. The centre is the
    component's voxel nearest its centre of mass, so that the slices cut a curved lesion too.
    """
    for mask in (reference == focus_label, prediction == focus_label, reference > 0, prediction > 0):
        if mask.any():
            return _largest_component_centre(mask)
    return tuple(n // 2 for n in reference.shape)


def to_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``array`` reoriented to the closest canonical orientation: index increase = R, A, S."""
    return apply_orientation(array, io_orientation(affine))


def ras_spacing(affine: np.ndarray, shape: Sequence[int]) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the axes of ``to_ras(array, affine)`` for an array of ``shape``."""
    ras_affine = affine @ inv_ornt_aff(io_orientation(affine), shape)
    return tuple(float(s) for s in np.linalg.norm(ras_affine[:3, :3], axis=0))


def orthogonal_views(volume: np.ndarray, centre: Sequence[int]) -> dict[str, np.ndarray]:
    """Axial, coronal and sagittal slices of a RAS-ordered volume through ``centre``, as pictures
    (row 0 at the top) in the convention of ``VIEWS``.

    Once the cut axis is taken out, the two axes left (in RAS order) both run from high index at
    the picture's left and top to low index at its right and bottom, the later axis down the rows.
    """
    return {name: np.flip(np.take(volume, centre[axis], axis=axis)).T for name, (axis, _) in VIEWS.items()}


def _view_aspect(spacing: Sequence[float], cut_axis: int) -> float:
    """Height over width of a pixel of the view cutting ``cut_axis`` (see ``orthogonal_views``)."""
    column_axis, row_axis = sorted({0, 1, 2} - {cut_axis})
    return spacing[row_axis] / spacing[column_axis]


def write_report(
    path: Path,
    *,
    title: str,
    metrics: dict,
    label_names: Mapping[int, str],
    per_case_columns: Sequence[str],
    per_case_rows: Sequence[Sequence[str]],
    curves: Mapping[str, Mapping[str, Mapping[str, list]]],
    qc_cases: Sequence[QCCase],
    reliability: Mapping[str, Mapping[str, list]] | None = None,
) -> None:
    """Write the page described in the module docstring to ``path``, atomically."""
    detection = metrics.get("detection") or {}
    sections = [
        f"<h1>{escape(title)}</h1>",
        f"<p>{metrics['n_cases']} cases</p>",
        _segmentation_section(metrics["segmentation"]),
        _detection_section(detection),
        *(_subgroup_section(metrics, key, heading) for key, heading in SUBGROUP_HEADINGS.items()),
        _curves_section(curves, detection),
        _calibration_section(metrics.get("calibration"), reliability or {}),
        _qc_section(qc_cases, label_names),
        "<h2>Per case</h2>",
        # per_case.csv leaves a score empty where the label is not scored (absent from both masks).
        html_table(per_case_columns, [[cell or DASH for cell in row] for row in per_case_rows]),
    ]
    write_page(path, title, [section for section in sections if section])  # no subgroup: no section


def write_page(path: Path, title: str, sections: Sequence[str]) -> None:
    """A self-contained HTML page of ``sections`` (HTML), written atomically."""
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
    with atomic_output(path) as tmp:
        tmp.write_text(page, encoding="utf-8")


# --- Segmentation and detection tables -------------------------------------------------------------


def _segmentation_section(segmentation: Mapping) -> str:
    metrics = (("dice", "Dice", 3), ("nsd", "NSD", 3), ("hd95_mm", "HD95 (mm)", 2))
    columns = ["label"]
    for _, heading, _ in metrics:
        columns += [f"{heading} mean [95% CI]", f"{heading} median", f"{heading} scored / left out"]
    rows = []
    for label in segmentation["dice"]:
        row = [label]
        for key, _, decimals in metrics:
            summary = segmentation[key][label]
            row += [
                _summary_mean(summary, decimals),
                _number(summary["median"], decimals),
                f"{summary['n']} / {summary['n_excluded']}",
            ]
        rows.append(row)
    counts = segmentation.get("cases", {})
    count_rows = [
        [label, *(str(by_status.get(s, 0)) for s in STATUS_COLUMNS)] for label, by_status in counts.items()
    ]
    return (
        "<h2>Segmentation</h2>\n"
        + html_table(columns, rows)
        + f'<p class="note">{escape(STATUS_NOTE)}</p>\n'
        + html_table(["label", *STATUS_COLUMNS.values()], count_rows)
    )


def _detection_section(detection: Mapping[str, Mapping]) -> str:
    if not detection:
        return "<h2>Detection</h2>\n<p>No detection metrics in this evaluation.</p>"
    parts = ["<h2>Detection</h2>"]
    for label, metrics in detection.items():
        parts += [f"<h3>{escape(label)}</h3>", html_table(["metric", "value"], _detection_rows(metrics))]
    return "\n".join(parts)


def _detection_rows(metrics: Mapping) -> list[list[str]]:
    lesion, case = metrics["lesion"], metrics["case"]
    at = f"at threshold {metrics['operating_threshold']:g}"
    return [
        ["cases (with a reference lesion)", f"{metrics['n_cases']} ({metrics['n_positive_cases']})"],
        ["reference lesions / candidates", f"{metrics['n_reference_lesions']} / {metrics['n_candidates']}"],
        ["CPM [95% CI]", _estimate(lesion["cpm"])],
        ["lesion AP [95% CI]", _estimate(lesion["ap"])],
        [f"lesion sensitivity {at}", _estimate(lesion["sensitivity"])],
        [f"lesion precision {at}", _estimate(lesion["precision"])],
        [f"lesion F1 {at}", _estimate(lesion["f1"])],
        [
            f"FPs per scan {at}",
            f"{lesion['fp_per_scan']:.2f} (TP {lesion['tp']}, FP {lesion['fp']}, FN {lesion['fn']})",
        ],
        [
            "sensitivity at FPs per scan",
            _sensitivities_at_rates(lesion["sensitivity_at_fp_per_scan"], lesion["cpm"]),
        ],
        ["case score", str(case["score"])],
        ["case AUROC [95% CI]", _estimate(case["auroc"])],
        ["case AP", _estimate(case["ap"])],
        [f"case sensitivity {at}", _estimate(case["sensitivity"])],
        [f"case specificity {at}", _estimate(case["specificity"])],
    ]


def _sensitivities_at_rates(sensitivities: Mapping[str, float], cpm: Mapping) -> str:
    # Empty exactly when CPM is undefined (no reference lesion), whose reason then applies.
    if not sensitivities:
        return _undefined(cpm["reason"])
    return ", ".join(
        f"{Fraction(float(rate)).limit_denominator(8)}: {value:.3f}" for rate, value in sensitivities.items()
    )


def _estimate(estimate: Mapping, decimals: int = 3) -> str:
    """'0.812 [0.700, 0.900]', with the interval when there is one, or '— (reason)'."""
    if estimate["value"] is None:
        return _undefined(estimate["reason"])
    text = _number(estimate["value"], decimals)
    if "ci95_low" in estimate:
        text += f" [{_number(estimate['ci95_low'], decimals)}, {_number(estimate['ci95_high'], decimals)}]"
        if estimate["n_resamples_undefined"]:
            text += f" ({estimate['n_resamples_undefined']} of {estimate['n_resamples']} resamples undefined)"
    return text


def _summary_mean(summary: Mapping, decimals: int) -> str:
    if summary["mean"] is None:
        return _undefined(f"not scored: both masks empty in all {summary['n_excluded']} cases")
    low, high = _number(summary["ci95_low"], decimals), _number(summary["ci95_high"], decimals)
    return f"{_number(summary['mean'], decimals)} [{low}, {high}]"


def _undefined(reason: str | None) -> str:
    return f"{DASH} ({reason})" if reason else DASH


def _number(value: float | None, decimals: int) -> str:
    return DASH if value is None else f"{value:.{decimals}f}"


def _subgroup_section(metrics: Mapping, key: str, heading: str) -> str:
    """The headline metrics of each site (or group) beside the pooled ones; empty when the
    cohort gives none."""
    if key not in metrics:
        return ""
    columns = {"all cases": metrics, **metrics[key]}
    rows = [["cases", *(str(m["n_cases"]) for m in columns.values())]]
    for metric, name, decimals in (("dice", "Dice", 3), ("nsd", "NSD", 3), ("hd95_mm", "HD95 (mm)", 2)):
        for label in metrics["segmentation"][metric]:
            rows.append(
                [f"{name} {label}"]
                + [_summary_mean(m["segmentation"][metric][label], decimals) for m in columns.values()]
            )
    for label in metrics.get("detection", {}):
        for level, metric, name in (
            ("lesion", "cpm", "CPM"),
            ("lesion", "ap", "lesion AP"),
            ("case", "auroc", "case AUROC"),
        ):
            rows.append(
                [f"{name} {label}"]
                + [_estimate(m["detection"][label][level][metric]) for m in columns.values()]
            )
    return f"<h2>{escape(heading)}</h2>\n" + html_table(["metric", *columns], rows)


# --- Curves ----------------------------------------------------------------------------------------


def _curves_section(curves: Mapping[str, Mapping[str, Mapping[str, list]]], detection: Mapping) -> str:
    parts = ["<h2>Detection curves</h2>"]
    if not curves:
        parts.append("<p>No detection curves in this evaluation.</p>")
    for label, label_curves in curves.items():
        metrics = detection.get(label)
        pictures = [
            _froc_figure(label_curves["froc"], metrics),
            _lesion_pr_figure(label_curves["lesion_pr"], metrics),
            _roc_figure(label_curves["roc"], metrics),
            _case_pr_figure(label_curves["case_pr"], metrics),
        ]
        images = "".join(
            html_image(png_data_uri(fig), f"{label}: {fig.axes[0].get_title()}") for fig in pictures
        )
        parts += [f"<h3>{escape(label)}</h3>", f'<div class="row">{images}</div>']
    return "\n".join(parts)


def _calibration_section(calibration: Mapping | None, reliability: Mapping[str, Mapping[str, list]]) -> str:
    """Expected calibration error per label before and after the model's temperature, and each
    label's reliability diagram (a calibrated model lies on the diagonal)."""
    if not calibration:
        return ""
    ece = calibration["ece"]
    rows = [
        [label, _number(ece["before"][label], 4), _number(ece["after"][label], 4)] for label in ece["after"]
    ]
    pictures = "".join(
        html_image(png_data_uri(_reliability_figure(label, bins)), f"{label}: reliability diagram")
        for label, bins in reliability.items()
    )
    return (
        "<h2>Calibration</h2>"
        f"<p>Temperature {calibration['temperature']:.3f}; expected calibration error over the box around "
        "each case's structures, mean over cases.</p>"
        + html_table(["label", "ECE before", "ECE after"], rows)
        + f'<div class="row">{pictures}</div>'
    )


def _reliability_figure(label: str, bins: Mapping[str, list]) -> Figure:
    fig = Figure(figsize=(3.6, 3.4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    for when, colour in (("before", "0.45"), ("after", "tab:blue")):
        filled = [b for b in bins[when] if b["count"]]
        ax.plot(
            [b["mean_confidence"] for b in filled],
            [b["frequency"] for b in filled],
            "o-",
            color=colour,
            label=when,
        )
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability", ylabel="observed frequency")
    ax.set_title(f"{label}: reliability", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def _froc_figure(curve: Mapping[str, list], metrics: Mapping | None) -> Figure:
    cpm = _lookup(metrics, "lesion", "cpm")
    fig, ax = _curve_axes("FROC", cpm, "CPM", "FPs per scan", "sensitivity")
    ax.set_xscale("log", base=2)
    ax.set_xlim(*FROC_X_LIMITS)
    ax.set_xticks(FROC_RATES, [str(Fraction(r)) for r in FROC_RATES])
    ax.minorticks_off()
    if not curve["fps_per_scan"]:
        return _mark_undefined(fig, ax, cpm)
    # A step curve: the sensitivity at a rate is that of the lowest threshold within it, so it is
    # 0 left of the first point and stays at the last point's value to the right. Rates of 0 FPs
    # (off a log axis) start at the left edge.
    fps = np.maximum(curve["fps_per_scan"], FROC_X_LIMITS[0])
    xs = [FROC_X_LIMITS[0], *fps, max(FROC_X_LIMITS[1], fps[-1])]
    ys = [0.0, *curve["sensitivity"], curve["sensitivity"][-1]]
    ax.step(xs, ys, where="post")
    return fig


def _lesion_pr_figure(curve: Mapping[str, list], metrics: Mapping | None) -> Figure:
    ap = _lookup(metrics, "lesion", "ap")
    fig, ax = _curve_axes("lesion PR", ap, "AP", "recall (lesions)", "precision")
    if not curve["recall"]:
        return _mark_undefined(fig, ax, ap)
    # Points go by falling threshold, so rising recall; each precision holds over the recall step
    # up to its point, from recall 0 on: the area under these steps is the lesion AP.
    ax.step([0.0, *curve["recall"]], [curve["precision"][0], *curve["precision"]], where="pre")
    return fig


def _roc_figure(curve: Mapping[str, list], metrics: Mapping | None) -> Figure:
    auroc = _lookup(metrics, "case", "auroc")
    fig, ax = _curve_axes("case ROC", auroc, "AUROC", "false-positive rate", "true-positive rate")
    if not curve["fpr"]:
        return _mark_undefined(fig, ax, auroc)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)  # chance
    ax.plot(curve["fpr"], curve["tpr"])
    return fig


def _case_pr_figure(curve: Mapping[str, list], metrics: Mapping | None) -> Figure:
    ap = _lookup(metrics, "case", "ap")
    fig, ax = _curve_axes("case PR", ap, "AP", "recall (cases)", "precision")
    if not curve["recall"]:
        return _mark_undefined(fig, ax, ap)
    # scikit-learn's points go by falling recall; drawn as its PrecisionRecallDisplay draws them.
    ax.step(curve["recall"], curve["precision"], where="post")
    return fig


def _curve_axes(name: str, estimate: Mapping | None, short: str, xlabel: str, ylabel: str):
    fig = Figure(figsize=CURVE_FIGSIZE_IN, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    value = estimate["value"] if estimate else None
    ax.set_title(name if value is None else f"{name} — {short} {value:.3f}", fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    # A margin round [0, 1], so that a curve along an edge stays clear of the frame.
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.05)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    return fig, ax


def _mark_undefined(fig: Figure, ax, estimate: Mapping | None) -> Figure:
    reason = (estimate or {}).get("reason") or "no data"
    ax.text(0.5, 0.5, f"undefined: {reason}", transform=ax.transAxes, ha="center", va="center", fontsize=9)
    return fig


def _lookup(metrics: Mapping | None, level: str, key: str) -> Mapping | None:
    """``metrics[level][key]``, or None when the detection metrics of a label are missing."""
    return metrics[level][key] if metrics else None


# --- QC pictures -----------------------------------------------------------------------------------


def _qc_section(qc_cases: Sequence[QCCase], label_names: Mapping[int, str]) -> str:
    parts = ["<h2>QC</h2>"]
    if not qc_cases:
        parts.append("<p>No QC case: no case has a score.</p>")
    for qc in qc_cases:
        caption = f"{qc.rank}: {qc.case} — {qc.score_text}"
        focus = _label_name(label_names, qc.focus_label)
        note = (
            f"Slices through the largest {focus} region of the reference (else of the prediction, "
            f"else of any label). {CONVENTION}"
        )
        picture = html_image(png_data_uri(_qc_figure(qc, label_names)), caption)
        parts.append(
            f'<figure>{picture}<figcaption>{escape(caption)}<br><span class="note">{escape(note)}</span>'
            "</figcaption></figure>"
        )
    return "\n".join(parts)


def _qc_figure(qc: QCCase, label_names: Mapping[int, str]) -> Figure:
    image, reference, prediction = (to_ras(a, qc.affine) for a in (qc.image, qc.reference, qc.prediction))
    spacing = ras_spacing(qc.affine, qc.image.shape)
    centre = slice_centre(reference, prediction, qc.focus_label)
    low, high = np.percentile(image, [1, 99])
    labels = [int(v) for v in np.union1d(np.unique(reference), np.unique(prediction)) if v > 0]
    views = {
        name: orthogonal_views(a, centre)
        for name, a in (("image", image), ("ref", reference), ("pred", prediction))
    }

    fig = Figure(figsize=QC_FIGSIZE_IN, dpi=DPI, layout="constrained")
    for ax, (view, (cut_axis, edges)) in zip(fig.subplots(1, 3), VIEWS.items(), strict=True):
        ax.imshow(
            views["image"][view],
            cmap="gray",
            vmin=low,
            vmax=high,
            interpolation="nearest",
            aspect=_view_aspect(spacing, cut_axis),
        )
        for label in labels:
            width = FOCUS_LINE_WIDTH if label == qc.focus_label else OTHER_LINE_WIDTH
            _contour(ax, views["ref"][view] == label, REFERENCE_COLOUR, width)
            _contour(ax, views["pred"][view] == label, PREDICTION_COLOUR, width)
        _mark_edges(ax, edges)
        ax.set_title(view, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.legend(
        handles=_qc_legend(qc.focus_label, labels, label_names), loc="outside right center", fontsize=8
    )
    return fig


def _contour(ax, mask: np.ndarray, colour: str, width: float) -> None:
    # A mask that is all one value has no boundary; matplotlib would warn instead of drawing nothing.
    if mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=colour, linewidths=width)


def _mark_edges(ax, edges: tuple[str, str, str, str]) -> None:
    left, right, top, bottom = edges
    style = {"transform": ax.transAxes, "color": "yellow", "fontsize": 8, "fontweight": "bold"}
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)


def _qc_legend(focus_label: int, labels: Sequence[int], label_names: Mapping[int, str]) -> list[Line2D]:
    focus = _label_name(label_names, focus_label)
    handles = [
        Line2D([], [], color=REFERENCE_COLOUR, linewidth=FOCUS_LINE_WIDTH, label="reference"),
        Line2D([], [], color=PREDICTION_COLOUR, linewidth=FOCUS_LINE_WIDTH, label="prediction"),
        Line2D([], [], color="black", linewidth=FOCUS_LINE_WIDTH, label=f"thick: {focus}"),
    ]
    if any(label != focus_label for label in labels):
        handles.append(Line2D([], [], color="black", linewidth=OTHER_LINE_WIDTH, label="thin: other labels"))
    return handles


def _label_name(label_names: Mapping[int, str], value: int) -> str:
    return label_names.get(value, f"label {value}")


def _largest_component_centre(mask: np.ndarray) -> tuple[int, int, int]:
    components, n = ndimage.label(mask, structure=FULL_CONNECTIVITY)
    largest = components == np.argmax(np.bincount(components.ravel(), minlength=n + 1)[1:]) + 1
    voxels = np.argwhere(largest)
    nearest = voxels[np.argmin(((voxels - voxels.mean(axis=0)) ** 2).sum(axis=1))]
    return tuple(int(i) for i in nearest)


# --- HTML ------------------------------------------------------------------------------------------


def html_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    header = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "\n".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    table = f"<table>\n<thead><tr>{header}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    return f'<div class="scroll">{table}</div>'


def html_image(data_uri: str, alt: str) -> str:
    return f'<img src="{data_uri}" alt="{escape(alt)}">'


def png_data_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def escape(value: str) -> str:
    return html.escape(str(value))
