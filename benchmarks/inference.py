"""Inference on clinical-size scans: resseg's batch prediction against nnU-Net v2's predictor,
same scans, same network and weights, same plan, in one run.

    python benchmarks/inference.py [--quick] [--scans 3] [--scale 1.0] [--preset resunet_small]
                                   [--sw-batch-size N] [--precision auto fp32]
                                   [--nnunet-modes pipelined sequential] [--pss] [--device cpu|cuda]
                                   [--load K] [--json PATH] [--rows PATH]

The scans are resseg's synthetic CT (about 512x512x100 voxels at 0.8x0.8x2.5 mm for --scale 1;
a body, an organ and lesions), generated once into --work. resseg plans them as its preprocess
stage would (median spacing, patch size, CT clipping and z-scoring from the cohort's
foreground) and saves a model directory holding the preset with random weights (timing does
not depend on them). Then, each in a fresh process:

- resseg: ``pipeline.infer.batch.run`` over the folder of scans, as ``resseg predict`` runs it
  (one scan read ahead, writing behind; the predict defaults unless --overlap or
  --sw-batch-size say otherwise; no mirroring), once per --precision of the network's arithmetic
  (default: auto, which is bfloat16 on CPUs with native bfloat16, and fp32), without the review
  columns and calibration; and once more at the first precision with them (the model directory
  then keeps the scans' cohort profile and a calibration.json, as a trained model does), which
  gives their cost as a ratio of the two runs;
- nnU-Net: ``nnUNetPredictor`` over the same files (Gaussian blending, no mirroring), given
  the same network built from the same model directory, and an nnU-Net plan with the same
  target spacing, patch size, axis order and CT normalisation; tile_step_size = 1 - overlap.
  Twice: ``predict_from_files`` as nnUNetv2_predict runs it (one process reading and
  preprocessing ahead, one resampling and writing behind: -npp 1 -nps 1), and
  ``predict_from_files_sequential`` (everything in one process). On CPU nnU-Net computes in
  float32 (it autocasts only on CUDA).

With --load K, every tool is measured twice: idle, then again while K processes of the script's
own keep a core busy each (benchmarks/load.py), as another job on a shared server would; the
report and the suite's rows set each tool's loaded figure against its idle one, and resseg's
against nnU-Net's under the same load.

Seconds per scan are the intervals between successive scans' completions (the first counted from
the start of the batch, after the model is loaded); the network time is the time spent inside
the network's forward calls (module hooks), and everything else (reading, preprocessing,
sliding-window blending, resampling back, writing) is the share outside the network. Peak
memory is the largest summed RSS of the process tree, sampled every 0.1 s (with --pss, its PSS
too). nnU-Net runs from its own virtualenv, with MONAI added so that it can build resseg's
network (benchmarks/README.md shows how); without it, only resseg is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from datetime import date
from pathlib import Path

from load import busy_cores
from rows import measured, write_rows

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# This tree's own code, wherever the virtualenv's editable install points (nnU-Net's virtualenv
# has no resseg installed at all).
sys.path.insert(0, str(ROOT))
NNUNET_PYTHON = HERE / ".venv-nnunet" / "bin" / "python"
PRESET_DIR = ROOT / "configs" / "models"
CONFIGURATION = "3d_fullres"
# resseg's normalisation schemes (plans.ChannelNormalization) as nnU-Net's classes.
NNUNET_NORMALIZATION = {"ct": "CTNormalization", "zscore": "ZScoreNormalization"}
# nnU-Net's two ways through a folder: nnUNetv2_predict's (a process reading and preprocessing
# ahead, another resampling and writing behind), and everything in the calling process.
NNUNET_MODES = {"pipelined": "nnU-Net v2", "sequential": "nnU-Net v2, sequential"}


def main(args: argparse.Namespace) -> None:
    from preprocess_vs_nnunet import make_cohort

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    cohort = make_cohort(args.work, args.scans, args.scale)
    scans = link_scans(cohort, args.work / f"scans_{args.scans}_{args.scale:g}")
    plans = plan(cohort)
    model_dir = args.work / f"model_{args.preset}_{args.scans}_{args.scale:g}"
    save_model(model_dir, plans, args.preset, cohort)
    job = {"scans": str(scans), "model": str(model_dir), "overlap": args.overlap, "device": args.device}
    resseg_job = {**job, "sw_batch_size": args.sw_batch_size}

    results = measure_tools(args, scans, plans, resseg_job)
    print_report(results, plans, args)
    rows = suite_rows(results, args)
    if args.load:
        with busy_cores(args.load):
            loaded = measure_tools(args, scans, plans, resseg_job, suffix="_loaded")
        print(f"\nWith {args.load} of {usable_cpus()} cores kept busy by other processes:")
        print_report(loaded, plans, args)
        print_load_report(results, loaded, args)
        rows += load_rows(results, loaded, args)
    if args.json:
        args.json.write_text(
            json.dumps({"idle": results, "loaded": loaded} if args.load else results, indent=2)
        )
    if args.rows:
        write_rows(args.rows, rows)


def measure_tools(args: argparse.Namespace, scans: Path, plans, resseg_job: dict, suffix: str = "") -> dict:
    """Each resseg precision, resseg with the review, and each nnU-Net mode, one process each."""
    results = {}
    for precision in args.precision:
        job = {**resseg_job, "precision": precision, "review": False}
        name = f"resseg_{precision}{suffix}"
        result = run_tool("resseg", sys.executable, job, args.work, args.pss, name)
        results[f"resseg, {result['precision']}"] = result
    job = {**resseg_job, "precision": args.precision[0], "review": True}
    name = f"resseg_{args.precision[0]}_review{suffix}"
    result = run_tool("resseg", sys.executable, job, args.work, args.pss, name)
    results[f"resseg, {result['precision']}, review and calibration"] = result
    if not args.nnunet_python.exists():
        print(f"nnU-Net not found at {args.nnunet_python}; measuring resseg only", file=sys.stderr)
        return results
    nnunet_dir = args.work / "nnunet"
    write_nnunet_plan(nnunet_dir, plans, Path(resseg_job["model"]), len(list(scans.iterdir())))
    files = {"plans": str(nnunet_dir / "plans.json"), "dataset": str(nnunet_dir / "dataset.json")}
    for mode in args.nnunet_modes:
        nnunet_job = {**job, **files, "mode": mode}
        python = str(args.nnunet_python)
        results[NNUNET_MODES[mode]] = run_tool(
            "nnunet", python, nnunet_job, args.work, args.pss, mode + suffix
        )
    return results


def print_load_report(idle: dict, loaded: dict, args: argparse.Namespace) -> None:
    """Each tool's median seconds per scan idle and loaded, and resseg's loaded against nnU-Net's."""
    print(f"\nidle against {args.load} of {usable_cpus()} cores busy (median s / scan):\n")
    print("| tool | idle | loaded | loaded / idle | other load while loaded (cores) |")
    print("|---|---:|---:|---:|---:|")
    for tool in idle:
        before, after = (statistics.median(r[tool]["scan_seconds"]) for r in (idle, loaded))
        others = loaded[tool]["other_cores"]
        print(f"| {tool} | {before:.1f} | {after:.1f} | x{after / before:.2f} | {others:.2f} |")
    resseg = next(iter(idle))  # the first --precision: the one the goals judge
    slowdown = statistics.median(loaded[resseg]["scan_seconds"]) / statistics.median(
        idle[resseg]["scan_seconds"]
    )
    theirs = [tool for tool in loaded if not tool.startswith("resseg")]
    against = {
        tool: statistics.median(loaded[resseg]["scan_seconds"])
        / statistics.median(loaded[tool]["scan_seconds"])
        for tool in theirs
    }
    worst = max(against.values(), default=None)
    print(
        f"\ngoals ({resseg}, loaded): at most 2.2x its idle seconds per scan: {met(slowdown <= 2.2)} "
        f"(x{slowdown:.2f})"
        + (
            ""
            if worst is None
            else f"; at most 0.5x nnU-Net's under the same load: {met(worst <= 0.5)} (x{worst:.2f})"
        )
    )


