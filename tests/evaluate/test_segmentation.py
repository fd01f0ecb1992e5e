import numpy as np
import pytest

from pipeline.evaluate.segmentation import (
    BOTH_EMPTY,
    BOTH_PRESENT,
    PREDICTION_EMPTY,
    REFERENCE_EMPTY,
    LabelScores,
    dice_per_label,
    label_scores,
    scan_diagonal_mm,
    volume_ml,
)
from pipeline.evaluate.statistics import summarize


def test_dice_against_hand_computed_values():
    reference = np.zeros((4, 4, 4), np.uint8)
    prediction = np.zeros((4, 4, 4), np.uint8)
    reference[:2] = 1  # 32 voxels
    prediction[1:3] = 1  # 32 voxels, 16 shared -> 2*16/64
    reference[3, 0, 0] = 2  # label 2: reference only -> 0
    dice = dice_per_label(reference, prediction, [1, 2, 3])
    assert dice[1] == pytest.approx(0.5)
    assert dice[2] == 0.0
    assert dice[3] is None  # absent from both: not scored


def test_prediction_only_is_zero():
    reference = np.zeros((3, 3, 3), np.uint8)
    prediction = reference.copy()
    prediction[0, 0, 0] = 1
    assert dice_per_label(reference, prediction, [1]) == {1: 0.0}


def test_volume_in_millilitres():
    mask = np.ones((10, 10, 5), bool)
    assert volume_ml(mask, (2.0, 2.0, 4.0)) == pytest.approx(500 * 16 / 1000)


def offset_cubes():
    """A 3-voxel cube and the same cube one voxel further along axis 0."""
    reference = np.zeros((7, 6, 6), np.uint8)
    reference[1:4, 1:4, 1:4] = 1
    prediction = np.zeros_like(reference)
    prediction[2:5, 1:4, 1:4] = 1
    return reference, prediction


ANISOTROPIC = (3.0, 1.0, 1.0)


def test_hd95_in_millimetres_on_offset_cubes():
    # Boundary voxels are the 26 of each cube but its centre. From the prediction: the 9 of its
    # far face are one 3 mm step from the reference's face; its voxel at the reference's centre
    # is 1 mm (one in-plane step) from the reference boundary; the other 16 lie on it. The 95th
    # percentile of 16 x 0, 1 x 1, 9 x 3 is 3 mm, and the same holds the other way round.
    reference, prediction = offset_cubes()
    assert label_scores(reference, prediction, [1], ANISOTROPIC, 1.0)[1].hd95_mm == pytest.approx(3.0)
    assert label_scores(reference, prediction, [1], (1.0, 1.0, 1.0), 1.0)[1].hd95_mm == pytest.approx(1.0)
    # A far stray voxel is the Hausdorff distance (sqrt(9^2 + 2^2 + 2^2) mm) but not the 95th
    # percentile: it is 1 of 27 distances, above the interpolated position 0.95 * 26 = 24.7.
    prediction[6, 5, 5] = 1
    assert label_scores(reference, prediction, [1], ANISOTROPIC, 1.0)[1].hd95_mm == pytest.approx(3.0)


def test_nsd_at_a_tolerance_in_millimetres():
    reference, prediction = offset_cubes()
    scores = label_scores(reference, prediction, [1], ANISOTROPIC, 4.0)[1]
    assert (scores.status, scores.nsd) == (BOTH_PRESENT, pytest.approx(1.0))  # 3 mm shift < 4 mm
    assert label_scores(reference, prediction, [1], ANISOTROPIC, 3.0)[1].nsd == pytest.approx(
        1.0
    )  # inclusive
    # At 2 mm, the 9 far-face voxels of each boundary (distance 3 mm) miss: (26 - 9) * 2 / (26 * 2).
    assert label_scores(reference, prediction, [1], ANISOTROPIC, 2.0)[1].nsd == pytest.approx(17 / 26)
    assert label_scores(reference, prediction, [1], ANISOTROPIC, 2.0)[1].dice == pytest.approx(2 * 18 / 54)


