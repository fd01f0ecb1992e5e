"""Whether a scan's prediction fits in memory, asked before it starts: a volume too large is
refused with the size it would need, rather than the whole batch being killed by the OS."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

FLOAT32 = 4
GIB = 2**30


def prediction_bytes(
    shape: Sequence[int],
    spacing: Sequence[float],
    target_spacing: Sequence[float],
    n_channels: int,
    n_classes: int,
) -> int:
    """An upper estimate of the host memory that predicting one scan takes, counted in float32
    (the crop to the body only makes it smaller). On the resampled grid: the image twice (a
    transform and its result) and the class scores three times (the blending accumulator, the
    softmax, the folds' sum) besides the blending weights. On the scan's own grid: the image as
    read and as float32, the probabilities resampled back and the background fill's temporaries,
    and the argmax's int64 indices. tests/infer/test_memory.py checks it against a measured peak."""
    scan_voxels = int(np.prod(shape, dtype=np.int64))
    resampled_voxels = int(np.prod(np.asarray(shape) * np.asarray(spacing) / np.asarray(target_spacing)))
    on_resampled_grid = resampled_voxels * (2 * n_channels + 3 * n_classes + 1)
    on_scan_grid = scan_voxels * (2 * n_channels + 2 * n_classes + 2)
    return FLOAT32 * (on_resampled_grid + on_scan_grid)


def available_memory(
    meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """Bytes this process may still allocate: the kernel's MemAvailable, or less where a cgroup
    (a container, a SLURM job) sets a lower limit; None where neither can be read (not Linux)."""
    limits = []
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)  # the kernel counts in KiB
    limit_file, current_file = cgroup / "memory.max", cgroup / "memory.current"
    if limit_file.is_file() and current_file.is_file():
        limit = limit_file.read_text().strip()
        if limit != "max":  # cgroup v2's word for no limit
            limits.append(int(limit) - int(current_file.read_text()))
    return min(limits) if limits else None