def load_rows(idle: dict, loaded: dict, args: argparse.Namespace) -> list:
    """Under load: each resseg run against each nnU-Net mode under the same load, and each tool
    loaded against itself idle, for benchmarks/suite.py."""
    busy = f"{args.load} of {usable_cpus()} cores busy"
    n_scans = len(next(iter(idle.values()))["scan_seconds"])
    note = f"{n_scans} scans at --scale {args.scale:g}, {args.preset}; {busy}"
    ours = [tool for tool in loaded if tool.startswith("resseg") and "review" not in tool]
    theirs = [tool for tool in loaded if not tool.startswith("resseg")]
    judged = ours[0]  # the first --precision: the one the goals judge

    def goal(tool: str, text: str) -> str:
        return f"{note}; goal: {text}" if tool == judged else note

    rows = [
        measured(
            "inference",
            f"s / scan, {tool.removeprefix('resseg, ')}, {busy}",
            loaded[tool]["scan_seconds"],
            idle[tool]["scan_seconds"],
            against=f"{tool}, idle",
            note=goal(tool, "under 2.2x"),
        )
        for tool in ours + theirs
    ]
    rows += [
        measured(
            "inference",
            f"s / scan, {mine.removeprefix('resseg, ')}, {busy}",
            loaded[mine]["scan_seconds"],
            loaded[tool]["scan_seconds"],
            against=f"{tool}, {busy}",
            note=goal(mine, "under 0.5x"),
        )
        for mine in ours
        for tool in theirs
    ]
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, help="default 3 (--quick: 2)")
    parser.add_argument(
        "--scale", type=float, help="linear size factor of every scan; default 1 (--quick: 0.5)"
    )
    parser.add_argument("--preset", default="resunet_small", help="network preset in configs/models/")
    parser.add_argument("--overlap", type=float, help="sliding-window overlap; default predict.overlap")
    parser.add_argument(
        "--sw-batch-size", type=int, help="resseg's windows per forward; default predict.sw_batch_size"
    )
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=["auto", "fp32", "bf16", "fp16"],
        default=["auto", "fp32"],
        help="resseg's network arithmetic, one run each (default: auto fp32); the first is judged",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where both tools run the network")
    parser.add_argument("--quick", action="store_true", help="two half-size scans: about a minute")
    parser.add_argument("--work", type=Path, default=Path("/tmp/resseg-bench-inference"))
    parser.add_argument("--nnunet-python", type=Path, default=NNUNET_PYTHON)
    parser.add_argument(
        "--nnunet-modes",
        nargs="+",
        choices=list(NNUNET_MODES),
        default=list(NNUNET_MODES),
        help="default: both",
    )
    parser.add_argument(
        "--load",
        type=int,
        default=0,
        help="also measure every tool again while this many processes of our own keep a core busy each",
    )
    parser.add_argument("--pss", action="store_true", help="also the peak PSS (slows the tools: memory only)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--rows", type=Path, help="also write the suite's rows here (benchmarks/rows.py)")
    parser.add_argument("--child", choices=["resseg", "nnunet"], help=argparse.SUPPRESS)
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return args
    for key, (quick, full) in {"scans": (2, 3), "scale": (0.5, 1.0)}.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    from pipeline.config import PredictParams

    args.overlap = PredictParams().overlap if args.overlap is None else args.overlap
    args.sw_batch_size = args.sw_batch_size or PredictParams().sw_batch_size
    return args


