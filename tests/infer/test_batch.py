"""``resseg predict`` over folders nobody curated: formats, geometry, failures, resuming, shards."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from importlib import metadata

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from pipeline.cli import main
from pipeline.config import DetectionParams
from pipeline.errors import SOME_SCANS_FAILED, InputDataError
from pipeline.evaluate.segmentation import dice_per_label
from pipeline.infer import batch
from pipeline.infer.inputs import find_scans
from pipeline.io import read_probability, read_volume, write_volume
from pipeline.io.dicom import find_dicom_series, read_dicom_series
from tests.infer.test_predictor import HU_PER_CLASS, blob_scan, oracle_predictor
from tests.io.test_dicom import DIRECTION_LPS, write_series

MODEL = {"path": "oracle", "folds": None, "sha256": "oracle"}
LESION_ONLY = DetectionParams(lesion_labels=["lesion"], min_candidate_volume_mm3=0.0)


def run_batch(input_dir, output_dir, **options):
    return batch.run(
        oracle_predictor(), MODEL, input_dir, output_dir, batch.BatchOptions(**options), LESION_ONLY
    )


def summary_rows(output_dir):
    return {row["scan"]: row for row in csv.DictReader(open(output_dir / "summary.csv"))}


@pytest.fixture
def mixed_folder(tmp_path):
    """A NIfTI, an NRRD, a DICOM series and a corrupt file; image HU encode the true labels."""
    folder = tmp_path / "in"
    folder.mkdir()
    labels = {"nifti": blob_scan(folder, "nifti", np.diag([1.5, -1.5, 3.0, 1.0]))}
    labels["nrrd"] = blob_scan(folder, "tmp", np.diag([2.0, 2.0, 4.0, 1.0]), shape=(30, 28, 12))
    volume = read_volume(folder / "tmp.nii.gz")
    write_volume(folder / "nrrd.nrrd", volume.array, volume.affine)
    (folder / "tmp.nii.gz").unlink()
    # The series is 0.7 x 0.9 x 2.5 mm: enough voxels that the 2 x 2 x 4 mm plan keeps the shapes.
    labels["dicom"] = blob_scan(tmp_path, "dicom_source", np.eye(4), shape=(72, 60, 16))
    hu = read_volume(tmp_path / "dicom_source.nii.gz").array
    write_series(folder / "dicom", hu, uid="1.2.826.0.1.3680043.2.1125.77")
    (folder / "corrupt.nii.gz").write_bytes(b"\x1f\x8b this is not a NIfTI file")
    return folder, labels


def test_mixed_folder_gives_masks_in_each_scans_own_geometry(mixed_folder, tmp_path):
    folder, labels = mixed_folder
    out = tmp_path / "out"
    result = run_batch(folder, out, save_probabilities=True)
    assert (result.n_scans, result.n_done, result.failed) == (4, 3, ["corrupt"])

    nifti_in, nifti_out = read_volume(folder / "nifti.nii.gz"), read_volume(out / "nifti.nii.gz")
    np.testing.assert_allclose(nifti_out.affine, nifti_in.affine, atol=1e-6)
    assert nifti_out.shape == nifti_in.shape
    # NRRD in, NRRD out, the header compared field by field.
    nrrd_in, nrrd_out = sitk.ReadImage(str(folder / "nrrd.nrrd")), sitk.ReadImage(str(out / "nrrd.nrrd"))
    assert nrrd_out.GetSize() == nrrd_in.GetSize()
    np.testing.assert_allclose(nrrd_out.GetSpacing(), nrrd_in.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(nrrd_out.GetOrigin(), nrrd_in.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(nrrd_out.GetDirection(), nrrd_in.GetDirection(), atol=1e-9)
    # A DICOM series comes out as NIfTI on the series' grid.
    series = read_dicom_series(find_dicom_series(folder / "dicom")[0])
    dicom_out = read_volume(out / "dicom.nii.gz")
    np.testing.assert_allclose(dicom_out.affine, series.affine, atol=1e-5)
    assert dicom_out.shape == series.shape

    masks = {"nifti": nifti_out.array, "nrrd": sitk.GetArrayFromImage(nrrd_out).T, "dicom": dicom_out.array}
    for name, mask in masks.items():
        dice = dice_per_label(labels[name], np.asarray(mask), [1, 2])
        assert dice[1] > 0.9 and dice[2] > 0.8, name

    rows = summary_rows(out)
    assert {name: row["status"] for name, row in rows.items()} == {
        "corrupt": "error",
        "dicom": "ok",
        "nifti": "ok",
        "nrrd": "ok",
    }
    assert rows["corrupt"]["error"].startswith(f"{folder / 'corrupt.nii.gz'}: cannot be read")
    # Volumes in ml on the scan's own grid, and one lesion (the inner ellipsoid) per scan.
    voxel_ml = 1.5 * 1.5 * 3.0 / 1000
    assert float(rows["nifti"]["volume_ml_lesion"]) == pytest.approx((nifti_out.array == 2).sum() * voxel_ml)
    assert [rows[n]["lesions_lesion"] for n in ("nifti", "nrrd", "dicom")] == ["1", "1", "1"]
    assert float(rows["nifti"]["case_score_lesion"]) > 0.99
    probabilities = read_probability(out / "probabilities/dicom.nii.gz", 2)
    assert probabilities.shape == series.shape

    run_json = json.loads((out / "run.json").read_text())
    assert run_json["model"] == MODEL and run_json["options"]["save_probabilities"] is True
    assert run_json["software"]["torch"] == metadata.version("torch")


def test_rerun_skips_complete_scans_and_retries_failed_ones(mixed_folder, tmp_path):
    folder, _ = mixed_folder
    out = tmp_path / "out"
    run_batch(folder, out)
    before = (out / "nifti.nii.gz").stat().st_mtime_ns
    again = run_batch(folder, out)
    assert (again.n_done, again.n_skipped, again.failed) == (0, 3, ["corrupt"])
    assert (out / "nifti.nii.gz").stat().st_mtime_ns == before
    redone = run_batch(folder, out, overwrite=True)
    assert (redone.n_done, redone.n_skipped) == (3, 0)
    # Changing what a mask depends on (here: probabilities wanted) redoes the scans too.
    assert run_batch(folder, out, save_probabilities=True).n_skipped == 0


def test_rerun_redoes_a_replaced_scan_and_changed_detection_parameters(mixed_folder, tmp_path):
    """The record holds the input's identity (names, sizes, modification times) and the
    detection parameters behind its lesion columns: outputs existing is not enough."""
    folder, _ = mixed_folder
    out = tmp_path / "out"
    run_batch(folder, out)
    blob_scan(folder, "nifti", np.diag([2.0, 2.0, 4.0, 1.0]), shape=(30, 28, 12))  # another scan
    again = run_batch(folder, out)
    assert (again.n_done, again.n_skipped, again.failed) == (1, 2, ["corrupt"])  # the replaced scan
    assert read_volume(out / "nifti.nii.gz").shape == (30, 28, 12)
    os.utime(folder / "nrrd.nrrd", ns=(0, 0))  # same bytes, another time: redone, to be safe
    assert run_batch(folder, out).n_done == 1

    stricter = DetectionParams(lesion_labels=["lesion"], operating_threshold=0.9)
    redone = batch.run(oracle_predictor(), MODEL, folder, out, batch.BatchOptions(), stricter)
    assert (redone.n_done, redone.n_skipped) == (3, 0)


def test_shards_merge_into_one_summary(mixed_folder, tmp_path):
    folder, _ = mixed_folder
    out = tmp_path / "out"
    first = run_batch(folder, out, shard=(0, 2))
    assert first.n_scans == 2  # corrupt and nifti of the sorted corrupt, dicom, nifti, nrrd
    statuses = {name: row["status"] for name, row in summary_rows(out).items()}
    assert statuses == {"corrupt": "error", "dicom": "pending", "nifti": "ok", "nrrd": "pending"}
    run_batch(folder, out, shard=(1, 2))
    statuses = {name: row["status"] for name, row in summary_rows(out).items()}
    assert statuses == {"corrupt": "error", "dicom": "ok", "nifti": "ok", "nrrd": "ok"}


def test_an_output_folder_that_cannot_be_written_is_named(mixed_folder, tmp_path):
    folder, _ = mixed_folder
    (tmp_path / "taken").write_text("a file where the output folder should go")
    with pytest.raises(InputDataError, match=r"taken: cannot write the outputs there \(File exists\)"):
        run_batch(folder, tmp_path / "taken")


def test_oblique_scan_comes_back_in_its_own_orientation(tmp_path):
    """A scan stored with a rotated, flipped affine: the mask is on its grid and over its structure."""
    angle = np.deg2rad(25)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.6, 1.4, 3.5])
    affine[:3, 3] = [20.0, -15.0, 40.0]
    (tmp_path / "in").mkdir()
    label = blob_scan(tmp_path / "in", "oblique", affine)
    run_batch(tmp_path / "in", tmp_path / "out")
    mask = read_volume(tmp_path / "out/oblique.nii.gz")
    np.testing.assert_allclose(mask.affine, affine, atol=1e-5)
    dice = dice_per_label(label, mask.array, [1, 2])
    assert dice[1] > 0.9 and dice[2] > 0.8


def test_multi_series_folder_and_unsupported_files(tmp_path):
    folder = tmp_path / "in"
    hu = np.full((8, 8, 4), HU_PER_CLASS, np.int16)
    write_series(folder / "patient", hu, uid="1.2.826.0.1.3680043.2.1125.5", prefix="a")
    write_series(folder / "patient", hu, uid="1.2.826.0.1.3680043.2.1125.6", prefix="b")
    (folder / "notes.txt").write_text("sidecar files are not scans")
    (folder / "photo.png").write_bytes(b"\x89PNG")
    scans, unusable = find_scans(folder, n_channels=1, recursive=True)
    assert [s.name for s in scans] == ["patient_5", "patient_6"]
    assert [(u.name, u.reason.split(" (")[0]) for u in unusable] == [("photo.png", "unsupported format")]


def test_multichannel_files_are_grouped_by_case(tmp_path):
    for name in ("a_0000", "a_0001", "b_0000", "c"):
        write_volume(tmp_path / f"{name}.nii.gz", np.zeros((4, 4, 4), np.int16), np.eye(4))
    scans, unusable = find_scans(tmp_path, n_channels=2)
    assert [(s.name, [p.name for p in s.sources]) for s in scans] == [
        ("a", ["a_0000.nii.gz", "a_0001.nii.gz"]),
        ("c", ["c.nii.gz"]),  # one file holding both channels
    ]
    assert [(u.name, u.reason) for u in unusable] == [("b", "expected channels _0000 to _0001, found _0000")]
    # One channel: each file is a scan, and nnU-Net's _0000 suffix is dropped.
    scans, _ = find_scans(tmp_path, n_channels=1)
    assert [s.name for s in scans] == ["a", "a_0001", "b", "c"]


def test_outputs_of_different_scans_never_share_a_path(tmp_path):
    """With --recursive, the mask of probabilities/a.nii.gz is where a.nii.gz's probabilities
    go: both are refused, naming each other, and nothing is overwritten; the other scans done."""
    folder = tmp_path / "in"
    (folder / "probabilities").mkdir(parents=True)
    (folder / "deep/probabilities").mkdir(parents=True)
    for name in ("a", "probabilities/a", "b", "deep/probabilities/b"):
        blob_scan(folder, name, np.diag([2.0, 2.0, 4.0, 1.0]))
    out = tmp_path / "out"

    result = run_batch(folder, out, recursive=True, save_probabilities=True)

    assert result.failed == ["a", "probabilities/a"]
    rows = summary_rows(out)
    assert rows["a"]["error"] == (
        f"{folder / 'a.nii.gz'}: its output {out / 'probabilities/a.nii.gz'} would also be that of "
        f"{folder / 'probabilities/a.nii.gz'}; rename or move one"
    )
    assert rows["probabilities/a"]["error"].startswith(f"{folder / 'probabilities/a.nii.gz'}: its output")
    assert not (out / "a.nii.gz").exists() and not (out / "probabilities/a.nii.gz").exists()
    # deep/probabilities/b's mask and b's probabilities differ in path: both are written.
    assert read_volume(out / "deep/probabilities/b.nii.gz").array.ndim == 3
    assert read_probability(out / "probabilities/b.nii.gz", 2).shape == (40, 36, 14)
    # Without probabilities nothing is shared, and every scan is segmented.
    assert run_batch(folder, tmp_path / "masks_only", recursive=True).failed == []


def test_dicom_seg_references_the_series(tmp_path):
    folder = tmp_path / "in"
    hu = np.zeros((24, 20, 8), np.int16)
    hu[6:18, 5:15, 2:6] = HU_PER_CLASS
    hu[10:14, 8:12, 3:5] = 2 * HU_PER_CLASS
    write_series(folder / "ct", hu, uid="1.2.826.0.1.3680043.2.1125.9")
    run_batch(folder, tmp_path / "out", dicom_seg=True)
    seg = pydicom.dcmread(tmp_path / "out/ct.seg.dcm")
    assert seg.Modality == "SEG"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["organ", "lesion"]
    referenced = {
        r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == {pydicom.dcmread(f).SOPInstanceUID for f in (folder / "ct").iterdir()}


# Rows running anterior (y flipped) and slices running downwards (z flipped): the frames of the
# SEG must follow the source's slices, not the mask's array order.
FLIPPED_LPS = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


@pytest.mark.parametrize("direction", [DIRECTION_LPS, FLIPPED_LPS], ids=["axial", "flipped"])
def test_the_dicom_seg_read_back_by_highdicom_equals_the_nifti_mask(tmp_path, direction):
    """highdicom rebuilds the SEG's volume from its frames' positions; mapped onto the NIfTI
    mask's grid (which refuses anything but the same voxels up to axis order and flips), each
    segment covers exactly that label, so frame order, positions and orientation are right."""
    folder = tmp_path / "in"
    hu = np.zeros((24, 20, 8), np.int16)
    hu[6:18, 5:15, 1:6] = HU_PER_CLASS
    hu[10:14, 8:12, 4:6] = 2 * HU_PER_CLASS  # off-centre along z, so a reversed stack shows
    write_series(folder / "ct", hu, uid="1.2.826.0.1.3680043.2.1125.9", direction=direction)
    run_batch(folder, tmp_path / "out", dicom_seg=True)
    mask = read_volume(tmp_path / "out/ct.nii.gz")
    seg = hd.seg.segread(tmp_path / "out/ct.seg.dcm")
    grid = hd.Volume.from_nibabel(nib.Nifti1Image(mask.array, mask.affine), coordinate_system="PATIENT")
    segments = seg.get_volume(combine_segments=False).match_geometry(grid).array
    for index, number in enumerate(seg.get_segment_numbers()):
        value = {"organ": 1, "lesion": 2}[seg.get_segment_description(number).segment_label]
        np.testing.assert_array_equal(segments[..., index] > 0, mask.array == value)
    assert set(np.unique(mask.array)) == {0, 1, 2}  # both segments hold voxels


def test_command_line_exit_codes(mixed_folder, random_model, tmp_path, monkeypatch, capsys):
    folder, _ = mixed_folder
    monkeypatch.chdir(tmp_path)
    args = ["predict", "--input", str(folder), "--model", str(random_model), "--device", "cpu"]
    assert main([*args, "--output", "out"]) == SOME_SCANS_FAILED
    assert "3 scans segmented, 0 already complete, 1 failed" in capsys.readouterr().out
    (folder / "corrupt.nii.gz").unlink()
    assert main([*args, "--output", "out"]) == 0
    with pytest.raises(SystemExit) as exit:
        main([*args, "--output", "out2", "--shard", "2/2"])
    assert exit.value.code == 2 and "expected i/n with 0 <= i < n" in capsys.readouterr().err
    assert main([*args, "--output", "out2", "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == "resseg predict: error: --workers: expected at least 1, got 0"


@pytest.mark.slow
def test_killed_run_resumes_with_every_output_valid(random_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(6):
        blob_scan(folder, f"scan_{k}", np.diag([1.0, 1.0, 2.0, 1.0]), shape=(80, 72, 30))
    command = [sys.executable, "-m", "pipeline.cli", "predict", "--input", str(folder), "--output",
               str(tmp_path / "out"), "--model", str(random_model), "--device", "cpu"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = tmp_path / "out/.records"
    deadline = time.monotonic() + 120
    while not (records.is_dir() and len(list(records.iterdir())) >= 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before = len(list(records.iterdir()))
    assert 2 <= done_before < 6

    assert subprocess.run(command, capture_output=True).returncode == 0
    for k in range(6):  # every mask whole and on its scan's grid; no temporary left behind
        assert read_volume(tmp_path / f"out/scan_{k}.nii.gz").shape == (80, 72, 30)
    assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp-" in p.name]
    rows = summary_rows(tmp_path / "out")
    assert sorted(rows) == [f"scan_{k}" for k in range(6)] and {r["status"] for r in rows.values()} == {"ok"}
