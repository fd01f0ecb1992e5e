"""model.json values and weights that would only fail at inference, with a traceback or an empty
mask, are refused when the model is loaded: one line naming the file and the key."""

import json

import numpy as np
import pytest
import torch

from pipeline.models.model_dir import WEIGHTS, ModelDescription, save_fold
from tests.conftest import TINY_NETWORK
from tests.infer.test_predictor import PLANS, blob_scan
from tests.test_untrusted_inputs import predict

NAN = float("nan")
NORM = "plans.normalization[0]"
POSITIVE_MM = "expected positive spacings in mm"


@pytest.fixture
def model(tmp_path):
    description = ModelDescription(TINY_NETWORK, PLANS, patch_size=[32, 32, 16])
    save_fold(tmp_path / "model/fold_0", description, description.build())
    (tmp_path / "in").mkdir()
    blob_scan(tmp_path / "in", "scan", np.diag([2.0, 2.0, 4.0, 1.0]))
    return tmp_path / "model"


def edit(description, key, value):
    """Set ``key`` ("plans.normalization.0.std") of model.json's content to ``value``."""
    *parents, last = key.split(".")
    for part in parents:
        description = description[int(part) if part.isdigit() else part]
    description[last] = value


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("plans.normalization.0.std", 0.0, f"{NORM}.std is 0.0, expected a positive number"),
        ("plans.normalization.0.std", -2.0, f"{NORM}.std is -2.0, expected a positive number"),
        ("plans.normalization.0.clip_low", NAN, f"{NORM}.clip_low is nan, expected a finite number"),
        ("plans.normalization.0.mean", None, f"{NORM}.mean is None, expected a finite number"),
        ("plans.normalization.0.clip_high", -5e3,
         f"{NORM}.clip_low is -1000.0, expected less than clip_high (-5000.0)",),
        ("plans.normalization.0.scheme", "minmax", f"{NORM}.scheme is 'minmax', expected ct or zscore"),
        ("patch_size", [32, 0, 16], "patch_size is [32, 0, 16], expected positive sizes"),
        ("patch_size", [32, -32, 16], "patch_size is [32, -32, 16], expected positive sizes"),
        ("plans.patch_size", [0, 0, 0], "plans.patch_size is [0, 0, 0], expected positive sizes"),
        ("plans.target_spacing", [2, 0, 4], f"plans.target_spacing is [2, 0, 4], {POSITIVE_MM}"),
        ("plans.target_spacing", [2, NAN, 4], f"plans.target_spacing is [2, nan, 4], {POSITIVE_MM}"),
    ],
)  # fmt: skip
def test_unusable_model_json_values_are_refused_when_loaded(model, tmp_path, capsys, key, value, message):
    model_json = model / "fold_0/model.json"
    description = json.loads(model_json.read_text())
    edit(description, key, value)
    model_json.write_text(json.dumps(description))  # NaN as JSON's NaN, which Python reads back
    code, error = predict(model, tmp_path / "in", tmp_path / "out", capsys)
    assert (code, error) == (3, f"resseg predict: error: {model_json}: {message}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", [NAN, float("inf")])
def test_weights_holding_nan_or_infinity_are_refused_when_loaded(model, tmp_path, capsys, bad):
    weights = model / "fold_0" / WEIGHTS
    state = torch.load(weights, weights_only=True)
    name = next(k for k, t in state.items() if t.is_floating_point())
    state[name].view(-1)[3] = bad
    torch.save(state, weights)
    code, error = predict(model, tmp_path / "in", tmp_path / "out", capsys)
    assert code == 3
    assert error == f"resseg predict: error: {weights}: tensor {name} holds NaN or infinite values"
    assert not (tmp_path / "out").exists()
