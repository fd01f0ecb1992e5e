"""Temperature scaling and calibration error (pipeline.evaluate.calibration).

Tested: temperature 1 is the identity bit for bit and undo_temperature inverts apply_temperature;
fit_temperature recovers the temperature of a synthetic over- and under-confident model, and
scaling by it lowers the calibration error; the ECE equals a hand-computed value, MONAI's
CalibrationErrorMetric and the sum over reliability_bins, and stays exact past the 2**24 voxels
where MONAI's float32 counts stop; calibration_region's box; the one-line errors on bad input.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from monai.metrics import CalibrationErrorMetric

from pipeline.evaluate.calibration import (
    apply_temperature,
    calibration_errors,
    calibration_region,
    fit_temperature,
    reliability_bins,
    undo_temperature,
)

WHOLE = (slice(None), slice(None), slice(None))


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=0, keepdims=True))
    return exp / exp.sum(axis=0, keepdims=True)


def random_probabilities(seed: int, shape: tuple[int, ...] = (3, 12, 10, 8)) -> np.ndarray:
    return softmax(np.random.default_rng(seed).normal(0.0, 2.0, shape)).astype(np.float32)


def synthetic_model(seed: int, sharpness: float, shape=(100, 100, 20)) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z) for random logits z, 3 classes, and a model that says
    softmax(sharpness * z): over-confident when sharpness > 1, and the temperature that calibrates
    it is ``sharpness``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, (3, *shape))
    cumulative = np.cumsum(softmax(z), axis=0)[:-1]
    label = (rng.random(shape) > cumulative).sum(axis=0).astype(np.uint8)  # inverse CDF
    return softmax(sharpness * z).astype(np.float32), label


def test_temperature_one_changes_nothing():
    probabilities = random_probabilities(0)
    scaled = apply_temperature(probabilities, 1.0)
    assert scaled.dtype == np.float32
    assert np.array_equal(scaled, probabilities)


@pytest.mark.parametrize("temperature", [0.4, 2.5])
def test_undo_temperature_inverts_apply(temperature):
    probabilities = random_probabilities(1)
    scaled = apply_temperature(probabilities, temperature)
    assert scaled.dtype == np.float32
    assert np.allclose(scaled.sum(axis=0), 1.0, atol=1e-6)
    assert not np.allclose(scaled, probabilities, atol=1e-3)
    assert np.allclose(undo_temperature(scaled, temperature), probabilities, atol=1e-6)


def test_apply_temperature_scales_the_logits():
    logits = np.random.default_rng(2).normal(0.0, 2.0, (3, 5, 4, 3))
    scaled = apply_temperature(softmax(logits), 2.0)
    assert np.allclose(scaled, softmax(logits / 2.0), atol=1e-6)


def test_fit_recovers_an_over_confident_model_and_lowers_its_error():
    # Two cases of 100k voxels each, pooled; 200k is under max_voxels, so all are used.
    cases = [synthetic_model(seed, sharpness=3.0) for seed in (10, 11)]
    temperature = fit_temperature(cases)
    assert temperature == pytest.approx(3.0, rel=0.1)
    for probabilities, label in cases:
        before = calibration_errors(probabilities, label)
        after = calibration_errors(apply_temperature(probabilities, temperature), label)
        for value in (1, 2):
            assert after[value] < before[value]
            assert after[value] < 0.02
        assert min(before.values()) > 0.05


def test_fit_recovers_an_under_confident_model_from_a_subsample():
    cases = [synthetic_model(12, sharpness=0.5)]
    temperature = fit_temperature(cases, max_voxels=50_000)
    assert temperature == pytest.approx(0.5, rel=0.1)
    # A seeded sample of 50k of the 200k voxels: the same seed draws the same one, another does not.
    assert fit_temperature(cases, max_voxels=50_000) == temperature
    assert fit_temperature(cases, max_voxels=50_000, seed=1) != temperature


def test_fit_leaves_out_cases_without_foreground():
    # A case with no foreground in either mask would add its whole scan of easy background.
    case = synthetic_model(13, sharpness=2.0, shape=(40, 40, 20))
    empty = np.zeros((3, 30, 30, 30), np.float32)
    empty[0], empty[1:] = 0.9, 0.05
    blank = np.zeros((30, 30, 30), np.uint8)
    assert fit_temperature([case, (empty, blank)]) == fit_temperature([case])
    with pytest.raises(ValueError, match="no voxel"):
        fit_temperature([(empty, blank)])


def hand_example() -> tuple[np.ndarray, np.ndarray]:
    """8 voxels, 2 classes. With 5 bins ([0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1]):
    bin 1: p = .1 (background), .15 (class 1): confidence .125, frequency .5  -> 2 * .375 = .75
    bin 2: p = .3, .35, both background:        confidence .325, frequency 0   -> 2 * .325 = .65
    bin 3: empty
    bin 4: p = .7 (class 1):                    confidence .7, frequency 1     -> 1 * .3   = .3
    bin 5: p = .85, .9, 1 (class 1):            confidence 2.75 / 3, freq. 1   -> 3 * 1/12 = .25
    ECE = (.75 + .65 + .3 + .25) / 8 = 0.24375."""
    foreground = np.array([0.1, 0.15, 0.3, 0.35, 0.7, 0.85, 0.9, 1.0], np.float32).reshape(2, 2, 2)
    label = np.array([0, 1, 0, 0, 1, 1, 1, 1], np.uint8).reshape(2, 2, 2)
    return np.stack([1.0 - foreground, foreground]), label


def test_ece_by_hand_and_its_reliability_bins():
    probabilities, label = hand_example()
    assert calibration_errors(probabilities, label, n_bins=5) == {1: pytest.approx(0.24375, abs=1e-6)}
    bins = reliability_bins(probabilities, label, 1, n_bins=5)
    assert [b["count"] for b in bins] == [2, 2, 0, 1, 3]
    assert [b["low"] for b in bins] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert bins[0]["mean_confidence"] == pytest.approx(0.125)
    assert bins[0]["frequency"] == pytest.approx(0.5)
    assert bins[2]["mean_confidence"] is None and bins[2]["frequency"] is None
    assert bins[4]["mean_confidence"] == pytest.approx(2.75 / 3)
    assert binned_ece(bins) == pytest.approx(0.24375, abs=1e-6)


def binned_ece(bins: list[dict]) -> float:
    total = sum(b["count"] for b in bins)
    return sum(b["count"] / total * abs(b["frequency"] - b["mean_confidence"]) for b in bins if b["count"])


def test_ece_equals_monai_and_the_reliability_bins():
    probabilities = random_probabilities(3)
    label = np.random.default_rng(4).integers(0, 3, probabilities.shape[1:])
    # Some confidences on bin edges k/15, where MONAI's rule puts them in the lower bin.
    probabilities[1, 0, :, 0] = np.arange(10, dtype=np.float32) / 15
    probabilities[0, 0, :, 0] = 1.0 - probabilities[1, 0, :, 0]
    probabilities[2, 0, :, 0] = 0.0
    metric = CalibrationErrorMetric(num_bins=15, include_background=False, metric_reduction="none")
    one_hot = torch.from_numpy(np.stack([label == v for v in range(3)])[None]).float()
    monai = metric(y_pred=torch.from_numpy(probabilities[None]), y=one_hot)[0]
    errors = calibration_errors(probabilities, label, region=WHOLE)
    for value in (1, 2):
        assert errors[value] == pytest.approx(float(monai[value - 1]), abs=1e-6)
        assert binned_ece(reliability_bins(probabilities, label, value, region=WHOLE)) == pytest.approx(
            errors[value], rel=1e-9
        )


def test_ece_stays_exact_past_float32_counts():
    # 17M voxels, every one at probability 0.1, and exactly one in ten of the class: calibrated.
    # MONAI's metric on the whole volume gives 0.0157 here (its float32 count of the bin stops at
    # 2**24, its sum of labels does not), and still 0.0018 fed 2**18 voxels at a time (its float32
    # running sum of 0.1s drifts).
    shape = (260, 256, 256)
    probabilities = np.empty((2, *shape), np.float32)
    probabilities[0], probabilities[1] = 0.9, 0.1
    label = np.zeros(shape, np.uint8)
    label[::10] = 1
    assert calibration_errors(probabilities, label, region=WHOLE)[1] == pytest.approx(0.0, abs=1e-6)
    counts = [b["count"] for b in reliability_bins(probabilities, label, 1, region=WHOLE)]
    assert counts[1] == label.size > 2**24


def test_absent_class_and_empty_region():
    probabilities = random_probabilities(5)
    label = np.zeros(probabilities.shape[1:], np.uint8)
    label[0, 0, 0] = 1
    errors = calibration_errors(probabilities, label, region=WHOLE)
    # Class 2 is in no voxel of the reference: its ECE is the mean probability put on it.
    assert errors[2] == pytest.approx(float(probabilities[2].mean()), abs=1e-6)
    empty = (slice(0, 0), slice(None), slice(None))
    assert calibration_errors(probabilities, label, region=empty) == {1: None, 2: None}


def test_region_is_clipped_at_a_corner():
    label = np.zeros((10, 10, 10), np.uint8)
    prediction = np.zeros_like(label)
    label[0, 1, 9] = 1
    assert calibration_region(label, prediction, margin=2) == (slice(0, 3), slice(0, 4), slice(7, 10))
    prediction[4, 1, 8] = 2  # the union of both masks' foreground
    assert calibration_region(label, prediction, margin=2) == (slice(0, 7), slice(0, 4), slice(6, 10))


def test_region_of_two_empty_masks_is_the_whole_volume():
    label = np.zeros((4, 5, 6), np.uint8)
    assert calibration_region(label, label) == (slice(0, 4), slice(0, 5), slice(0, 6))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature(temperature):
    probabilities = random_probabilities(6)
    with pytest.raises(ValueError, match="temperature must be positive and finite"):
        apply_temperature(probabilities, temperature)
    with pytest.raises(ValueError, match="temperature must be positive and finite"):
        undo_temperature(probabilities, temperature)


def test_mismatched_shapes_are_named():
    probabilities = random_probabilities(7, (3, 4, 4, 4))
    label = np.zeros((4, 4, 5), np.uint8)
    message = re.escape("(3, 4, 4, 4)") + ".*" + re.escape("(4, 4, 5)")
    with pytest.raises(ValueError, match=message):
        fit_temperature([(probabilities, label)])
    with pytest.raises(ValueError, match=message):
        calibration_errors(probabilities, label)
    with pytest.raises(ValueError, match=message):
        reliability_bins(probabilities, label, 1)
