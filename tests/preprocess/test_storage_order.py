"""The plan, the preprocessed arrays and the masks depend on the anatomy, not on the order in
which a file stores its axes: one cohort written axially, flipped, with permuted axes, and
mixed, is planned, preprocessed and segmented the same."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.cohort.dataset import load_cohort
from pipeline.config import PreprocessParams
from pipeline.infer.predictor import Predictor
from pipeline.io import Volume, read_volume, write_volume
from pipeline.models.model_dir import ModelDescription
from pipeline.preprocess import stage
from pipeline.preprocess.fingerprint import fingerprint_case
from pipeline.preprocess.plans import Plans
from tests.conftest import TINY_NETWORK

# Each storage writes every case with these axis codes (the anatomy stays where it is).
STORAGES = {
    "axial": ["RAS"],
    "flipped": ["LAI"],
    "permuted": ["SRP", "ASL"],  # slices first; coronal-like
    "mixed": ["RAS", "SRP", "LPI", "ASL"],  # case i takes code i mod 4
}


def store_as(volume: Volume, axcodes: str) -> Volume:
    """The same world anatomy, voxel for voxel, with the axes stored in ``axcodes`` order."""
    ras = volume.in_ras_frame()
    to_storage = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(axcodes)
    )
    array = nib.orientations.apply_orientation(ras.array, to_storage)
    return Volume(
        np.ascontiguousarray(array), ras.affine @ nib.orientations.inv_ornt_aff(to_storage, ras.shape)
    )


def restored_cohort(cohort_dir, out, codes: list[str]):
    shutil.copytree(cohort_dir, out)
    cohort = load_cohort(out)
    for i, case in enumerate(cohort.training + cohort.test):
        for path in filter(None, [case.image, case.label]):
            stored = store_as(read_volume(path), codes[i % len(codes)])
            write_volume(path, stored.array, stored.affine)
    return out


@pytest.fixture(scope="module")
def stored_cohorts(cohort_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("storage")
    out = {}
    for name, codes in STORAGES.items():
        cohort = restored_cohort(cohort_dir, root / name / "cohort", codes)
        preprocessed = root / name / "preprocessed"
        stage.run(PreprocessParams(num_workers=1), cohort, preprocessed)
        out[name] = (cohort, preprocessed)
    return out


def plan_part(preprocessed) -> dict:
    """plans.json without the per-case inversion records (those are per file by design)."""
    plans = json.loads((preprocessed / "plans.json").read_text())
    del plans["cases"]
    return plans


def test_every_storage_gives_the_same_plan(stored_cohorts):
    expected = plan_part(stored_cohorts["axial"][1])
    for name, (_, preprocessed) in stored_cohorts.items():
        plans = plan_part(preprocessed)
        assert plans["patch_size"] == expected["patch_size"], name
        assert plans["batch_size"] == expected["batch_size"], name
        np.testing.assert_allclose(
            plans["target_spacing"], expected["target_spacing"], atol=1e-6, err_msg=name
        )
        for key in ("spacings", "shapes", "median_spacing", "median_shape"):
            np.testing.assert_allclose(
                plans["fingerprint"][key], expected["fingerprint"][key], atol=1e-6, err_msg=f"{name}: {key}"
            )
        for got, want in zip(plans["normalization"], expected["normalization"], strict=True):
            for key, value in want.items():
                assert got[key] == pytest.approx(value, abs=1e-6), f"{name}: normalization.{key}"


def test_the_synthetic_cohorts_thick_axis_is_planned_as_z(stored_cohorts):
    """The synthetic slices (3-5 mm) are the superior axis; in-plane 1.6-2.2 mm. A plan by
    storage order would put a thick median on x or y for the permuted cohorts."""
    for name, (_, preprocessed) in stored_cohorts.items():
        x, y, z = plan_part(preprocessed)["target_spacing"]
        assert z > 2.5 > max(x, y), name


def test_every_storage_gives_the_same_preprocessed_arrays(stored_cohorts):
    reference = stored_cohorts["axial"][1]
    names = [case["name"] for case in json.loads((reference / "plans.json").read_text())["cases"]]
    for name, (_, preprocessed) in stored_cohorts.items():
        for case in names:
            for kind in ("image", "label"):
                got, want = (np.load(p / f"{case}_{kind}.npy") for p in (preprocessed, reference))
                assert got.shape == want.shape, f"{name}/{case}_{kind}"
                np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{name}/{case}_{kind}")


def seeded_predictor(preprocessed) -> Predictor:
    plans = Plans.load(preprocessed / "plans.json")
    description = ModelDescription(TINY_NETWORK, plans, patch_size=[32, 32, 16])
    torch.manual_seed(0)
    return Predictor(description, [description.build()], overlap=0.25, device="cpu", precision="fp32")


def test_masks_map_back_to_each_files_grid_and_agree(stored_cohorts):
    """One network (the same plan, the same seeded weights) segments every storage of the test
    scans; each mask lies on its file's grid and, brought to RAS, equals the axial one."""
    masks = {}
    for name, (cohort, preprocessed) in stored_cohorts.items():
        predictor = seeded_predictor(preprocessed)
        for case in load_cohort(cohort).test:
            scan = read_volume(case.image)
            label = predictor.predict(scan).label
            assert label.shape == scan.shape
            masks[name, case.name] = Volume(label, scan.affine).in_ras_frame().array
    for (name, case), mask in masks.items():
        axial = masks["axial", case]
        assert len(np.unique(axial)) > 1, "a constant mask would prove nothing"
        np.testing.assert_array_equal(mask, axial, err_msg=f"{name}/{case}")


def rotation_about_z(degrees: float) -> np.ndarray:
    angle = np.radians(degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return rotation


def test_an_oblique_scan_is_planned_and_segmented_in_its_nearest_ras_frame(stored_cohorts, tmp_path):
    """Direction cosines 20 degrees off the axes: the axes are permuted and flipped to the nearest
    RAS order and the grid is not resampled to remove the tilt, so the scan is fingerprinted and
    segmented as its axis-aligned twin (the same voxels), and its mask keeps its oblique grid."""
    cohort, preprocessed = stored_cohorts["permuted"]
    case = load_cohort(cohort).test[0]
    straight = read_volume(case.image)
    oblique_affine = rotation_about_z(20.0) @ straight.affine
    for kind, path in (("image", case.image), ("label", case.label)):
        write_volume(tmp_path / f"{kind}.nii.gz", np.asarray(read_volume(path).array), oblique_affine)
    twin = type(case)(case.name, case.image, case.label, case.keys)
    oblique = type(case)(case.name, tmp_path / "image.nii.gz", tmp_path / "label.nii.gz", case.keys)
    labels = load_cohort(cohort).labels
    got, want = fingerprint_case(oblique, 1, labels, seed=0), fingerprint_case(twin, 1, labels, seed=0)
    np.testing.assert_allclose(got.spacing, want.spacing, atol=1e-6)
    assert got.description.features == pytest.approx(want.description.features, abs=1e-5)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.foreground_samples, want.foreground_samples)

    predictor = seeded_predictor(preprocessed)
    scan = read_volume(tmp_path / "image.nii.gz")
    mask = predictor.predict(scan).label
    np.testing.assert_array_equal(mask, predictor.predict(straight).label)
    np.testing.assert_allclose(scan.affine, oblique_affine, atol=1e-5)
