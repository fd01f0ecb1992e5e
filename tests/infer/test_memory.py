"""A scan too large for the memory left is refused with the size it needs, before it is tried."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pipeline.infer import batch
from pipeline.infer.memory import available_memory, prediction_bytes
from tests.infer.test_batch import run_batch, summary_rows
from tests.infer.test_predictor import blob_scan


def test_prediction_bytes_counts_every_float32_copy():
    # 100x80x40 at 1x1x2 mm resampled to 2 mm: 50x40x40 voxels. On that grid 2 image copies,
    # 3 class-score copies of 3 classes and the blending weights: 12 floats per voxel; on the
    # scan's grid 2 image copies, 2 copies of 3 classes and int64 indices: 10.
    expected = 4 * (50 * 40 * 40 * 12 + 100 * 80 * 40 * 10)
    assert prediction_bytes((100, 80, 40), (1.0, 1.0, 2.0), (2.0, 2.0, 2.0), 1, 3) == expected


def test_available_memory_is_the_lower_of_the_kernel_and_the_cgroup(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  4000 kB\nMemFree:  1500 kB\nMemAvailable:  2000 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert available_memory(meminfo, cgroup) == 2000 * 1024
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text("1000\n")
    assert available_memory(meminfo, cgroup) == 2000 * 1024
    (cgroup / "memory.max").write_text("501000\n")
    assert available_memory(meminfo, cgroup) == 500000
    assert available_memory(tmp_path / "absent", tmp_path / "absent") is None


def test_a_scan_too_large_for_the_memory_left_is_refused_and_the_others_done(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    blob_scan(folder, "small", np.diag([2.0, 2.0, 4.0, 1.0]))
    blob_scan(folder, "large", np.diag([2.0, 2.0, 4.0, 1.0]), shape=(80, 72, 28))
    small, large = (
        prediction_bytes(shape, (2.0, 2.0, 4.0), (2.0, 2.0, 4.0), 1, 3)
        for shape in [(40, 36, 14), (80, 72, 28)]
    )
    monkeypatch.setattr(batch, "available_memory", lambda: (small + large) // 2)

    result = run_batch(folder, tmp_path / "out")

    assert result.failed == ["large"]
    rows = summary_rows(tmp_path / "out")
    assert rows["small"]["status"] == "ok"
    error = rows["large"]["error"]
    assert str(folder / "large.nii.gz") in error and f"needs about {large / 2**30:.1f} GiB" in error
    assert not (tmp_path / "out/large.nii.gz").exists()


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 2.0), (2.0, 2.0, 4.0)], ids=["resampled", "plan_spacing"])
def test_the_estimate_bounds_the_memory_a_prediction_takes(tmp_path, spacing):
    """Measured in a fresh process, after a first prediction has made torch's one-off allocations:
    Linux resets the process's peak resident memory (VmHWM) when 5 is written to clear_refs. Once
    with the scan's grid 8 times finer than the plan's, once on the plan's grid."""
    blob_scan(tmp_path, "scan", np.diag([*spacing, 1.0]), shape=(200, 200, 80))
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from pipeline.io import read_volume
        from tests.infer.test_predictor import oracle_predictor

        def kib(field):
            status = Path("/proc/self/status").read_text().splitlines()
            return next(int(line.split()[1]) for line in status if line.startswith(field))

        predictor = oracle_predictor()
        scan = read_volume({str(tmp_path / "scan.nii.gz")!r})
        predictor.predict(scan)
        Path("/proc/self/clear_refs").write_text("5")
        resident = kib("VmRSS:")
        predictor.predict(scan)
        print(1024 * (kib("VmHWM:") - resident), predictor.memory_needed([scan]))
        """
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    used, estimate = map(int, output.stdout.split())
    # An upper bound, but not a wild one: what the allocator reuses varies from run to run.
    assert estimate / 8 < used <= estimate