def link_scans(cohort: Path, folder: Path) -> Path:
    """The cohort's training images as a folder of scans, named as nnU-Net expects them
    (``<case>_0000.nii.gz``; resseg drops the suffix of a one-channel model)."""
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for image in sorted((cohort / "imagesTr").glob("*.nii.gz")):
            name = image.name.removesuffix(".nii.gz")
            (folder / f"{name}_0000.nii.gz").symlink_to(image.resolve())
    return folder


def plan(cohort_dir: Path):
    """resseg's plan for these scans, as its preprocess stage makes it (the default parameters)."""
    from pipeline.cohort.dataset import load_cohort
    from pipeline.config import PreprocessParams
    from pipeline.preprocess.fingerprint import combine, fingerprint_case
    from pipeline.preprocess.planner import make_plans
    from pipeline.preprocess.plans import Plans
    from pipeline.review.profile import PROFILE_JSON, CohortProfile

    path = cohort_dir / "benchmark_plans.json"
    if not path.exists():
        params = PreprocessParams()
        cohort = load_cohort(cohort_dir)
        fingerprints = [
            fingerprint_case(case, 1, cohort.labels, seed) for seed, case in enumerate(cohort.training)
        ]
        fingerprint = combine(fingerprints, tuple(params.clip_percentiles))
        make_plans(fingerprint, cohort.channel_names, cohort.labels, params).save(path)
        profile = CohortProfile.build(
            [f.description for f in fingerprints], [f.label_features for f in fingerprints], []
        )
        profile.save(cohort_dir / PROFILE_JSON)
    return Plans.load(path)


