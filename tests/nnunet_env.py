"""nnU-Net v2 in its own virtualenv (benchmarks/.venv-nnunet, which `make test` installs): it needs
torchvision, which resseg's environment must not load, so tests run its code in a subprocess."""

import subprocess

import pytest

from tests.conftest import REPO_ROOT

NNUNET_PYTHON = REPO_ROOT / "benchmarks/.venv-nnunet/bin/python"


def require_nnunet() -> None:
    """Skip the calling test where nnU-Net is not installed."""
    # find_spec locates the package without importing it (and torch with it).
    check = "import importlib.util, sys; sys.exit(importlib.util.find_spec('nnunetv2') is None)"
    installed = NNUNET_PYTHON.is_file()
    if installed:
        installed = subprocess.run([NNUNET_PYTHON, "-c", check], capture_output=True).returncode == 0
    if not installed:
        pytest.skip(
            f"nnU-Net v2 is not installed in {NNUNET_PYTHON.parents[1]}: "
            "run `make benchmarks/.venv-nnunet/.installed`"
        )


def run_nnunet(script: str, timeout: int = 300) -> None:
    done = subprocess.run([NNUNET_PYTHON, "-c", script], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
