"""Each source layout imports into our MSD layout with values and geometry intact."""

import json
import shutil

import numpy as np
import pytest

from pipeline.cohort import importers
from pipeline.cohort.dataset import load_cohort
from pipeline.errors import ConfigError, InputDataError
from pipeline.io import read_volume, write_volume

OPTIONS = importers.ImportOptions()


def run(source, fmt, out, options=OPTIONS):
    return importers.run(source, fmt, out, options, out.parent / "qc.json", echo=lambda _: None)


def mri_case(rng, shape=(12, 10, 8)):
    """Two MRI channels and a label on one oblique-free, flipped grid."""
    affine = np.diag([-1.2, 1.2, 2.5, 1.0])
    affine[:3, 3] = [20.0, -5.0, 3.0]
    t1 = rng.integers(0, 400, size=shape).astype(np.int16)
    t2 = rng.integers(0, 900, size=shape).astype(np.int16)
    label = (t1 > 300).astype(np.uint8)
    return affine, t1, t2, label


def test_msd_import_is_lossless(cohort_dir, tmp_path):
    reports = run(cohort_dir, "msd", tmp_path / "out", OPTIONS)
    assert all(r.status != "error" for r in reports)
    cohort = load_cohort(tmp_path / "out")
    assert cohort.channel_names == ["CT"] and cohort.labels == {0: "background", 1: "organ", 2: "lesion"}
    assert len(cohort.training) == 6 and len(cohort.test) == 2 and all(c.label for c in cohort.test)
    for case in cohort.training + cohort.test:
        for kind, path in (("images", case.image), ("labels", case.label)):
            split = "Tr" if case in cohort.training else "Ts"
            original = read_volume(cohort_dir / f"{kind}{split}" / path.name)
            imported = read_volume(path)
            np.testing.assert_array_equal(imported.array, original.array)
            np.testing.assert_allclose(imported.affine, original.affine, atol=1e-5)


def test_nnunet_multichannel_nrrd_becomes_4d_nifti(tmp_path):
    source = tmp_path / "Dataset001_Brain"
    rng = np.random.default_rng(0)
    expected = {}
    for name in ("brain_001", "brain_002"):
        affine, t1, t2, label = mri_case(rng)
        write_volume(source / "imagesTr" / f"{name}_0000.nrrd", t1, affine)
        write_volume(source / "imagesTr" / f"{name}_0001.nrrd", t2, affine)
        write_volume(source / "labelsTr" / f"{name}.nrrd", label, affine)
        expected[name] = (affine, t1, t2, label)
    (source / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "T1", "1": "T2"},
                "labels": {"background": 0, "tumour": 1},
                "numTraining": 2,
                "file_ending": ".nrrd",
            }
        )
    )
    run(source, "nnunet", tmp_path / "out", OPTIONS)
    cohort = load_cohort(tmp_path / "out")
    assert cohort.channel_names == ["T1", "T2"] and cohort.labels == {0: "background", 1: "tumour"}
    for case in cohort.training:
        affine, t1, t2, label = expected[case.name]
        image = read_volume(case.image, max_channels=2)
        np.testing.assert_array_equal(image.array, np.stack([t1, t2], axis=-1))
        np.testing.assert_allclose(image.affine, affine, atol=1e-5)
        np.testing.assert_array_equal(read_volume(case.label).array, label)


def test_folders_import_needs_label_names_and_matches_by_name(tmp_path):
    rng = np.random.default_rng(1)
    source = tmp_path / "src"
    for name in ("a", "b"):
        affine, t1, _, label = mri_case(rng)
        write_volume(source / "images" / f"{name}.mha", (t1 - 1000).astype(np.int16), affine)
        write_volume(source / "labels" / f"{name}.mha", label, affine)
    with pytest.raises(ConfigError, match="--labels: required for --format folders"):
        run(source, "folders", tmp_path / "out", OPTIONS)
    run(source, "folders", tmp_path / "out", importers.ImportOptions(label_names=["organ"]))
    cohort = load_cohort(tmp_path / "out")
    assert [c.name for c in cohort.training] == ["a", "b"] and cohort.labels == {0: "background", 1: "organ"}


def test_invalid_case_stops_the_import_or_is_skipped(cohort_dir, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(cohort_dir, source)
    (source / "labelsTr/synth_002.nii.gz").unlink()
    with pytest.raises(InputDataError, match="1 of 8 cases invalid; first: synth_002: .*file not found"):
        run(source, "msd", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-imported
    report = json.loads((tmp_path / "qc.json").read_text())
    assert [r["case"] for r in report["cases"] if r["errors"]] == ["synth_002"]

    options = importers.ImportOptions(skip_invalid=True)
    run(source, "msd", tmp_path / "out", options)
    names = [c.name for c in load_cohort(tmp_path / "out").training]
    assert "synth_002" not in names and len(names) == 5


def test_channels_with_different_geometry_are_rejected(tmp_path):
    a = write_volume(tmp_path / "a.nii.gz", np.zeros((4, 4, 4), np.int16), np.eye(4))
    write_volume(tmp_path / "b.nii.gz", np.zeros((4, 4, 4), np.int16), np.diag([2.0, 1.0, 1.0, 1.0]))
    assert a is None
    volumes = [read_volume(tmp_path / "a.nii.gz"), read_volume(tmp_path / "b.nii.gz")]
    with pytest.raises(InputDataError, match="b.nii.gz: geometry differs from channel 0"):
        importers.stack_channels(volumes, [tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"])


def test_not_a_folder_and_empty_source(tmp_path):
    with pytest.raises(InputDataError, match="not a folder"):
        run(tmp_path / "absent", "msd", tmp_path / "out", OPTIONS)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0}, "file_ending": ".nii.gz"})
    )
    with pytest.raises(InputDataError, match="no case found"):
        run(tmp_path / "empty", "nnunet", tmp_path / "out", OPTIONS)


