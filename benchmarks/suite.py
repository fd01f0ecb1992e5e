"""Every benchmark in one run and one table: resseg against nnU-Net v2, PI-CAI's code or the
machine's own limit, each figure measured in the same run as its comparison.

    make bench [QUICK=1]            (or: python benchmarks/suite.py [--quick] [--only STEP ...])

Runs each benchmark script of this folder in turn, each in its own process with ``--rows`` (and
``--quick``), and gathers their rows (benchmarks/rows.py) into one table: the median and range
over each script's repetitions, the reference's figure, the ratio, and the peak memory of both.
Nothing else should run on the machine meanwhile: the scripts time wall clocks. Where CUDA is
present, the scripts that take ``--device`` run there, and the table is written apart from the
CPU one. The table goes to stdout and to ``--out``/<cpu|gpu>[-quick].md, the rows to the same
name with .json; a script that fails is reported and the others still run (exit code 1).

nnU-Net v2 runs from benchmarks/.venv-nnunet (``make bench`` installs it; see
benchmarks/README.md); without it the nnU-Net columns stay empty.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from rows import Row, read_rows

HERE = Path(__file__).resolve().parent
# Per step, the scripts that measure it, whether each takes --device, and its own arguments. On a
# machine that other jobs share, speed depends on them: training and inference are also measured
# with one core kept busy by another process (--load 1), beside their idle figures.
UNDER_LOAD = ("--load", "1")
STEPS = {
    "preprocessing": [("preprocess_vs_nnunet.py", False, ()), ("preprocess_memory.py", False, ())],
    "training": [
        ("networks.py", True, ()),
        ("training.py", False, UNDER_LOAD),
        ("training_vs_nnunet.py", False, UNDER_LOAD),
    ],
    "inference": [("inference.py", True, UNDER_LOAD)],
    "evaluation": [("evaluation.py", False, ())],
    "accuracy": [("accuracy_vs_nnunet.py", False, ())],
    "scaling": [("scaling.py", False, ())],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every script's quick mode: minutes, not hours")
    parser.add_argument("--only", nargs="+", choices=list(STEPS), help="these steps only")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    device = cuda_device()
    started = datetime.now(timezone.utc)
    rows, failures, seconds = [], [], {}
    for step in args.only or STEPS:
        for script, takes_device, arguments in STEPS[step]:
            rows_path = args.out / "rows" / f"{Path(script).stem}.json"
            rows_path.parent.mkdir(parents=True, exist_ok=True)
            rows_path.unlink(missing_ok=True)
            command = [sys.executable, str(HERE / script), "--rows", str(rows_path)]
            command += ["--quick"] if args.quick else []
            command += ["--device", device] if takes_device and device != "cpu" else []
            command += list(arguments)
            print(f"\n=== {step}: {' '.join(command[1:])}", flush=True)
            clock = time.perf_counter()
            done = subprocess.run(command, cwd=HERE.parent)
            seconds[script] = time.perf_counter() - clock
            if done.returncode == 0 and rows_path.exists():
                rows += read_rows(rows_path)
            else:
                failures.append(f"{script} (exit {done.returncode})")

    table = report(rows, args, device, started, seconds, failures)
    print("\n" + table)
    name = ("gpu" if device != "cpu" else "cpu") + ("-quick" if args.quick else "")
    (args.out / f"{name}.md").write_text(table)
    (args.out / f"{name}.json").write_text(json.dumps([asdict(row) for row in rows], indent=2))
    return 1 if failures else 0


def cuda_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def report(rows: list[Row], args, device: str, started: datetime, seconds: dict, failures: list) -> str:
    command = (
        "make bench"
        + (" QUICK=1" if args.quick else "")
        + (f" ONLY='{' '.join(args.only)}'" if args.only else "")
    )
    lines = [
        f"`{command}` on {started:%Y-%m-%d %H:%M} UTC, {sum(seconds.values()) / 60:.0f} min; "
        + machine(device),
        "",
        "| step | measure | resseg, median (range) | reference, median (range) | against "
        "| resseg / reference | peak GiB, resseg / reference | setting |",
        "|---|---|---:|---:|---|---:|---:|---|",
    ]
    for row in rows:
        reference = (
            f"{number(row.reference)} ({span(row.reference_range)})" if row.reference is not None else ""
        )
        ratio = f"{number(row.ratio)}x" if row.ratio else ""
        peaks = " / ".join(
            number(p) if p is not None else "-" for p in (row.resseg_peak_gib, row.reference_peak_gib)
        )
        lines.append(
            f"| {row.step} | {row.measure}{' (higher is better)' if row.higher_is_better else ''} "
            f"| {number(row.resseg)} ({span(row.resseg_range)}), {row.repeats} runs | {reference} "
            f"| {row.against or ''} | {ratio} | {peaks} | {row.note} |"
        )
    lines += ["", "Seconds per script: " + ", ".join(f"{s} {t:.0f}" for s, t in seconds.items())]
    if failures:
        lines += ["", "Failed: " + ", ".join(failures)]
    return "\n".join(lines) + "\n"


def machine(device: str) -> str:
    """The machine in words: CPU model and cores, memory, and the GPU where one is used."""
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    words = f"{cpu}, {cores} cores, {memory:.0f} GiB, torch {torch.__version__}"
    return words + (f", GPU {torch.cuda.get_device_name()}" if device != "cpu" else ", no GPU")


def number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def span(pair: tuple[float, float] | None) -> str:
    return f"{number(pair[0])}-{number(pair[1])}" if pair else ""


if __name__ == "__main__":
    sys.exit(main())
