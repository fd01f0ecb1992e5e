import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from pipeline.evaluate.detection import (
    CaseDetections,
    case_ap,
    case_auroc,
    case_operating_point,
    cpm,
    detection_metrics,
    extract_candidates,
    froc,
    lesion_ap,
    lesion_operating_point,
    match_lesions,
    reference_lesions,
    sensitivity_at_fp_rates,
)
from pipeline.evaluate.statistics import Estimate, bootstrap_interval


def line(length: int, *segments: tuple[int, int, float]) -> np.ndarray:
    """A (1, 1, length) volume, value v on each [start, stop) segment: 1-D geometry in 3-D."""
    volume = np.zeros((1, 1, length))
    for start, stop, value in segments:
        volume[0, 0, start:stop] = value
    return volume


def test_fixed_threshold_candidates():
    probability = np.zeros((4, 4, 4))
    probability[0, 0, 0], probability[1, 1, 1] = 0.7, 0.9  # corner neighbours: one 26-connected component
    probability[3, 3, 3] = 0.6
    probability[3, 0, 0] = 0.4  # under the threshold
    candidates = extract_candidates(probability, (1.0, 2.0, 3.0), threshold=0.5)
    assert len(candidates) == 2
    assert candidates.confidences == (0.9, 0.6)
    assert candidates.volumes_mm3 == (12.0, 6.0)
    assert candidates.max_probability == 0.9
    assert set(np.unique(candidates.label_map[probability >= 0.5])) == {1, 2}


def test_min_volume_is_in_cubic_millimetres():
    # 3 mm^3 voxels: the 2-voxel component (6 mm^3) passes 5 mm^3, the 1-voxel one (3 mm^3) does
    # not; counted in voxels, neither would.
    probability = line(6, (0, 2, 0.9), (4, 5, 0.8))
    candidates = extract_candidates(probability, (1.0, 1.0, 3.0), threshold=0.5, min_volume_mm3=5.0)
    assert candidates.confidences == (0.9,) and candidates.volumes_mm3 == (6.0,)
    lesions = reference_lesions(probability > 0, (1.0, 1.0, 3.0), min_volume_mm3=5.0)
    assert lesions.volumes_mm3 == (6.0,)
    assert lesions.label_map.ravel().tolist() == [1, 1, 0, 0, 0, 0]


def test_dynamic_threshold_splits_blobs_joined_by_a_low_bridge():
    probability = line(11, (0, 2, 0.9), (2, 3, 0.6), (3, 5, 0.32), (5, 6, 0.6), (6, 8, 0.85), (8, 11, 0.31))
    merged = extract_candidates(probability, (1.0, 1.0, 1.0), threshold=0.3)
    assert merged.confidences == (0.9,)
    # 0.9 grows at 0.36 over [0, 3); 0.85 at 0.34 over [5, 8); what is left, the bridge and the
    # tail, still peaks above 0.3 but touches a candidate: fringes, not lesions.
    split = extract_candidates(probability, (1.0, 1.0, 1.0), threshold=0.3, dynamic=True)
    assert split.confidences == (0.9, 0.85)
    assert split.volumes_mm3 == (3.0, 3.0)
    assert split.label_map.ravel().tolist() == [1, 1, 1, 0, 0, 2, 2, 2, 0, 0, 0]


def test_dynamic_extraction_drops_small_blobs_and_stops_at_the_threshold():
    probability = line(12, (0, 1, 0.95), (3, 6, 0.7), (8, 10, 0.2))
    candidates = extract_candidates(
        probability, (1.0, 1.0, 2.0), threshold=0.5, dynamic=True, min_volume_mm3=4
    )
    assert candidates.confidences == (0.7,) and candidates.volumes_mm3 == (6.0,)


