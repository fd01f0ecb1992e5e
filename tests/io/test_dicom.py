"""DICOM series written here with known geometry read back exactly; SEG maps onto its grid."""

import datetime
import shutil

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes

from pipeline.errors import InputDataError
from pipeline.io.dicom import (
    find_dicom_seg,
    find_dicom_series,
    read_dicom_folder,
    read_dicom_seg,
    read_dicom_series,
)
from pipeline.io.limits import LIMIT_VARIABLE

SPACING = (0.7, 0.9, 2.5)  # column spacing (x), row spacing (y), slice spacing (z)
ORIGIN_LPS = (-40.0, 25.0, 100.0)
# Rows run along -x and columns along -y of LPS (a right-handed frame, as DICOM requires,
# whose slice normal row x column is +z): the volume is stored the RAS way round.
DIRECTION_LPS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def write_series(folder, hu, uid, description="CT AXIAL", modality="CT", prefix="s", direction=DIRECTION_LPS):
    """One file per slice through SimpleITK, with the tags a scanner writes. With intercept
    -1024 the writer stores HU + 1024, so reading back HU proves the rescale is applied."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(hu.transpose(2, 1, 0).astype(np.int16))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN_LPS)
    image.SetDirection(direction)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    now = datetime.datetime(2026, 1, 1)
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": modality,
            "0008|103e": description,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": uid,
            "0020|0052": "1.2.826.0.1.3680043.2.1125.9",  # FrameOfReferenceUID (needed by SEG)
            "0020|0032": "\\".join(map(str, position)),
            "0020|0037": "\\".join(map(str, direction[0::3] + direction[1::3])),
            "0020|0013": str(k + 1),
            "0028|1052": "-1024",
            "0028|1053": "1",
            "0018|0050": str(SPACING[2]),
            "0008|0020": now.strftime("%Y%m%d"),
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
            "0008|0018": f"{uid}.{k + 1}",
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(slice_)


def expected_affine(shape):
    """Hand-derived: RAS = LPS with x and y negated, so this frame is RAS-aligned."""
    lps = np.array(DIRECTION_LPS).reshape(3, 3) @ np.diag(SPACING)
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1, -1, 1]) @ lps
    affine[:3, 3] = np.diag([-1, -1, 1]) @ np.array(ORIGIN_LPS)
    return affine


@pytest.fixture
def ct(tmp_path):
    hu = np.random.default_rng(0).integers(-1000, 1000, size=(16, 12, 6)).astype(np.int16)
    write_series(tmp_path / "patient", hu, uid="1.2.826.0.1.3680043.2.1125.2")
    return tmp_path / "patient", hu


def test_series_reads_back_with_geometry_and_hounsfield_units(ct):
    folder, hu = ct
    stored = pydicom.dcmread(folder / "s000.dcm")
    assert stored.RescaleIntercept == -1024 and stored.pixel_array[0, 0] == hu[0, 0, 0] + 1024
    (series,) = find_dicom_series(folder)
    assert series.modality == "CT" and series.description == "CT AXIAL" and len(series.files) == 6
    volume = read_dicom_series(series)
    np.testing.assert_array_equal(volume.array, hu)
    np.testing.assert_allclose(volume.affine, expected_affine(hu.shape), atol=1e-4)
    assert volume.spacing == pytest.approx(SPACING)


def test_two_series_in_one_folder_are_told_apart(ct):
    folder, hu = ct
    write_series(
        folder, hu[:, :, :4] + 5, uid="1.2.826.0.1.3680043.2.1125.3", description="CT SOFT", prefix="t"
    )
    series = find_dicom_series(folder)
    assert [s.description for s in series] == ["CT AXIAL", "CT SOFT"]
    assert [len(s.files) for s in series] == [6, 4]
    np.testing.assert_array_equal(read_dicom_series(series[1]).array, hu[:, :, :4] + 5)
    with pytest.raises(InputDataError, match=r"patient: 2 image series found \(.*\); expected one"):
        read_dicom_folder(folder)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_single_slice_series_is_refused(tmp_path, name):
    """pydicom ships real single-slice CT and MR files: readable, but not a 3D volume."""
    shutil.copy(get_testdata_file(name), tmp_path / name)
    (series,) = find_dicom_series(tmp_path)
    assert series.modality == name[:2]
    with pytest.raises(InputDataError, match="has only 1 slice, expected a 3D volume"):
        read_dicom_series(series)


def test_truncated_slice_is_named(ct):
    folder, _ = ct
    victim = folder / "s002.dcm"
    victim.write_bytes(victim.read_bytes()[:-100])  # header intact, pixel data cut short
    with pytest.raises(InputDataError, match=r"s002.dcm: slice of series .* cannot be read"):
        find_dicom_series(folder)


def test_missing_slice_is_named(ct):
    folder, _ = ct
    (folder / "s002.dcm").unlink()
    with pytest.raises(
        InputDataError, match=r"1 slice\(s\) missing, .* \(a step of 5 mm where the others are 2.5\)"
    ):
        read_dicom_series(find_dicom_series(folder)[0])


def shift_slices(folder, shift_mm):
    """Move slice k (of the files s000.dcm, s001.dcm ...) by ``shift_mm(k)``, an LPS vector."""
    for k, path in enumerate(sorted(folder.glob("s*.dcm"))):
        dataset = pydicom.dcmread(path)
        position = np.array(dataset.ImagePositionPatient, float) + shift_mm(k)
        dataset.ImagePositionPatient = [f"{v:.4f}" for v in position]
        dataset.save_as(path)


def test_unevenly_spaced_slices_are_refused(ct):
    """Not a missing slice: a step that is no multiple of the others (variable-pitch scans)."""
    folder, _ = ct
    shift_slices(folder, lambda k: (0, 0, 0.8 if k >= 3 else 0))
    with pytest.raises(
        InputDataError, match=r"patient: series .*: unevenly spaced slices \(steps from 2.5 to 3.3 mm\)"
    ):
        read_dicom_series(find_dicom_series(folder)[0])


def test_gantry_tilt_is_refused_and_a_sub_pixel_drift_read(ct, tmp_path):
    """A tilted gantry shifts each slice sideways along the table: the grid is sheared, which ITK
    ignores (misplacing every slice but the first) and NIfTI's qform cannot hold."""
    folder, hu = ct
    tilt = np.radians(20)
    shift_slices(folder, lambda k: (0, k * SPACING[2] * np.tan(tilt), 0))
    with pytest.raises(
        InputDataError,
        match=r"patient: series .*: slices shift sideways by up to 4.55 mm, a gantry tilt of 20 degrees",
    ):
        read_dicom_series(find_dicom_series(folder)[0])
    # Rounded positions drift a little: under half a pixel (0.35 mm) over the series is read.
    write_series(tmp_path / "slight", hu, uid="1.2.826.0.1.3680043.2.1125.4")
    shift_slices(tmp_path / "slight", lambda k: (0, k * 0.05, 0))
    np.testing.assert_array_equal(read_dicom_series(find_dicom_series(tmp_path / "slight")[0]).array, hu)


