"""The card stage: a model card in the model directory, MODEL_CARD.md to read and model_card.json
to compare, from what the pipeline already wrote (no scan is read):

- the model: network, parameter count, plan, labels, and its identity (model_dir.model_sha256);
- the training cohort: from the folds' cohort_profile.json, which holds no case name (summaries
  of spacing, field of view, intensities, noise and label volumes; DICOM acquisition attributes
  counted per value), and the split's case counts per fold (never its names);
- the training parameters and the software they ran with (model.json; for a fold that did not
  record them, the versions installed when the card is written, and the card says so);
- provenance: the DVC hashes (dvc.lock) of the code and data each fold was trained from, and of
  the DVC-tracked data upstream of them;
- out-of-fold (crossval) and test (evaluate) metrics with their 95% intervals, per site where
  metrics.json has them, and the calibration;
- what the team states in params.yaml's ``card`` section (intended use, limitations ...).

Whatever is not given reads "not measured". The card holds no time and no absolute path, so the
same inputs give the same bytes; its identity is the SHA-256 of model_card.json, which ``resseg
predict`` copies into run.json (model_dir.card_sha256).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml

import pipeline
from pipeline.config import CardParams
from pipeline.errors import InputDataError
from pipeline.io import atomic_output
from pipeline.models.model_dir import (
    FOLD_DIR,
    MODEL_CARD_JSON,
    MODEL_CARD_MD,
    MODEL_JSON,
    load_description,
    model_sha256,
    software_versions,
)
from pipeline.models.model_dir import fold_dirs as find_fold_dirs
from pipeline.review.model_calibration import CALIBRATION_JSON, Calibration
from pipeline.review.profile import PROFILE_JSON, CohortProfile

NOT_MEASURED = "not measured"
NOT_STATED = "not stated"
METRICS_JSON = "metrics.json"
SCHEMA = 1
# The profile's scan features, as the card names them (features.py measures them).
FEATURE_KINDS = {
    "spacing": "spacing (mm)",
    "extent": "field of view (mm)",
    "p01": "intensity, 1st percentile",
    "p50": "intensity, median",
    "p99": "intensity, 99th percentile",
    "noise": "noise (standard deviation)",
}
SEGMENTATION_METRICS = {"dice": "Dice", "nsd": "NSD", "hd95_mm": "HD95 (mm)"}


@dataclass(frozen=True)
class Fold:
    name: str  # its number, or the directory's name for a fold directory without one
    path: Path
    meta: dict  # model.json


@dataclass(frozen=True)
class Card:
    content: dict  # model_card.json
    sha256: str  # of model_card.json's bytes: the card's identity


def run(
    params: CardParams,
    model_dir: str | Path,
    out_dir: str | Path | None = None,
    crossval_reports: str | Path | None = None,
    metrics_path: str | Path | None = None,
    splits_path: str | Path | None = None,
    dvc_lock: str | Path | None = None,
) -> Card:
    """Write MODEL_CARD.md and model_card.json into ``out_dir`` (default: the model directory).

    ``crossval_reports``: a folder of ``fold_<k>/metrics.json`` (resseg crossval); ``metrics_path``:
    the test split's metrics.json (resseg evaluate); ``splits_path``: splits.json (resseg split);
    ``dvc_lock``: the dvc.lock of the project that trained the model. Each may be None."""
    model_dir = Path(model_dir)
    folds = _folds(model_dir)
    test = _read_metrics(Path(metrics_path)) if metrics_path is not None else None
    described = _model(model_dir, folds)  # first: it checks that the folds make one model
    card = {
        "schema": SCHEMA,
        "resseg_version": pipeline.__version__,
        "title": params.title or model_dir.resolve().name,
        "statements": {
            key: value or NOT_STATED for key, value in params.model_dump().items() if key != "title"
        },
        **described,
        "training_data": _training_data(folds, splits_path, described["model"]["labels"]),
        "training": _training(folds),
        "evaluation": {
            "out_of_fold": _out_of_fold(crossval_reports, folds),
            "test": _summary(test, Path(metrics_path)) if test is not None else NOT_MEASURED,
            "per_site": _subgroups(test, "sites", metrics_path),
            "per_group": _subgroups(test, "groups", metrics_path),
        },
        "calibration": _calibration(model_dir, test),
        "provenance": _provenance(Path(dvc_lock), folds) if dvc_lock is not None else NOT_MEASURED,
    }
    card = _tidy(card)
    content = (
        json.dumps(card, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    ).encode()
    sha256 = hashlib.sha256(content).hexdigest()
    out_dir = Path(out_dir) if out_dir is not None else model_dir
    with atomic_output(out_dir / MODEL_CARD_JSON) as tmp:
        tmp.write_bytes(content)
    with atomic_output(out_dir / MODEL_CARD_MD) as tmp:
        tmp.write_text(render(card, sha256), encoding="utf-8")
    return Card(card, sha256)


# --- reading -----------------------------------------------------------------------------------


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputDataError(f"{path}: not found") from None
    except OSError as err:
        raise InputDataError(f"{path}: cannot be read ({err.strerror})") from None
    except (ValueError, UnicodeDecodeError):
        raise InputDataError(f"{path}: not valid JSON; expected {what}") from None


def _folds(model_dir: Path) -> list[Fold]:
    folds = []
    for path in find_fold_dirs(model_dir):
        meta = _read_json(path / MODEL_JSON, "a model.json written by resseg train")
        if not isinstance(meta, dict):
            raise InputDataError(f"{path / MODEL_JSON}: not a model.json written by resseg train")
        number = meta.get("fold")
        match = FOLD_DIR.fullmatch(path.name)
        name = str(number) if isinstance(number, int) else match[1] if match else path.name
        folds.append(Fold(name, path, meta))
    return folds


def _read_metrics(path: Path) -> dict:
    metrics = _read_json(path, "a metrics.json written by resseg evaluate")
    if not isinstance(metrics, dict):
        raise InputDataError(f"{path}: not a metrics.json written by resseg evaluate")
    return metrics


# --- sections ----------------------------------------------------------------------------------


def _model(model_dir: Path, folds: list[Fold]) -> dict:
    description = load_description(model_dir)  # the folds agree, or this says which does not
    with torch.device("meta"):  # counted without allocating
        parameters = sum(p.numel() for p in description.build().parameters())
    plans = description.plans
    return {
        "model": {
            "sha256": model_sha256(model_dir),
            "folds": [fold.name for fold in folds],
            "architecture": description.network.architecture,
            "network": description.network.model_dump(),
            "parameters": parameters,
            "channels": plans.channel_names,
            "labels": {str(value): name for value, name in plans.labels.items()},
            "trained_with_resseg": folds[0].meta.get("resseg_version"),
        },
        "plan": {
            "target_spacing_mm": list(plans.target_spacing),
            "patch_size": description.patch_size,
            "batch_size": plans.batch_size,
            "normalization": [asdict(n) for n in plans.normalization],
            "axcodes": plans.to_dict()["axcodes"],
        },
    }


def _training_data(folds: list[Fold], splits_path, labels: dict[str, str]) -> dict | str:
    profile_path = folds[0].path / PROFILE_JSON
    if not profile_path.is_file():
        return NOT_MEASURED
    profile = CohortProfile.load(profile_path)
    label_names = [name for value, name in sorted(labels.items(), key=lambda kv: int(kv[0])) if value != "0"]
    return {
        "n_cases": profile.n_cases,
        "scans": {name: _spread(values) for name, values in sorted(profile.features.items())},
        "labels": {
            name: {
                "cases_with_label": sum(v > 0 for v in profile.labels.get(f"volume_ml_{name}", [])),
                "volume_ml": _spread(profile.labels.get(f"volume_ml_{name}", [])),
                "structures": _spread(profile.labels.get(f"count_{name}", [])),
            }
            for name in label_names
        },
        "acquisition": profile.acquisition or NOT_MEASURED,
        "split": _split(Path(splits_path), folds) if splits_path is not None else NOT_MEASURED,
    }


def _spread(values: list[float]) -> dict | str:
    if not values:
        return NOT_MEASURED
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _split(path: Path, folds: list[Fold]) -> dict:
    """Case counts per fold: the names stay in splits.json."""
    splits = _read_json(path, "the splits.json written by resseg split")
    try:
        counts = {
            str(k): {"training": len(f["train"]), "validation": len(f["val"])} for k, f in enumerate(splits)
        }
    except (KeyError, TypeError):
        raise InputDataError(f"{path}: not the splits.json written by resseg split") from None
    return {"n_folds": len(counts), "cases": {f.name: counts.get(f.name, NOT_MEASURED) for f in folds}}


def _training(folds: list[Fold]) -> dict:
    recorded = [fold.meta["software"] for fold in folds if isinstance(fold.meta.get("software"), dict)]
    if len(recorded) == len(folds):
        software = {"source": "recorded by training (model.json)", "versions": recorded[0]}
        if any(versions != recorded[0] for versions in recorded):
            software["per_fold"] = {fold.name: fold.meta["software"] for fold in folds}
    else:
        software = {
            "source": "installed when the card was written (the training did not record them)",
            "versions": software_versions(),
        }
    return {
        "parameters": folds[0].meta.get("training") or NOT_MEASURED,
        "folds": {
            fold.name: {
                "epochs": fold.meta.get("epochs"),
                "best_val_dice_mean": fold.meta.get("best_val_dice_mean"),
            }
            for fold in folds
        },
        "software": software,
    }


def _out_of_fold(reports, folds: list[Fold]) -> dict | str:
    if reports is None:
        return NOT_MEASURED
    reports = Path(reports)
    if not reports.is_dir():
        raise InputDataError(f"{reports}: not found; expected the folder of crossval's fold_<k> reports")
    summaries = {}
    for fold in folds:
        path = reports / f"fold_{fold.name}" / METRICS_JSON
        summaries[fold.name] = _summary(_read_metrics(path), path) if path.is_file() else NOT_MEASURED
    return summaries


def _summary(metrics: dict, path: Path, key: str = "") -> dict:
    """The headline figures of a metrics.json (or of one of its sites): per label the mean and 95%
    interval of each segmentation metric, per lesion label the detection figures."""
    try:
        segmentation = metrics["segmentation"]
        return {
            "n_cases": int(metrics["n_cases"]),
            "segmentation": {
                metric: {
                    label: {k: s.get(k) for k in ("mean", "ci95_low", "ci95_high", "n")}
                    for label, s in segmentation[metric].items()
                }
                for metric in SEGMENTATION_METRICS
                if metric in segmentation
            },
            "detection": {
                label: {
                    "n_reference_lesions": d["n_reference_lesions"],
                    "n_positive_cases": d["n_positive_cases"],
                    "operating_threshold": d["operating_threshold"],
                    "lesion_sensitivity": d["lesion"]["sensitivity"]["value"],
                    "lesion_precision": d["lesion"]["precision"]["value"],
                    "fp_per_scan": d["lesion"]["fp_per_scan"],
                    "lesion_cpm": _interval(d["lesion"]["cpm"]),
                    "lesion_ap": _interval(d["lesion"]["ap"]),
                    "case_auroc": _interval(d["case"]["auroc"]),
                }
                for label, d in metrics.get("detection", {}).items()
            },
        }
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        where = f" ({key})" if key else ""
        raise InputDataError(
            f"{path}{where}: not a metrics.json written by resseg evaluate (missing or malformed {err})"
        ) from None


def _interval(figure: dict) -> dict:
    return {
        "value": figure["value"],
        "ci95_low": figure.get("ci95_low"),
        "ci95_high": figure.get("ci95_high"),
    }


def _subgroups(metrics: dict | None, key: str, path) -> dict | str:
    """metrics.json's "sites" or "groups": each one's summary."""
    if metrics is None or key not in metrics:
        return NOT_MEASURED
    groups = metrics[key]
    if not isinstance(groups, dict):
        raise InputDataError(f"{path}: {key} is not a mapping of names to metrics")
    return {str(name): _summary(m, Path(path), f"{key}.{name}") for name, m in groups.items()}


def _calibration(model_dir: Path, test: dict | None) -> dict | str:
    path = model_dir / CALIBRATION_JSON
    fitted = NOT_MEASURED
    if path.is_file():
        Calibration.read(path)  # one line naming the file if it is not one
        data = _read_json(path, "a calibration.json written by resseg calibrate")
        try:
            fitted = {
                "temperature": data["temperature"],
                "fitted_temperature": data.get("fitted_temperature"),
                "n_cases": data.get("n_cases"),
                "uncertainty_limit": data["uncertainty"]["limit"],
                "ece": {when: data.get("ece", {}).get(when) for when in ("before", "after")},
                "lesion_thresholds": dict(data.get("lesion_thresholds", {})),
            }
        except (KeyError, TypeError, ValueError, AttributeError):
            raise InputDataError(f"{path}: not a calibration written by resseg calibrate") from None
    on_test = NOT_MEASURED
    if test is not None and isinstance(test.get("calibration"), dict):
        on_test = {key: test["calibration"].get(key) for key in ("temperature", "ece")}
    if fitted == NOT_MEASURED and on_test == NOT_MEASURED:
        return NOT_MEASURED
    return {"out_of_fold": fitted, "test": on_test}


def _provenance(lock_path: Path, folds: list[Fold]) -> dict | str:
    """What dvc.lock recorded for the stages that wrote the fold directories: each one's deps and
    outs (code and data, by their DVC hashes); and, walking upstream through the stages whose
    outputs they read, the DVC-tracked data they came from (stage outputs, and data added with
    ``dvc add``). Upstream stages' code is left out: a change to it that leaves their outputs
    as they were does not change the model."""
    lock = _read_lock(lock_path)
    root = lock_path.resolve().parent
    producers = {out["path"]: name for name, stage in lock.items() for out in stage.get("outs", [])}
    training, data, walked = {}, {}, set()
    for fold in folds:
        relative = os.path.relpath(fold.path.resolve(), root)
        stage = producers.get(Path(relative).as_posix())
        if stage is None:
            continue
        training[stage] = {key: _hashes(lock[stage].get(key, [])) for key in ("deps", "outs")}
        walked.add(stage)
    todo = [dep for name in training for dep in lock[name].get("deps", [])]
    while todo:
        dep = todo.pop()
        producer = _producer(dep["path"], producers)
        if producer is not None and producer[1] not in training:
            out_path, name = producer
            data[out_path] = _hashes([o for o in lock[name]["outs"] if o["path"] == out_path])[out_path]
            if name not in walked:
                walked.add(name)
                todo += lock[name].get("deps", [])
        elif producer is None and (root / f"{dep['path']}.dvc").is_file():
            data[dep["path"]] = _hash(dep)
    if not training:
        return NOT_MEASURED
    return {"source": "dvc.lock", "training": training, "data": data}


def _read_lock(path: Path) -> dict:
    try:
        stages = yaml.safe_load(path.read_text(encoding="utf-8"))["stages"]
        for stage in stages.values():
            for entry in [*stage.get("deps", []), *stage.get("outs", [])]:
                str(entry["path"])
        return stages
    except FileNotFoundError:
        raise InputDataError(f"{path}: not found") from None
    except OSError as err:
        raise InputDataError(f"{path}: cannot be read ({err.strerror})") from None
    except (yaml.YAMLError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise InputDataError(f"{path}: not a dvc.lock written by DVC") from None


def _producer(path: str, producers: dict[str, str]) -> tuple[str, str] | None:
    """The output (and its stage) that is ``path`` or holds it."""
    for out_path, name in producers.items():
        if path == out_path or path.startswith(out_path.rstrip("/") + "/"):
            return out_path, name
    return None


def _hashes(entries: list[dict]) -> dict[str, str | None]:
    return {entry["path"]: _hash(entry) for entry in entries}


def _hash(entry: dict) -> str | None:
    # DVC 3 names the algorithm ("hash: md5") beside the value; DVC 2 wrote only "md5".
    return entry.get(entry.get("hash", "md5")) or entry.get("md5")


def _tidy(value):
    """Floats to 6 significant digits (so the last bits of a sum do not change the card's bytes),
    NaN and infinities to null, keys to strings."""
    if isinstance(value, dict):
        return {str(k): _tidy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_tidy(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    return value


# --- MODEL_CARD.md -----------------------------------------------------------------------------


def render(card: dict, sha256: str) -> str:
    """The card as Markdown: the same content as model_card.json, in tables."""
    model, plan, statements = card["model"], card["plan"], card["statements"]
    labels = [
        f"{name} ({value})" for value, name in sorted(model["labels"].items(), key=lambda kv: int(kv[0]))
    ]
    foreground = [label for label in labels if not label.endswith(" (0)")]
    lines = [
        f"# Model card: {card['title']}",
        "",
        f"A resseg `{model['architecture']}` network segmenting {', '.join(foreground)} in "
        f"{' + '.join(model['channels'])} scans; the average of fold(s) {', '.join(model['folds'])}. "
        "This file and model_card.json hold the same content; neither holds a case name or a time.",
        "",
        *_table(
            ["", ""],
            [
                ["Model SHA-256 (as `resseg predict` names it)", f"`{model['sha256']}`"],
                ["Card SHA-256 (of model_card.json; in `resseg predict`'s run.json)", f"`{sha256}`"],
                ["Card written by", f"resseg {card['resseg_version']}"],
                ["Trained with", f"resseg {model['trained_with_resseg'] or NOT_MEASURED}"],
            ],
        ),
        "## Intended use",
        "",
        statements["intended_use"],
        "",
        "Out of scope: " + statements["out_of_scope"],
        "",
        "## Limitations",
        "",
        statements["limitations"],
        "",
        "## Model details",
        "",
        *_table(
            ["", ""],
            [
                ["Architecture", f"`{model['architecture']}`"],
                ["Network", f"`{_compact(model['network'])}`"],
                ["Parameters", f"{model['parameters']:,}"],
                ["Input channels", ", ".join(model["channels"])],
                ["Labels", ", ".join(labels)],
                ["Target spacing (mm)", " x ".join(_number(s) for s in plan["target_spacing_mm"])],
                ["Patch size (voxels)", " x ".join(str(s) for s in plan["patch_size"])],
                ["Batch size (plan)", str(plan["batch_size"])],
                ["Orientation", plan["axcodes"]],
                *[
                    [f"Normalisation, channel {i} ({model['channels'][i]})", _normalization(n)]
                    for i, n in enumerate(plan["normalization"])
                ],
            ],
        ),
        *_training_data_md(card["training_data"], model["channels"]),
        *_training_md(card["training"]),
        *_evaluation_md(card["evaluation"]),
        *_calibration_md(card["calibration"]),
        *_provenance_md(card["provenance"]),
        "## Contact",
        "",
        statements["contact"],
        "",
        "License: " + statements["license"],
        "",
    ]
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(text) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    return [
        "| " + " | ".join(cell(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows),
        "",
    ]


def _number(value) -> str:
    if value is None:
        return "undefined"
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _with_interval(figure) -> str:
    if not isinstance(figure, dict):
        return _number(figure)
    value = figure.get("value", figure.get("mean"))
    low, high = figure.get("ci95_low"), figure.get("ci95_high")
    interval = f" [{_number(low)}, {_number(high)}]" if low is not None and high is not None else ""
    return _number(value) + interval


def _compact(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _normalization(n: dict) -> str:
    if n["scheme"] == "ct":
        return (
            f"CT: clip to [{_number(n['clip_low'])}, {_number(n['clip_high'])}], "
            f"then (x - {_number(n['mean'])}) / {_number(n['std'])}"
        )
    return f"{n['scheme']}: per scan, over its non-zero voxels"


def _training_data_md(data, channels: list[str]) -> list[str]:
    lines = ["## Training data", ""]
    if data == NOT_MEASURED:
        return [*lines, f"The training cohort: {NOT_MEASURED} (the folds hold no cohort_profile.json).", ""]
    lines += [
        f"{data['n_cases']} cases were preprocessed for cross-validation; the model directory keeps "
        "summaries of them, never a case name.",
        "",
    ]
    split = data["split"]
    if split == NOT_MEASURED:
        lines += [f"Cases per fold: {NOT_MEASURED}.", ""]
    else:
        rows = [
            [fold, *(_number(c.get(k)) for k in ("training", "validation"))]
            if isinstance(c, dict)
            else [fold, NOT_MEASURED, NOT_MEASURED]
            for fold, c in split["cases"].items()
        ]
        lines += [
            f"Split into {split['n_folds']} folds:",
            "",
            *_table(["Fold", "Training", "Validation"], rows),
        ]

    def feature_name(name: str) -> str:
        kind, _, which = name.partition("_")
        if kind in ("spacing", "extent"):
            return f"{FEATURE_KINDS[kind]}, {which}"
        channel = channels[int(which)] if which.isdigit() and int(which) < len(channels) else which
        return f"{FEATURE_KINDS.get(kind, kind)}, channel {which} ({channel})"

    def feature_order(name: str) -> tuple[int, str]:
        kind = name.partition("_")[0]
        return list(FEATURE_KINDS).index(kind) if kind in FEATURE_KINDS else len(FEATURE_KINDS), name

    rows = [
        [feature_name(name), *(_number(data["scans"][name][k]) for k in ("min", "median", "max"))]
        for name in sorted(data["scans"], key=feature_order)
        if isinstance(data["scans"][name], dict)
    ]
    lines += ["Scans (over the cases):", "", *_table(["Feature", "Min", "Median", "Max"], rows)]
    rows = [
        [
            name,
            f"{s['cases_with_label']} of {data['n_cases']}",
            *(
                " / ".join(_number(s[key][k]) for k in ("min", "median", "max"))
                if isinstance(s[key], dict)
                else NOT_MEASURED
                for key in ("volume_ml", "structures")
            ),
        ]
        for name, s in data["labels"].items()
    ]
    lines += [
        "Labels (min / median / max over the cases):",
        "",
        *_table(["Label", "Cases with it", "Volume (ml)", "Connected structures"], rows),
    ]
    if data["acquisition"] != NOT_MEASURED:
        rows = [
            [attribute, value, str(count)]
            for attribute, values in data["acquisition"].items()
            for value, count in values.items()
        ]
        lines += ["DICOM acquisition:", "", *_table(["Attribute", "Value", "Cases"], rows)]
    return lines


def _training_md(training: dict) -> list[str]:
    lines = ["## Training", ""]
    parameters = training["parameters"]
    if parameters == NOT_MEASURED:
        lines += [f"Training parameters: {NOT_MEASURED}.", ""]
    else:
        rows = [[key, f"`{_compact(value)}`"] for key, value in _flatten(parameters).items()]
        lines += ["Parameters (params.yaml's train section, resolved):", "", *_table(["Key", "Value"], rows)]
    rows = [
        [fold, _number(f["epochs"]), _number(f["best_val_dice_mean"])]
        for fold, f in training["folds"].items()
    ]
    lines += _table(["Fold", "Epochs", "Best validation Dice (mean over labels)"], rows)
    software = training["software"]
    rows = [[name, version or "not installed"] for name, version in sorted(software["versions"].items())]
    lines += [f"Software, {software['source']}:", "", *_table(["Package", "Version"], rows)]
    if "per_fold" in software:
        lines += ["The folds were trained with different versions (model_card.json lists each fold's).", ""]
    return lines


def _flatten(mapping: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in sorted(mapping.items()):
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _evaluation_md(evaluation: dict) -> list[str]:
    lines = ["## Evaluation", "", "Means with their 95% bootstrap intervals over cases.", ""]
    lines += ["### Out-of-fold (cross-validation)", ""]
    out_of_fold = evaluation["out_of_fold"]
    if out_of_fold == NOT_MEASURED:
        lines += [f"{NOT_MEASURED.capitalize()}.", ""]
    else:
        for fold, summary in out_of_fold.items():
            lines += _summary_md(f"Fold {fold}", summary)
    lines += ["### Test", ""]
    lines += _summary_md(None, evaluation["test"])
    for key, title in (("per_site", "Per site"), ("per_group", "Per group")):
        if key == "per_group" and evaluation[key] == NOT_MEASURED:
            continue  # groups are optional and rarely given
        lines += [f"### {title} (test)", ""]
        if evaluation[key] == NOT_MEASURED:
            lines += [f"{NOT_MEASURED.capitalize()} (dataset.json gives no sites, or no test metrics).", ""]
            continue
        for name, summary in evaluation[key].items():
            lines += _summary_md(name, summary)
    return lines


def _summary_md(title: str | None, summary) -> list[str]:
    lines = [f"#### {title}", ""] if title is not None else []
    if summary == NOT_MEASURED:
        return [*lines, f"{NOT_MEASURED.capitalize()}.", ""]
    lines += [f"{summary['n_cases']} cases.", ""]
    segmentation = summary["segmentation"]
    metrics = [m for m in SEGMENTATION_METRICS if m in segmentation]
    label_names = list(dict.fromkeys(label for m in metrics for label in segmentation[m]))
    rows = [
        [label, *(_with_interval(segmentation[m].get(label)) for m in metrics)]
        for label in sorted(label_names)
    ]
    lines += _table(["Label", *(SEGMENTATION_METRICS[m] for m in metrics)], rows)
    if summary["detection"]:
        rows = [
            [
                label,
                _with_interval(d["lesion_cpm"]),
                _with_interval(d["lesion_ap"]),
                _with_interval(d["case_auroc"]),
                _number(d["lesion_sensitivity"]),
                _number(d["lesion_precision"]),
                _number(d["fp_per_scan"]),
                _number(d["operating_threshold"]),
            ]
            for label, d in sorted(summary["detection"].items())
        ]
        header = ["Lesions", "CPM", "Lesion AP", "Case AUROC", "Sensitivity", "Precision", "FP per scan"]
        lines += _table([*header, "At threshold"], rows)
    return lines


def _calibration_md(calibration) -> list[str]:
    lines = ["## Calibration", ""]
    if calibration == NOT_MEASURED:
        return [*lines, f"{NOT_MEASURED.capitalize()} (no calibration.json, no test metrics).", ""]
    fitted, test = calibration["out_of_fold"], calibration["test"]
    if fitted == NOT_MEASURED:
        lines += [f"Out-of-fold calibration: {NOT_MEASURED} (no calibration.json).", ""]
    else:
        lines += _table(
            ["", ""],
            [
                ["Temperature applied", _number(fitted["temperature"])],
                ["Temperature fitted", _number(fitted["fitted_temperature"])],
                ["Out-of-fold cases", _number(fitted["n_cases"])],
                ["Uncertainty limit (review column)", _number(fitted["uncertainty_limit"])],
            ],
        )
        if fitted["lesion_thresholds"]:
            rows = [
                [label, *(_number(t.get(k)) for k in ("threshold", "sensitivity", "fp_per_scan"))]
                for label, t in sorted(fitted["lesion_thresholds"].items())
            ]
            lines += [
                "Lesion operating thresholds chosen out of fold:",
                "",
                *_table(["Lesions", "Threshold", "Sensitivity", "FP per scan"], rows),
            ]
    sources = {
        "Out of fold": fitted["ece"] if fitted != NOT_MEASURED else None,
        "Test": test.get("ece") if test != NOT_MEASURED and isinstance(test.get("ece"), dict) else None,
    }
    when = ("before", "after")
    labels = sorted({label for e in sources.values() if e for w in when for label in (e.get(w) or {})})
    if labels:
        rows = [
            [
                label,
                *(
                    _number((e.get(w) or {}).get(label)) if e else NOT_MEASURED
                    for e in sources.values()
                    for w in when
                ),
            ]
            for label in labels
        ]
        header = ["Label", *(f"{where}, {w}" for where in sources for w in when)]
        lines += ["Expected calibration error, before and after the temperature:", "", *_table(header, rows)]
    return lines


def _provenance_md(provenance) -> list[str]:
    lines = ["## Provenance", ""]
    if provenance == NOT_MEASURED:
        return [
            *lines,
            f"{NOT_MEASURED.capitalize()} (no dvc.lock recording the stage that wrote the folds).",
            "",
        ]
    lines += ["The DVC hashes (dvc.lock) of what each fold was trained from, and of what it wrote:", ""]
    rows = [
        [stage, kind, f"`{path}`", f"`{digest}`"]
        for stage, entry in sorted(provenance["training"].items())
        for kind in ("deps", "outs")
        for path, digest in sorted(entry[kind].items())
    ]
    lines += _table(["Stage", "", "Path", "Hash"], rows)
    if provenance["data"]:
        rows = [[f"`{path}`", f"`{digest}`"] for path, digest in sorted(provenance["data"].items())]
        lines += ["The DVC-tracked data upstream of the training:", "", *_table(["Path", "Hash"], rows)]
    return lines
