"""Accuracy: resseg's training and prediction against nnU-Net v2's, same cohort, same network and
initial weights, same plan, patch, batch and number of iterations, scored by both tools' evaluators.

    python benchmarks/accuracy_vs_nnunet.py [--quick] [--cohort synthetic|mri|both] [--seeds 0 1 2]
                                            [--epochs N] [--iterations M] [--cases N] [--test-cases M]
                                            [--preset resunet_small] [--workers 2] [--precision auto]
                                            [--work DIR] [--json PATH] [--rows PATH]

Two cohorts, each generated once into --work (MSD layout, training and test cases with labels):

- ``synthetic``: resseg's synthetic CT (pipeline/cohort/synthetic.py at the demo's size: an organ
  and lesions in a 128x128x112 mm field of view, 1.6-2.2 mm in-plane, 3-5 mm slices);
- ``mri``: a brain T1 cohort with real anatomy (benchmarks/mri_cohort.py: nilearn's MNI152
  template moved, resampled, cropped, bias-corrupted, noised and reoriented per case; grey and
  white matter), built by nnU-Net's virtualenv, where the bench extra installs nilearn.

resseg's preprocess stage plans and preprocesses each cohort (a patch of at most the cohort's
patch budget, batches of at most two patches); nnU-Net is handed the same plan
(inference.write_nnunet_plan: target spacing, patch, batch, axis order, normalisation) and
preprocesses the same files with ``nnUNetv2_preprocess`` (training_vs_nnunet.preprocess_nnunet).
Both train on every training case (the split's validation case, the first training case, only
feeds nnU-Net's per-epoch pseudo-Dice on one batch; resseg does not validate): the weights of
the last epoch are the model.

Then for each seed, each tool in a fresh process:

- resseg: ``pipeline.models.train.run`` (the ``resseg train`` stage) with TrainParams at their
  defaults (nnU-Net's recipe: SGD at 0.01 with Nesterov momentum, polynomial decay per epoch,
  Dice + cross-entropy, foreground oversampling, nnU-Net's augmentation reimplemented) except
  ``max_epochs``, ``iterations_per_epoch``, ``seed``, ``num_workers`` and no validation; then
  ``resseg predict``'s batch prediction of the test images (``predict`` defaults: overlap 0.5,
  Gaussian blending; no mirroring; --precision).
- nnU-Net: ``nnUNetTrainer.run_training()`` (training_vs_nnunet.nnunet_trainer: nnU-Net's trainer
  handed resseg's network, deep supervision off) with ``num_epochs`` and
  ``num_iterations_per_epoch`` set, one validation batch per epoch: its own sampling,
  augmentation, loss, SGD and poly schedule, checkpoint_final.pth; then ``nnUNetPredictor`` with
  those weights over the test images (tile step 1 - overlap, Gaussian, no mirroring; pipelined as
  ``nnUNetv2_predict -npp 1 -nps 1``).

Then each tool predicts the test images again with the weights the other trained (the same
network: resseg's predictor over nnU-Net's final weights in a copy of resseg's model directory,
nnU-Net's predictor over resseg's), so that a difference can be laid to training or to
prediction: the same predictor over both tools' weights, the same weights under both predictors.

The seed seeds resseg's training (``train.seed``: the network is built right after seeding, then
every draw) and, in nnU-Net's process, the network (built by resseg after ``torch.manual_seed``:
the same initial weights, checked by a checksum), NumPy and each loader worker. nnU-Net's loader
hands batches over in the order its workers finish them, so its runs are not bit-reproducible.

Both tools' masks are scored by resseg's evaluate stage (Dice and HD95 per label: the means of
its metrics.json, read by ``resseg_scores`` alone; under resseg's current convention a label
absent from both masks of a case is left out of them) and by nnU-Net's
``compute_metrics_on_folder2`` (what ``nnUNetv2_evaluate_folder`` runs: its Dice per label, the
mean over cases without NaN); the crossed masks by resseg's. Each seed's figure is the mean over
the test cases; the table gives the mean over seeds and the range, and the difference resseg -
nnU-Net; the next, paired by seed, that difference as a whole and split into training and
prediction; the last, the median seconds to train and to predict. Without nnU-Net's virtualenv the script stops. Both tools'
processes run with OMP_WAIT_POLICY=PASSIVE unless the environment sets it (see OMP_WAIT_POLICY
below).

Full size (the default): 16 training + 8 test cases per cohort, 25 epochs x 40 iterations, seeds
0 1 2: about an hour on a 2-core machine with one core taken by other work (benchmarks/README.md
gives the measurements). --quick: one seed, 6 + 2 small cases per cohort, 2 epochs x 5
iterations: a smoke test of every step, 1.5 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

from rows import measured, write_rows

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # this tree's code, in either virtualenv
NNUNET_BIN = HERE / ".venv-nnunet" / "bin"
# nnU-Net's pseudo-Dice after each epoch, on this many batches of the validation case (its
# default of 50 would cost more than the epoch's training here, and changes no weight).
VAL_ITERATIONS = 1
TOOLS = ("resseg", "nnU-Net v2")
# Both tools' processes, unless the environment says otherwise: OpenMP threads that wait by
# sleeping, not spinning. With other work on the 2 cores, spinning made a training step of the
# same network 0.15 s or 3 s at random (a thread spins while its partner is descheduled), and
# resseg's Lightning loop far more often than nnU-Net's (2.65 s against 0.14 s a step, median).
OMP_WAIT_POLICY = "PASSIVE"
# Per cohort, at full size and with --quick: cases generated, the plan's patch budget (voxels),
# and for the MRI cohort the range of voxel sizes (mm).
COHORTS = {
    "synthetic": {
        "full": {"cases": 16, "test_cases": 8, "max_patch_voxels": 128**3},
        "quick": {"cases": 6, "test_cases": 2, "max_patch_voxels": 48**3},
    },
    "mri": {
        "full": {"cases": 16, "test_cases": 8, "max_patch_voxels": 64 * 64 * 48, "spacing": (2.4, 3.2)},
        "quick": {"cases": 6, "test_cases": 2, "max_patch_voxels": 32**3, "spacing": (4.0, 5.0)},
    },
}


def main(args: argparse.Namespace) -> None:
    from inference import usable_cpus

    if args.report:
        results = merged_results(args.report)
        args.seeds = sorted({int(seed) for result in results.values() for seed in result["runs"]})
        args.cohort = " ".join(results)
        print_report(results, args, usable_cpus(), None)
        return
    from training_vs_nnunet import require_nnunet

    require_nnunet(args.nnunet_bin)
    clock = time.perf_counter()
    results = {name: run_cohort(name, settings(name, args), args) for name in cohorts(args)}
    print_report(results, args, usable_cpus(), time.perf_counter() - clock)
    if args.json:
        dumped = {name: {**result, "plans": result["plans"].to_dict()} for name, result in results.items()}
        args.json.write_text(json.dumps(dumped, indent=2))
    if args.rows:
        write_rows(args.rows, suite_rows(results, args))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one seed, both cohorts at 6 + 2 small cases, 2 epochs of 5 iterations: 1.5 minutes",
    )
    parser.add_argument("--cohort", choices=["synthetic", "mri", "both"], default="both")
    parser.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2 (--quick: 0)")
    parser.add_argument("--epochs", type=int, help="default 25 (--quick: 2)")
    parser.add_argument("--iterations", type=int, help="per epoch; default 40 (--quick: 5)")
    parser.add_argument("--cases", type=int, help="training cases of each cohort; default 16 (--quick: 6)")
    parser.add_argument("--test-cases", type=int, help="test cases of each cohort; default 8 (--quick: 2)")
    parser.add_argument("--preset", default="resunet_small", help="network preset in configs/models/")
    parser.add_argument("--workers", type=int, default=2, help="data-loading worker processes of each tool")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="resseg's prediction arithmetic (default: predict.precision's default; nnU-Net: fp32 on CPU)",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/resseg-bench-accuracy"))
    parser.add_argument("--nnunet-bin", type=Path, default=NNUNET_BIN)
    parser.add_argument("--json", type=Path, help="also write every seed's scores and timings here")
    parser.add_argument("--rows", type=Path, help="also write the suite's rows here (benchmarks/rows.py)")
    parser.add_argument(
        "--report",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="train nothing: print the tables of earlier runs' --json files, their seeds together",
    )
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return args
    from preprocess_vs_nnunet import fill_defaults

    args = fill_defaults(
        args,
        quick={"seeds": [0], "epochs": 2, "iterations": 5},
        full={"seeds": [0, 1, 2], "epochs": 25, "iterations": 40},
    )
    from pipeline.config import TrainParams, resolve_network

    if resolve_network(TrainParams(model=args.preset), ROOT / "configs" / "models").deep_supervision:
        raise SystemExit(f"--preset {args.preset}: deep supervision is on; compare a preset without it")
    return args


def merged_results(paths: list[Path]) -> dict:
    """The cohorts of several runs' --json files, each cohort's seeds together (a seed run twice
    is refused: its two results would be counted as two seeds)."""
    from pipeline.preprocess.plans import Plans

    results = {}
    for path in paths:
        try:
            cohorts = json.loads(path.read_text())
            for result in cohorts.values():
                result["plans"] = Plans.from_dict(result["plans"])
                result["runs"] = dict(result["runs"])  # a file without runs is refused here
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise SystemExit(f"--report: {path}: not a --json file of this benchmark ({error!r})") from None
        for cohort, result in cohorts.items():
            if cohort not in results:
                results[cohort] = result
                continue
            repeated = results[cohort]["runs"].keys() & result["runs"].keys()
            if repeated:
                raise SystemExit(f"--report: {path} repeats seed(s) {sorted(repeated)} of cohort {cohort}")
            results[cohort]["runs"].update(result["runs"])
    return results


def cohorts(args: argparse.Namespace) -> list[str]:
    return list(COHORTS) if args.cohort == "both" else [args.cohort]


def settings(cohort: str, args: argparse.Namespace) -> dict:
    """The cohort's sizes for this run: its table's, or --cases and --test-cases."""
    chosen = dict(COHORTS[cohort]["quick" if args.quick else "full"])
    for key in ("cases", "test_cases"):
        if getattr(args, key) is not None:
            chosen[key] = getattr(args, key)
    return chosen


def run_cohort(name: str, setting: dict, args: argparse.Namespace) -> dict:
    """Every seed of both tools on one cohort: scores, seconds and the plan."""
    from training_vs_nnunet import preprocess_nnunet, preprocess_resseg

    from pipeline.preprocess.plans import Plans

    cohort = build_cohort(name, setting, args)
    folder = args.work / f"runs_{cohort.name}"
    helper_args = SimpleNamespace(
        max_patch_voxels=setting["max_patch_voxels"],
        workers=args.workers,
        preset=args.preset,
        nnunet_bin=args.nnunet_bin,
    )
    print(f"{name}: preprocessing {cohort} for both tools ...", file=sys.stderr, flush=True)
    preprocessed, _ = preprocess_resseg(cohort, folder / f"resseg_{setting['max_patch_voxels']}", helper_args)
    plans = Plans.load(preprocessed / "plans.json")
    names = sorted(case["name"] for case in json.loads((preprocessed / "plans.json").read_text())["cases"])
    fold = {"train": names, "val": names[:1]}
    splits = folder / "splits_all.json"
    splits.write_text(json.dumps([fold]))
    nnunet_folder = folder / f"nnunet_{setting['max_patch_voxels']}"
    roots = preprocess_nnunet(cohort, nnunet_folder, plans, fold, helper_args)

    from training_vs_nnunet import DATASET, PLANS_NAME

    nnunet_base = roots["nnUNet_preprocessed"] / DATASET
    job = {
        "preset": args.preset,
        "plans": str(preprocessed / "plans.json"),
        "epochs": args.epochs,
        "iterations": args.iterations,
        "workers": args.workers,
        "images": str(cohort / "imagesTs"),
        "overlap": overlap(),
    }
    runs = {}
    for seed in args.seeds:
        where = folder / f"seed_{seed}"
        shutil.rmtree(where, ignore_errors=True)
        tools = {}
        print(f"{name}, seed {seed}: resseg trains and predicts ...", file=sys.stderr, flush=True)
        tools["resseg"] = run_child(
            "resseg",
            sys.executable,
            {
                **job,
                "seed": seed,
                "preprocessed": str(preprocessed),
                "splits": str(splits),
                "model": str(where / "resseg" / "model"),
                "live": str(where / "resseg" / "dvclive"),
                "out": str(where / "resseg" / "predictions"),
                "precision": args.precision,
            },
            where / "resseg",
            {},
        )
        print(f"{name}, seed {seed}: nnU-Net trains and predicts ...", file=sys.stderr, flush=True)
        env = {
            "nnUNet_raw": str(roots["nnUNet_raw"]),
            "nnUNet_preprocessed": str(roots["nnUNet_preprocessed"]),
            "nnUNet_results": str(where / "nnunet" / "nnUNet_results"),
            "nnUNet_n_proc_DA": str(args.workers),
            "nnUNet_compile": "f",  # resseg does not compile either
            "nnUNet_def_n_proc": str(max(args.workers, 1)),
        }
        tools["nnU-Net v2"] = run_child(
            "nnunet",
            str(args.nnunet_bin / "python"),
            {
                **job,
                "seed": seed,
                "preprocessed": str(nnunet_base),
                "out": str(where / "nnunet" / "predictions"),
                "weights_out": str(where / "nnunet" / "weights.pt"),
            },
            where / "nnunet",
            env,
        )
        if tools["resseg"]["weights_checksum"] != tools["nnU-Net v2"]["weights_checksum"]:
            raise SystemExit(f"seed {seed}: the two networks did not start from the same weights: {tools}")
        predictions = {
            tool: Path(where / key / "predictions")
            for tool, key in zip(TOOLS, ("resseg", "nnunet"), strict=True)
        }
        scores = evaluate(cohort, predictions, where, nnunet_base / f"{PLANS_NAME}.json", args)
        print(f"{name}, seed {seed}: each predicts with the other's weights", file=sys.stderr, flush=True)
        crossed = predict_crossed(where, {**job, "preprocessed": str(nnunet_base)}, env, args)
        runs[seed] = {"tools": tools, "scores": scores, "crossed": score_crossed(cohort, crossed, where)}
    labels = {value: label for value, label in plans.labels.items() if value != 0}
    return {"setting": setting, "plans": plans, "labels": labels, "runs": runs, "cohort": str(cohort)}


def predict_crossed(where: Path, job: dict, nnunet_env: dict, args: argparse.Namespace) -> dict:
    """Each tool's predictor with the weights the other tool trained (same network, same plan),
    so that training and prediction can be told apart: {trainer: folder of its masks}. resseg's
    predictor reads a model directory: resseg's, with nnU-Net's weights in it."""
    crossed = where / "crossed"
    model = crossed / "model"
    shutil.copytree(where / "resseg" / "model", model, ignore=shutil.ignore_patterns("checkpoints"))
    shutil.copy(where / "nnunet" / "weights.pt", model / "weights.pt")
    folders = {"nnU-Net v2": crossed / "resseg_predictor", "resseg": crossed / "nnunet_predictor"}
    run_child(
        "resseg_predict",
        sys.executable,
        {**job, "model": str(model), "out": str(folders["nnU-Net v2"]), "precision": args.precision},
        crossed,
        {},
    )
    run_child(
        "nnunet_predict",
        str(args.nnunet_bin / "python"),
        {**job, "weights": str(where / "resseg" / "model" / "weights.pt"), "out": str(folders["resseg"])},
        crossed,
        nnunet_env,
    )
    return folders


def score_crossed(cohort: Path, folders: dict, where: Path) -> dict:
    """resseg's evaluator over the crossed predictions: {trainer: {label name: {metric: value}}}."""
    from pipeline.config import EvaluateParams
    from pipeline.evaluate import stage

    return {
        trainer: resseg_scores(
            stage.run(
                EvaluateParams(),
                cohort / "labelsTs",
                folder,
                where / "evaluation" / f"crossed_{folder.name}",
                cohort / "dataset.json",
            )
        )
        for trainer, folder in folders.items()
    }