def test_two_candidates_on_one_lesion_make_one_true_and_one_false_positive():
    lesion = reference_lesions(line(10, (2, 8, 1)), (1.0, 1.0, 1.0))
    # IoU 3/6 and 2/6: the larger overlap wins, whatever the confidences.
    candidates = extract_candidates(line(10, (2, 5, 0.6), (6, 8, 0.9)), (1.0, 1.0, 1.0))
    case = match_lesions(candidates, lesion)
    assert case.matched == (True, False)
    assert case.reference_confidences == (0.6,)


def test_overlap_under_the_iou_threshold_is_a_miss_and_a_false_positive():
    lesion = reference_lesions(line(12, (0, 10, 1)), (1.0, 1.0, 1.0))
    candidates = extract_candidates(line(12, (9, 12, 0.8)), (1.0, 1.0, 1.0))  # IoU 1/12
    case = match_lesions(candidates, lesion)
    assert case.matched == (False,) and case.reference_confidences == (None,)
    assert match_lesions(candidates, lesion, iou_threshold=0.05).matched == (True,)


def test_assignment_beats_greedy_matching():
    # Lesions [0, 4) and [5, 15); candidates A = [1, 10) and B = [12, 15). IoU(A, L1) = 3/10,
    # IoU(A, L2) = 5/14, IoU(B, L2) = 3/10. Greedy takes the largest, A-L2, and leaves B and L1
    # unmatched; the assignment pairs A-L1 and B-L2 (total 0.6 > 0.357): two detections.
    lesions = reference_lesions(line(16, (0, 4, 1), (5, 15, 1)), (1.0, 1.0, 1.0))
    candidates = extract_candidates(line(16, (1, 10, 0.9), (12, 15, 0.8)), (1.0, 1.0, 1.0))
    case = match_lesions(candidates, lesions)
    assert case.matched == (True, True)
    assert case.reference_confidences == (0.9, 0.8)


def test_matching_prefers_more_detections_to_more_overlap():
    # Lesions L1 = [0, 8) and L2 = [9, 10); candidates B = [0, 1) and A = [2, 10).
    # IoU(A, L1) = 6/10, IoU(A, L2) = 1/8, IoU(B, L1) = 1/8. A-L1 alone has the larger total IoU
    # (0.6 > 0.25), but A-L2 with B-L1 detects both lesions: PI-CAI's rule takes the two pairs.
    lesions = reference_lesions(line(12, (0, 8, 1), (9, 10, 1)), (1.0, 1.0, 1.0))
    candidates = extract_candidates(line(12, (0, 1, 0.7), (2, 10, 0.9)), (1.0, 1.0, 1.0))
    case = match_lesions(candidates, lesions)
    assert case.matched == (True, True)
    assert case.reference_confidences == (0.7, 0.9)


def case(
    candidates: list[tuple[float, bool]], n_references: int, max_probability: float = 0.0
) -> CaseDetections:
    """A matched case: (confidence, matched) per candidate; unmatched lesions fill up to n_references."""
    detected = [c for c, hit in candidates if hit]
    return CaseDetections(
        confidences=tuple(c for c, _ in candidates),
        matched=tuple(hit for _, hit in candidates),
        reference_confidences=tuple(detected + [None] * (n_references - len(detected))),
        max_probability=max_probability,
    )


# Three lesions over three scans; ranked candidates: 0.9 TP, 0.8 FP, 0.7 TP, 0.6 FP, 0.4 FP, 0.3 TP.
TOY = [
    case([(0.9, True), (0.6, False), (0.3, True)], 2, max_probability=0.95),
    case([(0.7, True), (0.4, False)], 1, max_probability=0.75),
    case([(0.8, False)], 0, max_probability=0.7),
]


