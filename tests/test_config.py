from pathlib import Path

import pytest

from pipeline.config import Params, TrainParams, load_params, resolve_network
from pipeline.errors import ConfigError
from tests.conftest import REPO_ROOT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_repository_params_are_valid():
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.synth.seed == 42
    assert resolve_network(params.train, REPO_ROOT / "configs/models").num_res_units >= 1


def test_missing_sections_take_defaults(tmp_path):
    assert load_params(write(tmp_path, "train:\n  max_epochs: 3\n")) == Params(
        train=TrainParams(max_epochs=3)
    )


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.max_epochz: unknown key"):
        load_params(write(tmp_path, "train:\n  max_epochz: 3\n"))


def test_unknown_section_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"trian: unknown key"):
        load_params(write(tmp_path, "trian: {}\n"))


@pytest.mark.parametrize(
    "yaml_text, key",
    [
        ("train:\n  max_epochs: ten\n", "train.max_epochs"),
        ("train:\n  max_epochs: '10'\n", "train.max_epochs"),  # strict: no string coercion
        ("train:\n  max_epochs: 0\n", "train.max_epochs"),
        ("preprocess:\n  target_spacing: [1.0, 2.0]\n", "preprocess.target_spacing"),
        ("synth:\n  lesion_free_fraction: 1.5\n", "synth.lesion_free_fraction"),
    ],
)
def test_wrong_type_or_value_is_named(tmp_path, yaml_text, key):
    with pytest.raises(ConfigError) as err:
        load_params(write(tmp_path, yaml_text))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'params.yaml'}: {key}:")
    assert "\n" not in message


def test_integers_are_accepted_for_floats(tmp_path):
    assert load_params(write(tmp_path, "train:\n  learning_rate: 1\n")).train.learning_rate == 1.0


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "absent.yaml")


def test_network_preset_with_overrides():
    presets = REPO_ROOT / "configs/models"
    network = resolve_network(TrainParams(model_overrides={"channels": [8, 16, 32, 64]}), presets)
    assert network.channels == [8, 16, 32, 64]
    with pytest.raises(ConfigError, match="chanels: unknown key"):
        resolve_network(TrainParams(model_overrides={"chanels": [8]}), presets)
    with pytest.raises(ConfigError, match="one stride per level"):
        resolve_network(TrainParams(model_overrides={"channels": [8, 16]}), presets)
    with pytest.raises(ConfigError, match="train.model: no preset named 'huge'"):
        resolve_network(TrainParams(model="huge"), presets)