def save_model(model_dir: Path, plans, preset: str, cohort_dir: Path) -> None:
    """A model directory as training and the calibrate stage write it, holding the preset with
    random weights, the scans' cohort profile, and a calibration whose temperature is made up (its
    arithmetic is the same for any temperature but 1)."""
    import torch

    from pipeline.config import TrainParams, resolve_network
    from pipeline.io import write_json
    from pipeline.models.model_dir import MODEL_JSON, ModelDescription, save_fold
    from pipeline.review.model_calibration import CALIBRATION_JSON
    from pipeline.review.profile import PROFILE_JSON, CohortProfile

    fold = model_dir / "fold_0"
    if (fold / MODEL_JSON).exists():
        return
    description = ModelDescription(
        resolve_network(TrainParams(model=preset), PRESET_DIR), plans, plans.patch_size
    )
    torch.manual_seed(0)
    profile = CohortProfile.load(cohort_dir / PROFILE_JSON)
    save_fold(fold, description, description.build().eval(), profile, fold=0)
    write_json(model_dir / CALIBRATION_JSON, {"temperature": 1.5, "uncertainty": {"limit": 0.5}})


def write_nnunet_plan(folder: Path, plans, model_dir: Path, n_scans: int) -> None:
    """nnU-Net's plans.json and dataset.json for resseg's plan: same target spacing, patch size
    and normalisation (CT: the same clipping and statistics; other channels: z-scored per case
    over the non-zero region, nnU-Net's ZScoreNormalization with its mask); resampling as
    nnU-Net's own planner sets it for thick slices (third order in-plane, nearest along z;
    linear for probabilities).

    nnU-Net reads arrays as (z, y, x); its transpose_forward turns them to resseg's (x, y, z), so
    that the network sees windows of the very same shape. Fed (z, y, x) windows one at a time, the
    same network ran 1.4-1.7x slower per window on the development machine's CPU, which has
    nothing to do with either pipeline.
    """
    folder.mkdir(parents=True, exist_ok=True)
    spacing = list(plans.target_spacing)
    patch = list(plans.patch_size)
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    configuration = {
        "data_identifier": f"resseg_{CONFIGURATION}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": plans.batch_size,
        "patch_size": patch,
        "median_image_size_in_voxels": patch,  # unused by inference
        "spacing": spacing,
        "normalization_schemes": [NNUNET_NORMALIZATION[norm.scheme] for norm in plans.normalization],
        "use_mask_for_norm": [norm.scheme == "zscore" for norm in plans.normalization],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": resampling,
        "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
        # The network is given to the predictor, built by resseg from the model directory.
        "architecture": {"network_class_name": str(model_dir), "arch_kwargs": {}, "_kw_requires_import": []},
        "batch_dice": True,
    }
    nnunet_plans = {
        "dataset_name": "Dataset500_Bench",
        "plans_name": "resseg",
        "original_median_spacing_after_transp": spacing,
        "original_median_shape_after_transp": patch,
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [2, 1, 0],
        "transpose_backward": [2, 1, 0],
        "configurations": {CONFIGURATION: configuration},
        "experiment_planner_used": "benchmarks/inference.py",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(channel): intensity_properties(norm) for channel, norm in enumerate(plans.normalization)
        },
    }
    dataset = {
        "channel_names": {str(channel): name for channel, name in enumerate(plans.channel_names)},
        "labels": {name: value for value, name in plans.labels.items()},
        "numTraining": n_scans,
        "file_ending": ".nii.gz",
    }
    (folder / "plans.json").write_text(json.dumps(nnunet_plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))


