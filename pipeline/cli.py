"""``resseg``: one thin subcommand per stage. Stages do the work; this file parses and reports.

A user's mistake (``UserError``) prints one line and exits with its code; bugs keep their
traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from pipeline.config import (
    EvaluateParams,
    Params,
    PredictParams,
    load_params,
    resolve_network,
    validate_section,
)
from pipeline.errors import SOME_SCANS_FAILED, ConfigError, UserError
from pipeline.io.dicom import SITE_ATTRIBUTES
from pipeline.io.paths import check_outputs_apart
from pipeline.threads import cpu_budget, limit_threads, threads_per_process

DEFAULT_PARAMS = Path("params.yaml")
THREADS_HELP = (
    "compute threads (default: {section}.threads, else the cores this process may use: its CPU "
    "affinity, cgroup quota, SLURM_CPUS_PER_TASK)"
)
DEFAULT_LOCK = Path("dvc.lock")


def synth(args: argparse.Namespace) -> None:
    from pipeline.cohort import synthetic

    synthetic.run(_params(args).synth, args.out)
    print(f"synthetic cohort written to {args.out}")


def import_cohort(args: argparse.Namespace) -> None:
    from pipeline.cohort import importers

    validation = _params(args).validation
    options = importers.ImportOptions(
        channel_names=_names(args.channels, "--channels"),
        label_names=_names(args.labels, "--labels"),
        affine_tolerance_mm=validation.affine_tolerance_mm,
        skip_invalid=args.skip_invalid,
        site_from=args.site_from,
    )
    reports = importers.run(args.source, args.format, args.out, options, args.report)
    print(f"{sum(not r.errors for r in reports)} cases imported to {args.out}; QC report in {args.report}")


def validate(args: argparse.Namespace) -> None:
    from pipeline.cohort import qc

    reports = qc.run(_params(args).validation, args.cohort, args.report)
    left_out = sum(bool(r.errors) for r in reports)
    print(f"QC report in {args.report}" + (f"; {left_out} invalid cases left out" if left_out else ""))


def preprocess(args: argparse.Namespace) -> None:
    from pipeline.preprocess import stage

    plans = stage.run(_params(args).preprocess, args.cohort, args.out, args.qc)
    spacing = "x".join(f"{s:.3g}" for s in plans.target_spacing)
    print(f"preprocessed to {args.out}: {spacing} mm, patch {plans.patch_size}, batch {plans.batch_size}")


def split(args: argparse.Namespace) -> None:
    from pipeline import split as split_stage

    folds = split_stage.run(_params(args).split, args.plans, args.out)
    print(f"{len(folds)} folds written to {args.out}")


def train(args: argparse.Namespace) -> None:
    from pipeline.models import train as train_stage

    params = _params(args).train
    summary = train_stage.run(
        params, resolve_network(params), args.fold, args.preprocessed, args.splits, args.out, args.live_dir
    )
    best = summary["best_val_dice_mean"]
    score = "no validation run" if best is None else f"best validation Dice {best:.3f}"
    print(f"fold {summary['fold']} written to {args.out} ({summary['epochs']} epochs, {score})")


def predict(args: argparse.Namespace) -> int:
    from pipeline.infer import batch
    from pipeline.review.flags import Reviewer

    options = batch.BatchOptions(
        output_format=args.format,
        save_probabilities=args.save_probabilities,
        dicom_seg=args.dicom_seg,
        keep_identifiers=args.keep_identifiers,
        name_by=args.name_by,
        overwrite=args.overwrite,
        recursive=args.recursive,
        workers=args.workers,
        shard=args.shard,
    )
    params = _params(args)
    result = batch.run(
        _predictor(args, args.folds, calibrate=args.calibration),
        batch.model_identity(args.model, args.folds, card=args.card),
        args.input,
        args.output,
        options,
        params.evaluate.detection,
        Reviewer.from_model_dir(args.model, args.folds),
    )
    print(
        f"{result.n_done} scans segmented, {result.n_skipped} already complete, {len(result.failed)} failed, "
        f"{result.n_to_review} to review; summary in {Path(args.output) / 'summary.csv'}"
    )
    if result.failed:
        print(f"failed: {', '.join(result.failed[:10])}" + (" ..." if len(result.failed) > 10 else ""))
        return SOME_SCANS_FAILED
    return 0


def crossval(args: argparse.Namespace) -> None:
    from pipeline import crossval as crossval_stage
    from pipeline.infer.batch import model_identity

    metrics = crossval_stage.run(
        _params(args).evaluate,
        _predictor(args),
        model_identity(args.model),
        args.cohort,
        args.splits,
        args.fold,
        args.masks,
        args.report,
    )
    cases = f"{metrics['n_cases']} out-of-fold cases"
    print(f"fold {args.fold}: {cases}, {_dice_summary(metrics)}; metrics in {args.report}")


def evaluate(args: argparse.Namespace) -> None:
    from pipeline.evaluate import stage
    from pipeline.review.model_calibration import Calibration

    temperature = Calibration.read(args.calibration).temperature if args.calibration else 1.0
    metrics = stage.run(
        _evaluate_params(args),
        args.labels,
        args.predictions,
        args.out,
        args.dataset_json,
        args.probabilities,
        args.images,
        temperature,
    )
    print(f"{metrics['n_cases']} cases, {_dice_summary(metrics)}; report in {Path(args.out) / 'report.html'}")


def compare(args: argparse.Namespace) -> None:
    from pipeline.evaluate import compare as compare_stage

    result = compare_stage.run(
        _evaluate_params(args),
        args.labels,
        tuple(args.predictions),
        args.out,
        args.dataset_json,
        tuple(args.probabilities) if args.probabilities else None,
        compare_stage.parse_margins(args.margin) if args.margin else _params(args).compare.margins,
    )
    print(compare_stage.table(result))
    print(f"report in {Path(args.out) / 'report.html'}")


def _evaluate_params(args: argparse.Namespace):
    """params.yaml's evaluate section with the command line's options on top."""
    params = _params(args).evaluate
    detection = {
        key: value
        for key, value in (
            ("lesion_labels", _names(args.lesion_labels, "--lesion-labels")),
            ("iou_threshold", args.iou_threshold),
            ("candidate_threshold", args.candidate_threshold),
            ("operating_threshold", args.operating_threshold),
            ("min_candidate_volume_mm3", args.min_candidate_volume_mm3),
            ("dynamic_threshold", args.dynamic_threshold),
        )
        if value is not None
    }
    overrides = {"detection": params.detection.model_dump() | detection}
    if args.nsd_tolerance_mm is not None:
        overrides["nsd_tolerance_mm"] = args.nsd_tolerance_mm
    return validate_section(EvaluateParams, params.model_dump() | overrides, "command line")


def _dice_summary(metrics: dict) -> str:
    dice = []
    for name, m in metrics["segmentation"]["dice"].items():
        # The mean is over the cases scored: a label absent from both masks is left out, and said so.
        left_out = m["n_excluded"]
        note = f" ({left_out} both-empty case{'s' * (left_out > 1)} left out)" if left_out else ""
        dice.append(f"{name} {_number(m['mean'])}{note}")
    summary = "mean Dice " + ", ".join(dice)
    for label, detection in metrics["detection"].items():
        cpm, auroc = detection["lesion"]["cpm"]["value"], detection["case"]["auroc"]["value"]
        summary += f"; {label} CPM {_number(cpm)}, case AUROC {_number(auroc)}"
    return summary


def _number(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def calibrate(args: argparse.Namespace) -> None:
    from pipeline.review import calibrate as calibrate_stage

    params = _params(args)
    result = calibrate_stage.run(
        params.calibrate, params.evaluate.detection, args.crossval, args.cohort, args.out
    )
    before, after = result["ece"]["before"], result["ece"]["after"]
    errors = ", ".join(f"{name} {_number(before[name])} -> {_number(after[name])}" for name in before)
    fitted = result["fitted_temperature"]
    kept = "" if result["temperature"] != 1.0 else f"; the fitted {fitted:.3f} would have raised it: 1 kept"
    print(
        f"temperature {result['temperature']:.3f} from {result['n_cases']} out-of-fold cases "
        f"(expected calibration error {errors}{kept}); written to {args.out}"
    )


def shift(args: argparse.Namespace) -> None:
    from pipeline.review import shift as shift_stage

    model = args.model if args.model is not None else _params(args).train.init_from
    if model is None:
        shift_stage.write_nothing_to_compare(args.out, args.report)
        print("no --model and no train.init_from: no model whose training cohort to compare with")
        return
    result = shift_stage.run(model, args.cohort, args.out, args.report)
    print(shift_stage.table(result))


def card(args: argparse.Namespace) -> None:
    from pipeline import card as card_stage

    # Outside a DVC project (no dvc.lock here) the card says its provenance was not measured.
    lock = args.dvc_lock if args.dvc_lock is not None else DEFAULT_LOCK if DEFAULT_LOCK.is_file() else None
    written = card_stage.run(
        _params(args).card, args.model, args.out_dir, args.crossval_reports, args.metrics, args.splits, lock
    )
    missing = [
        name
        for name, value in (
            ("out-of-fold metrics", written.content["evaluation"]["out_of_fold"]),
            ("test metrics", written.content["evaluation"]["test"]),
            ("calibration", written.content["calibration"]),
            ("provenance", written.content["provenance"]),
        )
        if value == card_stage.NOT_MEASURED
    ]
    out_dir = args.out_dir if args.out_dir is not None else args.model
    note = f"; not measured: {', '.join(missing)}" if missing else ""
    print(f"model card written to {out_dir} (model_card.json SHA-256 {written.sha256[:16]}...{note})")


def _predictor(args: argparse.Namespace, folds: list[int] | None = None, calibrate: bool = True):
    from pipeline.infer.predictor import Predictor

    # Options checked as params.yaml's predict section is: an overlap of 1 or NaN is one line.
    options = {key: getattr(args, key, None) for key in ("overlap", "tta", "precision")}
    params = validate_section(
        PredictParams,
        _params(args).predict.model_dump() | {k: v for k, v in options.items() if v is not None},
        "command line",
    )
    return Predictor.from_model_dir(
        args.model,
        folds=folds,
        calibrate=calibrate,
        overlap=params.overlap,
        sw_batch_size=params.sw_batch_size,
        device=args.device,
        mirror=params.tta,
        precision=params.precision,
    )


def _shard(text: str) -> tuple[int, int]:
    """``i/n``: the i-th (from 0) of n shards."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"expected i/n with 0 <= i < n, got {text!r}")
    return int(index), int(count)