def build_cohort(name: str, setting: dict, args: argparse.Namespace) -> Path:
    """The cohort's folder, generated once per size."""
    if name == "synthetic":
        from preprocess_vs_nnunet import make_cohort

        from pipeline.config import SynthParams

        demo = SynthParams()  # the demo's field of view and spacing
        return make_cohort(
            args.work,
            setting["cases"],
            1.0,
            n_test=setting["test_cases"],
            field_of_view_mm=demo.field_of_view_mm,
            inplane_spacing_mm=demo.inplane_spacing_mm,
            slice_spacing_mm=demo.slice_spacing_mm,
        )
    low, high = setting["spacing"]
    cohort = args.work / f"mri_{setting['cases']}_{setting['test_cases']}_{low:g}-{high:g}mm"
    if not (cohort / "dataset.json").exists():
        command = [str(args.nnunet_bin / "python"), str(HERE / "mri_cohort.py"), "--out", str(cohort)]
        command += ["--train", str(setting["cases"]), "--test", str(setting["test_cases"])]
        subprocess.run([*command, "--spacing", str(low), str(high)], check=True, stdout=subprocess.DEVNULL)
    return cohort


def overlap() -> float:
    from pipeline.config import PredictParams

    return PredictParams().overlap


def run_child(kind: str, python: str, job: dict, folder: Path, env: dict) -> dict:
    """One step in a fresh process of the given Python; its result and its tree's peak RSS."""
    from inference import run_measured

    folder.mkdir(parents=True, exist_ok=True)
    job = {**job, "result": str(folder / f"{kind}.json"), "log": str(folder / f"{kind}.log")}
    job_path = folder / f"{kind}_job.json"
    job_path.write_text(json.dumps(job))
    command = [python, __file__, "--child", kind, "--job", str(job_path)]
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", OMP_WAIT_POLICY), **env}
    peaks = run_measured(command, env, folder / f"{kind}.stderr", pss=False)
    return {**json.loads(Path(job["result"]).read_text()), **peaks}


