"""Preprocessing throughput and peak memory: resseg against nnU-Net v2, same cohort, same
number of worker processes, in one run.

    python benchmarks/preprocess_vs_nnunet.py [--quick] [--cases 20] [--scale 1.0] [--workers 2]
                                              [--repeats N] [--json PATH] [--rows PATH]

The cohort is resseg's synthetic CT at a clinical size (about 512x512x100 voxels at
0.8x0.8x2.5 mm for --scale 1), generated once into --work. Each tool runs its whole
fingerprint + plan + preprocess command --repeats times, the tools taking turns, each run from
scratch; the table gives the median seconds, and the largest peak memory: the summed RSS of
the command's process tree, sampled every 0.1 s. nnU-Net runs from its own virtualenv
(benchmarks/README.md shows how to install it); without it, only resseg is measured.
--quick: 4 cases at --scale 0.5, 3 runs of each tool, about two minutes on two cores.
--rows writes the cases/s of both tools for benchmarks/suite.py (benchmarks/rows.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import yaml
from rows import measured, write_rows

HERE = Path(__file__).resolve().parent
NNUNET_BIN = HERE / ".venv-nnunet" / "bin"
DATASET_ID = 500


def main() -> None:
    args = parse_args()
    cohort = make_cohort(args.work, args.cases, args.scale)
    tools = {"resseg": lambda: run_resseg(args.work, cohort, args.workers)}
    if (args.nnunet_bin / "nnUNetv2_plan_and_preprocess").exists():
        tools["nnU-Net v2"] = lambda: run_nnunet(args.work, cohort, args.workers, args.nnunet_bin)
    else:
        print(f"nnU-Net not found in {args.nnunet_bin}; measuring resseg only", file=sys.stderr)
    runs = {tool: [] for tool in tools}
    for _ in range(args.repeats):  # the tools take turns, so that a slower spell slows both
        for tool, run in tools.items():
            runs[tool].append(run())
    results = {
        tool: {
            "seconds": [run["seconds"] for run in tool_runs],
            "peak_bytes": max(run["peak_bytes"] for run in tool_runs),
            "output_voxels": tool_runs[-1]["output_voxels"],
        }
        for tool, tool_runs in runs.items()
    }
    print_table(results, args.cases, args.workers)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.rows:
        write_rows(args.rows, suite_rows(results, args))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, help="default 20 (--quick: 4)")
    parser.add_argument(
        "--scale", type=float, help="linear size factor of every case; default 1 (--quick: 0.5)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, help="runs of each tool; default 1 (--quick: 3)")
    parser.add_argument("--quick", action="store_true", help="four half-size cases: about two minutes")
    parser.add_argument("--work", type=Path, default=Path("/tmp/resseg-bench"))
    parser.add_argument("--nnunet-bin", type=Path, default=NNUNET_BIN)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--rows", type=Path, help="also write the suite's rows here (benchmarks/rows.py)")
    args = parser.parse_args()
    return fill_defaults(
        args, quick={"cases": 4, "scale": 0.5, "repeats": 3}, full={"cases": 20, "scale": 1.0, "repeats": 1}
    )


def fill_defaults(args: argparse.Namespace, quick: dict, full: dict) -> argparse.Namespace:
    """Each option left unset takes its --quick default or its full one (the benchmarks share it)."""
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def make_cohort(work: Path, cases: int, scale: float, n_test: int = 1, **synth_params) -> Path:
    """resseg's synthetic CT cohort at a clinical size, cached by its parameters; ``synth_params``
    (keys of the synth section) replace the clinical field of view and spacing."""
    synth = {
        "seed": 0,
        "n_train": cases,
        "n_test": n_test,
        "field_of_view_mm": [410.0 * scale, 410.0 * scale, 250.0 * scale],
        "inplane_spacing_mm": [0.78, 0.82],
        "slice_spacing_mm": [2.4, 2.6],
        **synth_params,
    }
    cohort = work / f"cohort_{cases}_{scale:g}"
    if n_test != 1 or synth_params:
        cohort = cohort.with_name(
            f"{cohort.name}_{hashlib.sha256(json.dumps(synth).encode()).hexdigest()[:8]}"
        )
    if not (cohort / "dataset.json").exists():
        params = write_params(work / "synth.yaml", {"synth": synth})
        subprocess.run([resseg(), "synth", "--params", str(params), "--out", str(cohort)], check=True)
    return cohort


def run_resseg(work: Path, cohort: Path, workers: int) -> dict:
    out = work / "resseg_preprocessed"
    shutil.rmtree(out, ignore_errors=True)
    params = write_params(work / "preprocess.yaml", {"preprocess": {"num_workers": workers}})
    command = [resseg(), "preprocess", "--params", str(params), "--cohort", str(cohort), "--out", str(out)]
    seconds, peak = run_measured(command, os.environ.copy())
    return {"seconds": seconds, "peak_bytes": peak, "output_voxels": count_voxels(out.glob("*_image.npy"))}


def run_nnunet(work: Path, cohort: Path, workers: int, bin_dir: Path) -> dict:
    roots = {name: work / "nnunet" / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    shutil.rmtree(work / "nnunet", ignore_errors=True)
    to_nnunet_raw(cohort, roots["nnUNet_raw"] / f"Dataset{DATASET_ID}_Bench")
    env = {**os.environ, **{name: str(path) for name, path in roots.items()}}
    command = [
        str(bin_dir / "nnUNetv2_plan_and_preprocess"),
        *("-d", str(DATASET_ID), "-c", "3d_fullres", "-np", str(workers), "-npfp", str(workers), "--no_pbar"),
    ]
    seconds, peak = run_measured(command, env)
    written = count_nnunet_voxels(roots["nnUNet_preprocessed"] / f"Dataset{DATASET_ID}_Bench", bin_dir)
    return {"seconds": seconds, "peak_bytes": peak, "output_voxels": written}


def to_nnunet_raw(cohort: Path, raw: Path) -> None:
    """nnU-Net's raw layout over the same files, by symbolic links."""
    meta = json.loads((cohort / "dataset.json").read_text())
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for entry in meta["training"]:
        name = Path(entry["image"]).name.removesuffix(".nii.gz")
        (raw / "imagesTr" / f"{name}_0000.nii.gz").symlink_to((cohort / entry["image"]).resolve())
        (raw / "labelsTr" / f"{name}.nii.gz").symlink_to((cohort / entry["label"]).resolve())
    labels = {name: int(value) for value, name in meta["labels"].items()}
    dataset = {
        "channel_names": meta.get("channel_names", meta.get("modality", {"0": "CT"})),
        "labels": labels,
        "numTraining": len(meta["training"]),
        "file_ending": ".nii.gz",
    }
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2))


