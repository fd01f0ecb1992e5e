"""The evaluate stage end to end: files in, metrics.json, per_case.csv, curves and report out."""

import csv
import json

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.config import DetectionParams, EvaluateParams
from pipeline.errors import InputDataError
from pipeline.evaluate import stage
from pipeline.io import write_probabilities, write_volume


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

    params = EvaluateParams(nsd_tolerance_mm=1.0, bootstrap_resamples=200)
    metrics = stage.run(params, tmp_path / "labels", tmp_path / "pred", tmp_path / "reports", dataset)
    segmentation = metrics["segmentation"]
    organ, lesion = segmentation["dice"]["organ"], segmentation["dice"]["lesion"]
    assert metrics["n_cases"] == 2
    assert organ["mean"] == pytest.approx(0.75) and organ["median"] == pytest.approx(0.75)
    assert organ["ci95_low"] == pytest.approx(0.5) and organ["ci95_high"] == pytest.approx(1.0)
    # Case a's lesion is absent from both: not scored, and counted as such.
    assert lesion["mean"] == 1.0 and lesion["n"] == 1 and lesion["n_excluded"] == 1
    assert segmentation["cases"] == {
        "organ": {"both_present": 2, "both_empty": 0, "reference_empty": 0, "prediction_empty": 0},
        "lesion": {"both_present": 1, "both_empty": 1, "reference_empty": 0, "prediction_empty": 0},
    }
    # Slabs one 2-mm voxel apart, every voxel on a boundary: half of each boundary lies 2 mm
    # from the other (HD95 2 mm), and half within the 1-mm tolerance (NSD 0.5).
    assert segmentation["hd95_mm"]["organ"]["mean"] == pytest.approx((2.0 + 0.0) / 2)
    assert segmentation["nsd"]["organ"]["mean"] == pytest.approx((0.5 + 1.0) / 2)
    assert json.loads((tmp_path / "reports/metrics.json").read_text()) == metrics
    rows = list(csv.DictReader(open(tmp_path / "reports/per_case.csv")))
    assert [r["case"] for r in rows] == ["a", "b"]
    assert rows[0]["status_organ"] == "both_present" and rows[0]["status_lesion"] == "both_empty"
    assert float(rows[0]["dice_organ"]) == pytest.approx(0.5)
    assert float(rows[0]["hd95_mm_organ"]) == pytest.approx(2.0)
    assert float(rows[0]["reference_ml_organ"]) == pytest.approx(32 * 8 / 1000)
    assert (rows[0]["dice_lesion"], rows[0]["nsd_lesion"], rows[0]["hd95_mm_lesion"]) == ("", "", "")


def test_a_lesion_free_case_does_not_lift_the_mean_dice(tmp_path, monkeypatch, capsys):
    """A lesion case of Dice 0.5 and a lesion-free case: the mean lesion Dice stays 0.5 (the old
    convention, Dice 1 when both masks are empty, made it 0.75); the lesion-free case's missed
    organ scores Dice 0 and the worst-case HD95."""
    shape, spacing = (6, 4, 4), 2.0
    affine = np.diag([spacing, spacing, spacing, 1.0])
    reference, prediction = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    reference[0:2], prediction[1:3] = 2, 2  # lesion slabs of 32 voxels sharing 16: Dice 0.5
    reference[4:6] = prediction[4:6] = 1  # the organ, found exactly
    make_pair(tmp_path, "lesion_case", reference, prediction, affine)
    reference, prediction = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    reference[4:6] = 1  # no lesion anywhere; the organ missed
    make_pair(tmp_path, "lesion_free", reference, prediction, affine)
    (tmp_path / "dataset.json").write_text(
        json.dumps({"labels": {"0": "background", "1": "organ", "2": "lesion"}})
    )
    monkeypatch.chdir(tmp_path)  # no params.yaml: the defaults
    folders = ["--labels", "labels", "--predictions", "pred", "--dataset-json", "dataset.json"]
    assert main(["evaluate", *folders, "--out", "out"]) == 0
    assert "mean Dice organ 0.500, lesion 0.500 (1 both-empty case left out)" in capsys.readouterr().out

    text = (tmp_path / "out/metrics.json").read_text()
    metrics = json.loads(text, parse_constant=pytest.fail)  # no NaN nor Infinity
    segmentation = metrics["segmentation"]
    lesion = segmentation["dice"]["lesion"]
    assert (lesion["mean"], lesion["n"], lesion["n_excluded"]) == (0.5, 1, 1)
    assert segmentation["cases"]["lesion"]["both_empty"] == 1
    diagonal = spacing * np.sqrt(6**2 + 4**2 + 4**2)
    organ_hd95 = segmentation["hd95_mm"]["organ"]
    assert organ_hd95["mean"] == pytest.approx((0.0 + diagonal) / 2) and organ_hd95["n_worst_case"] == 1
    assert segmentation["dice"]["organ"]["mean"] == pytest.approx(0.5)
    assert segmentation["cases"]["organ"]["prediction_empty"] == 1

    rows = {r["case"]: r for r in csv.DictReader(open(tmp_path / "out/per_case.csv"))}
    free = rows["lesion_free"]
    assert free["status_lesion"] == "both_empty"
    assert (free["dice_lesion"], free["nsd_lesion"], free["hd95_mm_lesion"]) == ("", "", "")
    assert (free["dice_organ"], free["hd95_mm_organ"]) == ("0.0000", f"{diagonal:.2f}")
    report = (tmp_path / "out/report.html").read_text(encoding="utf-8")
    assert "<td>1 / 1</td>" in report  # the lesion's Dice: 1 case scored, 1 left out