def evaluate(cohort: Path, predictions: dict, where: Path, nnunet_plans: Path, args) -> dict:
    """Both tools' masks scored by both evaluators: {evaluator: {tool: {label name: {metric: value}}}}."""
    from pipeline.config import EvaluateParams
    from pipeline.evaluate import stage

    scores = {"resseg": {}, "nnU-Net v2": {}}
    for tool, folder in predictions.items():
        out = where / "evaluation" / tool.split()[0].lower()
        metrics = stage.run(
            EvaluateParams(), cohort / "labelsTs", folder, out / "resseg", cohort / "dataset.json"
        )
        scores["resseg"][tool] = resseg_scores(metrics)
    # nnU-Net's evaluator, both folders in one process of its virtualenv.
    job = {
        "labels": str(cohort / "labelsTs"),
        "dataset_json": str(nnunet_plans.parent / "dataset.json"),
        "plans_json": str(nnunet_plans),
        "folders": {
            tool: [str(folder), str(where / "evaluation" / f"nnunet_{i}.json")]
            for i, (tool, folder) in enumerate(predictions.items())
        },
    }
    summaries = run_child("nnunet_evaluate", str(args.nnunet_bin / "python"), job, where / "evaluation", {})
    names = json.loads((cohort / "dataset.json").read_text())["labels"]
    scores["nnU-Net v2"] = {tool: nnunet_scores(summaries[tool], names) for tool in predictions}
    return scores


