"""A scan too large for the memory left is refused with the size it needs, before it is tried."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.infer import batch
from pipeline.infer.memory import available_memory, check_device_memory, prediction_bytes, window_bytes
from pipeline.infer.predictor import Predictor
from pipeline.models.model_dir import ModelDescription
from tests.conftest import TINY_NETWORK
from tests.infer.test_batch import run_batch, summary_rows
from tests.infer.test_predictor import PLANS, blob_scan


def test_prediction_bytes_counts_every_float32_copy():
    # 100x80x40 at 1x1x2 mm resampled to 2 mm: 50x40x40 voxels. On that grid 2 image copies,
    # 3 class-score copies of 3 classes and the blending weights: 12 floats per voxel; on the
    # scan's grid 2 image copies, 2 copies of 3 classes and int64 indices: 10. Plus 10% for the
    # allocator.
    expected = int(1.1 * 4 * (50 * 40 * 40 * 12 + 100 * 80 * 40 * 10))
    assert prediction_bytes((100, 80, 40), (1.0, 1.0, 2.0), (2.0, 2.0, 2.0), 1, 3) == expected


def write_files(folder, **files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text)


def test_available_memory_is_the_least_the_kernel_and_every_cgroup_above_the_process_leave(tmp_path):
    """Fake /proc and /sys/fs/cgroup trees: a SLURM job step (cgroup v2) inside a job that has a
    lower limit; the same under cgroup v1; a container, which sees its own cgroup at the root."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  4000 kB\nMemFree:  1500 kB\nMemAvailable:  2000 kB\n")
    own = tmp_path / "self_cgroup"
    v2, v1 = tmp_path / "v2", tmp_path / "v1"
    write_files(v2 / "system.slice/slurmstepd.scope/job_7", memory_max="901000\n", memory_current="1000\n")
    write_files(v2 / "system.slice/slurmstepd.scope/job_7/step_0", memory_max="max\n", memory_current="900\n")
    own.write_text("0::/system.slice/slurmstepd.scope/job_7/step_0\n")
    assert available_memory(meminfo, v2, own) == 900000

    write_files(
        v1 / "memory/slurm/uid_1/job_7", memory_limit_in_bytes="701000\n", memory_usage_in_bytes="1000\n"
    )
    write_files(
        v1 / "memory/slurm/uid_1/job_7/step_0",
        memory_limit_in_bytes="9223372036854771712\n",  # v1's "no limit"
        memory_usage_in_bytes="500\n",
    )
    own.write_text("5:cpuacct,cpu:/slurm/uid_1/job_7/step_0\n4:memory:/slurm/uid_1/job_7/step_0\n0::/\n")
    assert available_memory(meminfo, v1, own) == 700000

    container = tmp_path / "container"
    write_files(container, memory_max="301000\n", memory_current="1000\n")
    own.write_text("0::/kubepods/pod1/abc\n")
    assert available_memory(meminfo, container, own) == 300000
    write_files(container, memory_max="max\n")
    assert available_memory(meminfo, container, own) == 2000 * 1024
    assert available_memory(tmp_path / "absent", tmp_path / "absent", tmp_path / "absent") is None


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


def test_the_estimate_with_a_real_networks_activations_bounds_the_memory_a_prediction_takes(tmp_path):
    """The resunet_small preset (configs/models/) with a 96x96x48 window, on the CPU, over a scan
    that fits in one window: the arrays alone would not bound the measured peak; with the
    activations of one window the estimate does. Measured as above."""
    blob_scan(tmp_path, "scan", np.diag([2.0, 2.0, 4.0, 1.0]), shape=(48, 48, 24))
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        import torch
        from pipeline.config import TrainParams, resolve_network
        from pipeline.infer.memory import prediction_bytes
        from pipeline.infer.predictor import Predictor
        from pipeline.io import read_volume
        from pipeline.models.model_dir import ModelDescription
        from tests.infer.test_predictor import PLANS

        def kib(field):
            status = Path("/proc/self/status").read_text().splitlines()
            return next(int(line.split()[1]) for line in status if line.startswith(field))

        torch.manual_seed(0)
        network = resolve_network(TrainParams(model="resunet_small"))
        description = ModelDescription(network, PLANS, [96, 96, 48])
        predictor = Predictor(description, [description.build()], device="cpu", precision="fp32")
        scan = read_volume({str(tmp_path / "scan.nii.gz")!r})
        predictor.predict(scan)
        Path("/proc/self/clear_refs").write_text("5")
        resident = kib("VmRSS:")
        predictor.predict(scan)
        arrays = prediction_bytes(scan.shape, scan.spacing, PLANS.target_spacing, 1, 3)
        print(1024 * (kib("VmHWM:") - resident), arrays, predictor.memory_needed([scan]))
        """
    )
    # glibc keeps freed blocks under its (self-raising) mmap threshold for reuse, hiding the second
    # prediction's peak; a fixed threshold returns every large block, so the peak shows.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**17)}
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    used, arrays, estimate = map(int, output.stdout.split())
    print(
        f"used {used / 2**20:.0f} MiB, arrays {arrays / 2**20:.0f} MiB, estimate {estimate / 2**20:.0f} MiB"
    )
    assert arrays < used <= estimate < 4 * used


def test_a_gpu_without_room_for_one_window_is_refused_naming_the_sizes():
    with pytest.raises(ConfigError, match=r"--device cuda:0: .* needs about 3\.0 GiB .* 2\.0 GiB free"):
        check_device_memory(3 * 2**30, 2 * 2**30, torch.device("cuda:0"))
    check_device_memory(2 * 2**30, 3 * 2**30, torch.device("cuda:0"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_predictor_on_a_gpu_refuses_windows_its_memory_cannot_hold():
    """A real network and device: a window batch beyond the GPU's free memory stops at once."""
    description = ModelDescription(TINY_NETWORK, PLANS, patch_size=[32, 32, 16])
    free = torch.cuda.mem_get_info()[0]
    windows = int(free // window_bytes(description)) + 1
    with pytest.raises(ConfigError, match="lower predict.sw_batch_size"):
        Predictor(description, [description.build()], sw_batch_size=windows, device="cuda")