def test_missing_prediction_and_geometry_mismatch_are_named(tmp_path):
    mask = np.zeros((4, 4, 4), np.uint8)
    make_pair(tmp_path, "a", mask, mask, prediction_affine=np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(InputDataError, match="a.nii.gz: geometry differs from its reference"):
        stage.run(EvaluateParams(), tmp_path / "labels", tmp_path / "pred", tmp_path / "reports")
    write_volume(tmp_path / "labels/b.nii.gz", mask, np.eye(4))
    with pytest.raises(InputDataError, match=r"no prediction for 1 case\(s\): b.nii.gz"):
        stage.run(EvaluateParams(), tmp_path / "labels", tmp_path / "pred", tmp_path / "reports")
    assert not (tmp_path / "reports/metrics.json").exists()


LESION = 2
SHAPE = (20, 20, 10)
# Four cases, 1-mm voxels; each blob is a 3x3x3 box given by its corner. Reference lesions and
# lesion-probability blobs (confidence), and whether the predicted mask holds the blob:
#   a: lesions at (2,2,2) and (12,12,5); blob 0.9 on the first (found), 0.7 elsewhere (FP)
#   b: lesion-free; blob 0.3 (FP, below the operating threshold 0.5)
#   c: lesion at (10,10,2); blob 0.6 on it (found)
#   d: lesion-free; blob 0.8 (FP)
COHORT = {
    "a": ([(2, 2, 2), (12, 12, 5)], [((2, 2, 2), 0.9), ((8, 15, 2), 0.7)]),
    "b": ([], [((5, 5, 5), 0.3)]),
    "c": ([(10, 10, 2)], [((10, 10, 2), 0.6)]),
    "d": ([], [((14, 3, 5), 0.8)]),
}


def box(corner):
    return tuple(slice(c, c + 3) for c in corner)


def write_detection_cohort(root):
    for name, (lesions, blobs) in COHORT.items():
        reference, prediction = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
        probabilities = np.zeros((3, *SHAPE), np.float32)
        for corner in lesions:
            reference[box(corner)] = LESION
        for corner, confidence in blobs:
            probabilities[LESION][box(corner)] = confidence
            prediction[box(corner)] = LESION if confidence > 0.5 else 0
        probabilities[0] = 1 - probabilities[LESION]
        write_volume(root / "labels" / f"{name}.nii.gz", reference, np.eye(4))
        write_volume(root / "pred" / f"{name}.nii.gz", prediction, np.eye(4))
        write_probabilities(root / "pred/probabilities" / f"{name}.nii.gz", probabilities, np.eye(4))
        noise = np.random.default_rng(0).normal(0, 10, SHAPE).astype(np.float32)
        write_volume(root / "images" / f"{name}_0000.nii.gz", noise + 100 * reference, np.eye(4))
    (root / "dataset.json").write_text(
        json.dumps({"labels": {"0": "background", "1": "organ", "2": "lesion"}})
    )


def test_detection_metrics_from_probability_maps(tmp_path):
    write_detection_cohort(tmp_path)
    params = EvaluateParams(detection=DetectionParams(lesion_labels=["lesion"]), bootstrap_resamples=50)
    metrics = stage.run(
        params,
        tmp_path / "labels",
        tmp_path / "pred",
        tmp_path / "out",
        tmp_path / "dataset.json",
        probabilities_dir=tmp_path / "pred/probabilities",
        images_dir=tmp_path / "images",
    )
    detection = metrics["detection"]["lesion"]
    lesion, case_level = detection["lesion"], detection["case"]
    # Ranked candidates: 0.9 TP, 0.8 FP, 0.7 FP, 0.6 TP, 0.3 FP; three lesions in four scans.
    assert (lesion["tp"], lesion["fp"], lesion["fn"]) == (2, 2, 1)
    assert lesion["sensitivity"]["value"] == pytest.approx(2 / 3)
    assert lesion["precision"]["value"] == pytest.approx(1 / 2)
    assert lesion["fp_per_scan"] == pytest.approx(0.5)
    # Sensitivity 1/3 at 1/8 and 1/4 FPs per scan (one FP allowed), 2/3 from 1/2 on.
    assert lesion["cpm"]["value"] == pytest.approx((2 * 1 / 3 + 5 * 2 / 3) / 7)
    assert lesion["ap"]["value"] == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 4)
    # Case scores: positives 0.9, 0.6; negatives 0.3, 0.8: three of four pairs ranked right.
    assert case_level["auroc"]["value"] == pytest.approx(0.75)
    assert case_level["auroc"]["ci95_low"] <= 0.75 <= case_level["auroc"]["ci95_high"]
    assert case_level["sensitivity"]["value"] == 1.0 and case_level["specificity"]["value"] == 0.5

    rows = {r["case"]: r for r in csv.DictReader(open(tmp_path / "out/per_case.csv"))}
    counts = ("lesions_lesion", "candidates_lesion", "detected_lesion", "false_positives_lesion")
    assert [tuple(int(rows[c][k]) for k in counts) for c in "abcd"] == [
        (2, 2, 1, 1),
        (0, 1, 0, 0),
        (1, 1, 1, 0),
        (0, 1, 0, 1),
    ]
    assert [float(rows[c]["case_score_lesion"]) for c in "abcd"] == pytest.approx(
        [0.9, 0.3, 0.6, 0.8], abs=1e-4
    )

    froc = list(csv.DictReader(open(tmp_path / "out/curves/lesion/froc.csv")))
    assert [float(p["fps_per_scan"]) for p in froc] == [0, 0.25, 0.5, 0.5, 0.75]
    assert [float(p["sensitivity"]) for p in froc] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    for curve in ("lesion_pr", "roc", "case_pr"):
        assert (tmp_path / f"out/curves/lesion/{curve}.csv").is_file()
    assert json.loads((tmp_path / "out/metrics.json").read_text()) == metrics
    # Four curves of the lesion label, a reliability diagram per label (given probabilities), then
    # QC pictures of the best (c), median (a) and worst (d) case.
    report = (tmp_path / "out/report.html").read_text(encoding="utf-8")
    assert report.count("data:image/png") == 4 + 2 + 3
    assert metrics["calibration"]["temperature"] == 1.0
    assert metrics["calibration"]["ece"]["before"] == metrics["calibration"]["ece"]["after"]
    assert report.index("best: c") < report.index("median: a") < report.index("worst: d")


