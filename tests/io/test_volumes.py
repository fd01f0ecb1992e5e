import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from pipeline.errors import InputDataError
from pipeline.io import atomic_output, read_probability, read_volume, write_probabilities, write_volume


def test_round_trip_keeps_values_and_affine(tmp_path):
    affine = np.diag([-1.5, 2.0, 3.5, 1.0])
    affine[:3, 3] = [10, -20, 5]
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    write_volume(tmp_path / "v.nii.gz", array, affine)
    volume = read_volume(tmp_path / "v.nii.gz")
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, affine)
    assert volume.spacing == pytest.approx((1.5, 2.0, 3.5))
    assert nib.load(tmp_path / "v.nii.gz").header.get_sform(coded=True)[1] == 1


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.nii.gz"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"previous"
    assert list(tmp_path.iterdir()) == [target]


def test_unreadable_and_non_3d_files_are_named(tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not a nifti file")  # gzip's magic number, then garbage
    with pytest.raises(InputDataError, match=r"broken.nii.gz: cannot be read \("):
        read_volume(broken)
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), flat)
    with pytest.raises(InputDataError, match=r"flat.nii.gz: expected a 3D volume, got 2D shape \(4, 4\)"):
        read_volume(flat)
    with pytest.raises(InputDataError, match="absent.nii.gz: file not found"):
        read_volume(tmp_path / "absent.nii.gz")


def test_probabilities_round_trip_per_class(tmp_path):
    rng = np.random.default_rng(0)
    probabilities = rng.random((3, 6, 5, 4)).astype(np.float32)
    probabilities /= probabilities.sum(0)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    write_probabilities(tmp_path / "p.nii.gz", probabilities, affine)
    assert nib.load(tmp_path / "p.nii.gz").get_data_dtype() == np.uint16  # a quarter of float32
    for label in range(3):
        volume = read_probability(tmp_path / "p.nii.gz", label)
        assert volume.array.dtype == np.float32
        np.testing.assert_allclose(volume.array, probabilities[label], atol=1e-4)
        np.testing.assert_allclose(volume.affine, affine, atol=1e-6)  # the header holds float32
    with pytest.raises(InputDataError, match=r"p.nii.gz: expected class probabilities .* up to label 3"):
        read_probability(tmp_path / "p.nii.gz", 3)
    write_volume(tmp_path / "mask.nii.gz", np.zeros((6, 5, 4), np.uint8), affine)
    with pytest.raises(InputDataError, match=r"mask.nii.gz: expected class probabilities"):
        read_probability(tmp_path / "mask.nii.gz", 1)


def absurd_header(ending: str) -> bytes:
    """A header claiming 30000^3 int16 voxels (54 TB), followed by no data."""
    if ending == ".mha":
        fields = ("ObjectType = Image", "NDims = 3", "DimSize = 30000 30000 30000", "ElementType = MET_SHORT")
        return "\n".join([*fields, "ElementDataFile = LOCAL", ""]).encode()
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((30000, 30000, 30000))
    header["vox_offset"] = 352
    single_file = header.binaryblock + b"\0" * 4  # 348 header bytes, then no extension
    return gzip.compress(single_file) if ending == ".nii.gz" else single_file


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha"])
def test_a_header_claiming_an_absurd_size_is_refused_before_reading(tmp_path, ending):
    path = tmp_path / f"huge{ending}"
    path.write_bytes(absurd_header(ending))
    claims = r"huge.*: the header claims 30000x30000x30000(x1)? values of 2 bytes = 5.03e\+04 GiB"
    with pytest.raises(InputDataError, match=claims):
        read_volume(path)


PNG_START = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
# A file named as a volume, what it holds, and what the message must say.
MISNAMED = [
    ("empty.nii.gz", b"", r"empty.nii.gz: empty file \(0 bytes\)"),
    ("empty.nii", b"", r"empty.nii: empty file \(0 bytes\)"),
    ("empty.nrrd", b"", r"empty.nrrd: empty file \(0 bytes\)"),
    ("empty.mha", b"", r"empty.mha: empty file \(0 bytes\)"),
    (
        "noise.nii.gz",
        b"\x00" + np.random.default_rng(0).bytes(4095),
        r"noise.nii.gz: not a gzipped NIfTI file \(wrong magic number\)$",
    ),
    (
        "photo.nii",
        PNG_START + bytes(500),
        r"photo.nii: not a NIfTI file \(wrong magic number; a PNG image\?\)",
    ),
    ("photo.mha", PNG_START + bytes(500), r"photo.mha: not a MetaImage file \(.*; a PNG image\?\)"),
    (
        "zipped.nii",
        gzip.compress(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)).to_bytes()),
        r"zipped.nii: not a NIfTI file \(.*; gzip-compressed data\?\)",
    ),
    ("slice.nrrd", Path(get_testdata_file("CT_small.dcm")).read_bytes(), r"slice.nrrd: .*; a DICOM file\?\)"),
    ("page.nii.gz", b"<!DOCTYPE html><html>Not found</html>", r"page.nii.gz: .*; an HTML page\?\)"),
]


@pytest.mark.parametrize(("name", "content", "message"), MISNAMED, ids=[name for name, _, _ in MISNAMED])
def test_empty_and_misnamed_files_are_named(tmp_path, name, content, message):
    """A zero-byte file, or one whose first bytes are not its ending's magic number, is refused
    before any reader sees it, saying what it looks like (ITK would read a PNG named .mha as 2D)."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputDataError, match=message) as err:
        read_volume(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_five_dimensional_images_are_refused_and_vector_images_read_as_channels(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4, 2, 3), np.int16), np.eye(4)), tmp_path / "five.nii.gz")
    with pytest.raises(
        InputDataError,
        match=r"five.nii.gz: 5D image of shape \(6, 5, 4, 2, 3\); expected 3D, or 4D with the channels last",
    ):
        read_volume(tmp_path / "five.nii.gz", max_channels=16)
    header = ["ObjectType = Image", "NDims = 5", "DimSize = 6 5 4 2 3", "ElementType = MET_UCHAR"]
    (tmp_path / "five.mha").write_bytes(
        "\n".join([*header, "ElementDataFile = LOCAL", ""]).encode() + bytes(720)
    )
    with pytest.raises(InputDataError, match=r"five.mha: 5D image of size \(6, 5, 4, 2, 3\); expected 3D"):
        read_volume(tmp_path / "five.mha", max_channels=16)
    # (x, y, z, 1, c) is how ITK stores a c-component image in NIfTI: c channels.
    vector = np.arange(6 * 5 * 4 * 2, dtype=np.int16).reshape(6, 5, 4, 1, 2)
    nib.save(nib.Nifti1Image(vector, np.eye(4)), tmp_path / "vector.nii.gz")
    np.testing.assert_array_equal(
        read_volume(tmp_path / "vector.nii.gz", max_channels=2).array, vector[:, :, :, 0]
    )
    with pytest.raises(
        InputDataError, match=r"vector.nii.gz: expected a 3D volume, got 2 channels, shape \(6, 5, 4, 2\)"
    ):
        read_volume(tmp_path / "vector.nii.gz")