IOP, IPP = "ImageOrientationPatient", "ImagePositionPatient"
# name: (the slices edited, None for all; the tag; its new value, None to remove it; the message)
GEOMETRY_EDITS = {
    "no_position": (None, IPP, None, f"{IPP} missing in s000.dcm"),
    "a_position_missing": ({3}, IPP, None, f"{IPP} missing in s003.dcm"),
    "no_orientation": (None, IOP, None, f"{IOP} missing in s000.dcm"),
    "no_pixel_spacing": (None, "PixelSpacing", None, "PixelSpacing missing in s000.dcm"),
    "one_position": (None, IPP, [-40, 25, 100], f"5 of 6 slices repeat another's {IPP}"),
    "duplicate_slice": ({4}, IPP, [-40, 25, 107.5], f"1 of 6 slices repeat another's {IPP}"),
    "zero_pixel_spacing": (None, "PixelSpacing", [0, 0], "PixelSpacing must be positive .* 0 to 0 mm"),
    "negative_pixel_spacing": (None, "PixelSpacing", [0.9, -0.7], "PixelSpacing must be positive"),
    "zero_orientation": (None, IOP, [0] * 6, rf"{IOP} \[0.0, .* is not two perpendicular unit vectors"),
    "parallel_orientation": (None, IOP, [1, 0, 0] * 2, f"{IOP} .* is not two perpendicular unit vectors"),
    "orientation_differs": ({2}, IOP, [1, 0, 0, 0, 0, 1], f"{IOP} differs between slices"),
}


@pytest.mark.parametrize(
    ("slices", "keyword", "value", "message"), GEOMETRY_EDITS.values(), ids=GEOMETRY_EDITS
)
def test_missing_or_contradictory_geometry_is_refused_naming_the_tag(ct, slices, keyword, value, message):
    """Left to ITK, each of these becomes a volume with invented geometry (origin 0, 1 mm pixels,
    slices SliceThickness apart) that is segmented as if it were right."""
    folder, _ = ct
    for k, path in enumerate(sorted(folder.glob("s*.dcm"))):
        if slices is None or k in slices:
            dataset = pydicom.dcmread(path)
            if value is None:
                delattr(dataset, keyword)
            else:
                setattr(dataset, keyword, value)
            dataset.save_as(path)
    (series,) = find_dicom_series(folder)
    with pytest.raises(InputDataError, match=rf"patient: series .*: {message}"):
        read_dicom_series(series)


