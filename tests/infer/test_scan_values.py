"""Scans whose voxels a network would turn into a clean-looking, meaningless mask are error rows
in ``resseg predict``, named with what is wrong; the other scans are segmented."""

import csv

import numpy as np

from pipeline.io import write_volume
from tests.infer.test_batch import run_batch
from tests.infer.test_predictor import blob_scan

GRID = np.diag([2.0, 2.0, 4.0, 1.0])
SHAPE = (40, 36, 14)


def test_non_finite_and_blank_scans_are_error_rows(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    blob_scan(folder, "good", GRID)
    scan = blob_scan(tmp_path, "unused", GRID).astype(np.float32) * 100
    one_nan, with_inf = scan.copy(), scan.copy()
    one_nan[3, 4, 5] = np.nan
    with_inf[0, 0, :2] = [np.inf, -np.inf]
    inputs = {
        "one_nan": one_nan,
        "all_nan": np.full(SHAPE, np.nan, np.float32),
        "with_inf": with_inf,
        "all_zero": np.zeros(SHAPE, np.int16),
        "constant": np.full(SHAPE, -1000, np.int16),
    }
    for name, array in inputs.items():
        write_volume(folder / f"{name}.nii.gz", array, GRID)

    result = run_batch(folder, tmp_path / "out")

    assert result.failed == sorted(inputs)
    rows = {row["scan"]: row for row in csv.DictReader(open(tmp_path / "out/summary.csv"))}
    n = np.prod(SHAPE)
    assert rows["one_nan"]["error"] == f"{folder / 'one_nan.nii.gz'}: 1 of {n} voxels are NaN or infinite"
    assert rows["all_nan"]["error"] == f"{folder / 'all_nan.nii.gz'}: {n} of {n} voxels are NaN or infinite"
    assert rows["with_inf"]["error"] == f"{folder / 'with_inf.nii.gz'}: 2 of {n} voxels are NaN or infinite"
    blank = "a blank scan: nothing to segment"
    assert rows["all_zero"]["error"] == f"{folder / 'all_zero.nii.gz'}: every voxel is 0, {blank}"
    assert rows["constant"]["error"] == f"{folder / 'constant.nii.gz'}: every voxel is -1000, {blank}"
    assert rows["good"]["status"] == "ok"
    assert not any((tmp_path / "out" / f"{name}.nii.gz").exists() for name in inputs)