def test_froc_points_and_cpm_by_hand():
    curve = froc(TOY)
    assert curve["threshold"] == [0.9, 0.8, 0.7, 0.6, 0.4, 0.3]
    assert curve["fps_per_scan"] == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 1, 1])
    assert curve["sensitivity"] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 1])
    # Lowest threshold with FPs per scan <= rate: 1/8 and 1/4 -> 0.9 (0 FPs), 1/2 -> 0.7 (1/3),
    # 1 and more -> 0.3 (exactly 1).
    expected = {0.125: 1 / 3, 0.25: 1 / 3, 0.5: 2 / 3, 1.0: 1, 2.0: 1, 4.0: 1, 8.0: 1}
    assert sensitivity_at_fp_rates(TOY) == pytest.approx(expected)
    assert cpm(TOY).value == pytest.approx((1 / 3 + 1 / 3 + 2 / 3 + 4) / 7)


def test_lesion_ap_by_hand_and_against_scikit_learn():
    # Recall steps of 1/3 at precisions 1 (0.9), 2/3 (0.7) and 3/6 (0.3).
    assert lesion_ap(TOY).value == pytest.approx(1 / 3 + 2 / 9 + 1 / 6)
    scores = [0.9, 0.6, 0.3, 0.7, 0.4, 0.8]
    hits = [1, 0, 1, 1, 0, 0]
    assert lesion_ap(TOY).value == pytest.approx(average_precision_score(hits, scores))
    # A fourth lesion that no candidate finds caps recall at 3/4: the same steps, each 3/4 as tall.
    assert lesion_ap([*TOY, case([], 1)]).value == pytest.approx(0.75 * (1 / 3 + 2 / 9 + 1 / 6))


def test_lesion_operating_point_by_hand():
    point = lesion_operating_point(TOY, 0.5)  # kept: 0.9 TP, 0.8 FP, 0.7 TP, 0.6 FP
    assert (point["tp"], point["fp"], point["fn"]) == (2, 2, 1)
    assert point["fp_per_scan"] == pytest.approx(2 / 3)
    assert point["sensitivity"]["value"] == pytest.approx(2 / 3)
    assert point["precision"]["value"] == pytest.approx(0.5)
    assert point["f1"]["value"] == pytest.approx(4 / 7)


def test_case_level_by_hand_and_against_scikit_learn():
    # Case scores 0.9 (lesion), 0.7 (lesion), 0.8 (none): of the two positive-negative pairs only
    # (0.9, 0.8) is concordant.
    assert case_auroc(TOY).value == pytest.approx(0.5)
    assert case_auroc(TOY).value == pytest.approx(roc_auc_score([1, 1, 0], [0.9, 0.7, 0.8]))
    assert case_ap(TOY).value == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    point = case_operating_point(TOY, 0.5)
    assert point["sensitivity"]["value"] == 1.0 and point["specificity"]["value"] == 0.0
    # Scored by the highest probability anywhere: 0.95, 0.75 above 0.7, both pairs concordant.
    assert case_auroc(TOY, "max_probability").value == pytest.approx(1.0)


def test_a_case_without_candidates_scores_zero():
    cases = [case([], 1), case([(0.2, False)], 0)]
    assert case_auroc(cases).value == 0.0
    assert case_operating_point(cases, 0.1)["specificity"]["value"] == 0.0


def test_undefined_metrics_are_none_with_a_reason():
    lesion_free = [case([(0.6, False)], 0), case([], 0)]
    assert cpm(lesion_free) == Estimate(None, "no reference lesion")
    assert lesion_ap(lesion_free) == Estimate(None, "no reference lesion")
    assert case_auroc(lesion_free) == Estimate(None, "no positive case")
    assert case_auroc([case([(0.6, True)], 1)]) == Estimate(None, "no negative case")
    metrics = detection_metrics(lesion_free, n_resamples=20)
    assert metrics["lesion"]["sensitivity"] == {"value": None, "reason": "no reference lesion"}
    assert metrics["lesion"]["f1"] == {"value": 0.0, "reason": None}  # one false positive
    assert metrics["case"]["auroc"]["value"] is None and metrics["case"]["auroc"]["ci95_low"] is None
    assert metrics["case"]["auroc"]["n_resamples_undefined"] == 20
    assert metrics["curves"]["froc"] == {"fps_per_scan": [], "sensitivity": [], "threshold": []}
    assert metrics["curves"]["roc"] == {"fpr": [], "tpr": [], "threshold": []}
    json.dumps(metrics, allow_nan=False)


