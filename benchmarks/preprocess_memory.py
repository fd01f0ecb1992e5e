"""Peak memory of preprocessing one large CT (512x512x600 voxels by default), one worker.

    python benchmarks/preprocess_memory.py [--quick] [--slices 600] [--rows PATH]

Memory must stay at a few GB whatever the scan size: one case per worker, and resampling by
interpolation rather than through a sampling grid (see pipeline/preprocess/transforms.py).
The scan is written once into --work; the peak is the summed RSS of `resseg preprocess`'s
process tree, sampled every 0.1 s. --quick: 512x512x300 voxels. --rows writes the seconds, the
peak and its ratio to the scan's float32 size for benchmarks/suite.py (benchmarks/rows.py).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from preprocess_vs_nnunet import fill_defaults, resseg, run_measured, write_params
from rows import measured, write_rows

from pipeline.cohort.dataset import write_dataset_json
from pipeline.io import write_volume


def write_large_ct(root: Path, slices: int) -> None:
    """A body ellipse at 40 HU with an ellipsoid organ at 100 HU, in air, plus noise."""
    shape = (512, 512, slices)
    x, y, z = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    body = np.broadcast_to((x**2 / 0.8 + y**2 / 0.6) < 1, shape)
    organ = ((x - 0.1) ** 2 / 0.09 + y**2 / 0.05 + z**2 / 0.3) < 1
    image = np.where(body, 40, -1000).astype(np.int16)
    image[organ] = 100
    image += np.random.default_rng(0).normal(0, 20, shape).astype(np.int16)
    affine = np.diag([0.8, 0.8, 1.0, 1.0])
    write_volume(root / "imagesTr/large_000.nii.gz", image, affine)
    write_volume(root / "labelsTr/large_000.nii.gz", organ.astype(np.uint8), affine)
    write_dataset_json(root, "large", ["CT"], {0: "background", 1: "organ"}, ["large_000"], [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, help="default 600 (--quick: 300)")
    parser.add_argument("--target-spacing", type=float, nargs=3, default=[1.0, 1.0, 1.5])
    parser.add_argument("--quick", action="store_true", help="half the slices")
    parser.add_argument("--work", type=Path, default=Path("/tmp/resseg-bench-large"))
    parser.add_argument("--rows", type=Path, help="also write the suite's rows here (benchmarks/rows.py)")
    args = fill_defaults(parser.parse_args(), quick={"slices": 300}, full={"slices": 600})

    cohort = args.work / f"cohort_{args.slices}"
    if not (cohort / "dataset.json").exists():
        write_large_ct(cohort, args.slices)
    params = {"preprocess": {"num_workers": 1, "target_spacing": args.target_spacing}}
    command = [resseg(), "preprocess", "--params", str(write_params(args.work / "params.yaml", params))]
    seconds, peak = run_measured(
        [*command, "--cohort", str(cohort), "--out", str(args.work / "out")], dict(os.environ)
    )
    scan_gb, peak_gb = 512 * 512 * args.slices * 4 / 1e9, peak / 1e9
    print(f"\n{'scan':<18} {'float32 GB':>10} {'seconds':>8} {'peak GB':>8} {'peak / scan':>11}")
    print(
        f"512x512x{args.slices:<10} {scan_gb:10.2f} {seconds:8.1f} {peak_gb:8.2f} {peak_gb / scan_gb:11.1f}"
    )
    if args.rows:
        row = measured(
            "preprocessing",
            "s, one large CT",
            [seconds],
            resseg_peak_gib=peak / 2**30,
            note=f"512x512x{args.slices}, one worker; peak {peak_gb / scan_gb:.1f}x the scan's float32 size",
        )
        write_rows(args.rows, [row])


if __name__ == "__main__":
    main()