def intensity_properties(norm) -> dict:
    """What nnU-Net's CTNormalization reads: resseg's clipping range and statistics (nnU-Net's
    ZScoreNormalization reads nothing)."""
    if norm.scheme != "ct":
        return {}
    return {
        "mean": norm.mean,
        "std": norm.std,
        "percentile_00_5": norm.clip_low,
        "percentile_99_5": norm.clip_high,
        "min": norm.clip_low,
        "max": norm.clip_high,
        "median": norm.mean,
    }


def run_tool(tool: str, python: str, job: dict, work: Path, pss: bool, name: str = "resseg") -> dict:
    """One tool over the scans in a fresh process: its own timings, and its tree's peak memory."""
    out = work / f"out_{name}"
    shutil.rmtree(out, ignore_errors=True)
    job = {**job, "out": str(out), "result": str(work / f"{name}.json"), "log": str(work / f"{name}.log")}
    job_path = work / f"{name}_job.json"
    job_path.write_text(json.dumps(job))
    # nnU-Net's default of 8 torch threads per process (export workers included) is for larger
    # machines; both tools get one thread per core here.
    env = {**os.environ, "nnUNet_def_n_proc": str(usable_cpus())}
    roots = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
    env.update({name: str(work / "nnunet" / name) for name in roots})  # unused; set to silence warnings
    print(
        f"{name}: predicting {len(list(Path(job['scans']).iterdir()))} scans ...", file=sys.stderr, flush=True
    )
    command = [python, __file__, "--child", tool, "--job", str(job_path)]
    peaks = run_measured(command, env, work / f"{name}.stderr", pss)
    return {**json.loads(Path(job["result"]).read_text()), **peaks}


def run_measured(command: list[str], env: dict, stderr: Path, pss: bool) -> dict:
    """The peak summed RSS of the process tree, sampled every 0.1 s, as in
    preprocess_vs_nnunet.run_measured; with ``pss``, its peak summed PSS too, where pages that
    several processes of the tree share (libraries, a forked process's copy-on-write pages)
    count once, not once per process. Reading a torch process's PSS takes tens of milliseconds
    of kernel time, which slows the measured tools by some 20%: --pss is for memory only.

    Also how many cores other work on the machine kept busy meanwhile, on average: a shared
    machine slows whichever tool runs at that moment."""
    import psutil
    from preprocess_vs_nnunet import tree_rss

    before, started = cpu_seconds(), time.perf_counter()
    with stderr.open("w") as errors:
        process = psutil.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        peak_rss, peak_pss = 0, 0 if pss else None
        while process.poll() is None:
            peak_rss = max(peak_rss, tree_rss(process))
            if pss:
                peak_pss = max(peak_pss, tree_pss(process))
            time.sleep(0.1)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr.read_text()[-3000:]}")
    after, wall = cpu_seconds(), time.perf_counter() - started
    others = (after["machine"] - before["machine"]) - (after["ours"] - before["ours"])
    return {"peak_rss_bytes": peak_rss, "peak_pss_bytes": peak_pss, "other_cores": max(others, 0) / wall}


def cpu_seconds() -> dict:
    """Busy CPU seconds of the whole machine, and of this process and its waited-for descendants."""
    import resource

    import psutil

    times = psutil.cpu_times()
    ours = sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )
    return {"machine": sum(times) - times.idle - getattr(times, "iowait", 0.0), "ours": ours}


def tree_pss(process) -> int:
    import psutil

    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_full_info().pss
        except psutil.Error:  # exited between listing and sampling
            continue
    return total


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class NetworkTimer:
    """Seconds spent inside the network's forward calls, and the windows it saw."""

    def __init__(self, network):
        self.seconds, self.windows, self._started = 0.0, 0, 0.0
        network.register_forward_pre_hook(self._start)
        network.register_forward_hook(self._stop)

    def _start(self, module, inputs) -> None:
        self._started = time.perf_counter()

    def _stop(self, module, inputs, output) -> None:
        self.seconds += time.perf_counter() - self._started
        self.windows += inputs[0].shape[0]