def test_detection_metrics_report_and_bootstrap():
    metrics = detection_metrics(TOY, operating_threshold=0.5, n_resamples=300, seed=3)
    assert metrics == detection_metrics(TOY, operating_threshold=0.5, n_resamples=300, seed=3)
    assert metrics != detection_metrics(TOY, operating_threshold=0.5, n_resamples=300, seed=4)
    json.dumps(metrics, allow_nan=False)
    assert (metrics["n_cases"], metrics["n_positive_cases"], metrics["n_reference_lesions"]) == (3, 2, 3)
    assert metrics["n_candidates"] == 6
    lesion, case_level = metrics["lesion"], metrics["case"]
    assert lesion["cpm"]["value"] == pytest.approx(16 / 21)
    assert lesion["sensitivity_at_fp_per_scan"]["0.5"] == pytest.approx(2 / 3)
    for estimate in (lesion["cpm"], lesion["ap"], case_level["auroc"]):
        assert estimate["ci95_low"] <= estimate["value"] <= estimate["ci95_high"]
    # Resamples without a lesion-free case (or without a lesion) have no AUROC: skipped, counted.
    assert 0 < case_level["auroc"]["n_resamples_undefined"] < 300
    assert case_level["ap"] == {"value": pytest.approx(5 / 6), "reason": None}
    assert metrics["curves"]["roc"]["threshold"][0] is None  # scikit-learn's inf
    assert metrics["curves"]["case_pr"]["threshold"][-1] is None  # its closing (recall 0) point
    assert metrics["curves"]["lesion_pr"]["precision"] == pytest.approx(
        [1, 1 / 2, 2 / 3, 2 / 4, 2 / 5, 3 / 6]
    )


def test_bootstrap_interval_counts_undefined_resamples():
    assert bootstrap_interval(4, lambda idx: None, n_resamples=10, seed=0).n_undefined == 10
    interval = bootstrap_interval(3, lambda idx: 1.0 if 0 in idx else None, n_resamples=100, seed=0)
    # P(case 0 left out of 3 draws) = (2/3)^3 ~ 0.3.
    assert 10 < interval.n_undefined < 50 and interval.low == interval.high == 1.0


def test_from_volumes_to_metrics():
    spacing = (2.0, 1.0, 1.0)
    probability = np.zeros((6, 8, 8))
    probability[1:3, 1:4, 1:4] = 0.9  # finds lesion 1
    probability[4:6, 6:8, 6:8] = 0.7  # nothing there
    reference = np.zeros((6, 8, 8), bool)
    reference[1:3, 1:3, 1:3] = True
    reference[4:6, 0:2, 0:2] = True  # missed
    detections = match_lesions(
        extract_candidates(probability, spacing), reference_lesions(reference, spacing)
    )
    assert detections.matched == (True, False)
    assert detections.reference_confidences == (0.9, None)
    metrics = detection_metrics([detections], n_resamples=10)
    assert metrics["lesion"]["sensitivity"]["value"] == 0.5
    assert metrics["lesion"]["fp_per_scan"] == 1.0


def test_invalid_parameters_are_refused():
    probability = line(4, (0, 2, 0.9))
    with pytest.raises(ValueError, match="threshold"):
        extract_candidates(probability, (1.0, 1.0, 1.0), threshold=0.0)
    candidates = extract_candidates(probability, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="iou_threshold"):
        match_lesions(candidates, reference_lesions(probability > 0, (1.0, 1.0, 1.0)), iou_threshold=0.0)
    with pytest.raises(ValueError, match="differ"):
        match_lesions(candidates, reference_lesions(np.ones((1, 1, 5)), (1.0, 1.0, 1.0)))
    with pytest.raises(ValueError, match="case_score"):
        case_auroc(TOY, "mean")
