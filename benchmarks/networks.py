"""Training speed and memory of every network preset in configs/models, side by side in one run.

    python benchmarks/networks.py [--quick] [--device auto|cpu|cuda] [--precision auto|fp32|mixed]
                                  [--patch X Y Z] [--spacing X Y Z]
                                  [--batch N] [--repeats N] [--presets NAME ...] [--rows PATH]

Per preset: parameters; forward GFLOPs per patch (PyTorch's FlopCounterMode); training patches/s
(forward + backward + SGD step on random data, median of --repeats steps after one warm-up step,
with the slowest and fastest); the achieved GFLOP/s (3x the forward FLOPs per trained patch) and
its share of a float32 matrix-multiply peak measured on the same device just before the preset's
steps (in the same arithmetic as the steps: with --precision mixed, float16 on CUDA as
``train.precision: auto`` trains there, with a gradient scaler, and bfloat16 on a CPU); and the
peak memory. Each preset runs in a fresh process so that its peak is its own: on CPU the peak
resident memory above the process's baseline once torch and MONAI are loaded, on GPU
torch.cuda.max_memory_allocated.

The default is the demo's plan (patch 80x80x32 at 1.8x1.8x4.1 mm, batch 2). --quick trains
32x32x32 patches (no padding for the ResNet encoders) for three timed steps: under two minutes on
two CPU cores for all presets. --rows writes, per preset, the achieved GFLOP/s of every timed step
against the matmul peak, for benchmarks/suite.py (benchmarks/rows.py).
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psutil
import torch
from preprocess_vs_nnunet import fill_defaults
from rows import measured, write_rows
from torch.nn import functional as F

from pipeline.config import TrainParams, resolve_network
from pipeline.models.networks import build_network, count_flops, count_parameters

PRESET_DIR = Path(__file__).resolve().parents[1] / "configs/models"
IN_CHANNELS, OUT_CHANNELS = 1, 3  # the demo: one CT channel; background, organ, lesion


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.precision, device)
    arithmetic = str(dtype).removeprefix("torch.")
    print(
        f"device: {describe(device)}; torch {torch.__version__}; patch {args.patch} at {args.spacing} mm; "
        f"batch {args.batch}; {arithmetic}; median of {args.repeats} steps\n"
    )
    print(
        "| preset | architecture | parameters (M) | forward GFLOPs / patch | training patches/s "
        "(min-max) | achieved GFLOP/s | matmul peak GFLOP/s | of peak | peak memory (MiB) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for name in args.presets:
        # A fresh process per preset: its peak memory must not include the previous preset's.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            job = pool.submit(
                measure, name, str(device), dtype, args.patch, args.spacing, args.batch, args.repeats
            )
            result = job.result()
        speeds = result["patches_per_s"]
        # 3x the forward FLOPs per trained patch: the forward, and a backward of about twice its work.
        achieved = [3 * result["flops"] * speed / 1e9 for speed in speeds]
        row = measured(
            "training",
            f"achieved GFLOP/s, {name}",
            achieved,
            [result["matmul_peak"] / 1e9],
            against="matmul peak",
            higher_is_better=True,
            resseg_peak_gib=result["peak_bytes"] / 2**30,
            device=device.type,
            note=f"{arithmetic}, patch {'x'.join(map(str, args.patch))}, batch {args.batch}",
        )
        rows.append(row)
        print(
            f"| {name} | {result['architecture']} | {result['parameters'] / 1e6:.1f} | "
            f"{result['flops'] / 1e9:.1f} | "
            f"{statistics.median(speeds):.2f} ({min(speeds):.2f}-{max(speeds):.2f}) | "
            f"{row.resseg:.0f} | {row.reference:.0f} | {row.ratio:.0%} | "
            f"{result['peak_bytes'] / 2**20:.0f} |",
            flush=True,
        )
    if args.rows:
        write_rows(args.rows, rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "mixed"],
        default="auto",
        help="auto: mixed on CUDA (as training there), fp32 on a CPU",
    )
    parser.add_argument("--patch", type=int, nargs=3, help="default 80 80 32 (--quick: 32 32 32)")
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.8, 1.8, 4.1])
    # 2, the plan's least: the ResNet encoders' batch norm needs two values per channel, and
    # a 32x32x32 patch leaves one voxel at their deepest level.
    parser.add_argument("--batch", type=int, default=2, help="patches per step")
    parser.add_argument("--repeats", type=int, help="timed steps; default 5 (--quick: 3)")
    parser.add_argument("--presets", nargs="+", default=sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
    parser.add_argument("--quick", action="store_true", help="small patches, few steps")
    parser.add_argument("--rows", type=Path, help="also write the suite's rows here (benchmarks/rows.py)")
    args = parser.parse_args()
    return fill_defaults(
        args, quick={"patch": [32, 32, 32], "repeats": 3}, full={"patch": [80, 80, 32], "repeats": 5}
    )


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The steps' arithmetic: float32, or what autocast computes in on this device."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return torch.float32
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    return torch.device(choice)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def matmul_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The best of a few products of large square matrices: the device's practical peak."""
    n = 8192 if device.type == "cuda" else 2048
    # Compare like with like: cuDNN convolutions may use TF32 (PyTorch's default), so may the peak.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    seconds = min(timed(lambda: a @ b, device) for _ in range(5))
    return 2 * n**3 / seconds


def measure(
    name: str,
    device_name: str,
    dtype: torch.dtype,
    patch: list[int],
    spacing: list[float],
    batch: int,
    repeats: int,
) -> dict:
    device = torch.device(device_name)
    torch.manual_seed(0)
    # Measured next to each preset's steps, so that a machine shared with other work (a CPU
    # especially) slows both alike and the ratio stays meaningful; before the memory baseline,
    # so that its matrices do not count.
    matmul_peak = matmul_peak_flops(device, dtype)
    baseline = psutil.Process().memory_info().rss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    params = resolve_network(TrainParams(model=name), PRESET_DIR)
    network = build_network(params, IN_CHANNELS, OUT_CHANNELS, patch, spacing).to(device)
    flops = count_flops(network, IN_CHANNELS, patch)
    network.train()
    # nnU-Net's optimiser; the learning rate is irrelevant to the speed.
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    image = torch.randn(batch, IN_CHANNELS, *patch, device=device)
    label = torch.randint(0, OUT_CHANNELS, (batch, 1, *patch), device=device).float()

    mixed = dtype != torch.float32
    # float16 gradients underflow without a scaler (Lightning's 16-mixed uses one too).
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=mixed):
            outputs = network(image)
            outputs = outputs if isinstance(outputs, list) else [outputs]
            # Deep supervision: each output against the label at its resolution, as in training.
            loss = sum(
                F.cross_entropy(out, F.interpolate(label, size=out.shape[2:], mode="nearest")[:, 0].long())
                for out in outputs
            )
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    timed(step, device)  # warm-up: cuDNN's algorithm search, the allocator, first-touch pages
    speeds = [batch / timed(step, device) for _ in range(repeats)]
    if device.type == "cuda":
        peak_bytes = torch.cuda.max_memory_allocated(device)
    else:  # ru_maxrss is in KiB on Linux
        peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    return {
        "architecture": params.architecture,
        "parameters": count_parameters(network),
        "flops": flops,
        "matmul_peak": matmul_peak,
        "patches_per_s": speeds,
        "peak_bytes": peak_bytes,
    }


def timed(work, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
