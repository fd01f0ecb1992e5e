"""How resseg's time and peak memory grow with the size of a scan and with the number of scans.

    python benchmarks/scaling.py [--quick] [--repeats N] [--preset resunet_small]
                                 [--plot benchmarks/results/scaling.png] [--rows PATH]

The scans are synthetic CTs on an exact 1x1x1 mm grid (an elliptic body at 40 HU with a fat rim,
an organ at 100 HU holding a lesion at 60 HU, in air; 20 HU of noise), one per size, generated
once into --work: 128^3, 256^3 and 512x512x300 voxels (--quick: 48^3, 96^3 and 144^3). The plan is
resseg's planner's for the smallest scan, so its target spacing is the scans' own 1 mm (the sizes
mean what they say) and its patch (128^3; --quick 48^3) fits every scan; the model directory holds
the preset with random weights (timing does not depend on them). Each step runs in a fresh process,
so that its peak memory is its own:

- preprocess: ``pipeline.preprocess.stage.preprocess_case`` on the scan and its label, as a
  ``resseg preprocess`` worker runs it for one case (read, crop, reorient, resample, normalise,
  write the arrays); the seconds are those of that call, after the imports;
- predict: ``pipeline.infer.batch.run`` over a folder holding the scan, as ``resseg predict``
  runs it (the predict defaults: overlap, one window per forward, precision auto, no
  mirroring; on CPU), through benchmarks/inference.py's resseg child; the seconds are those of
  the batch, after the model is loaded;
- predict over 1, 2 and 4 scans of the smallest size (--quick: 1, 2 and 3), links to the same
  file under distinct names (one scan is the measurement above): total seconds and seconds per
  scan. Scans stream through the batch (one read ahead, one written behind), so the peak memory
  should stay flat.

Peak memory is the largest summed RSS of the step's process tree, sampled every 0.1 s (imports
and model included). Every measurement is repeated --repeats times, the sizes and scan counts
interleaved within each repetition so that other work on the machine slows them alike; the table
gives medians and ranges (for the peak, the largest). The headline is the exponent of time
against voxels: the slope of log seconds on log voxels, fitted per repetition (median and range).
Prediction's may exceed 1 across small scans: with the default overlap of 0.5, a scan one patch
wide takes one window, a scan many patches wide about 8 windows' worth of network per voxel.

Prints a markdown table; writes a plot (seconds and peak GiB against voxels, log-log, and against
the number of scans) to --plot and, with --rows, the suite's rows (step "scaling"): per size and
step "<step> s, <size>", per number of scans "predict s / scan, <n> scans", and each step's
exponent, all with the peak RSS where there is one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import numpy as np
from inference import ROOT, plan, run_measured, run_tool, save_model, usable_cpus
from rows import Row, measured, write_rows

GIB = 2**30
SIZES = {
    "full": [(128, 128, 128), (256, 256, 256), (512, 512, 300)],
    "quick": [(48, 48, 48), (96, 96, 96), (144, 144, 144)],
}
COUNTS = {"full": [1, 2, 4], "quick": [1, 2, 3]}
LABELS = {0: "background", 1: "organ", 2: "lesion"}
STEPS = ("preprocess", "predict")


def main(args: argparse.Namespace) -> None:
    from pipeline.config import PredictParams

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    mode = "quick" if args.quick else "full"
    sizes, counts = SIZES[mode], COUNTS[mode]
    count_size = sizes[0]
    cohorts = {shape: make_ct(args.work / f"cohort_{name(shape)}", shape) for shape in sizes}
    plans = plan(cohorts[sizes[0]])
    plans_path = args.work / f"plans_{name(sizes[0])}.json"
    plans.save(plans_path)
    model_dir = args.work / f"model_{args.preset}_{name(sizes[0])}"
    save_model(model_dir, plans, args.preset)
    defaults = PredictParams()
    job = {
        "model": str(model_dir),
        "overlap": defaults.overlap,
        "sw_batch_size": defaults.sw_batch_size,
        "precision": defaults.precision,
        "device": "cpu",
    }
    folders = {(shape, 1): scan_folder(args.work, cohorts[shape], 1) for shape in sizes}
    folders.update({(count_size, n): scan_folder(args.work, cohorts[count_size], n) for n in counts})

    # (step, shape, number of scans) -> one measurement per repetition
    results: dict[tuple, list[dict]] = defaultdict(list)
    for repeat in range(args.repeats):
        print(f"repetition {repeat + 1} of {args.repeats}", file=sys.stderr, flush=True)
        for shape in sizes:
            results["preprocess", shape, 1].append(preprocess(args.work, cohorts[shape], plans_path))
            results["predict", shape, 1].append(predict(args.work, job, folders[shape, 1]))
        for n in counts:
            if n > 1:  # one scan of this size is measured above
                results["predict", count_size, n].append(predict(args.work, job, folders[count_size, n]))

    exponents = {step: time_exponents(results, step, sizes, args.repeats) for step in STEPS}
    precision = results["predict", sizes[0], 1][0]["precision"]
    setting = f"1 mm, {args.preset} with patch {name(plans.patch_size)}, {precision}, CPU"
    print_report(results, exponents, sizes, counts, count_size, setting, args)
    plot(results, exponents, sizes, counts, count_size, args.plot)
    print(f"\nplot: {args.plot}")
    if args.rows:
        write_rows(args.rows, rows(results, exponents, sizes, counts, count_size, setting))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="48^3 to 144^3 voxels, 1 to 3 scans: a quick look"
    )
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each point (default 3)")
    parser.add_argument("--preset", default="resunet_small", help="network preset in configs/models/")
    parser.add_argument("--work", type=Path, default=Path("/tmp/resseg-bench-scaling"))
    parser.add_argument("--plot", type=Path, default=Path(__file__).resolve().parent / "results/scaling.png")
    parser.add_argument("--rows", type=Path, help="write the suite's rows (benchmarks/rows.py) here")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def name(shape) -> str:
    return "x".join(str(n) for n in shape)


def voxels(shape) -> int:
    return int(np.prod(shape))


def make_ct(cohort: Path, shape: tuple[int, int, int]) -> Path:
    """A one-case cohort: a synthetic CT of exactly ``shape`` voxels of 1 mm, and its label."""
    from pipeline.cohort.dataset import write_dataset_json
    from pipeline.io import write_volume

    if (cohort / "dataset.json").exists():
        return cohort
    x, y, z = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    radius = x**2 / 0.8**2 + y**2 / 0.6**2
    organ = ((x - 0.15) ** 2 / 0.09 + y**2 / 0.05 + z**2 / 0.4) < 1
    lesion = ((x - 0.15) ** 2 + y**2 + z**2) < 0.08**2
    image = np.full(shape, -1000, np.int16)
    image[np.broadcast_to(radius < 1, shape)] = 40
    image[np.broadcast_to((radius < 1) & (radius > 0.85), shape)] = -100
    image[organ] = 100
    image[lesion] = 60
    image += np.random.default_rng(0).normal(0, 20, shape).astype(np.int16)
    label = organ.astype(np.uint8)
    label[lesion] = 2
    write_volume(cohort / "imagesTr/ct_000.nii.gz", image, np.eye(4))
    write_volume(cohort / "labelsTr/ct_000.nii.gz", label, np.eye(4))
    write_dataset_json(cohort, "scaling", ["CT"], LABELS, ["ct_000"], [])
    return cohort


def scan_folder(work: Path, cohort: Path, n: int) -> Path:
    """A folder of ``n`` links to the cohort's scan, as ``resseg predict`` takes it."""
    folder = work / f"scans_{cohort.name}_{n}"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"scan_{i}.nii.gz").symlink_to((cohort / "imagesTr/ct_000.nii.gz").resolve())
    return folder