def run_measured(command: list[str], env: dict) -> tuple[float, int]:
    """Wall seconds and the peak summed RSS of the process and all its descendants."""
    start = time.perf_counter()
    process = psutil.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss(process))
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{command[0]} failed:\n{process.stderr.read().decode()[-3000:]}")
    return seconds, peak


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:  # exited between listing and sampling
            continue
    return total


def count_voxels(paths) -> int:
    return sum(int(np.prod(np.load(p, mmap_mode="r").shape[1:])) for p in paths)


def count_nnunet_voxels(folder: Path, bin_dir: Path) -> int:
    """nnU-Net 2.x stores cases as blosc2 arrays; its own environment has the library to read them."""
    script = (
        "import sys, pathlib, numpy, blosc2\n"
        "paths = [p for p in pathlib.Path(sys.argv[1]).rglob('*.b2nd') if not p.name.endswith('_seg.b2nd')]\n"
        "print(sum(int(numpy.prod(blosc2.open(str(p), mode='r').shape[1:])) for p in paths))"
    )
    result = subprocess.run(
        [str(bin_dir / "python"), "-c", script, str(folder)], capture_output=True, text=True
    )
    return int(result.stdout.strip() or 0)


def print_table(results: dict, cases: int, workers: int) -> None:
    runs = len(results["resseg"]["seconds"])
    print(
        f"\nPreprocessing {cases} cases, {workers} workers each"
        + (f"; median of {runs} runs" if runs > 1 else "")
    )
    print(f"{'tool':<12} {'seconds':>8} {'cases/s':>8} {'peak GB':>8} {'output Mvoxels':>15}")
    seconds = {tool: statistics.median(r["seconds"]) for tool, r in results.items()}
    for tool, r in results.items():
        print(
            f"{tool:<12} {seconds[tool]:8.1f} {cases / seconds[tool]:8.3f} {r['peak_bytes'] / 1e9:8.2f} "
            f"{r['output_voxels'] / 1e6:15.1f}"
        )
    if len(results) == 2:
        ours, theirs = results["resseg"], results["nnU-Net v2"]
        print(
            f"resseg / nnU-Net: throughput x{seconds['nnU-Net v2'] / seconds['resseg']:.2f}, "
            f"peak memory x{ours['peak_bytes'] / theirs['peak_bytes']:.2f}"
        )


def suite_rows(results: dict, args: argparse.Namespace) -> list:
    """Cases/s of resseg against nnU-Net v2 (where it ran), for benchmarks/suite.py."""
    ours, theirs = results["resseg"], results.get("nnU-Net v2")
    return [
        measured(
            "preprocessing",
            "cases / s",
            [args.cases / seconds for seconds in ours["seconds"]],
            [args.cases / seconds for seconds in theirs["seconds"]] if theirs else None,
            against="nnU-Net v2" if theirs else None,
            higher_is_better=True,
            resseg_peak_gib=ours["peak_bytes"] / 2**30,
            reference_peak_gib=theirs["peak_bytes"] / 2**30 if theirs else None,
            note=f"{args.cases} cases at --scale {args.scale:g}, {args.workers} workers each",
        )
    ]


def write_params(path: Path, params: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params))
    return path


def resseg() -> str:
    return str(Path(sys.executable).parent / "resseg")


if __name__ == "__main__":
    main()