def _names(text: str | None, option: str) -> list[str] | None:
    """A comma-separated option's names; None when the option is not given."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise ConfigError(f"{option}: expected comma-separated names, got {text!r}")
    return names


def _params(args: argparse.Namespace) -> Params:
    path = _params_path(args)
    return Params() if path is None else load_params(path)


def _params_path(args: argparse.Namespace) -> Path | None:
    """``--params`` if given; else ``params.yaml`` in the working folder (DVC runs stages from
    the project root); else None: the defaults, for commands run outside a project."""
    if args.params is not None:
        return args.params
    return DEFAULT_PARAMS if DEFAULT_PARAMS.is_file() else None


def _thread_count(args: argparse.Namespace) -> int:
    """The command's compute threads: --threads, else the parameter file's (train.threads;
    predict.threads for predict and crossval), else the cores this process may use. Training
    shares them between the processes it starts on this node (train.devices) and, in each, one
    per data-loading worker, which counts in the same budget."""
    params = _params(args)
    train = params.train
    processes = train.devices if isinstance(train.devices, int) else 1
    chosen, processes, workers = {
        "train": (train.threads, processes, train.num_workers),
        "predict": (params.predict.threads, 1, 0),
        "crossval": (params.predict.threads, 1, 0),
    }.get(args.command, (None, 1, 0))
    threads = getattr(args, "threads", None) or chosen or cpu_budget().cores
    return threads_per_process(threads, processes, workers)


def _positive(text: str) -> int:
    if not (text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def _check_outputs_apart(args: argparse.Namespace) -> None:
    """The command's outputs against its inputs, the parameter file among them."""

    def option(dest: str) -> str:
        return "--" + dest.replace("_", "-")

    def named(dests) -> list[tuple[str, Path | None]]:
        pairs = []
        for dest in dests:
            value = getattr(args, dest)
            pairs += [(option(dest), path) for path in (value if isinstance(value, list) else [value])]
        return pairs

    check_outputs_apart(named(args.outputs), named(args.inputs) + [("--params", _params_path(args))])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resseg", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, func, help, outputs, inputs=()):
        """``outputs`` and ``inputs``: the options naming paths, which must be kept apart."""
        sub = commands.add_parser(name, help=help)
        sub.add_argument(
            "--params", type=Path, help="parameter file (default: ./params.yaml if present, else defaults)"
        )
        sub.set_defaults(func=func, outputs=outputs, inputs=inputs)
        return sub

    sub = command("synth", synth, "write the embedded synthetic CT cohort (MSD layout)", ["out"])
    sub.add_argument("--out", required=True, type=Path)

    sub = command(
        "import", import_cohort, "import a cohort into the MSD layout, with QC", ["out", "report"], ["source"]
    )
    sub.add_argument("--source", required=True, type=Path)
    sub.add_argument("--format", required=True, choices=["msd", "nnunet", "folders", "dicom"])
    sub.add_argument("--out", required=True, type=Path, help="e.g. data/raw/NAME")
    sub.add_argument("--channels", help="folders/dicom: modality per channel, comma-separated (default CT)")
    sub.add_argument("--labels", help="folders/dicom: names of label values 1, 2, ..., comma-separated")
    sub.add_argument("--skip-invalid", action="store_true", help="import the valid cases, list the others")
    sub.add_argument(
        "--site-from",
        choices=SITE_ATTRIBUTES,
        help="dicom: each case's site from this attribute, kept as a pseudonym (a hash), never the name",
    )
    sub.add_argument("--report", default=Path("reports/data_qc.json"), type=Path, help="QC report")

    sub = command("validate", validate, "QC every case of a cohort", ["report"], ["cohort"])
    sub.add_argument("--cohort", required=True, type=Path)
    sub.add_argument("--report", required=True, type=Path)

    sub = command(
        "preprocess",
        preprocess,
        "fingerprint, plan and preprocess the training cases",
        ["out"],
        ["cohort", "qc"],
    )
    sub.add_argument("--cohort", required=True, type=Path)
    sub.add_argument("--out", required=True, type=Path)
    sub.add_argument("--qc", type=Path, help="QC report whose invalid cases are left out")

    sub = command("split", split, "k-fold cross-validation splits", ["out"], ["plans"])
    sub.add_argument("--plans", required=True, type=Path)
    sub.add_argument("--out", required=True, type=Path)

    sub = command(
        "train", train, "train one fold under Lightning", ["out", "live_dir"], ["preprocessed", "splits"]
    )
    sub.add_argument("--preprocessed", required=True, type=Path)
    sub.add_argument("--splits", required=True, type=Path)
    sub.add_argument("--fold", type=int, default=0, help="which fold of --splits (default 0)")
    sub.add_argument("--out", required=True, type=Path, help="fold directory, e.g. models/NAME/fold_0")
    sub.add_argument("--live-dir", default=Path("dvclive"), type=Path, help="DVCLive training curves")
    sub.add_argument("--threads", type=_positive, help=THREADS_HELP.format(section="train"))

    sub = command("predict", predict, "segment every scan in a folder", ["output"], ["input", "model"])
    sub.add_argument("--input", required=True, type=Path, help="NIfTI, NRRD, MetaImage files, DICOM series")
    sub.add_argument("--output", required=True, type=Path)
    sub.add_argument("--model", required=True, type=Path, help="model directory")
    sub.add_argument("--recursive", action="store_true", help="also the subfolders of --input")
    sub.add_argument("--folds", type=int, nargs="+", help="folds to average (default: every trained fold)")
    sub.add_argument("--tta", action=argparse.BooleanOptionalAction, help="mirroring (default: predict.tta)")
    sub.add_argument("--overlap", type=float, help="sliding-window overlap (default: predict.overlap)")
    sub.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    sub.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="the network's arithmetic (default: predict.precision)",
    )
    sub.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write class probabilities to OUTPUT/probabilities/",
    )
    sub.add_argument(
        "--dicom-seg", action="store_true", help="DICOM inputs: also a DICOM SEG (<scan>.seg.dcm)"
    )
    sub.add_argument(
        "--name-by",
        default="folder",
        choices=["folder", "uid"],
        help="DICOM series: named after their folders (a patient's name, often) or by a hash of their UID",
    )
    sub.add_argument(
        "--keep-identifiers",
        action="store_true",
        help="the DICOM SEG keeps the source's patient and study modules (for the PACS it came from)",
    )
    sub.add_argument(
        "--format", default="auto", choices=["auto", "nifti", "nrrd", "mha"], help="auto: the input's"
    )
    sub.add_argument("--overwrite", action="store_true", help="redo scans whose outputs are complete")
    sub.add_argument("--workers", type=int, default=1, help="scans read ahead in parallel (default 1)")
    sub.add_argument("--threads", type=_positive, help=THREADS_HELP.format(section="predict"))
    sub.add_argument("--shard", type=_shard, default=(0, 1), help="i/n: take every n-th scan from the i-th")
    sub.add_argument(
        "--calibration",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="apply the model's temperature to the probabilities (default: on, when the model has one)",
    )
    sub.add_argument(
        "--card",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="record the model card's SHA-256 in run.json (default: on, when the card is of these weights)",
    )

    sub = command(
        "crossval",
        crossval,
        "out-of-fold predictions of one trained fold, and their metrics",
        ["masks", "report"],
        ["model", "cohort", "splits"],
    )
    sub.add_argument(
        "--model", required=True, type=Path, help="the fold's directory, e.g. models/NAME/fold_0"
    )
    sub.add_argument("--cohort", required=True, type=Path)
    sub.add_argument("--splits", required=True, type=Path)
    sub.add_argument("--fold", required=True, type=int)
    sub.add_argument("--threads", type=_positive, help=THREADS_HELP.format(section="predict"))
    sub.add_argument("--masks", required=True, type=Path, help="folder of the out-of-fold masks")
    sub.add_argument(
        "--report", required=True, type=Path, help="folder of their metrics.json and per_case.csv"
    )
    sub.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")

    sub = command(
        "calibrate",
        calibrate,
        "fit the model's temperature and review limits on its out-of-fold predictions",
        ["out"],
        ["crossval", "cohort"],
    )
    sub.add_argument(
        "--crossval", required=True, type=Path, nargs="+", help="crossval masks folders, or their parent"
    )
    sub.add_argument("--cohort", required=True, type=Path, help="the cohort the folds were trained on")
    sub.add_argument("--out", required=True, type=Path, help="e.g. models/NAME/calibration.json")

    sub = command(
        "shift",
        shift,
        "compare a cohort with the one a model was trained on",
        ["out", "report"],
        ["cohort", "model"],
    )
    sub.add_argument("--cohort", required=True, type=Path, help="a cohort folder (MSD) or a folder of scans")
    sub.add_argument(
        "--model", type=Path, help="model, fold, weights.pt or checkpoint (default: train.init_from)"
    )
    sub.add_argument("--out", required=True, type=Path, help="shift.json")
    sub.add_argument("--report", type=Path, help="an HTML page with a plot per feature")

    # The card is written into the model directory by design: --model is not an input kept apart.
    sub = command(
        "card",
        card,
        "write a model's card (MODEL_CARD.md, model_card.json) from what the pipeline measured",
        ["out_dir"],
        ["crossval_reports", "metrics", "splits", "dvc_lock"],
    )
    sub.add_argument("--model", required=True, type=Path, help="model directory, e.g. models/NAME")
    sub.add_argument("--crossval-reports", type=Path, help="folder of crossval's fold_<k>/metrics.json")
    sub.add_argument("--metrics", type=Path, help="the test split's metrics.json (resseg evaluate)")
    sub.add_argument("--splits", type=Path, help="splits.json: the case counts per fold")
    sub.add_argument(
        "--dvc-lock", type=Path, help="the DVC hashes the folds came from (default: ./dvc.lock if present)"
    )
    sub.add_argument("--out-dir", type=Path, help="where to write the card (default: the model directory)")

    sub = command(
        "evaluate",
        evaluate,
        "compare predicted masks with reference labels",
        ["out"],
        ["labels", "predictions", "dataset_json", "probabilities", "images", "calibration"],
    )
    sub.add_argument("--labels", required=True, type=Path)
    sub.add_argument("--predictions", required=True, type=Path)
    sub.add_argument("--out", required=True, type=Path)
    sub.add_argument("--dataset-json", type=Path, help="dataset.json giving the label names")
    sub.add_argument(
        "--probabilities", type=Path, help="class probabilities (resseg predict --save-probabilities)"
    )
    sub.add_argument("--images", type=Path, help="the scans, for the report's QC pictures")
    sub.add_argument(
        "--calibration",
        type=Path,
        help="the model's calibration.json: the calibration error is also reported before its temperature",
    )
    _evaluate_options(sub)

    sub = command(
        "compare",
        compare,
        "compare two models' predictions of the same cases, with paired statistics",
        ["out"],
        ["labels", "predictions", "dataset_json", "probabilities"],
    )
    sub.add_argument("--labels", required=True, type=Path)
    sub.add_argument(
        "--predictions", required=True, type=Path, nargs=2, metavar=("A", "B"), help="A: the model in use"
    )
    sub.add_argument("--out", required=True, type=Path)
    sub.add_argument("--dataset-json", type=Path, help="dataset.json giving the label names")
    sub.add_argument(
        "--probabilities", type=Path, nargs=2, metavar=("A", "B"), help="each model's class probabilities"
    )
    sub.add_argument(
        "--margin",
        help="non-inferiority margin per metric, e.g. dice=0.01,auroc=0.02 (hd95_mm in mm); "
        "default: compare.margins of the parameter file",
    )
    _evaluate_options(sub)
    return parser


def _evaluate_options(sub: argparse.ArgumentParser) -> None:
    options = sub.add_argument_group("options overriding the evaluate section of the parameter file")
    options.add_argument("--lesion-labels", help="label names scored as lesions, comma-separated")
    options.add_argument("--nsd-tolerance-mm", type=float)
    options.add_argument("--iou-threshold", type=float)
    options.add_argument("--candidate-threshold", type=float)
    options.add_argument("--operating-threshold", type=float)
    options.add_argument("--min-candidate-volume-mm3", type=float)
    options.add_argument("--dynamic-threshold", action="store_true", default=None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_library_notices()
    try:
        _check_outputs_apart(args)
        limit_threads(_thread_count(args))
        return args.func(args) or 0
    except UserError as err:
        # One line, whatever a library put into the reason.
        print(f"resseg {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return err.exit_code


def _quiet_library_notices() -> None:
    """What a user of the command should see is its progress, its results and real problems:
    Lightning's notices (accelerators found, an advertisement for its cloud logger) and a
    deprecation inside Lightning's own code are neither. Lightning's warnings still show. (Its
    package logger is reset to INFO when Lightning is imported; this one, which its notices go
    through, is not.)"""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


if __name__ == "__main__":
    sys.exit(main())