def resseg_scores(metrics: dict) -> dict:
    """Per label name, the mean Dice and HD95 (mm) over the test cases from resseg's metrics.json.

    Its ``segmentation`` section holds, per metric and label name, a summary whose ``mean``
    leaves out the cases where the metric is undefined (None when no case defines it); a bare
    number or a missing entry are read too, so that a change of convention cannot break this."""
    segmentation = metrics["segmentation"]

    def mean(metric: str, label: str) -> float | None:
        entry = segmentation.get(metric, {}).get(label)
        value = entry.get("mean") if isinstance(entry, dict) else entry
        return None if value is None or math.isnan(value) else float(value)

    return {
        label: {"dice": mean("dice", label), "hd95": mean("hd95_mm", label)} for label in segmentation["dice"]
    }


def nnunet_scores(summary: dict, names: dict) -> dict:
    """Per label name, the mean Dice over the test cases from nnU-Net's summary.json (NaN, a
    label absent from both masks of every case, as None)."""
    scores = {}
    for value, label in names.items():
        if value == "0":
            continue
        dice = summary["mean"].get(value, {}).get("Dice")
        scores[label] = {"dice": None if dice is None or math.isnan(dice) else float(dice)}
    return scores


# --- children ---------------------------------------------------------------------------------


def resseg_child(job: dict) -> dict:
    from training_vs_nnunet import checksum

    from pipeline.config import TrainParams, resolve_network
    from pipeline.models import train
    from pipeline.models.model_dir import ModelDescription

    # The checksum of the first network the train stage builds: its initial weights.
    built, build = [], ModelDescription.build

    def recording_build(self):
        network = build(self)
        if not built:
            built.append(checksum(network))
        return network

    ModelDescription.build = recording_build
    ends = record_iterations_resseg()
    params = TrainParams(
        model=job["preset"],
        iterations_per_epoch=job["iterations"],
        max_epochs=job["epochs"],
        val_every_n_epochs=job["epochs"] + 1,  # no validation: the last epoch's weights
        seed=job["seed"],
        num_workers=job["workers"],
        resume="never",
    )
    network = resolve_network(params, ROOT / "configs" / "models")
    started = time.perf_counter()
    train.run(params, network, 0, job["preprocessed"], job["splits"], job["model"], job["live"])
    train_seconds = time.perf_counter() - started
    ModelDescription.build = build
    iteration_ends = [end - started for end in ends]

    return {
        "train_seconds": train_seconds,
        "weights_checksum": built[0],
        "iteration_ends": iteration_ends,
        **resseg_predict_child(job),
    }


