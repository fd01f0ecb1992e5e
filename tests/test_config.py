import math
import re
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from pipeline.cli import build_parser
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


def exponent_form(value: float) -> str:
    """0.01 -> '1E-2', 30.0 -> '3E+1', 0.33 -> '3.3E-1': what people type, dot or none. Marked,
    so that the YAML dumper writes it as a plain word and the marks are then taken off."""
    return f"EXP{Decimal(repr(value)).normalize():E}END"


def with_floats_in_exponent_form(value):
    if isinstance(value, float) and math.isfinite(value) and value != 0:
        return exponent_form(value)
    if isinstance(value, dict):
        return {key: with_floats_in_exponent_form(item) for key, item in value.items()}
    if isinstance(value, list):
        return [with_floats_in_exponent_form(item) for item in value]
    return value


def test_every_float_parameter_is_read_in_exponent_notation(tmp_path):
    """YAML 1.1 (PyYAML) reads ``1e-3`` as a string; every float of params.yaml must accept it."""
    defaults = Params().model_dump(by_alias=True)
    marked = yaml.safe_dump(with_floats_in_exponent_form(defaults), sort_keys=False)
    text = re.sub(r"EXP(\S+)END", r"\1", marked)
    for written in ("1E-2", "3E+1", "3E-5", "3.3E-1"):  # forms the defaults give, unquoted
        assert f": {written}\n" in text or f"- {written}\n" in text
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").model_dump(by_alias=True) == defaults


@pytest.mark.parametrize(
    "written, value", [("1e-3", 1e-3), ("5E-4", 5e-4), ("1.0e+2", 100.0), ("-2e1", -20.0)]
)
def test_exponent_forms_people_write(tmp_path, written, value):
    (tmp_path / "params.yaml").write_text(f"train:\n  learning_rate: {written}\n  poly_power: {written}\n")
    if value <= 0:
        with pytest.raises(ConfigError, match=f"train.learning_rate: .*greater than 0, got {value}"):
            load_params(tmp_path / "params.yaml")
    else:
        assert load_params(tmp_path / "params.yaml").train.learning_rate == value


def test_exponent_notation_on_the_command_line():
    args = build_parser().parse_args(
        ["predict", "--input", "a", "--output", "b", "--model", "m", "--overlap", "5E-1"]
    )
    assert args.overlap == 0.5
