"""The thread budget: affinity, cgroup quotas (v1 and v2, nested) and SLURM, each read from a fake
root; then a real affinity mask and, where this process may create one, a real cgroup quota."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pipeline.threads import cgroup_quota, cpu_budget

V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNT = "31 23 0:27 {root} /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"


def fake_root(tmp_path: Path, mountinfo: str, membership: str, files: dict[str, str]) -> Path:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mountinfo").write_text(mountinfo)
    (tmp_path / "proc/self/cgroup").write_text(membership)
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_v2_nested_quota_is_the_smallest_above_the_process(tmp_path):
    """A systemd scope inside a slice: the slice's 1.5 cores bound the scope that sets none."""
    root = fake_root(
        tmp_path,
        V2_MOUNT,
        "0::/user.slice/job.scope\n",
        {
            "sys/fs/cgroup/cpu.max": "max 100000\n",
            "sys/fs/cgroup/user.slice/cpu.max": "150000 100000\n",
            "sys/fs/cgroup/user.slice/job.scope/cpu.max": "max 100000\n",
        },
    )
    assert cgroup_quota(root) == pytest.approx(1.5)
    budget = cpu_budget(root, environ={}, affinity=8)
    assert budget.cores == 2 and budget.reason == "cgroup CPU quota (1.5 cores)"


def test_v2_container_quota_at_the_mount_root(tmp_path):
    root = fake_root(tmp_path, V2_MOUNT, "0::/\n", {"sys/fs/cgroup/cpu.max": "100000 100000\n"})
    assert cpu_budget(root, environ={}, affinity=16).cores == 1


def test_v1_quota_of_a_slurm_job_and_its_parents(tmp_path):
    mounts = V1_MOUNT.format(root="/")
    membership = "5:memory:/slurm\n4:cpu,cpuacct:/slurm/uid_0/job_5\n0::/\n"
    job = "sys/fs/cgroup/cpu,cpuacct/slurm/uid_0/job_5"
    files = {
        f"{job}/cpu.cfs_quota_us": "300000\n",
        f"{job}/cpu.cfs_period_us": "100000\n",
        "sys/fs/cgroup/cpu,cpuacct/slurm/cpu.cfs_quota_us": "-1\n",  # no quota
        "sys/fs/cgroup/cpu,cpuacct/slurm/cpu.cfs_period_us": "100000\n",
    }
    root = fake_root(tmp_path, mounts, membership, files)
    assert cgroup_quota(root) == pytest.approx(3.0)
    # SLURM's own count is lower still.
    budget = cpu_budget(root, environ={"SLURM_CPUS_PER_TASK": "2"}, affinity=64)
    assert (budget.cores, budget.reason) == (2, "SLURM_CPUS_PER_TASK")


def test_v1_container_sees_its_cgroup_as_the_mount_root(tmp_path):
    """Docker mounts the container's own cgroup at /sys/fs/cgroup/cpu,cpuacct: the membership
    path names the mount's root, whose files are at the mount point."""
    mounts = V1_MOUNT.format(root="/docker/abc")
    files = {
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "50000\n",
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    }
    root = fake_root(tmp_path, mounts, "4:cpu,cpuacct:/docker/abc\n", files)
    assert cgroup_quota(root) == pytest.approx(0.5)
    assert cpu_budget(root, environ={}, affinity=4).cores == 1  # never below one


def test_no_quota_and_unreadable_files_leave_affinity(tmp_path):
    root = fake_root(tmp_path, V2_MOUNT, "0::/a\n", {"sys/fs/cgroup/a/cpu.max": "garbage"})
    assert cgroup_quota(root) is None
    budget = cpu_budget(root, environ={"SLURM_CPUS_PER_TASK": "lots"}, affinity=3)
    assert (budget.cores, budget.reason) == (3, "CPU affinity")
    assert cgroup_quota(tmp_path / "nothing here") is None