def resseg_predict_child(job: dict) -> dict:
    """``resseg predict``'s batch prediction of the test images with the model directory's weights."""
    from pipeline.config import DetectionParams, PredictParams
    from pipeline.infer import batch
    from pipeline.infer.predictor import Predictor

    started = time.perf_counter()
    predictor = Predictor.from_model_dir(
        Path(job["model"]),
        overlap=job["overlap"],
        sw_batch_size=PredictParams().sw_batch_size,
        device="auto",
        mirror=False,
        precision=job["precision"],
    )
    model = batch.model_identity(Path(job["model"]))
    result = batch.run(predictor, model, job["images"], job["out"], batch.BatchOptions(), DetectionParams())
    if result.failed:
        raise RuntimeError(f"resseg failed on {result.failed}; see {job['out']}/summary.csv")
    return {
        "predict_seconds": time.perf_counter() - started,
        "test_cases": result.n_scans,
        "precision": predictor.precision,
    }


def record_iterations_resseg() -> list[float]:
    """The clock at the end of every training iteration of the next Lightning Trainer built (a
    callback added to those the train stage gives it); nothing else changes."""
    import lightning as L

    ends, trainer_class = [], L.Trainer

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            ends.append(time.perf_counter())

    def trainer_with_clock(*args, callbacks=(), **kwargs):
        L.Trainer = trainer_class
        return trainer_class(*args, callbacks=[*callbacks, Clock()], **kwargs)

    L.Trainer = trainer_with_clock
    return ends


