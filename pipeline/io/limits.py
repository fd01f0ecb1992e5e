"""How much memory an input may take: one limit, in bytes, checked by every reader (NIfTI, NRRD,
MetaImage, DICOM) against what a file's header says its voxels need, before any array is
allocated; and what memory this process has left, for that limit and for inference's estimate."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import ConfigError, InputDataError

GIB = 2**30
LIMIT_VARIABLE = "RESSEG_MAX_INPUT_BYTES"
# Preprocessing and inference hold several float32 copies of a scan (infer/memory.py counts them:
# ten or more per voxel), so a scan whose stored voxels alone take more than this share of the
# memory left could not be processed anyway.
AVAILABLE_SHARE = 1 / 8
# Where the memory left cannot be read (not Linux).
FALLBACK_LIMIT = 4 * GIB


def max_input_bytes() -> int:
    """The most bytes one input's voxels may take: $RESSEG_MAX_INPUT_BYTES, or by default an
    eighth of the memory this process has left."""
    value = os.environ.get(LIMIT_VARIABLE, "").strip()
    if not value:
        available = available_memory()
        return int(available * AVAILABLE_SHARE) if available is not None else FALLBACK_LIMIT
    try:
        limit = float(value)  # 8e9 as well as 8000000000
    except ValueError:
        limit = math.nan
    if not limit > 0 or math.isinf(limit):
        raise ConfigError(f"{LIMIT_VARIABLE}: expected a positive number of bytes, got {value!r}")
    return int(limit)


def check_input_bytes(path: str | Path, shape: Sequence[int], bytes_per_value: int) -> int:
    """The bytes that ``shape`` values of ``bytes_per_value`` need; refused above the limit."""
    needed = math.prod(int(n) for n in shape) * bytes_per_value
    limit = max_input_bytes()
    if needed > limit:
        shape_text = "x".join(str(int(n)) for n in shape)
        raise InputDataError(
            f"{path}: the header claims {shape_text} values of {bytes_per_value} bytes = "
            f"{needed / GIB:.3g} GiB, more than the {limit / GIB:.3g} GiB an input may take "
            f"(set {LIMIT_VARIABLE} to change it)"
        )
    return needed


def available_memory(
    meminfo: Path = Path("/proc/meminfo"),
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    own_cgroup: Path = Path("/proc/self/cgroup"),
) -> int | None:
    """Bytes this process may still allocate: the kernel's MemAvailable, or less where a cgroup
    (a container, a SLURM job) sets a lower limit; None where neither can be read (not Linux)."""
    left = [_cgroup_left(folder) for folder in _own_cgroup_folders(cgroup_root, own_cgroup)]
    limits = [bytes_left for bytes_left in left if bytes_left is not None]
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)  # the kernel counts in KiB
    return min(limits) if limits else None


def _own_cgroup_folders(cgroup_root: Path, own_cgroup: Path) -> list[Path]:
    """The memory cgroup folders of this process and of every cgroup above it (a SLURM job's
    step sits inside the job, which sits inside the user's slice; each may set a limit).
    /proc/self/cgroup names them: "0::/path" under cgroup v2, "4:memory:/path" under v1."""
    if not own_cgroup.is_file():
        return []
    folders = []
    for line in own_cgroup.read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base = cgroup_root
        elif "memory" in controllers.split(","):
            base = cgroup_root / "memory"
        else:
            continue
        own = base / path.lstrip("/")
        # Inside a container the path is often the host's, and the container sees its own cgroup
        # at the base: levels that do not exist here are skipped.
        folders += [level for level in (own, *own.parents) if level.is_relative_to(base)]
    return folders


def _cgroup_left(folder: Path) -> int | None:
    """What the cgroup at ``folder`` still allows: its limit less its usage (v2, then v1)."""
    for limit_name, usage_name in (
        ("memory.max", "memory.current"),
        ("memory.limit_in_bytes", "memory.usage_in_bytes"),
    ):
        limit_file, usage_file = folder / limit_name, folder / usage_name
        if limit_file.is_file() and usage_file.is_file():
            limit = limit_file.read_text().strip()
            if limit == "max":  # cgroup v2's word for no limit; v1 writes a huge number instead
                return None
            return int(limit) - int(usage_file.read_text())
    return None