def preprocess(work: Path, cohort: Path, plans: Path) -> dict:
    """resseg's preprocessing of the cohort's case in a fresh process: seconds and peak RSS."""
    out = work / "preprocessed"
    shutil.rmtree(out, ignore_errors=True)
    job = {
        "cohort": str(cohort),
        "plans": str(plans),
        "out": str(out),
        "result": str(work / "preprocess.json"),
    }
    job_path = work / "preprocess_job.json"
    job_path.write_text(json.dumps(job))
    print(f"preprocess: {cohort.name} ...", file=sys.stderr, flush=True)
    command = [sys.executable, __file__, "--child", str(job_path)]
    peaks = run_measured(command, dict(os.environ), work / "preprocess.stderr", False)
    seconds = json.loads(Path(job["result"]).read_text())["seconds"]
    return {
        "seconds": seconds,
        "peak_gib": peaks["peak_rss_bytes"] / GIB,
        "other_cores": peaks["other_cores"],
    }


def preprocess_child(job: dict) -> None:
    from pipeline.cohort.dataset import load_cohort
    from pipeline.preprocess.plans import Plans
    from pipeline.preprocess.stage import preprocess_case

    plans = Plans.load(Path(job["plans"]))
    (case,) = load_cohort(Path(job["cohort"])).training
    out = Path(job["out"])
    out.mkdir(parents=True)
    started = time.perf_counter()
    preprocess_case(plans, case, out)
    Path(job["result"]).write_text(json.dumps({"seconds": time.perf_counter() - started}))