def nnunet_child(job: dict) -> dict:
    import random

    import numpy as np
    import torch
    from training_vs_nnunet import build_network, checksum, nnunet_trainer

    from pipeline.preprocess.plans import Plans

    seed = job["seed"]
    random.seed(seed)
    np.random.seed(seed)
    seed_loader_workers(seed)
    network = build_network(job["preset"], Plans.load(job["plans"]), seed)
    weights = checksum(network)
    started = time.perf_counter()
    trainer = nnunet_trainer(network, Path(job["preprocessed"]))
    trainer.num_epochs = job["epochs"]
    trainer.num_iterations_per_epoch = job["iterations"]
    trainer.num_val_iterations_per_epoch = VAL_ITERATIONS
    ends, train_step = [], trainer.train_step

    def clocked_train_step(batch: dict) -> dict:
        outputs = train_step(batch)
        ends.append(time.perf_counter())
        return outputs

    trainer.train_step = clocked_train_step
    trainer.run_training()
    train_seconds = time.perf_counter() - started
    iteration_ends = [end - started for end in ends]

    # The trainer trained ``network`` in place: its weights now are those nnU-Net saves as
    # checkpoint_final.pth, taken from memory rather than unpickled from that file, and kept
    # (tensors only) for resseg's predictor.
    torch.save(network.state_dict(), job["weights_out"])
    return {
        "train_seconds": train_seconds,
        "weights_checksum": weights,
        "iteration_ends": iteration_ends,
        **predict_nnunet(network, trainer, job),
    }


def nnunet_predict_child(job: dict) -> dict:
    """nnU-Net's predictor over the test images with the weights of ``job["weights"]`` (resseg's)."""
    import torch
    from training_vs_nnunet import build_network, nnunet_trainer

    from pipeline.preprocess.plans import Plans

    network = build_network(job["preset"], Plans.load(job["plans"]))
    network.load_state_dict(torch.load(job["weights"], map_location="cpu", weights_only=True))
    return predict_nnunet(network, nnunet_trainer(network, Path(job["preprocessed"])), job)


def predict_nnunet(network, trainer, job: dict) -> dict:
    """``nnUNetv2_predict -npp 1 -nps 1`` with ``network``'s weights and the trainer's plans."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    started = time.perf_counter()
    predictor = nnUNetPredictor(
        tile_step_size=1 - job["overlap"],
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=trainer.device.type != "cpu",
        device=trainer.device,
        allow_tqdm=False,
    )
    predictor.manual_initialization(
        network.eval(),
        trainer.plans_manager,
        trainer.configuration_manager,
        [network.state_dict()],
        trainer.dataset_json,
        type(trainer).__name__,
        None,
    )
    images = sorted(Path(job["images"]).glob("*.nii.gz"))
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    predictor.predict_from_files(
        [[str(image)] for image in images],
        [str(out / image.name.removesuffix(".nii.gz")) for image in images],
        num_processes_preprocessing=1,
        num_processes_segmentation_export=1,
    )
    return {
        "predict_seconds": time.perf_counter() - started,
        "test_cases": len(images),
        "precision": "fp16" if trainer.device.type == "cuda" else "fp32",
    }


def seed_loader_workers(seed: int) -> None:
    """Seeds for the worker processes of nnU-Net's data loaders, which it leaves unseeded
    (``seeds=None``): worker i of the k-th loader built gets seed*1000 + 100k + i. Nothing else
    of the loader changes."""
    import itertools

    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module

    loaders = itertools.count()
    base = trainer_module.NonDetMultiThreadedAugmenter

    class SeededAugmenter(base):
        def __init__(self, *args, num_processes: int, seeds=None, **kwargs):
            k = next(loaders)
            seeds = [seed * 1000 + 100 * k + i for i in range(num_processes)]
            super().__init__(*args, num_processes=num_processes, seeds=seeds, **kwargs)

    trainer_module.NonDetMultiThreadedAugmenter = SeededAugmenter


def nnunet_evaluate_child(job: dict) -> dict:
    """nnU-Net's evaluator (nnUNetv2_evaluate_folder's function) over each folder of masks."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder2

    summaries = {}
    for tool, (folder, output) in job["folders"].items():
        compute_metrics_on_folder2(
            job["labels"], folder, job["dataset_json"], job["plans_json"], output, num_processes=1
        )
        summaries[tool] = json.loads(Path(output).read_text())
    return summaries


# --- report -----------------------------------------------------------------------------------


def per_seed(result: dict, evaluator: str, tool: str, label: str, metric: str) -> list[float]:
    """Each seed's mean over the test cases (seeds where it is undefined left out)."""
    values = [run["scores"][evaluator][tool][label][metric] for run in result["runs"].values()]
    return [v for v in values if v is not None]


