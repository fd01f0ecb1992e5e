"""``resseg shift``: a cohort against the training cohort a model remembers. The training cohort
against itself flags nothing; the same scans at twice the voxel size flag the spacings; a folder
of DICOM series has its acquisition attributes counted and no identifier reported."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.cohort.dataset import load_cohort
from pipeline.errors import InputDataError
from pipeline.io import read_volume, write_volume
from pipeline.review.profile import PROFILE_JSON
from pipeline.review.shift import find_profile
from tests.io.test_dicom import write_series


@pytest.fixture
def model(random_model, preprocessed_dir):
    """A model directory that keeps the tiny cohort's profile, as a trained one does."""
    shutil.copy(preprocessed_dir / PROFILE_JSON, random_model / "fold_0" / PROFILE_JSON)
    return random_model


def shift(model, cohort, tmp_path) -> dict:
    out = tmp_path / "shift.json"
    args = ["shift", "--model", str(model), "--cohort", str(cohort), "--out", str(out)]
    assert main([*args, "--report", str(tmp_path / "shift.html")]) == 0
    return json.loads(out.read_text())


def test_the_training_cohort_against_itself_flags_nothing(model, cohort_dir, tmp_path):
    result = shift(model, cohort_dir, tmp_path)
    n = len(load_cohort(cohort_dir).training) + len(load_cohort(cohort_dir).test)
    assert result["n_scans"] == n and result["flagged"] == []
    assert all(scan["findings"] == [] for scan in result["scans"])
    # Labels are compared too: the same volumes and counts as the training cases.
    assert result["labels"]["count_lesion"]["outside"] == 0
    assert (tmp_path / "shift.html").read_text(encoding="utf-8").count("data:image/png") == 1


def test_twice_the_voxel_size_flags_the_spacings(model, cohort, tmp_path, capsys):
    for case in load_cohort(cohort).training + load_cohort(cohort).test:
        for path in (case.image, case.label):
            if path is not None and path.is_file():
                volume = read_volume(path)
                affine = volume.affine.copy()
                affine[:3, :3] *= 2
                write_volume(path, np.asarray(volume.array), affine)
    result = shift(model, cohort, tmp_path)
    assert {"spacing_x", "spacing_y", "spacing_z", "extent_x"} <= set(result["flagged"])
    assert result["features"]["spacing_x"]["share_outside"] == 1.0
    assert "p50_0" not in result["flagged"]
    assert "spacing_x" in capsys.readouterr().out  # the printed table names it
    # Twice the spacing in each axis: eight times the volume of each structure.
    assert "volume_ml_organ" in result["flagged"]


def test_a_scan_that_cannot_be_read_is_listed_and_the_others_compared(model, cohort_dir, tmp_path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    for case in load_cohort(cohort_dir).test:
        shutil.copy(case.image, folder / case.image.name)
    (folder / "broken.nii.gz").write_bytes(b"not a NIfTI file")
    result = shift(model, folder, tmp_path)
    assert result["n_scans"] == 2 and result["flagged"] == []
    (unreadable,) = result["unreadable"]
    assert unreadable["scan"] == "broken" and "broken.nii.gz" in unreadable["reason"]
    assert "not read: " in capsys.readouterr().out


def test_dicom_series_have_their_acquisition_counted_and_no_identifier(model, cohort_dir, tmp_path):
    folder = tmp_path / "pacs"
    for index, case in enumerate(load_cohort(cohort_dir).test):
        hu = np.asarray(read_volume(case.image).array)
        write_series(folder / f"series_{index}", hu, uid=f"1.2.826.0.1.3680043.2.1125.7{index}")
    result = shift(model, folder, tmp_path)
    assert result["n_scans"] == 2
    assert result["acquisition"]["SliceThickness"] == {"2.5": 2}
    text = (tmp_path / "shift.json").read_text()
    assert "Patient" not in text and "1.2.826.0.1.3680043" not in text


def test_without_a_model_the_stage_says_there_is_nothing_to_compare(cohort_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml: train.init_from is null
    assert main(["shift", "--cohort", str(cohort_dir), "--out", "shift.json", "--report", "shift.html"]) == 0
    assert json.loads((tmp_path / "shift.json").read_text())["model"] is None


def test_a_model_without_a_profile_is_one_line(random_model, cohort_dir, tmp_path, capsys):
    with pytest.raises(InputDataError, match="no cohort_profile.json in its fold directories"):
        find_profile(random_model)
    args = [
        "shift",
        "--model",
        str(random_model),
        "--cohort",
        str(cohort_dir),
        "--out",
        str(tmp_path / "s.json"),
    ]
    assert main(args) == InputDataError.exit_code
    assert "no cohort_profile.json" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()