LABELS = {0: "background", 1: "organ", 2: "lesion"}
# Each segment's pixels, from a label map holding an organ (1) with a lesion (2) inside it.
SEGMENT_PIXELS = {"organ": lambda mask: mask >= 1, "lesion": lambda mask: mask == 2}


def make_seg(folder, mask, names=("organ", "lesion")):
    """A BINARY DICOM SEG over the series in ``folder``, built with highdicom: segment 1 is
    ``names[0]``, segment 2 ``names[1]`` ... (Slicer numbers them in the order drawn)."""
    sources = sorted((pydicom.dcmread(p) for p in folder.glob("s*.dcm")), key=lambda d: int(d.InstanceNumber))
    algorithm = hd.AlgorithmIdentificationSequence(
        name="test", version="1", family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=codes.cid7150.Tissue,
            segmented_property_type=codes.cid7166.ConnectiveTissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, name in enumerate(names, start=1)
    ]
    pixels = [SEGMENT_PIXELS.get(name.strip().lower(), SEGMENT_PIXELS["lesion"])(mask) for name in names]
    # highdicom wants (frames, rows, columns, segments); our arrays are (x, y, z).
    planes = np.stack(pixels, axis=-1).transpose(2, 1, 0, 3)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=planes.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="resseg tests",
        manufacturer_model_name="none",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(folder / "seg.dcm")
    return folder / "seg.dcm"


def test_seg_maps_onto_the_reference_grid_and_is_not_a_series(ct):
    folder, hu = ct
    mask = np.zeros(hu.shape, np.uint8)
    mask[3:10, 2:8, 1:5] = 1
    mask[5:7, 4:6, 2:4] = 2  # lesion inside the organ: the higher label value wins
    seg_path = make_seg(folder, mask)
    assert find_dicom_seg(folder) == [seg_path]
    (series,) = find_dicom_series(folder)  # the SEG is not listed as an image series
    label = read_dicom_seg(seg_path, read_dicom_series(series), LABELS)
    np.testing.assert_array_equal(label, mask)


@pytest.mark.parametrize("names", [("lesion", "organ"), ("Lesion ", "ORGAN")])
def test_segments_are_labels_by_name_not_by_number(ct, names):
    """A SEG drawn lesion first (segment 1 = lesion): by number, the lesion would become the
    organ and the organ, painted last, would cover it."""
    folder, hu = ct
    mask = np.zeros(hu.shape, np.uint8)
    mask[3:10, 2:8, 1:5] = 1
    mask[5:7, 4:6, 2:4] = 2
    seg_path = make_seg(folder, mask, names)
    np.testing.assert_array_equal(
        read_dicom_seg(seg_path, read_dicom_series(find_dicom_series(folder)[0]), LABELS), mask
    )


def test_a_segment_naming_no_label_of_the_cohort_is_refused(ct):
    folder, hu = ct
    mask = np.zeros(hu.shape, np.uint8)
    mask[3:6, 3:6, 2] = 2
    seg_path = make_seg(folder, mask, ("organ", "tumour"))
    with pytest.raises(
        InputDataError,
        match=r"seg.dcm: segment 2 is labelled 'tumour', which names no label of the cohort \(organ, les",
    ):
        read_dicom_seg(seg_path, read_dicom_series(find_dicom_series(folder)[0]), LABELS)


def test_a_seg_claiming_more_frames_than_the_limit_is_refused_before_unpacking(ct, monkeypatch):
    """A BINARY SEG packs 8 values a byte: its frames are counted against the input limit before
    pydicom unpacks them."""
    folder, hu = ct
    seg = pydicom.dcmread(make_seg(folder, np.ones(hu.shape, np.uint8)))
    seg.Rows, seg.Columns, seg.NumberOfFrames = 30000, 30000, 2 * hu.shape[2]
    seg.save_as(folder / "seg.dcm")
    monkeypatch.setenv(LIMIT_VARIABLE, "1e9")
    with pytest.raises(InputDataError, match=r"seg.dcm: the header claims 30000x30000x\d+ values of 1 bytes"):
        read_dicom_seg(folder / "seg.dcm", read_dicom_series(find_dicom_series(folder)[0]), LABELS)


def test_seg_on_another_grid_is_refused(ct, tmp_path):
    folder, hu = ct
    mask = np.zeros(hu.shape, np.uint8)
    mask[3:6, 3:6, 2] = 1
    seg_path = make_seg(folder, mask)
    other = read_dicom_series(find_dicom_series(folder)[0])
    shifted = type(other)(other.array, other.affine + np.array([[0, 0, 0, 5.0]] * 3 + [[0, 0, 0, 0]]))
    with pytest.raises(InputDataError, match="frames do not fall on the image's voxel grid"):
        read_dicom_seg(seg_path, shifted, LABELS)