def predict(work: Path, job: dict, scans: Path) -> dict:
    """``resseg predict``'s batch over the folder, in a fresh process: seconds and peak RSS."""
    result = run_tool("resseg", sys.executable, {**job, "scans": str(scans)}, work, False, "predict")
    return {
        "seconds": result["wall_seconds"],
        "peak_gib": result["peak_rss_bytes"] / GIB,
        "other_cores": result["other_cores"],
        "precision": result["precision"],
        "torch_threads": result["torch_threads"],
    }


def time_exponents(results: dict, step: str, sizes: list, repeats: int) -> list[float]:
    """Per repetition, the slope of log seconds on log voxels over the sizes."""
    x = np.log([voxels(shape) for shape in sizes])
    return [
        float(np.polyfit(x, np.log([results[step, shape, 1][r]["seconds"] for shape in sizes]), 1)[0])
        for r in range(repeats)
    ]


def seconds(results: dict, key: tuple) -> list[float]:
    return [m["seconds"] for m in results[key]]


def peak(results: dict, key: tuple) -> float:
    return max(m["peak_gib"] for m in results[key])


def spread(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def print_report(
    results: dict, exponents: dict, sizes: list, counts: list, count_size, setting: str, args
) -> None:
    threads = results["predict", sizes[0], 1][0]["torch_threads"]
    others = statistics.mean(m["other_cores"] for series in results.values() for m in series)
    print(
        f"\nscaling: {setting}, {usable_cpus()} cores ({platform.machine()}), "
        f"torch threads {threads}; median of {args.repeats} repetitions "
        f"(range), peak: the largest; other work kept {others:.2f} cores busy on average"
    )
    print(f"benchmarks/scaling.py{' --quick' if args.quick else ''}, {date.today().isoformat()}\n")
    print("| size or number of scans | step | s, median (range) | s / Mvoxel or s / scan | peak RSS (GiB) |")
    print("|---|---|---:|---:|---:|")
    for shape in sizes:
        mvoxels = voxels(shape) / 1e6
        for step in STEPS:
            key = (step, shape, 1)
            per = statistics.median(seconds(results, key)) / mvoxels
            print(
                f"| {name(shape)} ({mvoxels:.1f} Mvoxels) | {step} | {spread(seconds(results, key))} | "
                f"{per:.3f} s / Mvoxel | {peak(results, key):.2f} |"
            )
    for n in counts:
        key = ("predict", count_size, n)
        per_scan = [s / n for s in seconds(results, key)]
        print(
            f"| {n} scan{'s' * (n > 1)} of {name(count_size)} | predict | {spread(seconds(results, key))} | "
            f"{spread(per_scan)} s / scan | {peak(results, key):.2f} |"
        )
    print(
        "\ntime grows as voxels^k (slope of log s on log voxels, per repetition): "
        + "; ".join(f"{step} k = {spread(exponents[step])}" for step in STEPS)
    )
    one, most = peak(results, ("predict", count_size, 1)), peak(results, ("predict", count_size, counts[-1]))
    print(f"peak RSS of predict, {counts[-1]} scans against 1: x{most / one:.2f}")


def plot(results: dict, exponents: dict, sizes: list, counts: list, count_size, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib import ticker

    def errorbar(axis, x, values, **style):
        middle = np.array([statistics.median(v) for v in values])
        low, high = middle - [min(v) for v in values], [max(v) for v in values] - middle
        axis.errorbar(x, middle, yerr=[low, high], marker="o", capsize=3, **style)

    figure, ((by_size, size_memory), (by_count, count_memory)) = plt.subplots(2, 2, figsize=(11, 8))
    x = [voxels(shape) for shape in sizes]
    for step in STEPS:
        keys = [(step, shape, 1) for shape in sizes]
        label = f"{step} (k = {statistics.median(exponents[step]):.2f})"
        errorbar(by_size, x, [seconds(results, key) for key in keys], label=label)
        size_memory.plot(x, [peak(results, key) for key in keys], marker="o", label=step)
    for axis, unit in ((by_size, "seconds"), (size_memory, "peak RSS (GiB)")):
        axis.set(xscale="log", yscale="log", xlabel="voxels (1 mm)", ylabel=unit)
        axis.set_xticks(x, [name(shape) for shape in sizes])
        axis.xaxis.set_minor_locator(ticker.NullLocator())
        axis.yaxis.set_minor_locator(ticker.LogLocator(subs=(2, 5)))
        for set_formatter in (axis.yaxis.set_major_formatter, axis.yaxis.set_minor_formatter):
            set_formatter(ticker.StrMethodFormatter("{x:g}"))
        axis.legend()
    by_size.set_title("one scan, by size (median and range)")
    size_memory.set_title("one scan, by size")

    keys = [("predict", count_size, n) for n in counts]
    errorbar(by_count, counts, [seconds(results, key) for key in keys], label="total")
    per_scan = [[s / n for s in seconds(results, key)] for n, key in zip(counts, keys, strict=True)]
    errorbar(by_count, counts, per_scan, label="per scan")
    peaks = [peak(results, key) for key in keys]
    count_memory.plot(counts, peaks, marker="o", label="predict")
    count_memory.set_ylim(0, 1.25 * max(peaks))
    for axis, unit in ((by_count, "seconds"), (count_memory, "peak RSS (GiB)")):
        axis.set(xlabel=f"scans of {name(count_size)} in one predict", ylabel=unit, xticks=counts)
        axis.legend()
    by_count.set_title("predict, by number of scans")
    count_memory.set_title("predict, by number of scans")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def rows(results: dict, exponents: dict, sizes: list, counts: list, count_size, setting: str) -> list[Row]:
    table = [
        measured(
            "scaling",
            f"{step} s, {name(shape)}",
            seconds(results, (step, shape, 1)),
            resseg_peak_gib=peak(results, (step, shape, 1)),
            note=setting,
        )
        for shape in sizes
        for step in STEPS
    ]
    table += [
        measured(
            "scaling",
            f"predict s / scan, {n} scan{'s' * (n > 1)}",
            [s / n for s in seconds(results, ("predict", count_size, n))],
            resseg_peak_gib=peak(results, ("predict", count_size, n)),
            note=f"{n} scan{'s' * (n > 1)} of {name(count_size)}; {setting}",
        )
        for n in counts
    ]
    table += [
        measured(
            "scaling",
            f"{step} time exponent (log s / log voxels)",
            exponents[step],
            note=f"fitted over {', '.join(name(shape) for shape in sizes)}; {setting}",
        )
        for step in STEPS
    ]
    return table


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.child:
        preprocess_child(json.loads(arguments.child.read_text()))
    else:
        main(arguments)