def test_without_probabilities_the_mask_components_are_candidates(tmp_path):
    write_detection_cohort(tmp_path)
    params = EvaluateParams(detection=DetectionParams(lesion_labels=["lesion"]), bootstrap_resamples=10)
    metrics = stage.run(
        params, tmp_path / "labels", tmp_path / "pred", tmp_path / "out", tmp_path / "dataset.json"
    )
    lesion = metrics["detection"]["lesion"]["lesion"]
    # The masks hold the blobs above 0.5, each now with confidence 1: 0.9 TP, 0.7 FP, 0.6 TP, 0.8 FP.
    assert (lesion["tp"], lesion["fp"], lesion["fn"]) == (2, 2, 1)
    assert metrics["detection"]["lesion"]["n_candidates"] == 4
    rows = list(csv.DictReader(open(tmp_path / "out/per_case.csv")))
    assert [float(r["case_score_lesion"]) for r in rows] == [1.0, 0.0, 1.0, 1.0]
    assert "data:image/png" in (tmp_path / "out/report.html").read_text(
        encoding="utf-8"
    )  # curves; no images, no QC


def test_command_line_options_override_the_parameters(tmp_path, monkeypatch, capsys):
    write_detection_cohort(tmp_path)
    monkeypatch.chdir(tmp_path)  # no params.yaml: the defaults, then the options
    folders = ["--labels", "labels", "--predictions", "pred", "--probabilities", "pred/probabilities"]
    code = main(["evaluate", *folders, "--out", "out", "--dataset-json", "dataset.json",
                 "--lesion-labels", "lesion", "--operating-threshold", "0.65"])  # fmt: skip
    assert code == 0
    assert "lesion CPM 0.571, case AUROC 0.750" in capsys.readouterr().out
    lesion = json.loads((tmp_path / "out/metrics.json").read_text())["detection"]["lesion"]["lesion"]
    assert lesion["sensitivity"]["value"] == pytest.approx(1 / 3)  # 0.6 is now below the threshold

    code = main(
        ["evaluate", *folders, "--out", "out2", "--dataset-json", "dataset.json", "--lesion-labels", "tumour"]
    )
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "resseg evaluate: error: evaluate.detection.lesion_labels: "
        "'tumour' is not a label (labels: organ, lesion)"
    )
    assert not (tmp_path / "out2").exists()
    code = main(["evaluate", *folders, "--out", "out2", "--iou-threshold", "1.5"])
    assert code == 2 and "command line: detection.iou_threshold" in capsys.readouterr().err


def test_missing_probabilities_are_named(tmp_path):
    write_detection_cohort(tmp_path)
    (tmp_path / "pred/probabilities/c.nii.gz").unlink()
    with pytest.raises(InputDataError, match=r"probabilities: no probabilities for 1 case\(s\): c.nii.gz"):
        stage.run(EvaluateParams(), tmp_path / "labels", tmp_path / "pred", tmp_path / "out",
                  probabilities_dir=tmp_path / "pred/probabilities")  # fmt: skip
