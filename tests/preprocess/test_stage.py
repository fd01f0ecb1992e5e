import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline.cohort.dataset import load_cohort
from pipeline.config import PreprocessParams
from pipeline.errors import InputDataError
from pipeline.io import read_volume
from pipeline.preprocess import stage
from pipeline.preprocess.fingerprint import SAMPLES_PER_CASE, combine, fingerprint_case


def test_fingerprint_matches_hand_computed_statistics(cohort_dir):
    cohort = load_cohort(cohort_dir)
    cases = cohort.training[:2]
    volumes = [(read_volume(c.image).array, read_volume(c.label).array) for c in cases]
    # Small organs: every foreground voxel is used, so the statistics are exact.
    assert all((label > 0).sum() <= SAMPLES_PER_CASE for _, label in volumes)
    foreground = np.concatenate([image[label > 0].astype(float) for image, label in volumes])
    low, high = np.percentile(foreground, [0.5, 99.5])

    fingerprint = combine(
        [fingerprint_case(case, 1, cohort.labels, seed=i) for i, case in enumerate(cases)], (0.5, 99.5)
    )
    (stats,) = fingerprint.channels
    assert stats.percentile_low == pytest.approx(low) and stats.percentile_high == pytest.approx(high)
    assert stats.mean == pytest.approx(np.clip(foreground, low, high).mean())
    assert stats.std == pytest.approx(np.clip(foreground, low, high).std())
    np.testing.assert_allclose(fingerprint.spacings[0], read_volume(cases[0].image).spacing)
    # The synthetic CT has air (-1000, non-zero) everywhere: the non-zero box is the whole image.
    np.testing.assert_array_equal(fingerprint.shapes[0], read_volume(cases[0].image).shape)


def test_preprocessed_cases_and_plans(preprocessed_dir, cohort_dir):
    plans = json.loads((preprocessed_dir / "plans.json").read_text())
    median_spacing = np.median(
        [read_volume(c.image).spacing for c in load_cohort(cohort_dir).training], axis=0
    )
    np.testing.assert_allclose(plans["target_spacing"], median_spacing)
    assert plans["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
    (norm,) = plans["normalization"]
    assert norm["scheme"] == "ct" and norm["clip_low"] < norm["mean"] < norm["clip_high"]
    names = [case.name for case in load_cohort(cohort_dir).training]
    assert [c["name"] for c in plans["cases"]] == names
    for case in plans["cases"]:
        image = np.load(preprocessed_dir / f"{case['name']}_image.npy")
        label = np.load(preprocessed_dir / f"{case['name']}_label.npy")
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert image.shape == label.shape == (1, *case["shape"])
        assert {int(v) for v in np.unique(label)} == {int(v) for v in case["label_voxels"]}
        # Resampling keeps the field of view: shape x spacing is the original extent.
        extent = np.array(case["shape"]) * np.array(case["spacing"])
        original = np.array(case["original_shape"]) * np.linalg.norm(
            np.array(case["original_affine"])[:3, :3], axis=0
        )
        np.testing.assert_allclose(extent, original, rtol=1e-3)
        assert case["original_orientation"] in {"RAS", "LAS", "RPS", "LPS"}  # synth flips x and y only
        assert -4 < image[label == 1].mean() < 4  # organ voxels normalised into the clip window


def test_workers_give_identical_output(cohort_dir, preprocessed_dir, tmp_path):
    stage.run(PreprocessParams(num_workers=1), cohort_dir, tmp_path / "serial")
    for path in preprocessed_dir.glob("*.npy"):
        np.testing.assert_array_equal(np.load(path), np.load(tmp_path / "serial" / path.name))
    serial = json.loads((tmp_path / "serial/plans.json").read_text())
    assert serial == json.loads((preprocessed_dir / "plans.json").read_text())


def test_invalid_cases_listed_in_the_qc_report_are_left_out(cohort_dir, tmp_path):
    report = {"cases": [{"case": "synth_001", "errors": ["label shape differs"]}]}
    (tmp_path / "qc.json").write_text(json.dumps(report))
    stage.run(PreprocessParams(num_workers=1), cohort_dir, tmp_path / "out", qc_report=tmp_path / "qc.json")
    names = [c["name"] for c in json.loads((tmp_path / "out/plans.json").read_text())["cases"]]
    assert "synth_001" not in names and len(names) == 5


def test_no_half_written_output_on_bad_cohort(tmp_path):
    out = tmp_path / "preprocessed"
    with pytest.raises(InputDataError, match="dataset.json: not found"):
        stage.run(PreprocessParams(), tmp_path / "nowhere", out)
    assert not out.exists()


def test_a_killed_run_keeps_the_earlier_outputs_and_the_rerun_completes(
    cohort_dir, preprocessed_dir, tmp_path
):
    """SIGKILL while the cases are written: the earlier outputs stay whole, the rerun removes the
    killed run's temporaries and ends with outputs equal to an uninterrupted run's."""
    out = tmp_path / "preprocessed"
    shutil.copytree(preprocessed_dir, out)
    (out / "from-an-earlier-run").touch()
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "params.yaml").write_text("preprocess: {num_workers: 1}\n")
    command = [sys.executable, "-m", "pipeline.cli", "preprocess", "--params", str(tmp_path / "params.yaml"),
               "--cohort", str(cohort_dir), "--out", str(out)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not list(tmp_path.glob(".preprocessed.tmp-*/*.npy")) and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    (partial,) = tmp_path.glob(".preprocessed.tmp-*")
    assert not (partial / "plans.json").exists()  # killed half-way
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier

    subprocess.run(command, check=True, capture_output=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "preprocessed"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in preprocessed_dir.iterdir())
    for path in preprocessed_dir.glob("*.npy"):
        np.testing.assert_array_equal(np.load(out / path.name), np.load(path))
    assert json.loads((out / "plans.json").read_text()) == json.loads(
        (preprocessed_dir / "plans.json").read_text()
    )
