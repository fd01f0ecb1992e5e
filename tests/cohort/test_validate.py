"""Each data problem a hospital cohort can have gives its own one-line message."""

import gzip
import json
import re

import nibabel as nib
import numpy as np
import pytest

from pipeline.cohort import qc
from pipeline.cohort.validate import CaseReport, check_case, flag_outliers
from pipeline.config import ValidateParams
from pipeline.errors import InputDataError
from pipeline.io import Volume, read_volume, write_volume

AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])


def break_case(cohort, problem):
    """Damage synth_001's files in one way; return the message QC must give."""
    image_path, label_path = cohort / "imagesTr/synth_001.nii.gz", cohort / "labelsTr/synth_001.nii.gz"
    image, label = read_volume(image_path), read_volume(label_path)
    if problem == "shape":
        write_volume(label_path, np.asarray(label.array)[:-2], label.affine)
        return r"label shape \[\d+, \d+, \d+\] differs from image shape"
    if problem == "affine":
        shifted = label.affine.copy()
        shifted[0, 3] += 2.0
        write_volume(label_path, np.asarray(label.array), shifted)
        return r"label geometry differs from the image's by up to 2 mm"
    if problem == "label_value":
        array = np.asarray(label.array).copy()
        array[0, 0, 0] = 7
        write_volume(label_path, array, label.affine)
        return r"label values \[7\] are not declared \(declared: \[0, 1, 2\]\)"
    if problem == "nan":
        array = np.asarray(image.array).astype(np.float32)
        array[1, 2, 3] = np.nan
        write_volume(image_path, array, image.affine)
        return r"channel 0 \(CT\) has 1 NaN/Inf voxels"
    if problem == "truncated":
        data = image_path.read_bytes()
        image_path.write_bytes(data[: len(data) // 2])
        return r"imagesTr/synth_001.nii.gz: cannot be read"
    if problem == "2d":
        nib.save(nib.Nifti1Image(np.zeros((8, 8), np.int16), np.eye(4)), image_path)
        return r"imagesTr/synth_001.nii.gz: expected a 3D volume, got 2D"
    if problem == "missing_label":
        label_path.unlink()
        return r"labelsTr/synth_001.nii.gz: file not found"
    raise ValueError(problem)


@pytest.mark.parametrize(
    "problem", ["shape", "affine", "label_value", "nan", "truncated", "2d", "missing_label"]
)
def test_each_problem_has_its_message(cohort, tmp_path, problem):
    expected = break_case(cohort, problem)
    report_path = tmp_path / "qc.json"
    with pytest.raises(InputDataError) as err:
        qc.run(ValidateParams(num_workers=1), cohort, report_path, echo=lambda _: None)
    message = str(err.value)
    assert "\n" not in message
    assert "1 of 8 cases invalid; first: synth_001:" in message
    row = next(r for r in json.loads(report_path.read_text())["cases"] if r["case"] == "synth_001")
    assert row["status"] == "error"
    assert any(re.search(expected, e) for e in row["errors"]), row["errors"]


def test_skip_invalid_reports_without_stopping(cohort, tmp_path):
    break_case(cohort, "nan")
    shown = []
    reports = qc.run(
        ValidateParams(skip_invalid=True, num_workers=1), cohort, tmp_path / "qc.json", echo=shown.append
    )
    assert [r.case for r in reports if r.errors] == ["synth_001"]
    assert "synth_001" in shown[0] and "1 in error" in shown[0]


def test_clean_cohort_passes_and_records_geometry(cohort_dir, tmp_path):
    reports = qc.run(ValidateParams(num_workers=2), cohort_dir, tmp_path / "qc.json", echo=lambda _: None)
    assert all(not r.errors for r in reports)
    report = json.loads((tmp_path / "qc.json").read_text())
    assert report["n_cases"] == 8 and report["n_errors"] == 0
    first = report["cases"][0]
    assert first["spacing"] == pytest.approx(
        list(read_volume(cohort_dir / "imagesTr/synth_000.nii.gz").spacing), abs=1e-4
    )
    assert len(first["orientation"]) == 3 and first["label_voxels"]["1"] > 0


def test_warnings_for_empty_label_outliers_and_non_ct_intensities(tmp_path):
    image = Volume(np.full((10, 10, 10), 100, np.int16), AFFINE)  # no air: not HU-like
    empty = Volume(np.zeros((10, 10, 10), np.uint8), AFFINE)
    report = check_case(CaseReport("a", "train"), image, empty, ["CT"], {0: "bg", 1: "organ"}, 1e-3)
    assert not report.errors
    assert any("does not look like CT" in w for w in report.warnings)
    assert any("label is empty" in w for w in report.warnings)

    reports = [
        CaseReport(f"c{i}", "train", spacing_ras=[1.0, 1.0, 3.0], shape=[100, 100, 50]) for i in range(4)
    ]
    reports.append(CaseReport("odd", "train", spacing_ras=[1.0, 1.0, 10.0], shape=[400, 400, 50]))
    flag_outliers(reports)
    assert [r.case for r in reports if r.warnings] == ["odd"]
    assert any("spacing" in w for w in reports[-1].warnings) and any(
        "shape" in w for w in reports[-1].warnings
    )


def test_gzip_is_really_truncated(cohort, tmp_path):
    """Guard for the truncation case above: the damaged file is a gzip stream cut short."""
    break_case(cohort, "truncated")
    with pytest.raises((EOFError, OSError)):
        gzip.decompress((cohort / "imagesTr/synth_001.nii.gz").read_bytes())


def test_a_case_stored_slices_first_is_not_a_spacing_outlier():
    """Spacings are compared per anatomical axis: 3 mm slices stored as the first axis are the
    cohort's 3 mm slices, not an outlier in x."""
    image = np.full((6, 8, 8), -1000, np.int16)
    axial = Volume(image.transpose(1, 2, 0), np.diag([1.0, 1.0, 3.0, 1.0]))
    slices_first = Volume(image, np.array([[0, 1.0, 0, 0], [0, 0, 1.0, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]]))
    reports = [
        check_case(CaseReport(f"c{i}", "test"), axial, None, ["CT"], {0: "bg"}, 1e-3) for i in range(4)
    ]
    odd = check_case(CaseReport("odd", "test"), slices_first, None, ["CT"], {0: "bg"}, 1e-3)
    assert odd.spacing == [3.0, 1.0, 1.0] and odd.spacing_ras == [1.0, 1.0, 3.0]
    flag_outliers([*reports, odd])
    assert not any(r.warnings for r in [*reports, odd])
