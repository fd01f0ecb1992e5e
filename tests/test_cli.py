"""User mistakes end in one line on stderr and a documented exit code."""

import pytest

from pipeline.cli import main


def test_bad_parameter_exits_2_with_one_line(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("synth:\n  n_train: many\n")
    assert main(["synth", "--params", str(params), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("resseg synth: error:") and "synth.n_train" in err
    assert not (tmp_path / "out").exists()


def test_missing_cohort_exits_3_with_one_line(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    code = main(
        [
            "preprocess",
            "--params",
            str(params),
            "--cohort",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "p"),
        ]
    )
    assert code == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dataset.json: not found" in err


def test_missing_model_directory_exits_3(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    code = main(
        [
            "predict",
            "--params",
            str(params),
            "--input",
            str(tmp_path),
            "--output",
            str(tmp_path / "o"),
            "--model",
            str(tmp_path / "m"),
        ]
    )
    assert code == 3
    assert "model.json: not found" in capsys.readouterr().err


def test_unknown_subcommand_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        main(["fly"])
    assert exit_info.value.code == 2
