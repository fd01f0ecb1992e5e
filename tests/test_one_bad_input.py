"""One bad case is one error row or report line; the rest of the folder or cohort is processed."""

from __future__ import annotations

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.io import read_volume, write_volume
from pipeline.models.model_dir import fold_dirs
from tests.infer.test_batch import run_batch, summary_rows
from tests.infer.test_predictor import blob_scan

GRID = np.diag([2.0, 2.0, 4.0, 1.0])


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_a_250_character_scan_name_gets_its_mask_and_its_row(tmp_path, ending):
    """The name leaves no room for a temporary's mark, nor (a 251-character case name) for the
    record's ending: temporaries and records take a digest of it instead."""
    folder = tmp_path / "in"
    folder.mkdir()
    long_name = "x" * (255 - len(".nii") if ending == ".nii" else 250 - len(ending))
    blob_scan(folder, "short", GRID)
    blob_scan(folder, "long", GRID)
    volume = read_volume(folder / "long.nii.gz")
    write_volume(folder / f"{long_name}{ending}", np.asarray(volume.array), volume.affine)
    (folder / "long.nii.gz").unlink()

    result = run_batch(folder, tmp_path / "out")

    assert result.failed == []
    rows = summary_rows(tmp_path / "out")
    assert rows[long_name]["status"] == "ok" and rows["short"]["status"] == "ok"
    assert (
        read_volume(tmp_path / "out" / f"{long_name}{ending}").shape
        == read_volume(folder / "short.nii.gz").shape
    )
    assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp-" in p.name]


def test_validate_reports_each_image_without_real_voxels_or_geometry_and_checks_the_others(
    cohort, tmp_path, capsys
):
    """Complex and RGB voxels, an sform holding NaN, a singular sform, micron voxels: a report
    line each."""
    bad = {
        "synth_000": ("complex", "voxels are complex64, not real numbers"),
        "synth_001": ("rgb", "not real numbers (an RGB or complex image?)"),
        "synth_002": ("nan sform", "holds NaN or Inf"),
        "synth_003": ("singular sform", "is singular"),
        "synth_004": ("micron voxels", "below 0.01 mm"),
    }
    for case, (kind, _) in bad.items():
        _damage(cohort / "imagesTr" / f"{case}.nii.gz", kind)
    params = tmp_path / "params.yaml"
    params.write_text("validate: {num_workers: 1}\n")
    report = tmp_path / "qc.json"

    code = main(["validate", "--params", str(params), "--cohort", str(cohort), "--report", str(report)])

    err = capsys.readouterr().err
    assert code == 3 and err.count("\n") == 1 and "5 of 8 cases invalid" in err and "Traceback" not in err
    cases = {row["case"]: row for row in json.loads(report.read_text())["cases"]}
    assert len(cases) == 8
    for case, (_, message) in bad.items():
        assert message in cases[case]["errors"][0], case
    assert all(row["status"] != "error" for case, row in cases.items() if case not in bad)


def _damage(path, kind: str) -> None:
    """Rewrite the image at ``path`` as ``kind``, keeping its shape."""
    image = nib.load(path)
    data = np.asarray(image.dataobj).astype(np.float32)
    header = nib.Nifti1Header()
    if kind == "complex":
        data = data.astype(np.complex64)
    elif kind == "rgb":
        data = np.zeros(data.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    header.set_data_dtype(data.dtype)
    header.set_data_shape(data.shape)
    sform = image.affine.copy()
    sform[0, 0] = np.nan if kind == "nan sform" else sform[0, 0]
    sform[2] = 0 if kind == "singular sform" else sform[2]
    sform[:3, :3] *= 1e-6 if kind == "micron voxels" else 1
    # Written through the header: nibabel refuses to build such an image from its affine.
    header["srow_x"], header["srow_y"], header["srow_z"] = sform[:3]
    header["sform_code"], header["qform_code"] = 1, 0
    nib.save(nib.Nifti1Image(data, None, header), path)


def test_a_copy_beside_the_folds_is_not_a_fold(random_model, tmp_path, capsys):
    for copy in ("fold_0_old", "fold_1.bak", "fold_01"):
        shutil.copytree(random_model / "fold_0", random_model / copy)
        (random_model / copy / "model.json").write_text("not a model")
    assert fold_dirs(random_model) == [random_model / "fold_0"]

    (tmp_path / "in").mkdir()
    blob_scan(tmp_path / "in", "scan", GRID)
    code = main(["predict", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                 "--model", str(random_model), "--device", "cpu"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader(open(tmp_path / "out/summary.csv", encoding="utf-8")))
    assert [(row["scan"], row["status"]) for row in rows] == [("scan", "ok")]
