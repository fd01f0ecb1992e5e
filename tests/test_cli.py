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
            str(tmp_path / "scans"),
            "--output",
            str(tmp_path / "o"),
            "--model",
            str(tmp_path / "m"),
        ]
    )
    assert code == 3
    assert "m: no fold_*/model.json; is it a trained resseg model directory?" in capsys.readouterr().err


def test_unknown_subcommand_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        main(["fly"])
    assert exit_info.value.code == 2


def test_import_and_validate_print_the_table_and_exit_3_on_invalid_cases(cohort_dir, tmp_path, capsys):
    import shutil

    source = tmp_path / "source"
    shutil.copytree(cohort_dir, source)
    (source / "labelsTr/synth_004.nii.gz").write_bytes(b"\x1f\x8b truncated")
    params = tmp_path / "params.yaml"
    params.write_text("validate: {num_workers: 1}\n")
    report = tmp_path / "qc.json"

    code = main(["validate", "--params", str(params), "--cohort", str(source), "--report", str(report)])
    out, err = capsys.readouterr()
    assert code == 3 and err.count("\n") == 1
    assert "1 of 8 cases invalid; first: synth_004:" in err
    assert "synth_004" in out and "error" in out  # the table
    assert report.is_file()

    args = ["import", "--params", str(params), "--source", str(source), "--format", "msd"]
    code = main([*args, "--out", str(tmp_path / "raw/x"), "--report", str(report), "--skip-invalid"])
    out, err = capsys.readouterr()
    assert code == 0 and "7 cases imported" in out
    imported = sorted(p.name for p in (tmp_path / "raw/x/labelsTr").iterdir())
    assert len(imported) == 5 and "synth_004.nii.gz" not in imported


def test_commands_outside_a_project_use_defaults(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    assert main(["synth", "--out", str(tmp_path / "cohort")]) == 0
    assert (tmp_path / "cohort/dataset.json").is_file()
    assert main(["synth", "--params", "absent.yaml", "--out", str(tmp_path / "c2")]) == 2
    assert "absent.yaml: file not found" in capsys.readouterr().err
