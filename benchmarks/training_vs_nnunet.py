"""Training throughput: resseg's Lightning training against nnU-Net v2's trainer, same cohort,
same network and initial weights, same patch, batch and number of data-loading workers, in one run.

    python benchmarks/training_vs_nnunet.py [--quick] [--cases 10] [--scale 1.0] [--preset resunet_small]
                                            [--workers 2] [--iterations 20] [--load K] [--rows PATH]

The cohort is resseg's synthetic CT (about 512x512x100 voxels at 0.8x0.8x2.5 mm for --scale 1),
generated once into --work. resseg's preprocess stage plans and preprocesses it (a patch of at
most --max-patch-voxels, a batch of at most twice as many voxels) and splits it in three folds;
fold 0's training cases are the ones both tools sample from. nnU-Net gets the same plan (target
spacing, patch size, batch size, axis order, CT normalisation: inference.write_nnunet_plan) and
preprocesses the same files with ``nnUNetv2_preprocess``. Preprocessing is cached in --work and
not timed.

Then, each in a fresh process:

- resseg: ``training.train``, the DataModule and LightningModule of ``resseg train``, with
  resseg's augmentation (nnU-Net's transforms, reimplemented) and --workers loader workers;
  Dice + cross-entropy, SGD.
- nnU-Net: ``nnUNetTrainer`` from its own virtualenv, subclassed only to be handed resseg's
  network (build_network_architecture) and to leave deep supervision off (the presets compared
  have none); nnU-Net's own augmentation and loss (Dice + cross-entropy, SGD, gradient clipping),
  ``nnUNet_n_proc_DA`` = --workers (its trainer also starts half as many validation workers).
  ``on_train_start()``, then ``train_step(next(dataloader_train))`` in a loop.

Both networks are built by resseg from the same preset and plan after ``torch.manual_seed(0)``:
the same initial weights (checked by a checksum of the parameters). An iteration is fetching a
batch, forward, backward and the optimiser step; the first 3 are warm-up (worker start), the next
--iterations are timed: for resseg, the time between the ends of successive Lightning training
batches. Peak memory is the largest summed RSS of the tool's process tree (loader workers
included), sampled every 0.1 s. Without nnU-Net's virtualenv the script stops. resseg takes the
threads `resseg train` would (pipeline/threads.py: its loader workers count in the budget),
nnU-Net its own defaults. With --load K, both are measured again while K processes of the
script's own keep a core busy each (benchmarks/load.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from load import busy_cores
from rows import measured, write_rows

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # this tree's code, in either virtualenv
NNUNET_BIN = HERE / ".venv-nnunet" / "bin"
DATASET = "Dataset500_Bench"
PLANS_NAME = "resseg"
CONFIGURATION = "3d_fullres"
WARMUP_ITERATIONS = 3  # as training.WARMUP_STEPS
N_FOLDS = 3


def main(args: argparse.Namespace) -> None:
    from inference import usable_cpus
    from preprocess_vs_nnunet import make_cohort

    from pipeline.preprocess.plans import Plans

    nnunet_python = require_nnunet(args.nnunet_bin)
    cohort = make_cohort(args.work, args.cases, args.scale)
    name = f"{args.cases}_{args.scale:g}_{args.max_patch_voxels}"
    preprocessed, fold = preprocess_resseg(cohort, args.work / f"resseg_{name}", args)
    plans = Plans.load(preprocessed / "plans.json")
    roots = preprocess_nnunet(cohort, args.work / f"nnunet_{name}", plans, fold, args)

    job = {
        "preset": args.preset,
        "workers": args.workers,
        "iterations": args.iterations,
        "plans": str(preprocessed / "plans.json"),
    }
    resseg_job = {**job, "preprocessed": str(preprocessed), "fold": fold}
    nnunet_job = {**job, "preprocessed": str(roots["nnUNet_preprocessed"] / DATASET)}
    nnunet_env = {
        **{key: str(path) for key, path in roots.items()},
        "nnUNet_n_proc_DA": str(args.workers),
        "nnUNet_compile": "f",  # resseg does not compile either
    }

    def measure(suffix: str = "") -> dict:
        results = {
            "resseg": run_tool("resseg", sys.executable, resseg_job, args.work, {}, suffix),
            "nnU-Net v2": run_tool("nnunet", str(nnunet_python), nnunet_job, args.work, nnunet_env, suffix),
        }
        if results["resseg"]["weights_checksum"] != results["nnU-Net v2"]["weights_checksum"]:
            raise SystemExit(f"the two networks did not start from the same weights: {results}")
        return results

    results = measure()
    print_report(results, plans, args, usable_cpus())
    rows = [suite_row(results, plans, args)]
    if args.load:
        with busy_cores(args.load):
            loaded = measure("_loaded")
        busy = f"{args.load} of {usable_cpus()} cores busy"
        print(f"\nWith {busy} by other processes:")
        print_report(loaded, plans, args, usable_cpus())
        for tool in results:
            slowdown = patches_per_second(results[tool]) / patches_per_second(loaded[tool])
            print(f"{tool}: patches / s {slowdown:.2f}x slower than idle")
        rows += [suite_row(loaded, plans, args, busy), suite_row(loaded, plans, args, busy, idle=results)]
    if args.rows:
        write_rows(args.rows, rows)


def require_nnunet(nnunet_bin: Path) -> Path:
    """nnU-Net's python, whose child processes will import this tree's code; stop without it."""
    python = nnunet_bin / "python"
    if not python.exists():
        raise SystemExit(f"nnU-Net not found in {nnunet_bin} (benchmarks/README.md shows how to install it)")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return python


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="4 half-size cases, a patch budget of 64^3 voxels, 10 iterations"
    )
    parser.add_argument("--cases", type=int, help="training cases generated; default 10 (--quick: 4)")
    parser.add_argument(
        "--scale", type=float, help="linear size factor of every case; default 1 (--quick: 0.5)"
    )
    parser.add_argument(
        "--max-patch-voxels", type=int, help="the plan's patch budget; default 128^3 (--quick: 64^3)"
    )
    parser.add_argument("--iterations", type=int, help="timed iterations; default 20 (--quick: 10)")
    parser.add_argument("--preset", default="resunet_small", help="network preset in configs/models/")
    parser.add_argument("--workers", type=int, default=2, help="data-loading worker processes of each tool")
    parser.add_argument("--work", type=Path, default=Path("/tmp/resseg-bench-training"))
    parser.add_argument("--nnunet-bin", type=Path, default=NNUNET_BIN)
    parser.add_argument(
        "--load",
        type=int,
        default=0,
        help="also measure both tools while this many processes of our own keep a core busy each",
    )
    parser.add_argument("--rows", type=Path, help="also write the suite's rows here (benchmarks/rows.py)")
    parser.add_argument("--child", choices=["resseg", "nnunet"], help=argparse.SUPPRESS)
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return args
    defaults = {
        "cases": (4, 10),
        "scale": (0.5, 1.0),
        "max_patch_voxels": (64**3, 128**3),
        "iterations": (10, 20),
    }
    for key, (quick, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    from pipeline.config import TrainParams, resolve_network

    if resolve_network(TrainParams(model=args.preset)).deep_supervision:
        raise SystemExit(f"--preset {args.preset}: deep supervision is on; compare a preset without it")
    return args


def preprocess_resseg(cohort: Path, out: Path, args: argparse.Namespace) -> tuple[Path, dict]:
    """resseg's preprocess stage and fold 0 of its split, cached until the preprocessing code
    changes; batches of at most 2 patch budgets."""
    from pipeline import split
    from pipeline.config import PreprocessParams, SplitParams
    from pipeline.preprocess import stage

    preprocessed, splits, stamp = out / "preprocessed", out / "splits.json", out / "code.sha256"
    code = hashlib.sha256(b"".join(f.read_bytes() for f in sorted((ROOT / "pipeline").rglob("*.py"))))
    if not stamp.exists() or stamp.read_text() != code.hexdigest():
        shutil.rmtree(out, ignore_errors=True)
    if not splits.exists():
        params = PreprocessParams(
            max_patch_voxels=args.max_patch_voxels,
            max_batch_voxels=2 * args.max_patch_voxels,
            num_workers=max(args.workers, 1),
        )
        stage.run(params, cohort, preprocessed)
        split.run(SplitParams(n_folds=N_FOLDS), preprocessed / "plans.json", splits)
        stamp.write_text(code.hexdigest())
    return preprocessed, json.loads(splits.read_text())[0]


def preprocess_nnunet(cohort: Path, folder: Path, plans, fold: dict, args: argparse.Namespace) -> dict:
    """nnU-Net's raw dataset over the cohort's files, resseg's plan as nnU-Net plans, resseg's fold
    0 as its splits_final.json, and ``nnUNetv2_preprocess`` with that plan; cached."""
    from inference import write_nnunet_plan
    from preprocess_vs_nnunet import to_nnunet_raw

    roots = {key: folder / key for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    base = roots["nnUNet_preprocessed"] / DATASET
    if (base / "splits_final.json").exists():
        return roots
    shutil.rmtree(folder, ignore_errors=True)
    to_nnunet_raw(cohort, roots["nnUNet_raw"] / DATASET)
    write_nnunet_plan(folder / "plan", plans, Path(args.preset), len(fold["train"]) + len(fold["val"]))
    base.mkdir(parents=True)
    shutil.copy(folder / "plan" / "plans.json", base / f"{PLANS_NAME}.json")
    shutil.copy(roots["nnUNet_raw"] / DATASET / "dataset.json", base / "dataset.json")
    env = {**os.environ, **{key: str(path) for key, path in roots.items()}}
    command = [str(args.nnunet_bin / "nnUNetv2_preprocess"), "-d", DATASET.removeprefix("Dataset")[:3]]
    command += ["-plans_name", PLANS_NAME, "-c", CONFIGURATION, "-np", str(max(args.workers, 1))]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    # nnUNetTrainer.on_train_start copies the dataset fingerprint next to its checkpoints; nothing
    # reads it here (the plan's intensities are resseg's).
    (base / "dataset_fingerprint.json").write_text("{}")
    (base / "splits_final.json").write_text(json.dumps([fold]))
    return roots


def run_tool(tool: str, python: str, job: dict, work: Path, env: dict, suffix: str = "") -> dict:
    """One tool's training iterations in a fresh process; its timings and its tree's peak RSS."""
    from inference import run_measured

    name = f"train_{tool}{suffix}"
    job = {**job, "result": str(work / f"{name}.json"), "log": str(work / f"{name}.log")}
    job_path = work / f"{name}_job.json"
    job_path.write_text(json.dumps(job))
    print(f"{tool}: {WARMUP_ITERATIONS} + {job['iterations']} training iterations ...", file=sys.stderr)
    command = [python, __file__, "--child", tool, "--job", str(job_path)]
    peaks = run_measured(command, {**os.environ, **env}, work / f"{name}.stderr", pss=False)
    return {**json.loads(Path(job["result"]).read_text()), **peaks}


def build_network(preset: str, plans, seed: int = 0):
    """The preset for this plan with seeded initial weights, as training.train builds it (and as
    resseg's train stage does after seeding everything with ``train.seed``)."""
    import torch

    from pipeline.config import TrainParams, resolve_network
    from pipeline.models.model_dir import ModelDescription

    torch.manual_seed(seed)
    network = resolve_network(TrainParams(model=preset), ROOT / "configs" / "models")
    return ModelDescription(network, plans, plans.patch_size).build()


def checksum(network) -> float:
    return float(sum(parameter.double().sum() for parameter in network.parameters()))


def resseg_child(job: dict) -> dict:
    from pipeline.threads import cpu_budget, limit_threads, threads_per_process

    # As `resseg train` with these loader workers does, before torch is imported.
    limit_threads(threads_per_process(cpu_budget().cores, workers=job["workers"]))
    import torch
    from training import train

    from pipeline.preprocess.plans import Plans

    preprocessed = Path(job["preprocessed"])
    plans = Plans.load(job["plans"])
    weights = checksum(build_network(job["preset"], plans))
    torch.manual_seed(0)  # train() builds the network first: the weights just summed
    timer = train(job["preset"], job["workers"], job["iterations"], plans, preprocessed, job["fold"])
    # The wait before a batch (fetching it) and the step on it: one iteration.
    seconds = [wait + step for wait, step in zip(timer.waits, timer.steps, strict=True)]
    return {"seconds": seconds, "batch_size": plans.batch_size, "weights_checksum": weights}


def nnunet_child(job: dict) -> dict:
    from pipeline.preprocess.plans import Plans

    network = build_network(job["preset"], Plans.load(job["plans"]))
    weights = checksum(network)
    trainer = nnunet_trainer(network, Path(job["preprocessed"]))
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    seconds = []
    for iteration in range(WARMUP_ITERATIONS + job["iterations"]):
        started = time.perf_counter()
        trainer.train_step(next(trainer.dataloader_train))
        if iteration >= WARMUP_ITERATIONS:
            seconds.append(time.perf_counter() - started)
    trainer.on_train_end()
    return {"seconds": seconds, "batch_size": trainer.batch_size, "weights_checksum": weights}


def nnunet_trainer(network, base: Path):
    """nnU-Net's ``nnUNetTrainer`` for the preprocessed dataset ``base`` (its plans, dataset.json
    and splits, fold 0), handed ``network`` instead of building its own, without deep
    supervision; everything else is nnU-Net's. Runs in nnU-Net's virtualenv (the accuracy
    benchmark's trainer too)."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    class ResegNetworkTrainer(nnUNetTrainer):
        """nnU-Net's trainer with resseg's network, without deep supervision."""

        # nnUNetTrainer.__init__ records its arguments by their names: the same signature.
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict, device=device):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.enable_deep_supervision = False

        @staticmethod
        def build_network_architecture(
            plans_manager,
            configuration_manager,
            num_input_channels,
            num_output_channels,
            enable_deep_supervision,
        ):
            return network

        def set_deep_supervision_enabled(self, enabled: bool) -> None:
            """resseg's network has no deep supervision to switch."""

    nnunet_plans = json.loads((base / f"{PLANS_NAME}.json").read_text())
    dataset = json.loads((base / "dataset.json").read_text())
    nnunet_plans["continue_training"] = False  # as nnunetv2.run.run_training sets it
    return ResegNetworkTrainer(nnunet_plans, CONFIGURATION, 0, dataset, device=device)


def print_report(results: dict, plans, args: argparse.Namespace, cores: int) -> None:
    print(
        f"\n{args.cases} cases at --scale {args.scale:g}, fold 0 of {N_FOLDS} for training; "
        f"plan: {list(plans.target_spacing)} mm, patch {plans.patch_size}, batch {plans.batch_size}; "
        f"preset {args.preset}, no deep supervision; {args.workers} loader workers each; "
        f"{args.iterations} timed iterations after {WARMUP_ITERATIONS}; {device()} "
        f"({platform.machine()}, {cores} cores)"
    )
    print(f"benchmarks/training_vs_nnunet.py{' --quick' if args.quick else ''}, {date.today().isoformat()}\n")
    print(
        "| tool | s / iteration, median (range) | patches / s | peak RSS, summed (GiB) | other load (cores) |"
    )
    print("|---|---:|---:|---:|---:|")
    for tool, r in results.items():
        seconds = r["seconds"]
        print(
            f"| {tool} | {statistics.median(seconds):.2f} ({min(seconds):.2f}-{max(seconds):.2f}) | "
            f"{patches_per_second(r):.2f} | {r['peak_rss_bytes'] / 2**30:.2f} | {r['other_cores']:.2f} |"
        )
    ours, theirs = results["resseg"], results["nnU-Net v2"]
    print(
        f"\nresseg / nnU-Net: patches / s x{patches_per_second(ours) / patches_per_second(theirs):.2f}, "
        f"peak RSS x{ours['peak_rss_bytes'] / theirs['peak_rss_bytes']:.2f}"
    )


def patches_per_second(result: dict) -> float:
    """Patches per second at the median iteration."""
    return result["batch_size"] / statistics.median(result["seconds"])


def suite_row(results: dict, plans, args: argparse.Namespace, busy: str = "", idle: dict | None = None):
    """resseg's patches/s against nnU-Net's; with ``idle``, resseg's under load (``busy``)
    against its own idle figure."""
    ours = results["resseg"]
    theirs = idle["resseg"] if idle else results["nnU-Net v2"]
    return measured(
        "training",
        f"patches / s, {args.preset}" + (f", {busy}" if busy else ""),
        [ours["batch_size"] / s for s in ours["seconds"]],
        [theirs["batch_size"] / s for s in theirs["seconds"]],
        against="resseg, idle" if idle else "nnU-Net v2" + (f", {busy}" if busy else ""),
        higher_is_better=True,
        resseg_peak_gib=ours["peak_rss_bytes"] / 2**30,
        reference_peak_gib=theirs["peak_rss_bytes"] / 2**30,
        device=device(),
        note=(
            f"patch {'x'.join(map(str, plans.patch_size))}, batch {plans.batch_size}, {args.workers} loader "
            f"workers, each tool's augmentation and loss, {precision()}, "
            f"{args.cases} cases at --scale {args.scale:g}" + ("; goal: at least 1/2.2x" if idle else "")
        ),
    )


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def precision() -> str:
    """Both tools train in float32 on CPU, with float16 autocast on a GPU."""
    return "float16 autocast" if device() == "cuda" else "float32"


if __name__ == "__main__":
    from inference import run_script

    run_script(main, parse_args, {"resseg": resseg_child, "nnunet": nnunet_child})
