"""A NIfTI scan's masks carry its own qform, sform and spatial unit, so that nibabel and ITK-based
readers place mask and scan alike; transforms that disagree are warned about, units converted."""

import csv

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.errors import InputDataError
from pipeline.evaluate.segmentation import dice_per_label
from pipeline.io import read_volume
from tests.infer.test_batch import run_batch
from tests.infer.test_predictor import HU_PER_CLASS, blob_scan

GRID_MM = np.diag([2.0, 2.0, 4.0, 1.0])
GRID_MM[:3, 3] = [-30.0, 12.0, 7.0]


def write_nifti(path, label, qform, qform_code, sform, sform_code, unit="mm"):
    image = nib.Nifti1Image((label * HU_PER_CLASS).astype(np.int16), None)
    image.set_qform(qform, code=qform_code)
    image.set_sform(sform, code=sform_code)
    image.header.set_xyzt_units(xyz=unit)
    nib.save(image, path)


def assert_same_geometry(mask_path, scan_path):
    """The same qform, sform (each with its code) and unit to nibabel, the same grid to ITK."""
    mask, scan = nib.load(mask_path).header, nib.load(scan_path).header
    for form in ("get_qform", "get_sform"):
        (mask_form, mask_code), (scan_form, scan_code) = (getattr(h, form)(coded=True) for h in (mask, scan))
        assert mask_code == scan_code
        np.testing.assert_allclose(mask_form, scan_form, atol=1e-5)
    assert mask.get_xyzt_units()[0] == scan.get_xyzt_units()[0]
    for mask_field, scan_field in zip(itk_geometry(mask_path), itk_geometry(scan_path), strict=True):
        np.testing.assert_allclose(mask_field, scan_field, atol=1e-5)


def itk_geometry(path):
    """Origin, spacing and direction of the first three axes, as ITK reads them."""
    image = sitk.ReadImage(str(path))
    n = image.GetDimension()
    direction = np.reshape(image.GetDirection(), (n, n))[:3, :3]
    return np.array(image.GetOrigin()[:3]), np.array(image.GetSpacing()[:3]), direction


def summary(out):
    return {row["scan"]: row for row in csv.DictReader(open(out / "summary.csv"))}


def test_disagreeing_qform_and_sform_are_kept_and_warned_about(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    label = blob_scan(tmp_path, "unused", GRID_MM)
    rotated = GRID_MM.copy()  # the qform: turned 90 degrees about z and shifted
    rotated[:3, :3] = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]]) @ GRID_MM[:3, :3]
    write_nifti(folder / "forms.nii.gz", label, rotated, 1, GRID_MM, 2)
    write_nifti(folder / "agree.nii.gz", label, GRID_MM, 1, GRID_MM, 1)

    run_batch(folder, tmp_path / "out", save_probabilities=True)

    rows = summary(tmp_path / "out")
    assert rows["forms"]["status"] == "ok"
    # The far corner of the 78 x 70 mm plane turned 90 degrees: sqrt(2) * hypot(78, 70) mm away.
    assert rows["forms"]["warning"].startswith("qform and sform disagree by up to 148 mm")
    assert rows["agree"]["warning"] == ""
    for output in ("forms.nii.gz", "probabilities/forms.nii.gz"):
        assert_same_geometry(tmp_path / "out" / output, folder / "forms.nii.gz")
    # Segmented on the sform's grid, nibabel's reading of the scan.
    mask = read_volume(tmp_path / "out/forms.nii.gz")
    np.testing.assert_allclose(mask.affine, GRID_MM, atol=1e-5)
    assert dice_per_label(label, mask.array, [1])[1] > 0.9


@pytest.mark.parametrize(("unit", "mm_per_unit"), [("meter", 1000.0), ("micron", 0.001)])
def test_scans_in_metres_or_microns_are_read_in_mm_and_masks_keep_the_unit(tmp_path, unit, mm_per_unit):
    folder = tmp_path / "in"
    folder.mkdir()
    label = blob_scan(tmp_path, "unused", GRID_MM)
    in_unit = np.diag([*[1 / mm_per_unit] * 3, 1.0]) @ GRID_MM
    write_nifti(folder / "scan.nii.gz", label, in_unit, 1, in_unit, 1, unit)

    np.testing.assert_allclose(read_volume(folder / "scan.nii.gz").affine, GRID_MM, atol=1e-6)
    run_batch(folder, tmp_path / "out")

    # ITK converts the unit too: both it and we see the scan and its mask at 2 x 2 x 4 mm.
    assert_same_geometry(tmp_path / "out/scan.nii.gz", folder / "scan.nii.gz")
    np.testing.assert_allclose(itk_geometry(tmp_path / "out/scan.nii.gz")[1], (2.0, 2.0, 4.0), rtol=1e-5)
    mask = read_volume(tmp_path / "out/scan.nii.gz")
    assert dice_per_label(label, mask.array, [1, 2])[1] > 0.9
    voxel_ml = 2.0 * 2.0 * 4.0 / 1000
    lesion_ml = float(summary(tmp_path / "out")["scan"]["volume_ml_lesion"])
    assert lesion_ml == pytest.approx((mask.array == 2).sum() * voxel_ml, rel=1e-4)


def test_an_undefined_spatial_unit_is_refused(tmp_path):
    write_nifti(tmp_path / "scan.nii.gz", np.ones((4, 4, 4)), GRID_MM, 1, GRID_MM, 1)
    image = nib.load(tmp_path / "scan.nii.gz")
    image.header["xyzt_units"] = 5
    nib.save(image, tmp_path / "odd.nii.gz")
    with pytest.raises(
        InputDataError, match=r"odd.nii.gz: xyzt_units gives spatial unit code 5, not one NIfTI"
    ):
        read_volume(tmp_path / "odd.nii.gz")
