"""Bad inputs and hostile surroundings, each built here: a one-line message naming the file and
what is wrong, the documented exit code, nothing earlier lost and nothing half-written, and
``resseg predict`` going on with the other scans."""

import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.errors import SOME_SCANS_FAILED
from pipeline.io import read_volume
from tests.infer.test_predictor import HU_PER_CLASS, blob_scan
from tests.io.test_dicom import SPACING, shift_slices, write_series
from tests.io.test_volumes import PNG_START

GRID = np.diag([2.0, 2.0, 4.0, 1.0])


@pytest.fixture
def params(tmp_path):
    """Parameters with one worker per stage: tests run the stages in this process."""
    path = tmp_path / "params.yaml"
    path.write_text("validate: {num_workers: 1}\npreprocess: {num_workers: 1}\n")
    return path


def resseg(capsys, *args) -> tuple[int, str]:
    """Run a command in this process: its exit code and what it printed to stderr."""
    code = main([str(arg) for arg in args])
    return code, capsys.readouterr().err


def files_of(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def edit_dataset_json(cohort, edit) -> None:
    meta = json.loads((cohort / "dataset.json").read_text())
    edit(meta)
    (cohort / "dataset.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("entry", ["../outside.nii.gz", "imagesTr/../../outside.nii.gz", "absolute"])
def test_dataset_json_entries_leading_out_of_the_cohort_are_refused(cohort, params, tmp_path, capsys, entry):
    """A cohort from elsewhere must not make any stage read, or a report name, files outside it."""
    outside = tmp_path / "outside.nii.gz"
    (cohort / "imagesTr/synth_000.nii.gz").rename(outside)
    entry = str(outside) if entry == "absolute" else entry
    edit_dataset_json(cohort, lambda meta: meta["training"][0].update(image=entry))
    expected = (
        f"{cohort / 'dataset.json'}: entry {entry!r} points outside {cohort}; paths must be relative to it"
    )
    report = ("--report", tmp_path / "qc.json")
    commands = {
        "validate": ("--cohort", cohort, *report),
        "preprocess": ("--cohort", cohort, "--out", tmp_path / "preprocessed"),
        "import": ("--source", cohort, "--format", "msd", "--out", tmp_path / "imported", *report),
    }
    for command, args in commands.items():
        code, error = resseg(capsys, command, "--params", params, *args)
        assert (code, error) == (3, f"resseg {command}: error: {expected}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort", "outside.nii.gz", "params.yaml"]


@pytest.mark.parametrize("problem", ["missing", "unlisted", "count"])
def test_dataset_json_and_the_case_files_must_agree(cohort, params, tmp_path, capsys, problem):
    meta_path, missing = cohort / "dataset.json", cohort / "imagesTr/synth_002.nii.gz"
    if problem == "missing":
        missing.unlink()
        expected = f"{missing}: listed in {meta_path} but missing"
    elif problem == "unlisted":  # hidden files (macOS's ._ copies) and notes are no case files
        for name in ("synth_new.nii.gz", "._synth_000.nii.gz", "notes.txt"):
            shutil.copy(cohort / "imagesTr/synth_000.nii.gz", cohort / "imagesTr" / name)
        expected = (
            f"{meta_path}: imagesTr/synth_new.nii.gz is not listed (1 unlisted case file(s) in all); "
            f"list it, or move it out of {cohort}"
        )
    else:
        edit_dataset_json(cohort, lambda meta: meta.update(numTraining=7))
        expected = f"{meta_path}: numTraining is 7 but 6 cases are listed in 'training'"
    out = tmp_path / "preprocessed"
    code, error = resseg(capsys, "preprocess", "--params", params, "--cohort", cohort, "--out", out)
    assert (code, error) == (3, f"resseg preprocess: error: {expected}\n")
    assert not out.exists()
    if problem == "missing":  # validation reports it per case, among the others
        expected = f"{cohort}: 1 of 8 cases invalid; first: synth_002: {missing}: file not found"
    code, error = resseg(
        capsys, "validate", "--params", params, "--cohort", cohort, "--report", tmp_path / "qc"
    )
    assert code == 3 and error.startswith(f"resseg validate: error: {expected}") and error.count("\n") == 1


def test_a_case_left_out_by_validation_may_miss_its_files(cohort, params, tmp_path, capsys):
    """A missing label is reported per case by import and validation; with skip_invalid the case is
    left out, and preprocessing, given the QC report, goes on without it."""
    (cohort / "labelsTr/synth_002.nii.gz").unlink()
    report = tmp_path / "qc.json"
    source = ("--source", cohort, "--format", "msd", "--out", tmp_path / "imported")
    code, error = resseg(capsys, "import", "--params", params, *source, "--report", report, "--skip-invalid")
    assert (code, error) == (0, "")
    assert "synth_002" not in (tmp_path / "imported/dataset.json").read_text()
    skipping = tmp_path / "skipping.yaml"
    skipping.write_text("validate: {num_workers: 1, skip_invalid: true}\npreprocess: {num_workers: 1}\n")
    assert resseg(capsys, "validate", "--params", skipping, "--cohort", cohort, "--report", report) == (0, "")
    out = tmp_path / "preprocessed"
    code, error = resseg(
        capsys, "preprocess", "--params", skipping, "--cohort", cohort, "--qc", report, "--out", out
    )
    assert (code, error) == (0, "")
    cases = [c["name"] for c in json.loads((out / "plans.json").read_text())["cases"]]
    assert "synth_002" not in cases and len(cases) == 5


def test_case_names_with_spaces_and_other_scripts_through_validate_and_preprocess(
    cohort, params, tmp_path, capsys
):
    names = {"synth_000": "patient ü 1", "synth_001": "胸部"}
    for old, new in names.items():
        for folder in ("imagesTr", "labelsTr"):
            (cohort / folder / f"{old}.nii.gz").rename(cohort / folder / f"{new}.nii.gz")
    text = (cohort / "dataset.json").read_text()
    for old, new in names.items():
        text = text.replace(f"/{old}.nii.gz", f"/{new}.nii.gz")
    (cohort / "dataset.json").write_text(text, encoding="utf-8")

    report, out = tmp_path / "qc.json", tmp_path / "preprocessed"
    assert main(["validate", "--params", str(params), "--cohort", str(cohort), "--report", str(report)]) == 0
    shown = capsys.readouterr().out
    assert all(name in shown for name in names.values())  # the QC table
    assert {row["case"] for row in json.loads(report.read_text())["cases"]} >= set(names.values())
    command = ["preprocess", "--params", params, "--cohort", cohort, "--qc", report, "--out", out]
    assert main([str(arg) for arg in command]) == 0
    plans = json.loads((out / "plans.json").read_text(encoding="utf-8"))
    assert [c["name"] for c in plans["cases"]][:2] == ["patient ü 1", "胸部"]
    for name in names.values():
        image, label = np.load(out / f"{name}_image.npy"), np.load(out / f"{name}_label.npy")
        assert image.shape == label.shape


def test_predict_names_each_bad_scan_and_segments_the_others(random_model, tmp_path):
    """The command as a user runs it, in a process of its own under the C locale (ASCII, where
    Python falls back to UTF-8), over scans named in other scripts and one of each bad kind."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("patient ü 1", "胸部"):
        blob_scan(folder, name, GRID)
    (folder / "empty é.nii.gz").write_bytes(b"")
    (folder / "noise.nii.gz").write_bytes(b"\0" + np.random.default_rng(0).bytes(4095))
    (folder / "photo.nii").write_bytes(PNG_START + bytes(500))
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4, 2, 3), np.int16), GRID), folder / "five.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4, 1, 2), np.int16), GRID), folder / "vector.nii.gz")
    hu = np.full((24, 20, 8), HU_PER_CLASS, np.int16)
    write_series(folder / "tilted", hu, uid="1.2.826.0.1.3680043.2.1125.41")
    shift_slices(folder / "tilted", lambda k: (0, k * SPACING[2] * np.tan(np.radians(15)), 0))
    write_series(folder / "uneven", hu, uid="1.2.826.0.1.3680043.2.1125.42")
    shift_slices(folder / "uneven", lambda k: (0, 0, 0.8 if k >= 4 else 0))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline.cli", "predict", "--input", folder, "--output", out,
               "--model", random_model, "--device", "cpu"]  # fmt: skip
    environment = {**os.environ, "LC_ALL": "C"}
    run = subprocess.run(
        command, capture_output=True, encoding="utf-8", errors="replace", cwd=tmp_path, env=environment
    )
    assert run.returncode == SOME_SCANS_FAILED, run.stderr
    assert "2 scans segmented, 0 already complete, 7 failed" in run.stdout
    assert "failed: empty é, five, noise, photo, tilted, uneven, vector" in run.stdout

    with open(out / "summary.csv", encoding="utf-8", newline="") as handle:
        rows = {row["scan"]: row for row in csv.DictReader(handle)}
    errors = {name: row["error"] for name, row in rows.items() if row["status"] == "error"}
    tilted, uneven = errors.pop("tilted"), errors.pop("uneven")
    assert errors == {
        "empty é": f"{folder / 'empty é.nii.gz'}: empty file (0 bytes)",
        "noise": f"{folder / 'noise.nii.gz'}: not a gzipped NIfTI file (wrong magic number)",
        "photo": f"{folder / 'photo.nii'}: not a NIfTI file (wrong magic number; a PNG image?)",
        "five": f"{folder / 'five.nii.gz'}: 5D image of shape (6, 5, 4, 2, 3); expected 3D, or 4D with the "
        "channels last",
        "vector": f"{folder / 'vector.nii.gz'}: expected a 3D volume, got 2 channels, shape (6, 5, 4, 2)",
    }
    assert tilted.startswith(
        f"{folder / 'tilted'}: series 1.2.826.0.1.3680043.2.1125.41: slices shift sideways by up to 4.69 mm, "
        "a gantry tilt of 15 degrees; resample it onto an untilted grid first"
    )
    assert uneven.startswith(
        f"{folder / 'uneven'}: series 1.2.826.0.1.3680043.2.1125.42: unevenly spaced slices (steps from 2.5 "
        "to 3.3 mm)"
    )
    for name in ("patient ü 1", "胸部"):
        assert rows[name]["status"] == "ok" and rows[name]["output"] == f"{name}.nii.gz"
        assert read_volume(out / f"{name}.nii.gz").shape == read_volume(folder / f"{name}.nii.gz").shape
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        ["patient ü 1.nii.gz", "胸部.nii.gz", "summary.csv", "run.json"]
    )
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


@pytest.fixture
def mount(tmp_path):
    """Mount a file system for one test, unmounted after it; skipped where mounting is not
    allowed (it needs root, which also makes permissions no way to refuse a write)."""
    mounted = []

    def mount_(target, *options):
        target.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", *map(str, options), str(target)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount here: {done.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount_
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], check=True)


@pytest.fixture
def predict_into(tmp_path, random_model):
    """The arguments of ``resseg predict`` segmenting one scan into a given folder."""
    (tmp_path / "in").mkdir()
    blob_scan(tmp_path / "in", "scan", GRID)
    return lambda out: (
        "predict",
        "--input",
        tmp_path / "in",
        "--output",
        out,
        "--model",
        random_model,
        "--device",
        "cpu",
    )


def test_a_read_only_output_folder_is_named_and_left_as_it_was(
    mount, params, predict_into, cohort_dir, preprocessed_dir, tmp_path, capsys
):
    """A real read-only file system: the folder holding earlier outputs, bind-mounted read-only."""
    outputs = tmp_path / "outputs"
    shutil.copytree(preprocessed_dir, outputs / "preprocessed")
    assert resseg(capsys, *predict_into(outputs / "masks"))[0] == 0
    earlier = files_of(outputs)
    mount(outputs, "--bind", "-o", "ro", outputs)

    code, error = resseg(capsys, *predict_into(outputs / "masks"), "--overwrite")
    reason = "cannot write the outputs there (Read-only file system)"
    assert (code, error) == (3, f"resseg predict: error: {outputs / 'masks'}: {reason}\n")
    code, error = resseg(
        capsys, "preprocess", "--params", params, "--cohort", cohort_dir, "--out", outputs / "preprocessed"
    )
    assert (code, error) == (
        3,
        f"resseg preprocess: error: {outputs / 'preprocessed'}: cannot be written (Read-only file system)\n",
    )
    assert files_of(outputs) == earlier


def fill(folder) -> None:
    """Leave no byte free on the file system holding ``folder``."""
    with open(folder / "filler", "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(bytes(1 << 20))


def test_a_full_disk_is_named_and_the_earlier_outputs_kept(
    mount, params, predict_into, cohort_dir, preprocessed_dir, tmp_path, capsys
):
    """A real full disk: a small tmpfs holding earlier outputs, filled to the last byte."""
    disk = mount(tmp_path / "disk", "-t", "tmpfs", "-o", "size=64m", "tmpfs")
    shutil.copytree(preprocessed_dir, disk / "preprocessed")
    assert resseg(capsys, *predict_into(disk / "masks"))[0] == 0
    fill(disk)
    assert os.statvfs(disk).f_bavail == 0
    earlier = files_of(disk)

    code, error = resseg(capsys, *predict_into(disk / "masks"), "--overwrite")
    message = error.splitlines()[-1]  # after the progress bar
    assert code == 3 and message.startswith(f"resseg predict: error: {disk / 'masks'}/")
    assert message.endswith(": cannot be written (No space left on device)")
    code, error = resseg(
        capsys, "preprocess", "--params", params, "--cohort", cohort_dir, "--out", disk / "preprocessed"
    )
    assert (code, error) == (
        3,
        f"resseg preprocess: error: {disk / 'preprocessed'}: cannot be written (No space left on device)\n",
    )
    assert files_of(disk) == earlier  # the temporaries are gone too
