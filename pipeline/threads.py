"""How many cores this process may use, and the thread settings that keep it within them.

A process sees every core of the machine, but it may use fewer: its CPU affinity (taskset,
cpusets, SLURM's binding), a cgroup CPU quota (a container's or a Kubernetes pod's limit, a
systemd scope's CPUQuota) and SLURM's ``SLURM_CPUS_PER_TASK``. The budget is the smallest of
them. Left to their defaults, torch's intra-op threads number the cores of the machine, and
OpenMP's waiting threads spin for a while before they sleep: with another job on the machine,
such threads preempt each other and the job several times over (README, Performance).

joblib's (loky's) ``cpu_count`` reads affinity and a cgroup quota too, but only the quota of the
cgroup mounted at /sys/fs/cgroup itself, not the nested cgroup the process runs in (a systemd
scope, a SLURM job step), and not SLURM's variable; hence this module.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# How long an OpenMP thread that waits for work spins before it sleeps, in GNU OpenMP's (libgomp,
# which torch's wheels use) iterations of its wait loop: 1000, a few microseconds, instead of its
# default 300 000. Spinning hides the cost of waking a thread between torch's many small parallel
# regions on an idle machine, but on a shared one a spinning thread takes the core that the thread
# it waits for needs. Measured on 2 cores with one kept busy (README, Performance): training at
# libgomp's default slowed 2.8x, at 1000 1.9x, with no spinning at all (OMP_WAIT_POLICY=PASSIVE)
# 1.45x but 16% slower idle. A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT is kept.
WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
SPIN_COUNT = "1000"
# What torch (its default intra-op threads), OpenMP, MKL and OpenBLAS size their pools by when they
# load: set for this process and inherited by the processes it starts.
THREAD_COUNT_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Budget:
    cores: int
    reason: str  # the limit that decided it: "CPU affinity", "cgroup CPU quota (1.5 cores)" ...


def cpu_budget(
    root: Path = Path("/"), environ: Mapping[str, str] = os.environ, affinity: int | None = None
) -> Budget:
    """The cores this process may use: the smallest of its CPU affinity (``affinity``, where a
    test gives one), its cgroups' CPU quotas (rounded up: a quota of 1.5 cores lets two threads
    run most of the time) and SLURM_CPUS_PER_TASK. ``root`` is where /proc and /sys are read
    from (a test gives a fake one)."""
    limits = [(affinity or len(os.sched_getaffinity(0)), "CPU affinity")]
    quota = cgroup_quota(root)
    if quota is not None:
        limits.append((max(1, math.ceil(quota - 1e-9)), f"cgroup CPU quota ({quota:g} cores)"))
    slurm = environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        limits.append((int(slurm), "SLURM_CPUS_PER_TASK"))
    return Budget(*min(limits, key=lambda limit: limit[0]))


def cgroup_quota(root: Path = Path("/")) -> float | None:
    """The smallest CPU quota, in cores, of this process's cgroup and every cgroup above it,
    under cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None
    where none is set or nothing can be read."""
    membership = _membership(root / "proc/self/cgroup")
    quotas = []
    for version, mount_root, mount_point in _cgroup_mounts(root / "proc/self/mountinfo"):
        path = membership.get(version)
        if path is None or not (path + "/").startswith(mount_root.rstrip("/") + "/"):
            continue
        top = root / mount_point.lstrip("/")
        folder = top / path[len(mount_root.rstrip("/")) :].lstrip("/")
        while True:  # from the process's own cgroup up to the mount's root
            quota = _quota_v2(folder) if version == "v2" else _quota_v1(folder)
            if quota is not None:
                quotas.append(quota)
            if folder == top or top not in folder.parents:
                break
            folder = folder.parent
    return min(quotas, default=None)


def threads_per_process(threads: int, processes: int = 1, workers: int = 0) -> int:
    """Compute threads of each of ``processes`` processes sharing ``threads`` on one machine, each
    with ``workers`` worker processes of its own (data loaders), which count in the same budget."""
    return max(1, threads // processes - workers)


def limit_threads(threads: int) -> None:
    """Keep this process, and the processes it starts, to ``threads`` compute threads, and let
    OpenMP's waiting threads sleep soon (SPIN_COUNT). OpenMP reads its settings when torch first
    loads it, so this is for a command's start (cli.main), before torch is imported. Where torch
    is loaded already, its thread count is set too."""
    if not any(name in os.environ for name in WAIT_SETTINGS):
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    os.environ.update({name: str(threads) for name in THREAD_COUNT_VARIABLES})
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def _membership(path: Path) -> dict[str, str]:
    """This process's cgroup path per hierarchy: "v2" for the unified one, "v1" for the one that
    holds the cpu controller."""
    found = {}
    for line in _lines(path):
        hierarchy, _, rest = line.partition(":")
        controllers, _, cgroup = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            found["v2"] = cgroup
        elif "cpu" in controllers.split(","):
            found["v1"] = cgroup
    return found


def _cgroup_mounts(path: Path) -> list[tuple[str, str, str]]:
    """(version, root of the mount inside the hierarchy, mount point) of each cgroup mount that
    can hold a CPU quota, from /proc/self/mountinfo."""
    mounts = []
    for line in _lines(path):
        fields, _, tail = line.partition(" - ")
        fields, tail = fields.split(), tail.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        if tail[0] == "cgroup2":
            mounts.append(("v2", fields[3], fields[4]))
        elif tail[0] == "cgroup" and "cpu" in tail[2].split(","):
            mounts.append(("v1", fields[3], fields[4]))
    return mounts


def _lines(path: Path) -> list[str]:
    """A /proc file's lines; none where it cannot be read (not Linux, a fake root without it)."""
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def _quota_v2(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _quota_v1(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
