"""A model.json asking for absurd sizes (a million classes or residual units, 2^20 channels, a
4096^3 patch, a network of billions of parameters) is refused when the model is loaded, in one
line naming the key, before any network is built: nothing large is allocated, nothing hangs."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.models.test_model_values import edit, model  # noqa: F401 (model is a fixture)
from tests.test_untrusted_inputs import predict

MIB = 2**20
ABSURD = [
    ("plans.labels", {str(value): f"class_{value}" for value in range(10**6)},
     "plans.labels has 1000000 classes, expected at most 256"),
    ("plans.channel_names", ["CT"] * 1000, "plans.channel_names has 1000 channels, expected at most 16"),
    ("network.num_res_units", 10**6,
     "network.num_res_units: input should be less than or equal to 32, got 1000000"),
    ("network.channels", [2**20, 16, 32],
     "network.channels.0: input should be less than or equal to 2048, got 1048576"),
    ("network.channels", [8] * 10**6,
     "network.channels: list should have at most 10 items after validation, not 1000000, "
     "got [8, 8, 8, 8, 8, 8, ...]"),
    ("patch_size", [4096, 4096, 4096], "patch_size has 68719476736 voxels, expected at most 16777216"),
    ("network", {"architecture": "residual_unit_unet", "channels": [2048] * 6, "strides": [2] * 5,
                 "num_res_units": 32},
     "network has 23442827714 parameters, expected at most 1073741824"),
]  # fmt: skip
IDS = ["classes", "input_channels", "residual_units", "channels", "levels", "patch", "parameters"]


def absurd_model_json(model, key, value):  # noqa: F811 (model is the fixture's value)
    model_json = model / "fold_0/model.json"
    description = json.loads(model_json.read_text())
    edit(description, key, value)
    model_json.write_text(json.dumps(description))
    return model_json


@pytest.mark.parametrize(("key", "value", "message"), ABSURD, ids=IDS)
def test_absurd_sizes_in_model_json_are_refused_naming_the_key(model, tmp_path, capsys, key, value, message):  # noqa: F811
    model_json = absurd_model_json(model, key, value)
    code, error = predict(model, tmp_path / "in", tmp_path / "out", capsys)
    assert (code, error) == (3, f"resseg predict: error: {model_json}: {message}")
    assert not (tmp_path / "out").exists()


def test_refusing_absurd_sizes_allocates_nothing_large(model, tmp_path):  # noqa: F811
    """In a fresh process, loading each of the models above raises, and the peak resident memory
    grows by less than parsing the model.json of a million labels takes."""
    model_dirs = []
    for index, (key, value, _) in enumerate(ABSURD):
        copy = tmp_path / f"model_{index}/fold_0"
        copy.mkdir(parents=True)
        for file in (model / "fold_0").iterdir():
            if file.is_file():
                (copy / file.name).write_bytes(file.read_bytes())
        absurd_model_json(copy.parent, key, value)
        model_dirs.append(str(copy.parent))
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from pipeline.errors import InputDataError
        from pipeline.models.model_dir import load_description

        def kib(field):
            status = Path("/proc/self/status").read_text().splitlines()
            return next(int(line.split()[1]) for line in status if line.startswith(field))

        Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
        resident = kib("VmRSS:")
        for model_dir in {model_dirs!r}:
            try:
                load_description(Path(model_dir))
                raise SystemExit(model_dir + " was loaded")
            except InputDataError:
                pass
        print(1024 * (kib("VmHWM:") - resident))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert int(done.stdout) < 400 * MIB
