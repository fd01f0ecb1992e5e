"""Which scans are flagged for review, and why: scans unlike the training cohort (an MRI for a CT
model, 5x the spacing, a field of view that cuts the organ, heavy noise) against the cohort's own
test scans, with the tiny synthetic cohort's profile as preprocessing writes it."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from nibabel.testing import data_path

from pipeline.cli import main
from pipeline.cohort.dataset import load_cohort
from pipeline.io import Volume, read_volume, write_volume
from pipeline.review.features import describe
from pipeline.review.profile import PROFILE_JSON, CohortProfile


@pytest.fixture(scope="module")
def profile(preprocessed_dir) -> CohortProfile:
    return CohortProfile.load(preprocessed_dir / PROFILE_JSON)


@pytest.fixture(scope="module")
def test_scan(cohort_dir) -> Volume:
    return read_volume(load_cohort(cohort_dir).test[0].image)


def findings(profile: CohortProfile, volume: Volume) -> dict[str, str]:
    """Feature -> the reason given, for each feature outside its range."""
    return {f.feature: str(f) for f in profile.check(describe(volume)).findings}


def kinds(profile: CohortProfile, volume: Volume) -> set[str]:
    return {f.kind for f in profile.check(describe(volume)).findings}


def test_the_cohorts_own_test_scans_are_not_flagged(profile, cohort_dir):
    for case in load_cohort(cohort_dir).test:
        shift = profile.check(describe(read_volume(case.image)))
        assert shift.findings == [], case.name
        assert 0 < shift.score <= 1


def test_an_mri_given_to_a_ct_model_is_flagged_for_its_intensities(profile):
    """nibabel's own test MRI (33x41x25 voxels of 2 mm, a brain)."""
    mri = read_volume(Path(data_path) / "anatomical.nii")
    found = findings(profile, mri)
    assert "intensity" in kinds(profile, mri)
    assert "histogram_0" in found and "p50_0" in found
    assert found["p50_0"].startswith("p50 0 ")


def test_a_scan_with_five_times_the_spacing_is_flagged_for_its_spacing(profile, test_scan):
    """Every fifth voxel along each axis, with voxels five times as large: the same field of view."""
    affine = test_scan.affine.copy()
    affine[:3, :3] *= 5
    coarse = Volume(np.ascontiguousarray(test_scan.array[::5, ::5, ::5]), affine)
    found = findings(profile, coarse)
    assert {"spacing_x", "spacing_y", "spacing_z"} <= set(found)
    assert "field of view" not in kinds(profile, coarse)
    assert " mm outside the training range " in found["spacing_x"]


def test_a_field_of_view_that_cuts_the_organ_is_flagged(profile, test_scan):
    """The central 40% of the scan in-plane: the organ's sides are cut off."""
    nx, ny, _ = test_scan.shape
    cut = test_scan.array[int(0.3 * nx) : int(0.7 * nx), int(0.3 * ny) : int(0.7 * ny)]
    found = findings(profile, Volume(np.ascontiguousarray(cut), test_scan.affine))
    assert {"extent_x", "extent_y"} <= set(found)
    assert "extent_z" not in found


def test_heavy_noise_is_flagged(profile, test_scan):
    noisy = test_scan.array + np.random.default_rng(0).normal(0, 150, test_scan.shape).astype(np.float32)
    volume = Volume(noisy, test_scan.affine)
    assert "noise" in kinds(profile, volume)
    assert "spacing" not in kinds(profile, volume) and "field of view" not in kinds(profile, volume)


def test_predict_says_which_scans_to_review_and_why(
    random_model, preprocessed_dir, cohort_dir, test_scan, tmp_path
):
    """A model that keeps its cohort's profile: summary.csv has a review column per scan."""
    shutil.copy(preprocessed_dir / PROFILE_JSON, random_model / "fold_0" / PROFILE_JSON)
    scans = tmp_path / "scans"
    scans.mkdir()
    write_volume(scans / "clean.nii.gz", test_scan.array, test_scan.affine)
    noisy = test_scan.array + np.random.default_rng(0).normal(0, 150, test_scan.shape)
    write_volume(scans / "noisy.nii.gz", noisy.astype(np.float32), test_scan.affine)
    shutil.copy(
        Path(data_path) / "anatomical.nii", scans / "brain_mri.nii"
    )  # big-endian, as nibabel wrote it
    out = tmp_path / "out"
    assert main(["predict", "--input", str(scans), "--output", str(out), "--model", str(random_model)]) == 0
    rows = {row["scan"]: row for row in csv.DictReader((out / "summary.csv").open(encoding="utf-8"))}
    assert rows["clean"]["review"] == "no" and rows["clean"]["review_reasons"] == ""
    assert rows["noisy"]["review"] == "yes" and "noise 0 " in rows["noisy"]["review_reasons"]
    assert float(rows["noisy"]["shift_score"]) > 1 >= float(rows["clean"]["shift_score"])
    assert (
        rows["brain_mri"]["status"] == "ok" and "intensity histogram" in rows["brain_mri"]["review_reasons"]
    )


def test_a_cohort_of_one_case_admits_that_case_and_flags_another_modality(test_scan):
    """Every range has zero width and the histogram distance 0: the floors keep the case itself
    (and rounding) inside."""
    one = CohortProfile.build([describe(test_scan)], [{}], [])
    assert one.check(describe(test_scan)).findings == []
    assert "intensity" in kinds(one, read_volume(Path(data_path) / "anatomical.nii"))