def mean_range(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    text = f"{statistics.mean(values):.{digits}f}"
    return text + (f" ({min(values):.{digits}f}-{max(values):.{digits}f})" if len(values) > 1 else "")


def difference(ours: list[float], theirs: list[float], digits: int) -> str:
    if not ours or not theirs:
        return "-"
    return f"{statistics.mean(ours) - statistics.mean(theirs):+.{digits}f}"


def paired_over_seeds(result: dict, label: str) -> str:
    """The seeds, the mean paired difference resseg - nnU-Net, its interval and p-value as table
    cells (each tool's own training and prediction)."""
    return paired_cells(result, label, ("resseg", "resseg"), ("nnU-Net v2", "nnU-Net v2"))


def paired_cells(result: dict, label: str, ours: tuple[str, str], theirs: tuple[str, str]) -> str:
    """Over the seeds, the Dice of the (trainer, predictor) ``ours`` less that of ``theirs``: the
    seeds, the mean difference, its bootstrap 95% interval and permutation p-value as cells."""
    from pipeline.evaluate.statistics import paired_difference

    pairs = [[dice(run, *theirs, label), dice(run, *ours, label)] for run in result["runs"].values()]
    pairs = [pair for pair in pairs if None not in pair]
    if len(pairs) < 2:
        return f"{len(pairs)} | - | - | -"
    theirs_dice, ours_dice = zip(*pairs, strict=True)
    paired = paired_difference(statistics.fmean, theirs_dice, ours_dice, n_resamples=10_000, seed=0)
    low, high = paired.interval.low, paired.interval.high
    return f"{len(pairs)} | {paired.difference:+.3f} | {low:+.3f} to {high:+.3f} | {paired.p_value:.2g}"


def dice(run: dict, trainer: str, predictor: str, label: str) -> float | None:
    """One seed's mean Dice (resseg's evaluator) of the weights ``trainer`` trained, predicted by
    ``predictor``; None where undefined or not measured (a run before the crossed predictions)."""
    if trainer == predictor:
        return run["scores"]["resseg"][trainer][label]["dice"]
    return run.get("crossed", {}).get(trainer, {}).get(label, {}).get("dice")


# Training and prediction apart, each a difference of two (trainer, predictor) pairs.
APART = (
    ("training, resseg's predictor", ("resseg", "resseg"), ("nnU-Net v2", "resseg")),
    ("training, nnU-Net's predictor", ("resseg", "nnU-Net v2"), ("nnU-Net v2", "nnU-Net v2")),
    ("prediction, resseg's weights", ("resseg", "resseg"), ("resseg", "nnU-Net v2")),
    ("prediction, nnU-Net's weights", ("nnU-Net v2", "resseg"), ("nnU-Net v2", "nnU-Net v2")),
)


def print_report(results: dict, args: argparse.Namespace, cores: int, seconds: float | None) -> None:
    """``seconds`` None: the report of earlier runs (--report)."""
    import torch

    device = "CUDA" if torch.cuda.is_available() else "CPU"
    seeds = " ".join(map(str, args.seeds))
    when = f"{seconds / 60:.1f} min" if seconds is not None else f"from {' '.join(map(str, args.report))}"
    print(
        f"\nbenchmarks/accuracy_vs_nnunet.py{' --quick' if args.quick else ''} --cohort {args.cohort} "
        f"--seeds {seeds}, {date.today().isoformat()}, {when}; {device} "
        f"({platform.machine()}, {cores} cores); preset {args.preset}; {args.epochs} epochs x "
        f"{args.iterations} iterations; {args.workers} loader workers each; predict overlap {overlap():g}, "
        f"no mirroring"
    )
    print(
        "\nMean over seeds of each seed's mean over the test cases (range over seeds); "
        "difference resseg - nnU-Net.\n"
    )
    print(
        "| cohort | label | Dice, resseg | Dice, nnU-Net | diff | HD95 mm, resseg | HD95 mm, nnU-Net | diff "
        "| nnU-Net's evaluator: Dice, resseg | Dice, nnU-Net | diff |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cohort, result in results.items():
        for label in result["labels"].values():
            cells = []
            for evaluator, metric, digits in (
                ("resseg", "dice", 3),
                ("resseg", "hd95", 1),
                ("nnU-Net v2", "dice", 3),
            ):
                ours, theirs = (per_seed(result, evaluator, tool, label, metric) for tool in TOOLS)
                cells += [
                    mean_range(ours, digits),
                    mean_range(theirs, digits),
                    difference(ours, theirs, digits),
                ]
            print(f"| {cohort} | {label} | " + " | ".join(cells) + " |")

    print(
        "\nPaired by seed (both tools start from the seed's weights): mean of resseg - nnU-Net, its "
        "bootstrap 95% interval over seeds, and the two-sided permutation p-value (exact up to 13 "
        "seeds), by resseg's evaluator.\n"
    )
    print("| cohort | label | seeds | Dice, resseg - nnU-Net | 95% interval | p |")
    print("|---|---|---:|---:|---|---:|")
    for cohort, result in results.items():
        for label in result["labels"].values():
            print(f"| {cohort} | {label} | " + paired_over_seeds(result, label) + " |")

    print(
        "\nTraining and prediction apart: each seed's two trained networks, each predicted by both "
        "tools. Training: resseg's weights - nnU-Net's under one predictor; prediction: resseg's "
        "predictor - nnU-Net's on the same weights. Paired by seed as above.\n"
    )
    print("| cohort | label | comparison | seeds | Dice difference | 95% interval | p |")
    print("|---|---|---|---:|---:|---|---:|")
    for cohort, result in results.items():
        for label in result["labels"].values():
            for comparison, ours, theirs in APART:
                cells = paired_cells(result, label, ours, theirs)
                print(f"| {cohort} | {label} | {comparison} | {cells} |")

    print(
        "\n| cohort | cases (train + test) | plan | tool | train s, median (range) "
        "| s to the first iteration | s / iteration "
        "| predict s / test case, median (range) | peak RSS GiB | prediction precision | other load (cores) |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---|---:|")
    for cohort, result in results.items():
        plans, setting = result["plans"], result["setting"]
        plan = (
            f"{'x'.join(f'{s:.2g}' for s in plans.target_spacing)} mm, patch "
            f"{'x'.join(map(str, plans.patch_size))}, batch {plans.batch_size}, {plans.channel_names[0]}"
        )
        for tool in TOOLS:
            runs = [run["tools"][tool] for run in result["runs"].values()]
            train = [r["train_seconds"] for r in runs]
            predict = [r["predict_seconds"] / r["test_cases"] for r in runs]
            per_iteration = statistics.median(statistics.median(iteration_seconds(r)) for r in runs)
            startup = statistics.median(r["iteration_ends"][0] for r in runs)
            print(
                f"| {cohort} | {setting['cases']} + {setting['test_cases']} | {plan} | {tool} "
                f"| {median_range(train, 0)} | {startup:.0f} | {per_iteration:.2f} "
                f"| {median_range(predict, 1)} | {max(r['peak_rss_bytes'] for r in runs) / 2**30:.2f} "
                f"| {runs[0]['precision']} | {statistics.mean(r['other_cores'] for r in runs):.2f} |"
            )


def iteration_seconds(run: dict) -> list[float]:
    """The seconds between the ends of successive training iterations (each one's data included)."""
    ends = run["iteration_ends"]
    return [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)] or [ends[0]]


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def median_range(values: list[float], digits: int) -> str:
    text = f"{statistics.median(values):.{digits}f}"
    return text + (f" ({min(values):.{digits}f}-{max(values):.{digits}f})" if len(values) > 1 else "")


def suite_rows(results: dict, args: argparse.Namespace) -> list:
    """Per cohort and label: Dice and HD95 (resseg's evaluator) and Dice (nnU-Net's) of resseg
    against nnU-Net, one value per seed; per cohort: seconds to train and to predict a case."""
    rows = []
    schedule = (
        f"{args.preset}, {args.epochs}x{args.iterations} iterations, seeds {' '.join(map(str, args.seeds))}"
    )
    for cohort, result in results.items():
        note = f"{result['setting']['cases']} + {result['setting']['test_cases']} cases; {schedule}"
        for label in result["labels"].values():
            for evaluator, metric, name, higher in (
                ("resseg", "dice", "Dice", True),
                ("resseg", "hd95", "HD95 mm", False),
                ("nnU-Net v2", "dice", "Dice by nnU-Net's evaluator", True),
            ):
                ours, theirs = (per_seed(result, evaluator, tool, label, metric) for tool in TOOLS)
                if ours:
                    rows.append(
                        measured(
                            "accuracy",
                            f"{name}, {cohort} {label}",
                            ours,
                            theirs or None,
                            against="nnU-Net v2" if theirs else None,
                            higher_is_better=higher,
                            device=device(),
                            note=note,
                        )
                    )
        runs = list(result["runs"].values())
        for key, measure in (
            ("train_seconds", "s, training"),
            ("predict_seconds", "s / test case, prediction"),
        ):
            per_case = key == "predict_seconds"

            def seconds(tool: str, key=key, per_case=per_case, runs=runs) -> list[float]:
                return [
                    r["tools"][tool][key] / (r["tools"][tool]["test_cases"] if per_case else 1) for r in runs
                ]

            rows.append(
                measured(
                    "accuracy",
                    f"{measure}, {cohort}",
                    seconds("resseg"),
                    seconds("nnU-Net v2"),
                    against="nnU-Net v2",
                    resseg_peak_gib=max(r["tools"]["resseg"]["peak_rss_bytes"] for r in runs) / 2**30,
                    reference_peak_gib=max(r["tools"]["nnU-Net v2"]["peak_rss_bytes"] for r in runs) / 2**30,
                    device=device(),
                    note=note,
                )
            )
    return rows


CHILDREN = {
    "resseg": resseg_child,
    "resseg_predict": resseg_predict_child,
    "nnunet": nnunet_child,
    "nnunet_predict": nnunet_predict_child,
    "nnunet_evaluate": nnunet_evaluate_child,
}

if __name__ == "__main__":
    from inference import run_script

    run_script(main, parse_args, CHILDREN)
