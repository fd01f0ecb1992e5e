import json

import numpy as np
import pytest

from pipeline.cohort.dataset import load_cohort
from pipeline.io import read_volume
from pipeline.preprocess.fingerprint import SAMPLES_PER_CASE, compute_fingerprint


def test_fingerprint_matches_hand_computed_statistics(cohort_dir):
    cases = load_cohort(cohort_dir).training[:2]
    volumes = [(read_volume(c.image).array, read_volume(c.label).array) for c in cases]
    # Small organs: every foreground voxel is used, so the statistics are exact.
    assert all((label > 0).sum() <= SAMPLES_PER_CASE for _, label in volumes)
    foreground = np.concatenate([image[label > 0].astype(float) for image, label in volumes])
    low, high = np.percentile(foreground, [0.5, 99.5])

    fingerprint = compute_fingerprint(cases, (0.5, 99.5))
    assert fingerprint.foreground_percentiles == {"0.5": pytest.approx(low), "99.5": pytest.approx(high)}
    assert fingerprint.foreground_mean == pytest.approx(np.clip(foreground, low, high).mean())
    assert fingerprint.foreground_std == pytest.approx(np.clip(foreground, low, high).std())
    assert fingerprint.spacings[0] == pytest.approx(list(read_volume(cases[0].image).spacing))


def test_preprocessed_cases_and_plans(preprocessed_dir, cohort_dir):
    plans = json.loads((preprocessed_dir / "plans.json").read_text())
    assert plans["target_spacing"] == [2.0, 2.0, 4.0]
    assert plans["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
    assert plans["intensity"]["clip_low"] < plans["intensity"]["mean"] < plans["intensity"]["clip_high"]
    names = [case.name for case in load_cohort(cohort_dir).training]
    assert [c["name"] for c in plans["cases"]] == names
    for case in plans["cases"]:
        image = np.load(preprocessed_dir / f"{case['name']}_image.npy")
        label = np.load(preprocessed_dir / f"{case['name']}_label.npy")
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert image.shape == label.shape == (1, *case["shape"])
        assert {int(v) for v in np.unique(label)} == {int(v) for v in case["label_voxels"]}
        # Organ voxels are normalised into the clip window.
        organ = image[label == 1]
        assert -4 < organ.mean() < 4


def test_no_half_written_output_on_bad_cohort(tmp_path):
    from pipeline.config import PreprocessParams
    from pipeline.errors import InputDataError
    from pipeline.preprocess import stage

    out = tmp_path / "preprocessed"
    with pytest.raises(InputDataError, match="dataset.json: not found"):
        stage.run(PreprocessParams(), tmp_path / "nowhere", out)
    assert not out.exists()