def test_nsd_tolerance_per_label():
    cube_reference, cube_prediction = offset_cubes()
    reference, prediction = 2 * cube_reference, 2 * cube_prediction
    reference[:, :, 5] = prediction[:, :, 5] = 1  # label 1 agrees exactly
    scores = label_scores(reference, prediction, [1, 2], ANISOTROPIC, {1: 0.0, 2: 2.0})
    assert scores[1].nsd == pytest.approx(1.0)
    assert scores[2].nsd == pytest.approx(17 / 26)


def test_worst_case_hd95_is_the_scan_diagonal():
    # 7 x 6 x 6 voxels of 3 x 1 x 1 mm: a 21 x 6 x 6 mm box, whose diagonal is sqrt(441 + 36 + 36).
    assert scan_diagonal_mm((7, 6, 6), ANISOTROPIC) == pytest.approx(np.sqrt(513))
    assert scan_diagonal_mm((3, 4), (1.0, 1.0)) == pytest.approx(5.0)


def test_absent_structure_conventions_and_their_summary():
    reference, prediction = offset_cubes()
    empty = np.zeros_like(reference)
    diagonal = np.sqrt(513)  # the 7 x 6 x 6 volume at 3 x 1 x 1 mm (test above)
    cases = [
        label_scores(reference, prediction, [1], ANISOTROPIC, 2.0)[1],
        label_scores(reference, prediction, [2], ANISOTROPIC, 2.0)[2],
        label_scores(reference, empty, [2, 1], ANISOTROPIC, 2.0)[1],
        label_scores(empty, prediction, [1], ANISOTROPIC, 2.0)[1],
    ]
    # Present in both: the offset cubes' Dice, NSD at 2 mm and HD95 (tests above).
    assert cases[0] == LabelScores(BOTH_PRESENT, pytest.approx(2 * 18 / 54), pytest.approx(17 / 26), 3.0)
    assert cases[1:] == [
        LabelScores(BOTH_EMPTY, None, None, None),
        LabelScores(PREDICTION_EMPTY, 0.0, 0.0, pytest.approx(diagonal)),
        LabelScores(REFERENCE_EMPTY, 0.0, 0.0, pytest.approx(diagonal)),
    ]
    # The both-empty case is left out of every mean and counted; the missed and spurious ones count.
    dice = summarize([c.dice for c in cases], n_resamples=10)
    assert (dice["mean"], dice["n"], dice["n_excluded"]) == (pytest.approx(2 / 9), 3, 1)
    nsd = summarize([c.nsd for c in cases], n_resamples=10)
    assert (nsd["mean"], nsd["n"], nsd["n_excluded"]) == (pytest.approx(17 / 78), 3, 1)
    hd95 = summarize([c.hd95_mm for c in cases], n_resamples=10)
    assert (hd95["mean"], hd95["n"], hd95["n_excluded"]) == (pytest.approx((3 + 2 * diagonal) / 3), 3, 1)


def test_summaries_exclude_and_count_undefined_values():
    summary = summarize([1.0, None, 3.0, 2.0, None], n_resamples=200, seed=1)
    assert summary["n"] == 3 and summary["n_excluded"] == 2
    assert summary["mean"] == pytest.approx(2.0) and summary["median"] == pytest.approx(2.0)
    assert summary["std"] == pytest.approx(np.sqrt(2 / 3))
    assert 1.0 <= summary["ci95_low"] <= 2.0 <= summary["ci95_high"] <= 3.0
    assert summarize([1.0, None, 3.0, 2.0, None], n_resamples=200, seed=1) == summary
    assert summarize([None, None]) == {
        "mean": None,
        "median": None,
        "std": None,
        "ci95_low": None,
        "ci95_high": None,
        "n": 0,
        "n_excluded": 2,
    }
    constant = summarize([0.5, 0.5, 0.5], n_resamples=50)
    assert (constant["ci95_low"], constant["ci95_high"]) == (pytest.approx(0.5), pytest.approx(0.5))
