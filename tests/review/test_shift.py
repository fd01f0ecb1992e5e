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
from pipeline.io.dicom import find_dicom_series, read_dicom_series
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
    # The training cohort was not imported from DICOM: its values are not known, nothing flagged.
    assert result["acquisition"]["SliceThickness"] == {
        "training": None,
        "new": {"2.5": 2},
        "share_unseen": None,
        "flagged": False,
    }
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


def set_manufacturer(folder, name: str) -> None:
    import pydicom

    for path in sorted(folder.rglob("*.dcm")):
        header = pydicom.dcmread(path)
        header.Manufacturer = name
        header.save_as(path)


def test_a_manufacturer_the_training_cohort_never_had_is_flagged(tmp_path):
    """A DICOM cohort imported (acquisition.json), preprocessed (the profile counts its values),
    against series from another manufacturer."""
    from pipeline.cohort import importers
    from pipeline.config import PreprocessParams
    from pipeline.preprocess import stage

    rng = np.random.default_rng(3)
    for index in range(3):
        hu = rng.integers(-1000, 400, size=(24, 20, 8)).astype(np.int16)
        folder = tmp_path / "dicom" / f"patient_{'abc'[index]}"
        write_series(folder, hu, uid=f"1.2.826.0.1.3680043.2.1125.4{index}")
        mask = np.zeros(hu.shape, np.uint8)
        mask[6:14, 5:12, 2:6] = 1
        image = read_dicom_series(find_dicom_series(folder)[0])
        write_volume(folder / "label.nii.gz", mask, image.affine)
        set_manufacturer(folder, "Acme")
    options = importers.ImportOptions(channel_names=["CT"], label_names=["organ"])
    importers.run(tmp_path / "dicom", "dicom", tmp_path / "cohort", options, tmp_path / "qc.json")
    recorded = json.loads((tmp_path / "cohort" / "acquisition.json").read_text())
    assert sorted(recorded) == ["patient_a", "patient_b", "patient_c"]
    assert recorded["patient_a"]["Manufacturer"] == "Acme"
    stage.run(PreprocessParams(num_workers=1), tmp_path / "cohort", tmp_path / "pre")
    profile = json.loads((tmp_path / "pre" / PROFILE_JSON).read_text())
    assert profile["acquisition"]["Manufacturer"] == {"Acme": 3}
    assert "patient_" not in json.dumps(profile)  # counts only, no case names

    new = tmp_path / "new"
    for index in range(2):
        shutil.copytree(
            tmp_path / "dicom" / f"patient_{'ab'[index]}",
            new / f"s{index}",
            ignore=shutil.ignore_patterns("*.nii.gz"),
        )
    set_manufacturer(new, "Other")
    model = tmp_path / "model" / "fold_0"
    model.mkdir(parents=True)
    shutil.copy(tmp_path / "pre" / PROFILE_JSON, model / PROFILE_JSON)
    (model / "model.json").write_text("{}")  # find_profile needs a fold, not its network
    result = shift(tmp_path / "model", new, tmp_path)
    assert result["acquisition"]["Manufacturer"]["share_unseen"] == 1.0
    assert "Manufacturer" in result["flagged"] and "KVP" not in result["flagged"]


def test_a_scan_with_a_nan_voxel_is_refused_as_predict_refuses_it(model, cohort_dir, tmp_path):
    """Its percentiles would be NaN and turn every summary of the cohort into NaN."""
    folder = tmp_path / "scans"
    folder.mkdir()
    for case in load_cohort(cohort_dir).test:
        shutil.copy(case.image, folder / case.image.name)
    scan = read_volume(load_cohort(cohort_dir).test[0].image)
    poisoned = np.asarray(scan.array, np.float32).copy()
    poisoned[3, 3, 3] = np.nan
    write_volume(folder / "poisoned.nii.gz", poisoned, scan.affine)
    result = shift(model, folder, tmp_path)
    assert result["n_scans"] == 2 and result["features"]["p50_0"]["new"]["median"] is not None
    (unreadable,) = result["unreadable"]
    assert (
        unreadable["scan"] == "poisoned" and "1 of" in unreadable["reason"] and "NaN" in unreadable["reason"]
    )
