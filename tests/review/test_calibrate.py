"""The calibrate stage on out-of-fold predictions whose miscalibration is known: labels drawn
from softmax(z), predictions softmax(3 z), three times over-confident. The temperature found is
3, the calibration error drops, and resseg predict applies it without changing a mask."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.cohort.dataset import load_cohort
from pipeline.config import CalibrateParams, DetectionParams
from pipeline.errors import InputDataError
from pipeline.infer.outputs import PROBABILITIES_FOLDER
from pipeline.io import read_volume, write_probabilities, write_volume
from pipeline.review import calibrate
from pipeline.review.model_calibration import Calibration


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


def write_crossval(cohort, folder, model) -> None:
    """Each training case's label redrawn from random logits z (labels drawn from softmax(z));
    its out-of-fold probabilities ``model(z, label, rng)``, stored as resseg crossval stores
    them (two folds)."""
    rng = np.random.default_rng(0)
    for index, case in enumerate(load_cohort(cohort).training):
        reference = read_volume(case.label)
        logits = rng.normal(0, 1.0, (3, *reference.shape)).astype(np.float32)
        logits[1:] += 0.5  # foreground as often as background, so every class is calibrated
        p = softmax(logits)
        draw = rng.random(reference.shape)
        label = (draw > p[0]).astype(np.uint8) + (draw > p[0] + p[1]).astype(np.uint8)
        write_volume(case.label, label, reference.affine)
        fold = folder / f"fold_{index % 2}" / PROBABILITIES_FOLDER
        fold.mkdir(parents=True, exist_ok=True)
        write_probabilities(fold / f"{case.name}.nii.gz", model(logits, label, rng), reference.affine)


@pytest.fixture
def over_confident_crossval(cohort, tmp_path):
    """softmax(3 z): three times over-confident."""
    write_crossval(cohort, tmp_path / "crossval", lambda logits, label, rng: softmax(3 * logits))
    return tmp_path / "crossval"


def calibrated_but_confidently_wrong_on_one_percent(logits, label, rng):
    """softmax(z), calibrated, but 1% of the voxels given to a wrong class with certainty (a
    boundary drawn one voxel off): the likelihood wants T > 1, which would soften the rest."""
    probabilities = softmax(logits)
    wrong = np.nonzero(rng.random(label.shape) < 0.01)
    probabilities[(slice(None), *wrong)] = 0.0
    probabilities[((label[wrong] + 1) % 3, *wrong)] = 1.0
    return probabilities


def test_a_temperature_that_would_raise_the_calibration_error_is_not_applied(cohort, tmp_path):
    write_crossval(cohort, tmp_path / "crossval", calibrated_but_confidently_wrong_on_one_percent)
    result = calibrate.run(
        CalibrateParams(), DetectionParams(), [tmp_path / "crossval"], cohort, tmp_path / "c.json"
    )
    assert result["fitted_temperature"] > 1.2 and result["temperature"] == 1.0
    for label in ("organ", "lesion"):
        assert result["ece"]["fitted"][label] > 2 * result["ece"]["before"][label]
        assert result["ece"]["after"][label] == result["ece"]["before"][label]


def test_the_temperature_of_a_three_times_over_confident_model_is_three(
    over_confident_crossval, cohort, tmp_path
):
    out = tmp_path / "model" / "calibration.json"
    params, detection = CalibrateParams(target_sensitivity=0.5), DetectionParams(lesion_labels=["lesion"])
    result = calibrate.run(params, detection, [over_confident_crossval], cohort, out)
    assert result["temperature"] == pytest.approx(3.0, rel=0.1)
    assert result["n_cases"] == len(load_cohort(cohort).training)  # both folds found under the parent
    for label in ("organ", "lesion"):
        assert result["ece"]["after"][label] < 0.3 * result["ece"]["before"][label]
    assert result["uncertainty"]["limit"] > max(result["uncertainty"]["out_of_fold"])
    # Noise labels hold many one-voxel "lesions": the threshold meeting the target is stored all the same.
    chosen = result["lesion_thresholds"]["lesion"]
    assert chosen["target_sensitivity"] == 0.5
    loaded = Calibration.load(out.parent)
    expected = {"lesion": chosen["threshold"]} if chosen["threshold"] is not None else {}
    assert loaded == Calibration(result["temperature"], result["uncertainty"]["limit"], expected)


def test_the_operating_threshold_is_read_off_the_out_of_fold_froc():
    """Thresholds descending, sensitivity and false positives per scan rising: the highest
    threshold reaching a sensitivity, the lowest keeping the false positives under a rate."""
    curve = {
        "threshold": [0.9, 0.7, 0.4, 0.2],
        "sensitivity": [0.25, 0.5, 0.75, 1.0],
        "fps_per_scan": [0, 0.5, 1, 3],
    }
    by_sensitivity = calibrate._operating_point(curve, CalibrateParams(target_sensitivity=0.6))
    assert by_sensitivity == {
        "target_sensitivity": 0.6,
        "threshold": 0.4,
        "sensitivity": 0.75,
        "fp_per_scan": 1,
    }
    by_rate = calibrate._operating_point(curve, CalibrateParams(target_fp_per_scan=0.5))
    assert by_rate["threshold"] == 0.7 and by_rate["sensitivity"] == 0.5
    assert calibrate._operating_point(curve, CalibrateParams(target_fp_per_scan=0.0))["threshold"] == 0.9
    unreachable = calibrate._operating_point(
        {k: v[:3] for k, v in curve.items()}, CalibrateParams(target_sensitivity=0.9)
    )
    assert unreachable["threshold"] is None and unreachable["reason"] == "no threshold meets the target"
    empty = {"threshold": [], "sensitivity": [], "fps_per_scan": []}
    assert (
        calibrate._operating_point(empty, CalibrateParams(target_sensitivity=0.9))["reason"]
        == "no reference lesion out of fold"
    )


def test_a_model_without_calibration_has_none_and_a_damaged_one_is_one_line(tmp_path):
    assert Calibration.load(tmp_path) is None
    (tmp_path / "calibration.json").write_text(
        json.dumps({"temperature": -1, "uncertainty": {"limit": None}})
    )
    with pytest.raises(InputDataError, match="temperature is -1.0, expected a positive number"):
        Calibration.load(tmp_path)
    (tmp_path / "calibration.json").write_text("{}")
    with pytest.raises(InputDataError, match="not a calibration written by resseg calibrate"):
        Calibration.load(tmp_path)


def test_a_crossval_folder_without_probabilities_is_named(cohort, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputDataError, match=r"empty: no probabilities/\*\.nii\.gz"):
        calibrate.run(CalibrateParams(), DetectionParams(), [tmp_path / "empty"], cohort, tmp_path / "c.json")


def test_predict_applies_the_temperature_without_changing_the_mask(random_model, cohort_dir):
    from pipeline.evaluate.calibration import apply_temperature
    from pipeline.infer.predictor import Predictor

    scan = read_volume(load_cohort(cohort_dir).test[0].image)
    (random_model / "calibration.json").write_text(
        json.dumps({"temperature": 2.0, "uncertainty": {"limit": 0.5}})
    )
    calibrated = Predictor.from_model_dir(random_model, device="cpu", precision="fp32").predict(scan)
    plain = Predictor.from_model_dir(random_model, calibrate=False, device="cpu", precision="fp32").predict(
        scan
    )
    np.testing.assert_array_equal(calibrated.label, plain.label)
    np.testing.assert_allclose(
        calibrated.probabilities, apply_temperature(plain.probabilities, 2.0), atol=1e-6
    )
    assert not np.allclose(calibrated.probabilities, plain.probabilities, atol=1e-3)
    assert calibrated.uncertainty == plain.uncertainty  # measured before calibration, as its limit was


def test_predict_counts_lesions_at_the_threshold_the_model_chose(random_model, cohort_dir, tmp_path):
    """The same scan twice: with the model's lesion threshold at the candidates' own floor every
    candidate counts; at 1 none does (a candidate's confidence is its highest probability)."""
    import csv

    from pipeline.cli import main

    scans = tmp_path / "scans"
    scans.mkdir()
    scan = read_volume(load_cohort(cohort_dir).test[0].image)
    write_volume(scans / "case.nii.gz", np.asarray(scan.array), scan.affine)
    params = tmp_path / "params.yaml"
    params.write_text("evaluate: {detection: {lesion_labels: [lesion], candidate_threshold: 0.01}}\n")
    counts = {}
    for threshold in (0.01, 1.0):
        calibration = {"temperature": 1.0, "uncertainty": {"limit": None}}
        calibration["lesion_thresholds"] = {"lesion": {"threshold": threshold}}
        (random_model / "calibration.json").write_text(json.dumps(calibration))
        out = tmp_path / f"out_{threshold}"
        args = ["predict", "--params", str(params), "--input", str(scans), "--output", str(out)]
        assert main([*args, "--model", str(random_model)]) == 0
        (row,) = csv.DictReader((out / "summary.csv").open(encoding="utf-8"))
        counts[threshold] = int(row["lesions_lesion"])
    assert counts[0.01] > 0 and counts[1.0] == 0


def test_evaluate_reports_the_calibration_error_before_and_after_the_temperature(
    over_confident_crossval, cohort, tmp_path
):
    """The over-confident probabilities calibrated with T = 3, as predict would write them: the
    evaluate stage undoes T for "before" and finds the error it removed."""
    from pipeline.config import EvaluateParams
    from pipeline.evaluate import stage
    from pipeline.evaluate.calibration import apply_temperature
    from pipeline.io import read_probabilities

    predictions, probabilities = tmp_path / "pred", tmp_path / "pred" / "probabilities"
    probabilities.mkdir(parents=True)
    for path in sorted(over_confident_crossval.glob("fold_*/probabilities/*.nii.gz")):
        affine = read_volume(cohort / "labelsTr" / path.name).affine
        calibrated = apply_temperature(read_probabilities(path), 3.0)
        write_probabilities(probabilities / path.name, calibrated, affine)
        write_volume(predictions / path.name, calibrated.argmax(0).astype(np.uint8), affine)
    metrics = stage.run(
        EvaluateParams(bootstrap_resamples=10),
        cohort / "labelsTr",
        predictions,
        tmp_path / "report",
        cohort / "dataset.json",
        probabilities,
        temperature=3.0,
    )
    ece = metrics["calibration"]["ece"]
    for label in ("organ", "lesion"):
        assert ece["after"][label] < 0.3 * ece["before"][label]
    assert "Calibration" in (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