def test_dicom_patients_with_seg_or_nifti_labels(tmp_path):
    from pipeline.io.dicom import find_dicom_series, read_dicom_series
    from tests.io.test_dicom import make_seg, write_series

    rng = np.random.default_rng(2)
    masks = {}
    for index, patient in enumerate(("p1", "p2")):
        hu = rng.integers(-1000, 400, size=(16, 12, 6)).astype(np.int16)
        folder = tmp_path / "dicom" / patient
        write_series(folder, hu, uid=f"1.2.826.0.1.3680043.2.1125.{20 + index}")
        mask = np.zeros(hu.shape, np.uint8)
        mask[4:9, 3:8, 1:5] = 1
        masks[patient] = mask
        if patient == "p1":
            make_seg(folder, mask)
        else:
            image = read_dicom_series(find_dicom_series(folder)[0])
            write_volume(folder / "label.nii.gz", mask, image.affine)
    options = importers.ImportOptions(channel_names=["CT"], label_names=["organ", "lesion"])
    run(tmp_path / "dicom", "dicom", tmp_path / "out", options)
    cohort = load_cohort(tmp_path / "out")
    assert [c.name for c in cohort.training] == ["p1", "p2"]
    for case in cohort.training:
        np.testing.assert_array_equal(read_volume(case.label).array, masks[case.name])
        assert read_volume(case.image).spacing == pytest.approx((0.7, 0.9, 2.5))


def test_msd_import_keeps_patient_site_and_group(cohort_dir, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(cohort_dir, source)
    meta = json.loads((source / "dataset.json").read_text())
    meta["training"][0] |= {"patient": "p7", "site": "north", "group": "contrast"}
    meta["test"][1] = {"image": meta["test"][1], "site": "south"}
    (source / "dataset.json").write_text(json.dumps(meta))
    run(source, "msd", tmp_path / "out")
    cohort = load_cohort(tmp_path / "out")
    assert cohort.training[0].keys == {"patient": "p7", "site": "north", "group": "contrast"}
    assert cohort.training[0].patient == "p7" and cohort.training[1].keys == {}
    assert cohort.test[1].keys == {"site": "south"} and cohort.test[0].keys == {}


def test_dicom_site_is_a_pseudonym_of_the_institution(tmp_path):
    import hashlib

    import pydicom

    from pipeline.io.dicom import find_dicom_series, read_dicom_series
    from tests.io.test_dicom import write_series

    rng = np.random.default_rng(3)
    institutions = {"p1": "St. Elsewhere Hospital", "p2": " st. elsewhere hospital ", "p3": None}
    for index, (patient, institution) in enumerate(institutions.items()):
        hu = rng.integers(-1000, 400, size=(8, 8, 4)).astype(np.int16)
        folder = tmp_path / "dicom" / patient
        write_series(folder, hu, uid=f"1.2.826.0.1.3680043.2.1125.{30 + index}")
        for path in folder.iterdir():
            header = pydicom.dcmread(path)
            if institution is not None:
                header.InstitutionName = institution
            header.save_as(path)
        image = read_dicom_series(find_dicom_series(folder)[0])
        write_volume(folder / "label.nii.gz", (hu > 0).astype(np.uint8), image.affine)
    options = importers.ImportOptions(
        channel_names=["CT"], label_names=["organ"], site_from="InstitutionName"
    )
    run(tmp_path / "dicom", "dicom", tmp_path / "out", options)
    expected = "site-" + hashlib.sha256(b"st. elsewhere hospital").hexdigest()[:12]
    cohort = load_cohort(tmp_path / "out")
    # Case and surrounding spaces do not make another site; a case without the tag has none.
    assert [c.keys for c in cohort.training] == [{"site": expected}, {"site": expected}, {}]
    written = "".join(p.read_text() for p in (tmp_path / "out").glob("*.json")).casefold()
    assert "elsewhere" not in written


def test_site_from_is_for_dicom_only(cohort_dir, tmp_path):
    options = importers.ImportOptions(site_from="Manufacturer")
    with pytest.raises(ConfigError, match="--site-from: only a DICOM source has Manufacturer"):
        run(cohort_dir, "msd", tmp_path / "out", options)
    assert not (tmp_path / "out").exists()