# The compute threads `resseg predict` would take here (run outside a project: no params.yaml).
PROBE = (
    "from pipeline.cli import build_parser, _thread_count; "
    "print(_thread_count(build_parser().parse_args("
    "['predict', '--input', 'in', '--output', 'out', '--model', 'model'])))"
)


def probe(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)


def test_a_real_affinity_mask(tmp_path):
    assert probe(f"import os; os.sched_setaffinity(0, {{0}}); {PROBE}", tmp_path).stdout.strip() == "1"


@pytest.mark.parametrize(
    ("argv", "params", "expected"),
    [
        (["predict", "--threads", "3"], "predict: {threads: 5}\n", 3),  # the option wins
        (["predict"], "predict: {threads: 5}\n", 5),
        (["crossval"], "predict: {threads: 5}\n", 5),
        # Loader workers count in the budget; DDP processes on this node share it.
        (["train", "--threads", "8"], "train: {num_workers: 2}\n", 6),
        (["train"], "train: {threads: 8, num_workers: 2, devices: 2}\n", 2),
        (["train"], "train: {threads: 2, num_workers: 4}\n", 1),  # never below one
    ],
)
def test_thread_count_of_a_command(tmp_path, argv, params, expected):
    from pipeline.cli import _thread_count, build_parser

    (tmp_path / "params.yaml").write_text(params)
    paths = {
        "predict": ["--input", "in", "--output", "out", "--model", "m"],
        "crossval": ["--model", "m", "--cohort", "c", "--splits", "s", "--fold", "0", "--masks", "k"]
        + ["--report", "r"],
        "train": ["--preprocessed", "p", "--splits", "s", "--out", "o"],
    }[argv[0]]
    args = build_parser().parse_args([*argv, *paths, "--params", str(tmp_path / "params.yaml")])
    assert _thread_count(args) == expected


@pytest.mark.parametrize("option", ["0", "-1", "two"])
def test_threads_must_be_a_positive_number(option, capsys):
    from pipeline.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--input", "a", "--output", "b", "--model", "c", "--threads", option])
    assert exit_.value.code == 2 and "--threads: expected a positive whole number" in capsys.readouterr().err


def test_limit_threads_sets_torch_and_the_spin_of_openmp(tmp_path):
    code = (
        "import os; from pipeline.threads import limit_threads; limit_threads(1); import torch; "
        "print(torch.get_num_threads(), os.environ.get('GOMP_SPINCOUNT'), os.environ['OMP_NUM_THREADS'])"
    )
    # A clean environment: a command run in this process (another test) set them here.
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}

    def run(env: dict) -> list[str]:
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env
        ).stdout.split()

    assert run(clean) == ["1", "1000", "1"]
    # A user's own wait policy is theirs: no spin count is added to it.
    assert run({**clean, "OMP_WAIT_POLICY": "PASSIVE"}) == ["1", "None", "1"]


def test_a_real_cgroup_quota_of_one_core(tmp_path):
    """A cgroup of its own with a quota of one core (cgroup v1's cpu controller or v2), the
    probe moved into it; skipped where this process may not create one."""
    v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
    if (v1 / "cpu.cfs_quota_us").is_file():
        group, settings = v1 / f"resseg-test-{uuid.uuid4().hex[:8]}", {"cpu.cfs_quota_us": "100000"}
    elif (v2 / "cgroup.controllers").is_file() and "cpu" in (v2 / "cgroup.subtree_control").read_text():
        group, settings = v2 / f"resseg-test-{uuid.uuid4().hex[:8]}", {"cpu.max": "100000 100000"}
    else:
        pytest.skip("no cgroup CPU controller here")
    try:
        group.mkdir()
        for name, value in settings.items():
            (group / name).write_text(value)
    except OSError as err:
        pytest.skip(f"cannot create a cgroup here ({err.strerror})")
    try:
        code = f"open('{group}/cgroup.procs', 'w').write(str(__import__('os').getpid())); {PROBE}"
        result = probe(code, tmp_path)
        assert result.stdout.strip() == "1", result.stderr
    finally:
        group.rmdir()
