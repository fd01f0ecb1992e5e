"""Options and inputs that used to end in a traceback: one line on stderr with the documented exit
code (2 for options, 3 for data), or one error row in ``resseg predict``."""

from __future__ import annotations

import csv

import numpy as np
import pydicom
import pytest

from pipeline.cli import main
from pipeline.errors import SOME_SCANS_FAILED
from tests.infer.test_predictor import blob_scan
from tests.io.test_dicom import write_series


def resseg(capsys, *args) -> tuple[int, str]:
    """Exit code and stderr of a command run in this process; stderr checked to be one line."""
    code = main([str(arg) for arg in args])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return code, err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--overlap", "1", "overlap: input should be less than 1, got 1.0"),
        ("--overlap", "-0.5", "overlap: input should be greater than or equal to 0, got -0.5"),
        ("--overlap", "nan", "overlap: input should be less than 1, got nan"),
        ("--device", "cuda:7", "--device: no cuda:7 here"),
        ("--device", "foo", "--device: expected auto, cpu, cuda or cuda:<index>, got 'foo'"),
        ("--device", "meta", "--device: expected auto, cpu, cuda or cuda:<index>, got 'meta'"),
    ],
)
def test_a_bad_predict_option_is_one_line_and_exit_2(random_model, tmp_path, capsys, option, value, message):
    (tmp_path / "in").mkdir()
    blob_scan(tmp_path / "in", "scan", np.diag([2.0, 2.0, 4.0, 1.0]))
    command = ["predict", "--input", tmp_path / "in", "--output", tmp_path / "out", "--model", random_model]
    code, err = resseg(capsys, *command, option, value)
    assert code == 2 and err.startswith("resseg predict: error:") and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "missing.json: cannot be read (No such file or directory)"),
     ("{not json", "missing.json: not a QC report of resseg validate")],
)  # fmt: skip
def test_a_missing_or_malformed_qc_report_is_one_line_and_exit_3(
    cohort_dir, tmp_path, capsys, content, message
):
    qc = tmp_path / "missing.json"
    if content is not None:
        qc.write_text(content)
    params = tmp_path / "params.yaml"
    params.write_text("preprocess: {num_workers: 1}\n")
    command = [
        "preprocess",
        "--params",
        params,
        "--cohort",
        cohort_dir,
        "--qc",
        qc,
        "--out",
        tmp_path / "out",
    ]
    code, err = resseg(capsys, *command)
    assert code == 3 and message in err
    assert not (tmp_path / "out").exists()


def test_a_scan_with_micron_spacing_is_an_error_row(random_model, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    blob_scan(folder, "microns", np.diag([1e-6, 1e-6, 1e-6, 1.0]))
    blob_scan(folder, "scan", np.diag([2.0, 2.0, 4.0, 1.0]))
    code = main(
        ["predict", "--input", str(folder), "--output", str(tmp_path / "out"), "--model", str(random_model)]
    )
    assert code == SOME_SCANS_FAILED
    assert "Traceback" not in capsys.readouterr().err
    rows = {row["scan"]: row for row in csv.DictReader(open(tmp_path / "out/summary.csv", encoding="utf-8"))}
    assert rows["scan"]["status"] == "ok" and rows["microns"]["status"] == "error"
    assert (
        "microns.nii.gz: 4e-05x3.6e-05x1.4e-05 mm across, less than one voxel of the model's"
        in (rows["microns"]["error"])
    )


def test_with_dicom_seg_an_error_row_leaves_no_mask_behind(random_model, tmp_path, capsys):
    """A series without FrameOfReferenceUID is read, but its DICOM SEG is refused: one error row,
    and that scan's NIfTI mask, written first, goes too."""
    folder = tmp_path / "in"
    hu = np.random.default_rng(0).integers(-1000, 1000, (40, 36, 12)).astype(np.int16)
    write_series(folder / "good", hu, uid="1.2.826.0.1.3680043.2.1125.61")
    write_series(folder / "no_frame", hu, uid="1.2.826.0.1.3680043.2.1125.62")
    for path in (folder / "no_frame").iterdir():
        dataset = pydicom.dcmread(path)
        del dataset.FrameOfReferenceUID
        dataset.save_as(path)
    out = tmp_path / "out"
    command = ["predict", "--input", folder, "--output", out, "--model", random_model, "--dicom-seg"]
    assert main([str(arg) for arg in command]) == SOME_SCANS_FAILED
    rows = {row["scan"]: row for row in csv.DictReader(open(out / "summary.csv", encoding="utf-8"))}
    assert (rows["good"]["status"], rows["no_frame"]["status"]) == ("ok", "error")
    assert (
        "no_frame: no DICOM SEG can reference it (Source images have no Frame Of Reference UID"
        in (rows["no_frame"]["error"])
    )
    assert "Traceback" not in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "good.nii.gz", "good.seg.dcm", "run.json", "summary.csv"
    ]  # fmt: skip
