import gzip

import nibabel as nib
import numpy as np
import pytest

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
    broken.write_bytes(b"not a nifti file")
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
    with pytest.raises(
        InputDataError, match=r"huge.*: the header claims 30000x30000x30000(x1)? = 2.7e\+13 values"
    ):
        read_volume(path)
