import json

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImage
from scipy import ndimage

from pipeline.cohort.dataset import load_cohort
from pipeline.cohort.synthetic import AIR_HU, make_case
from pipeline.config import SynthParams
from tests.conftest import TINY_SYNTH


def test_same_seed_gives_identical_cases():
    for index in (0, 3):
        a, b = make_case(TINY_SYNTH, index), make_case(TINY_SYNTH, index)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
        np.testing.assert_array_equal(a.affine, b.affine)


def test_different_seed_gives_different_cases():
    a = make_case(SynthParams(seed=1), 0)
    b = make_case(SynthParams(seed=2), 0)
    assert a.image.shape != b.image.shape or not np.array_equal(a.image, b.image)
    assert not np.array_equal(a.affine, b.affine)


def test_a_case_does_not_depend_on_cohort_size():
    small, large = SynthParams(seed=5, n_train=2), SynthParams(seed=5, n_train=30)
    np.testing.assert_array_equal(make_case(small, 1).image, make_case(large, 1).image)


def test_cohort_properties():
    params = SynthParams(seed=11)
    cases = [make_case(params, i) for i in range(16)]
    n_lesions = [case.n_lesions for case in cases]
    assert n_lesions.count(0) == 4  # a quarter lesion-free
    assert max(n_lesions) <= params.max_lesions
    spacings = np.array([np.abs(np.diag(case.affine)[:3]) for case in cases])
    assert np.all(spacings[:, 2] > spacings[:, 0])  # anisotropic: thick slices
    assert len(np.unique(spacings[:, 0].round(3))) > 10  # varies between cases
    assert any(np.any(np.diag(case.affine)[:3] < 0) for case in cases)  # some flipped axes
    assert any(np.all(np.diag(case.affine)[:3] > 0) for case in cases)  # and some not
    for case in cases:
        assert set(np.unique(case.label)) <= {0, 1, 2}
        assert case.image.dtype == np.int16
        assert np.median(case.image[0]) < AIR_HU + 100  # air at the field-of-view corner
        if case.n_lesions:
            # every lesion sits inside the organ: no lesion voxel touches the background
            grown = ndimage.binary_dilation(case.label == 2)
            assert not np.any(grown & (case.label == 0))


def test_lesion_contrast_overlaps_organ_under_noise():
    case = next(c for c in (make_case(SynthParams(seed=3), i) for i in range(8)) if c.n_lesions)
    organ, lesion = case.image[case.label == 1], case.image[case.label == 2]
    gap = abs(float(organ.mean()) - float(lesion.mean()))
    assert gap < 2.5 * float(organ.std())


def test_written_cohort_reads_back_with_declared_geometry(cohort_dir):
    meta = json.loads((cohort_dir / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
    assert meta["modality"] == {"0": "CT"} and meta["channel_names"] == {"0": "CT"}
    assert meta["numTraining"] == TINY_SYNTH.n_train and meta["numTest"] == TINY_SYNTH.n_test
    cohort = load_cohort(cohort_dir)
    assert [case.name for case in cohort.training] == [f"synth_{i:03d}" for i in range(6)]
    assert all(case.label is not None for case in cohort.test)
    for index, case in enumerate(cohort.training + cohort.test):
        expected = make_case(TINY_SYNTH, index)
        image = nib.load(case.image)
        np.testing.assert_allclose(image.affine, expected.affine, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(image.dataobj), expected.image)
        np.testing.assert_array_equal(np.asarray(nib.load(case.label).dataobj), expected.label)
        monai_image = LoadImage(image_only=True)(str(case.image))
        np.testing.assert_allclose(monai_image.affine.numpy(), expected.affine, atol=1e-5)
        assert tuple(monai_image.shape) == expected.image.shape


@pytest.mark.parametrize("problem", ["missing_file", "no_json"])
def test_broken_cohort_is_named(cohort_dir, tmp_path, problem):
    import shutil

    from pipeline.errors import InputDataError

    broken = tmp_path / "broken"
    shutil.copytree(cohort_dir, broken)
    if problem == "missing_file":
        (broken / "labelsTr" / "synth_002.nii.gz").unlink()
        match = "synth_002.nii.gz: listed in .*dataset.json but missing"
    else:
        (broken / "dataset.json").unlink()
        match = "dataset.json: not found"
    with pytest.raises(InputDataError, match=match):
        load_cohort(broken)
