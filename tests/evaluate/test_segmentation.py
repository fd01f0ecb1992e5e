import csv
import json

import numpy as np
import pytest

from pipeline.errors import InputDataError
from pipeline.evaluate import stage
from pipeline.evaluate.segmentation import dice_per_label, volume_ml
from pipeline.io import write_volume


def test_dice_against_hand_computed_values():
    reference = np.zeros((4, 4, 4), np.uint8)
    prediction = np.zeros((4, 4, 4), np.uint8)
    reference[:2] = 1  # 32 voxels
    prediction[1:3] = 1  # 32 voxels, 16 shared -> 2*16/64
    reference[3, 0, 0] = 2  # label 2: reference only -> 0
    dice = dice_per_label(reference, prediction, [1, 2, 3])
    assert dice[1] == pytest.approx(0.5)
    assert dice[2] == 0.0
    assert dice[3] == 1.0  # absent from both: 1 by convention


def test_prediction_only_is_zero():
    reference = np.zeros((3, 3, 3), np.uint8)
    prediction = reference.copy()
    prediction[0, 0, 0] = 1
    assert dice_per_label(reference, prediction, [1]) == {1: 0.0}


def test_volume_in_millilitres():
    mask = np.ones((10, 10, 5), bool)
    assert volume_ml(mask, (2.0, 2.0, 4.0)) == pytest.approx(500 * 16 / 1000)


def make_pair(root, name, reference, prediction, affine=None, prediction_affine=None):
    affine = np.eye(4) if affine is None else affine
    write_volume(root / "labels" / f"{name}.nii.gz", reference, affine)
    write_volume(
        root / "pred" / f"{name}.nii.gz",
        prediction,
        affine if prediction_affine is None else prediction_affine,
    )


def test_stage_writes_metrics_and_per_case_rows(tmp_path):
    a_ref = np.zeros((4, 4, 4), np.uint8)
    a_ref[:2] = 1
    a_pred = np.zeros_like(a_ref)
    a_pred[1:3] = 1
    b = np.zeros((4, 4, 4), np.uint8)
    b[0, 0, :2] = 1
    b[3, 3, 3] = 2
    make_pair(tmp_path, "a", a_ref, a_pred, affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    make_pair(tmp_path, "b", b, b)
    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps({"labels": {"0": "background", "1": "organ", "2": "lesion"}}))

    metrics = stage.run(tmp_path / "labels", tmp_path / "pred", tmp_path / "reports", dataset)
    organ, lesion = metrics["segmentation"]["dice"]["organ"], metrics["segmentation"]["dice"]["lesion"]
    assert metrics["n_cases"] == 2
    assert organ["mean"] == pytest.approx(0.75) and organ["median"] == pytest.approx(0.75)
    assert lesion == {"mean": 1.0, "median": 1.0, "std": 0.0, "n_cases": 2, "n_empty_reference": 1}
    assert json.loads((tmp_path / "reports/metrics.json").read_text()) == metrics
    rows = list(csv.DictReader(open(tmp_path / "reports/per_case.csv")))
    assert [r["case"] for r in rows] == ["a", "b"]
    assert float(rows[0]["dice_organ"]) == pytest.approx(0.5)
    assert float(rows[0]["reference_ml_organ"]) == pytest.approx(32 * 8 / 1000)


def test_missing_prediction_and_geometry_mismatch_are_named(tmp_path):
    mask = np.zeros((4, 4, 4), np.uint8)
    make_pair(tmp_path, "a", mask, mask, prediction_affine=np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(InputDataError, match="a.nii.gz: geometry differs from its reference"):
        stage.run(tmp_path / "labels", tmp_path / "pred", tmp_path / "reports")
    write_volume(tmp_path / "labels/b.nii.gz", mask, np.eye(4))
    with pytest.raises(InputDataError, match=r"no prediction for 1 case\(s\): b.nii.gz"):
        stage.run(tmp_path / "labels", tmp_path / "pred", tmp_path / "reports")
    assert not (tmp_path / "reports/metrics.json").exists()
