"""``resseg shift``: how a cohort differs from the one a model was trained on, before retraining
on it or running the model over it.

Every scan of the new cohort (a cohort folder in MSD layout, its training and test images; or any
folder of scans, as ``resseg predict`` reads them) is described as the training cases were
(features.py) and compared with the model's profile, feature by feature:

- the training cases' min, median and max against the new scans';
- the share of new scans outside the feature's range (profile.py), and the two-sample
  Kolmogorov-Smirnov statistic with its p-value (scipy);
- a feature is flagged when at least FLAG_SHARE of the new scans lie outside its range, or the
  KS test rejects equal distributions at FLAG_P_VALUE (with MIN_SCANS_FOR_TEST scans or more);
- with labels (a cohort folder), label volumes and structure counts the same way;
- DICOM: the acquisition attributes of io/dicom.py (never an identifier), counted per value,
  of a folder's series or of a cohort imported from DICOM (its acquisition.json); an attribute
  is flagged when FLAG_SHARE of the scans have a value no training case had, where the training
  cohort was imported from DICOM too.

Outputs: ``shift.json`` (every number above, each scan's score and findings) and an HTML page with
one plot per feature (training against new values, the range shaded), plus a printed table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import ks_2samp

from pipeline.cohort.dataset import load_cohort, read_acquisition
from pipeline.errors import InputDataError, UserError
from pipeline.evaluate.report import escape, html_image, html_table, png_data_uri, write_page
from pipeline.infer.inputs import find_scans
from pipeline.io import Volume, read_volume, write_json
from pipeline.io.dicom import acquisition
from pipeline.io.volumes import check_scan_values
from pipeline.models.model_dir import fold_dirs
from pipeline.review.features import ScanDescription, describe, label_features, stacked
from pipeline.review.profile import FLOOR, PROFILE_JSON, CohortProfile, count_values, widened

FLAG_SHARE = 0.1
FLAG_P_VALUE = 0.01
MIN_SCANS_FOR_TEST = 5


@dataclass(frozen=True)
class NewScan:
    """What the comparison keeps of a scan: its voxels are let go once it is described."""

    name: str
    description: ScanDescription
    label_features: dict | None  # features.label_features, for a case with a label
    acquisition: dict[str, str] | None  # DICOM: io/dicom.py's acquisition attributes


def find_profile(model: str | Path) -> Path:
    """The cohort profile of a model directory, a fold directory, or the fold of a weights.pt or
    Lightning checkpoint (what train.init_from may name)."""
    model = Path(model)
    if not model.exists():
        raise InputDataError(
            f"{model}: not found (a model directory, fold directory, weights.pt or checkpoint)"
        )
    if model.is_file():
        model = model.parent.parent if model.parent.name == "checkpoints" else model.parent
    for folder in fold_dirs(model):
        if (folder / PROFILE_JSON).is_file():
            return folder / PROFILE_JSON
    raise InputDataError(
        f"{model}: no {PROFILE_JSON} in its fold directories; models trained before resseg kept "
        "their cohort's profile have none (retrain, or rerun the preprocess and train stages)"
    )


def run(model: str | Path, cohort: str | Path, out_json: str | Path, report: str | Path | None) -> dict:
    profile = CohortProfile.load(find_profile(model))
    scans, unreadable = _new_scans(Path(cohort), n_channels=len(profile.histograms))
    if not scans:
        raise InputDataError(f"{cohort}: no scan could be read ({len(unreadable)} could not)")
    descriptions = [scan.description for scan in scans]
    ranges = profile.ranges()
    features = {
        name: _compare(profile.features[name], [d.features[name] for d in descriptions], ranges[name])
        for name in profile.features
    }
    labelled = [scan.label_features for scan in scans if scan.label_features is not None]
    labels = {
        name: _compare(training, [case[name] for case in labelled], _label_range(training))
        for name, training in profile.labels.items()
        if labelled and all(name in case for case in labelled)
    }
    compared = _acquisition(scans, profile.acquisition)
    per_scan = []
    for scan, description in zip(scans, descriptions, strict=True):
        shift = profile.check(description)
        per_scan.append(
            {"scan": scan.name, "score": round(shift.score, 3), "findings": [str(f) for f in shift.findings]}
        )
    result = {
        "model": str(model),
        "cohort": str(cohort),
        "n_training_cases": profile.n_cases,
        "n_scans": len(scans),
        "flagged": [name for name, c in {**features, **labels, **compared}.items() if c["flagged"]],
        "features": features,
        "labels": labels,
        "acquisition": compared,
        "scans": per_scan,
        "unreadable": unreadable,
    }
    write_json(Path(out_json), result)
    if report is not None:
        _write_report(Path(report), result, profile, descriptions)
    return result


def write_nothing_to_compare(out_json: str | Path, report: str | Path | None) -> None:
    """The DVC stage's outputs when train.init_from names no model: a first training has no
    earlier cohort to compare with."""
    note = "train.init_from names no model: no earlier training cohort to compare with"
    write_json(Path(out_json), {"model": None, "note": note})
    if report is not None:
        write_page(Path(report), "Cohort shift", [f"<h1>Cohort shift</h1><p>{escape(note)}.</p>"])


def table(result: dict) -> str:
    """What the command prints: one line per flagged feature, then the scans outside a range."""
    lines = [
        f"{result['n_scans']} scans against {result['n_training_cases']} training cases: "
        f"{len(result['flagged'])} feature(s) flagged"
    ]
    comparisons = {**result["features"], **result["labels"]}
    width = max((len(name) for name in comparisons), default=0)
    for name in result["flagged"]:
        if name in result["acquisition"]:
            c = result["acquisition"][name]
            lines.append(f"  {name:<{width}}  training {_counts(c['training'])}  new {_counts(c['new'])}")
            continue
        c = comparisons[name]
        lines.append(
            f"  {name:<{width}}  training {_span(c['training'])}  new {_span(c['new'])}  "
            f"outside {c['outside']}/{result['n_scans']}"
        )
    outside = sum(bool(scan["findings"]) for scan in result["scans"])
    lines.append(
        f"{outside} of {result['n_scans']} scans lie outside a training range (shift.json lists why)"
    )
    lines += [f"not read: {u['reason']}" for u in result["unreadable"]]
    return "\n".join(lines)


def _new_scans(cohort: Path, n_channels: int) -> tuple[list[NewScan], list[dict]]:
    """Each scan read, described and let go, one at a time; a scan that cannot be read is listed
    with its reason, and the others go on."""
    if (cohort / "dataset.json").is_file():
        found = load_cohort(cohort)
        recorded = read_acquisition(cohort)
        readers = [
            (case.name, _case_reader(case, n_channels, found.labels, recorded.get(case.name)))
            for case in found.training + found.test
        ]
        unreadable = []
    else:
        scans, unusable = find_scans(cohort, n_channels, recursive=False, name_by="folder")
        if not scans and not unusable:
            raise InputDataError(f"{cohort}: no scan found (NIfTI, NRRD, MetaImage or DICOM)")
        readers = [(scan.name, _scan_reader(scan, n_channels)) for scan in scans]
        unreadable = [{"scan": u.name, "reason": u.reason} for u in unusable]
    described = []
    for name, read in readers:
        try:
            described.append(read())
        except UserError as err:
            unreadable.append({"scan": name, "reason": str(err)})
    return described, unreadable


def _case_reader(case, n_channels: int, labels: dict[int, str], recorded: dict[str, str] | None):
    def read() -> NewScan:
        image = read_volume(case.image, max_channels=n_channels)
        return NewScan(
            case.name, _described(case.image, image), _label_features(case.label, labels), recorded
        )

    return read


def _scan_reader(scan, n_channels: int):
    def read() -> NewScan:
        recorded = acquisition(scan.series) if scan.series else None
        return NewScan(scan.name, _described(scan.source, stacked(scan.read(n_channels))), None, recorded)

    return read


def _described(path: Path, image: Volume) -> ScanDescription:
    """A scan with NaN voxels or all one value is refused, as resseg predict refuses it: its
    features would be NaN, or say nothing."""
    check_scan_values(path, image)
    return describe(image)


def _label_features(path: Path | None, labels: dict[int, str]) -> dict | None:
    """Compared with the training cohort's by label name (the cohorts' values may differ)."""
    if path is None or not path.is_file():
        return None
    label = read_volume(path)
    return label_features(np.asarray(label.array), label.spacing, labels)


def _label_range(values: list[float]) -> tuple[float, float]:
    """As a size's range: label volumes and counts may differ by 10% of the cohort's median."""
    return widened(values, FLOOR["spacing"] * abs(float(np.median(values))))


def _compare(training: list[float], new: list[float], allowed: tuple[float, float]) -> dict:
    low, high = allowed
    outside = sum(not low <= v <= high for v in new)
    test = ks_2samp(training, new) if min(len(training), len(new)) >= MIN_SCANS_FOR_TEST else None
    share = outside / len(new) if new else 0.0
    return {
        "training": _summary(training),
        "new": _summary(new),
        "range": [low, high],
        "outside": outside,
        "share_outside": share,
        "ks_statistic": None if test is None else float(test.statistic),
        "ks_p_value": None if test is None else float(test.pvalue),
        "flagged": bool(share >= FLAG_SHARE or (test is not None and test.pvalue < FLAG_P_VALUE)),
    }


def _summary(values: list[float]) -> dict:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": float(np.min(values)), "median": float(np.median(values)), "max": float(np.max(values))}


def _acquisition(scans: list[NewScan], training: dict[str, dict[str, int]]) -> dict[str, dict]:
    """Per attribute: the training cohort's and the new scans' values with their counts, and the
    share of new scans whose value no training case had (when the training cohort has a record)."""
    recorded = [scan.acquisition for scan in scans if scan.acquisition is not None]
    compared = {}
    for name, values in count_values(recorded).items():
        seen = training.get(name)
        unseen = sum(n for value, n in values.items() if seen is not None and value not in seen)
        share = unseen / len(recorded) if seen is not None else None
        compared[name] = {
            "training": seen,
            "new": values,
            "share_unseen": share,
            "flagged": share is not None and share >= FLAG_SHARE,
        }
    return compared


def _write_report(path: Path, result: dict, profile: CohortProfile, descriptions) -> None:
    flagged = set(result["flagged"])
    comparisons = {**result["features"], **result["labels"]}
    rows = [
        [
            name,
            _span(c["training"]),
            _span(c["new"]),
            f"{c['range'][0]:.4g} to {c['range'][1]:.4g}",
            f"{c['outside']} of {result['n_scans']}",
            "—" if c["ks_p_value"] is None else f"{c['ks_p_value']:.2g}",
            "yes" if name in flagged else "no",
        ]
        for name, c in comparisons.items()
    ]
    columns = ["feature", "training min / median / max", "new", "range", "outside", "KS p", "flagged"]
    scans = [[s["scan"], f"{s['score']:.2f}", "; ".join(s["findings"]) or "—"] for s in result["scans"]]
    sections = [
        f"<h1>Cohort shift: {escape(result['cohort'])}</h1>",
        f"<p>{result['n_scans']} scans against the {result['n_training_cases']} training cases of "
        f"{escape(result['model'])}. Flagged: {escape(', '.join(result['flagged']) or 'none')}.</p>",
        "<h2>Features</h2>",
        html_table(columns, rows),
        html_image(png_data_uri(_feature_figure(comparisons, profile, descriptions, flagged)), "features"),
        "<h2>Scans</h2>",
        html_table(["scan", "score (1: edge of the range)", "outside the training range"], scans),
    ]
    if result["acquisition"]:
        rows = [
            [
                attribute,
                _counts(c["training"]) if c["training"] is not None else "not recorded",
                _counts(c["new"]),
                "yes" if c["flagged"] else "no",
            ]
            for attribute, c in result["acquisition"].items()
        ]
        columns = ["attribute", "training: value (cases)", "new: value (scans)", "flagged"]
        sections += ["<h2>Acquisition (DICOM)</h2>", html_table(columns, rows)]
    if result["unreadable"]:
        unreadable = [[u["scan"], u["reason"]] for u in result["unreadable"]]
        sections += ["<h2>Scans that could not be read</h2>", html_table(["scan", "reason"], unreadable)]
    write_page(path, f"Cohort shift: {result['cohort']}", sections)


def _feature_figure(comparisons: dict, profile: CohortProfile, descriptions, flagged: set[str]) -> Figure:
    """One strip per feature: the training cases' values (grey) and the new scans' (blue, red when
    flagged), the feature's range shaded."""
    new_values = {name: [d.features[name] for d in descriptions] for name in profile.features}
    panels = [(name, profile.features[name], new_values[name]) for name in profile.features]
    columns = 4
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(3.2 * columns, 1.6 * rows), layout="constrained")
    for index, (name, training, new) in enumerate(panels):
        ax = fig.add_subplot(rows, columns, index + 1)
        low, high = comparisons[name]["range"]
        ax.axvspan(low, high, color="0.92")
        ax.plot(training, np.zeros(len(training)), "o", color="0.45", alpha=0.6, markersize=4)
        ax.plot(new, np.ones(len(new)), "o", color="tab:red" if name in flagged else "tab:blue", alpha=0.6)
        ax.set_yticks([0, 1], ["training", "new"])
        ax.set_ylim(-0.6, 1.6)
        ax.set_title(name, fontsize=9, color="tab:red" if name in flagged else "black")
        ax.tick_params(labelsize=7)
    return fig


def _counts(values: dict[str, int]) -> str:
    return ", ".join(f"{value} ({n})" for value, n in values.items())


def _span(summary: dict) -> str:
    if summary["min"] is None:
        return "—"
    return f"{summary['min']:.4g} / {summary['median']:.4g} / {summary['max']:.4g}"