class StageTimer:
    """Summed seconds per named step of resseg's inference, from any thread."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def wrap(self, name: str, function):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[name] += time.perf_counter() - started

        return timed


def run_child(measure: Callable[[dict], dict], job: dict) -> None:
    """Measure one tool in this process and write its figures to job["result"]; the log takes
    what the tool prints (a pipe left unread could block it). training_vs_nnunet.py's children
    run here too."""
    with open(job["log"], "w") as log:
        sys.stdout = sys.stderr = log
        try:
            result = measure(job)
        except BaseException:
            traceback.print_exc(file=sys.__stderr__)
            sys.exit(1)
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    Path(job["result"]).write_text(json.dumps(result))


def resseg_child(job: dict) -> dict:
    from pipeline.threads import cpu_budget, limit_threads

    limit_threads(cpu_budget().cores)  # as `resseg predict` does, before torch is imported
    from pipeline.config import DetectionParams
    from pipeline.infer import batch
    from pipeline.infer.predictor import Predictor
    from pipeline.review.flags import Reviewer

    model, scans, out = Path(job["model"]), Path(job["scans"]), Path(job["out"])
    predictor = Predictor.from_model_dir(
        model,
        calibrate=job["review"],
        overlap=job["overlap"],
        sw_batch_size=job["sw_batch_size"],
        device=job["device"],
        mirror=False,
        precision=job["precision"],
    )
    (network,) = predictor.networks
    timer = NetworkTimer(network)
    stages = StageTimer()
    # Timers around the steps of batch.py and predictor.py, for the breakdown; they change nothing else.
    batch._timed_read = stages.wrap("read (reader thread)", batch._timed_read)
    predictor.predict = stages.wrap("predict", predictor.predict)
    predictor.preprocess_loaded = stages.wrap("preprocess", predictor.preprocess_loaded)
    predictor._window_probabilities = stages.wrap("sliding window", predictor._window_probabilities)
    predictor.inverse = stages.wrap("resample back", predictor.inverse)
    batch.write_outputs = stages.wrap("write (writer thread)", batch.write_outputs)
    batch._ScanStep._report = stages.wrap("volumes report (writer thread)", batch._ScanStep._report)

    reviewer = Reviewer.from_model_dir(model) if job["review"] else None
    if reviewer is not None:
        Reviewer.review = stages.wrap("review (cohort features)", Reviewer.review)
    started_at, started = time.time(), time.perf_counter()
    result = batch.run(
        predictor, batch.model_identity(model), scans, out, batch.BatchOptions(), DetectionParams(), reviewer
    )
    wall = time.perf_counter() - started
    if result.failed:
        raise RuntimeError(f"resseg failed on {result.failed}; see {out / 'summary.csv'}")
    # A scan is complete when its record is written, after its outputs.
    done = [p.stat().st_mtime - started_at for p in (out / batch.RECORDS_FOLDER).glob("*.json")]
    settings = {"sw_batch_size": predictor.sw_batch_size, "precision": predictor.precision}
    return summary(wall, done, timer, settings, dict(stages.seconds))


def nnunet_child(job: dict) -> dict:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from pipeline.models.model_dir import load_description, load_fold_networks

    model, scans, out = Path(job["model"]), Path(job["scans"]), Path(job["out"])
    (network,) = load_fold_networks(model, load_description(model))
    timer = NetworkTimer(network)
    plans_manager = PlansManager(json.loads(Path(job["plans"]).read_text()))
    predictor = nnUNetPredictor(
        tile_step_size=1 - job["overlap"],
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=job["device"] != "cpu",
        device=torch.device(job["device"]),
        allow_tqdm=False,
    )
    predictor.manual_initialization(
        network,
        plans_manager,
        plans_manager.get_configuration(CONFIGURATION),
        [network.state_dict()],
        json.loads(Path(job["dataset"]).read_text()),
        "nnUNetTrainer",
        None,
    )
    # The files as lists: given a folder, nnU-Net would list it with a pool of 12 forked processes,
    # whose copy-on-write pages inflate a summed RSS.
    images = sorted(scans.glob("*_0000.nii.gz"))
    outputs = [str(out / image.name.removesuffix("_0000.nii.gz")) for image in images]
    out.mkdir(parents=True)  # the sequential mode expects it
    started_at, started = time.time(), time.perf_counter()
    if job["mode"] == "pipelined":
        predictor.predict_from_files(
            [[str(image)] for image in images],
            outputs,
            num_processes_preprocessing=1,
            num_processes_segmentation_export=1,
        )
    else:
        predictor.predict_from_files_sequential([[str(image)] for image in images], outputs)
    wall = time.perf_counter() - started
    done = [p.stat().st_mtime - started_at for p in out.glob("*.nii.gz")]
    precision = "fp16" if job["device"].startswith("cuda") else "fp32"  # nnU-Net autocasts on CUDA only
    return summary(wall, done, timer, {"sw_batch_size": 1, "precision": precision}, {})


def summary(wall: float, done: list[float], timer: NetworkTimer, settings: dict, stages: dict) -> dict:
    import torch

    done = sorted(done)
    return {
        "wall_seconds": wall,
        "scan_seconds": [b - a for a, b in zip([0.0, *done[:-1]], done, strict=True)],
        "network_seconds": timer.seconds,
        "windows": timer.windows,
        "torch_threads": torch.get_num_threads(),
        "stages": stages,
        **settings,
    }


def print_report(results: dict, plans, args: argparse.Namespace) -> None:
    import platform

    ours = {tool: r for tool, r in results.items() if tool.startswith("resseg")}
    theirs = {tool: r for tool, r in results.items() if tool not in ours}
    resseg = next(iter(ours.values()))  # the first --precision: the one the goals judge
    n_scans = len(resseg["scan_seconds"])
    print(
        f"\n{n_scans} scans at --scale {args.scale:g}; plan: {list(plans.target_spacing)} mm, patch "
        f"{plans.patch_size}; preset {args.preset}; overlap {args.overlap:g}, Gaussian blending, "
        f"no mirroring; CPU ({platform.machine()}, {usable_cpus()} cores), "
        f"torch threads {resseg['torch_threads']}"
    )
    print(f"benchmarks/inference.py{' --quick' if args.quick else ''}, {date.today().isoformat()}\n")
    pss = " peak PSS, summed (GiB) |" if args.pss else ""
    print(
        "| tool | s / scan, median (range) | s / scan, mean | network s / scan | outside the network "
        f"| windows / scan | peak RSS, summed (GiB) |{pss} other load (cores) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|" + "---:|" * (2 if args.pss else 1))
    for tool, r in results.items():
        seconds = r["scan_seconds"]
        pss = f" {r['peak_pss_bytes'] / 2**30:.2f} |" if args.pss else ""
        print(
            f"| {tool} | {statistics.median(seconds):.1f} ({min(seconds):.1f}-{max(seconds):.1f}) | "
            f"{r['wall_seconds'] / n_scans:.1f} | {r['network_seconds'] / n_scans:.1f} | {outside(r):.0%} | "
            f"{r['windows'] / n_scans:.0f} (batches of {r['sw_batch_size']}, {r['precision']}) | "
            f"{r['peak_rss_bytes'] / 2**30:.2f} |{pss} {r['other_cores']:.2f} |"
        )
    for tool, r in ours.items():
        print(f"\n{tool}, its steps (s / scan, summed over threads; read and write overlap the rest):\n")
        print("| step | s / scan | of the wall time |")
        print("|---|---:|---:|")
        for name, seconds in resseg_steps(r).items():
            print(f"| {name} | {seconds / n_scans:.2f} | {seconds / r['wall_seconds']:.0%} |")
    reviewed, plain = review_pair(results)
    cost = statistics.median(reviewed["scan_seconds"]) / statistics.median(plain["scan_seconds"]) - 1
    print(
        f"\nreview columns and calibration add {cost:+.1%} to resseg's median seconds per scan "
        "(goal: under 10%)"
    )
    if not theirs:
        return
    print("\nresseg / nnU-Net:\n")
    print(
        "| resseg | against | s / scan, median | s / scan, mean | network s | peak RSS |"
        + " peak PSS |" * args.pss
    )
    print("|---|---|---:|---:|---:|---:|" + "---:|" * args.pss)
    judged = {}
    for mine, r_mine in ours.items():
        for tool, r in theirs.items():
            ratios = {
                "median": statistics.median(r_mine["scan_seconds"]) / statistics.median(r["scan_seconds"]),
                "mean": r_mine["wall_seconds"] / r["wall_seconds"],
                "network": r_mine["network_seconds"] / r["network_seconds"],
                "rss": r_mine["peak_rss_bytes"] / r["peak_rss_bytes"],
            }
            if args.pss:
                ratios["pss"] = r_mine["peak_pss_bytes"] / r["peak_pss_bytes"]
            if r_mine is resseg:
                judged[tool] = ratios
            print(f"| {mine} | {tool} | " + " | ".join(f"x{value:.2f}" for value in ratios.values()) + " |")
    # Each goal against nnU-Net's better mode for that goal, by every measure.
    speed = max(max(r["median"], r["mean"]) for r in judged.values())
    memory = max(max(r["rss"], r.get("pss", 0)) for r in judged.values())
    print(
        f"\ngoals ({next(iter(ours))}): seconds per scan <= 0.5x nnU-Net's: {met(speed <= 0.5)} "
        f"(x{speed:.2f}); peak memory <= "
        f"nnU-Net's: {met(memory <= 1)} (x{memory:.2f}); under 25% of resseg's time outside the network: "
        f"{met(outside(resseg) < 0.25)} ({outside(resseg):.0%})"
    )


def review_pair(results: dict) -> tuple[dict, dict]:
    """resseg's run with the review columns and calibration, and the same precision's without."""
    reviewed_key = next(tool for tool in results if tool.endswith(", review and calibration"))
    return results[reviewed_key], results[reviewed_key.removesuffix(", review and calibration")]


def suite_rows(results: dict, args: argparse.Namespace) -> list:
    """Seconds per scan of each resseg precision against each nnU-Net mode, and with the review
    and calibration against without, for benchmarks/suite.py."""
    ours = {tool: r for tool, r in results.items() if tool.startswith("resseg")}
    theirs = {tool: r for tool, r in results.items() if tool not in ours} or {None: None}
    note = f"{len(next(iter(ours.values()))['scan_seconds'])} scans at --scale {args.scale:g}, {args.preset}"
    reviewed, plain = review_pair(results)
    review_row = measured(
        "inference",
        f"s / scan, {reviewed['precision']}, review and calibration",
        reviewed["scan_seconds"],
        plain["scan_seconds"],
        against="resseg without them",
        resseg_peak_gib=reviewed["peak_rss_bytes"] / 2**30,
        reference_peak_gib=plain["peak_rss_bytes"] / 2**30,
        note=f"{note}; the review's features and uncertainty, the temperature; goal: under 1.10x",
    )
    return [review_row] + [
        measured(
            "inference",
            f"s / scan, {mine.removeprefix('resseg, ')}",
            r_mine["scan_seconds"],
            r["scan_seconds"] if r else None,
            against=tool,
            resseg_peak_gib=r_mine["peak_rss_bytes"] / 2**30,
            reference_peak_gib=r["peak_rss_bytes"] / 2**30 if r else None,
            note=f"{note}; {outside(r_mine):.0%} outside the network",
        )
        for mine, r_mine in ours.items()
        for tool, r in theirs.items()
    ]


def outside(result: dict) -> float:
    """The share of the batch's wall time not spent inside the network's forward calls."""
    return 1 - result["network_seconds"] / result["wall_seconds"]


def resseg_steps(result: dict) -> dict:
    stages = dict(result["stages"])
    predict = stages.pop("predict")
    window = stages.pop("sliding window")
    steps = {"read (reader thread)": stages.pop("read (reader thread)")}
    steps["preprocess"] = stages.pop("preprocess")
    steps["network"] = result["network_seconds"]
    steps["sliding-window blending, softmax"] = window - result["network_seconds"]
    steps["resample back"] = stages.pop("resample back")
    steps["rest of predict (to MetaTensor, argmax)"] = (
        predict - window - steps["preprocess"] - steps["resample back"]
    )
    return {**steps, **stages}


def met(ok: bool) -> str:
    return "met" if ok else "not met"


def run_script(main: Callable, parse_args: Callable, children: dict[str, Callable[[dict], dict]]) -> None:
    """A script comparing tools: ``main`` in the parent; with --child, one tool's measurement."""
    arguments = parse_args()
    if arguments.child:
        run_child(children[arguments.child], json.loads(arguments.job.read_text()))
    else:
        main(arguments)


if __name__ == "__main__":
    run_script(main, parse_args, {"resseg": resseg_child, "nnunet": nnunet_child})
