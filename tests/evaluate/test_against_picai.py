"""Our detection metrics against PI-CAI's reference implementation (picai_eval and
report_guided_annotation) on the same seeded random inputs.

Conventions that differ, and how the inputs avoid them (see also pipeline/evaluate/detection.py):

- A candidate that overlaps a lesion enough (IoU >= 0.1) but loses the matching to another
  candidate is a false positive for us; picai_eval's default
  (``allow_unmatched_candidates_with_minimal_overlap=True``) drops it, neither true nor false
  positive. Its ``False`` setting is our rule: a cohort with such candidates is compared under
  ``False``; under the default, a cohort where every candidate overlaps at most one lesion and
  every lesion at most one candidate.
- picai_eval replaces its lowest-threshold FROC point by (the previous sensitivity, infinite FPs):
  meant for the threshold-0 row of missed lesions, it drops a real operating point when no lesion
  is missed. Every cohort here misses a lesion.
- report_guided_annotation's ``min_voxels_detection`` drops components of at most that many voxels
  (``<=``) and, in its ``"dynamic"`` mode, leaves a dropped peak in the map; our ``min_volume_mm3``
  keeps volumes >= it and removes a dropped blob. Compared with no size filter on either side.
- Its dynamic extraction stops below a fixed 0.01 (``max_prob_failsafe_stopping_threshold``): our
  ``threshold`` is set to it.
"""

import contextlib
import io

import numpy as np
import pytest
from scipy import ndimage

from pipeline.evaluate.detection import (
    CPM_FP_RATES,
    FULL_CONNECTIVITY,
    case_auroc,
    extract_candidates,
    lesion_ap,
    match_lesions,
    reference_lesions,
    sensitivity_at_fp_rates,
)

with contextlib.redirect_stdout(io.StringIO()):  # both print a banner on import
    from picai_eval import evaluate
    from report_guided_annotation import extract_lesion_candidates

SHAPE = (24, 24, 16)
SPACING = (0.8, 0.8, 2.5)
FLOOR = 0.01  # below every confidence; and report_guided_annotation's dynamic stopping level


def sphere_or_box(rng: np.random.Generator, center: np.ndarray) -> np.ndarray:
    grid = np.indices(SHAPE)
    half = rng.integers(1, 4, size=3)[:, None, None, None]
    offset = np.abs(grid - center[:, None, None, None])
    if rng.random() < 0.5:
        return (offset <= half).all(axis=0)
    return ((offset / (half + 0.5)) ** 2).sum(axis=0) <= 1


def touches(mask: np.ndarray, other: np.ndarray) -> bool:
    return bool((ndimage.binary_dilation(mask, FULL_CONNECTIVITY) & other).any())


def random_case(rng: np.random.Generator, exclusive: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    """A lesion mask with 0-3 separate lesions, and candidate masks that do not touch one another
    (picai_eval reads a detection map's components as its candidates). Some candidates sit on a
    lesion, shifted and resized, others anywhere. ``exclusive``: a candidate overlaps at most one
    lesion, a lesion at most one candidate."""
    lesions: list[np.ndarray] = []
    for _ in range(rng.integers(0, 4)):
        lesion = sphere_or_box(rng, rng.integers(3, np.array(SHAPE) - 3))
        if not any(touches(lesion, other) for other in lesions):
            lesions.append(lesion)
    reference = np.any(lesions, axis=0) if lesions else np.zeros(SHAPE, bool)
    candidates: list[np.ndarray] = []
    for lesion in lesions:
        for _ in range(1 if exclusive else rng.integers(0, 3)):
            center = np.round(ndimage.center_of_mass(lesion)).astype(int) + rng.integers(-2, 3, size=3)
            candidates.append(sphere_or_box(rng, center))
    candidates += [sphere_or_box(rng, rng.integers(0, SHAPE)) for _ in range(rng.integers(0, 3))]
    kept: list[np.ndarray] = []
    claimed: set[int] = set()  # lesions that a kept candidate overlaps
    for candidate in candidates:
        overlapped = {j for j, lesion in enumerate(lesions) if (candidate & lesion).any()}
        if exclusive and (len(overlapped) > 1 or overlapped & claimed):
            continue
        if candidate.any() and not (kept and touches(candidate, np.any(kept, axis=0))):
            kept.append(candidate)
            claimed |= overlapped
    return reference, kept


def detection_map(rng: np.random.Generator, candidates: list[np.ndarray]) -> np.ndarray:
    """picai_eval's input: each candidate filled with its confidence. Two decimals, so that
    candidates tie across cases and both implementations must rank ties alike."""
    y_det = np.zeros(SHAPE, np.float32)
    for candidate in candidates:
        y_det[candidate] = round(rng.uniform(0.05, 1.0), 2)
    return y_det


def hand_made_cases(exclusive: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    blank = np.zeros(SHAPE, np.float32)
    # Two lesions one voxel apart under a single candidate: IoU 27/63 with each, one is missed.
    pair = np.zeros(SHAPE, bool)
    pair[4:7, 4:7, 4:7] = pair[8:11, 4:7, 4:7] = True
    covering = blank.copy()
    covering[4:11, 4:7, 4:7] = 0.55
    missed = np.zeros(SHAPE, bool)
    missed[10:14, 10:14, 6:9] = True
    cases = [(pair, covering), (missed, blank), (np.zeros(SHAPE, bool), blank)]
    if not exclusive:
        # Two candidates on one lesion, both with IoU >= 0.1: the larger overlap is the true
        # positive, the other a false positive for us (dropped by picai_eval's default).
        lesion = np.zeros(SHAPE, bool)
        lesion[2:10, 12:16, 4:8] = True
        split = blank.copy()
        split[2:7, 12:16, 4:8], split[8:10, 12:16, 4:8] = 0.35, 0.9
        cases.append((lesion, split))
    return cases


def cohort(seed: int, exclusive: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(9):
        reference, candidates = random_case(rng, exclusive)
        cases.append((reference, detection_map(rng, candidates)))
    return cases + hand_made_cases(exclusive)


def ours(cases):
    return [
        match_lesions(
            extract_candidates(y_det, SPACING, threshold=FLOOR), reference_lesions(reference, SPACING)
        )
        for reference, y_det in cases
    ]


def outcomes(detections) -> list[tuple[int, float]]:
    """picai_eval's y_list without the overlaps: (1, confidence) per lesion, 0 when missed, and
    (0, confidence) per false positive."""
    return sorted(
        [(1, 0.0 if c is None else c) for c in detections.reference_confidences]
        + [(0, c) for c, hit in zip(detections.confidences, detections.matched, strict=True) if not hit]
    )


@pytest.mark.parametrize(
    ("seed", "exclusive", "allow_unmatched"), [(0, False, False), (1, False, False), (2, True, True)]
)
def test_lesion_and_case_metrics_match_picai_eval(seed, exclusive, allow_unmatched):
    cases = cohort(seed, exclusive)
    picai = evaluate(
        y_det=[y_det for _, y_det in cases],
        y_true=[reference.astype(np.int32) for reference, _ in cases],
        allow_unmatched_candidates_with_minimal_overlap=allow_unmatched,
        num_parallel_calls=1,
        verbose=0,
    )
    detections = ours(cases)
    for i, case in enumerate(detections):
        assert outcomes(case) == sorted((hit, conf) for hit, conf, _ in picai.lesion_results[i]), f"case {i}"
    assert lesion_ap(detections).value == pytest.approx(picai.AP)
    assert case_auroc(detections, "max_candidate").value == pytest.approx(picai.auroc)
    sensitivities = sensitivity_at_fp_rates(detections)
    for rate in CPM_FP_RATES:
        assert sensitivities[rate] == pytest.approx(picai.lesion_TPR_at_FPR(rate)), f"{rate} FPs per scan"
    # The cohort exercises what it should: hits, misses, false positives, lesion-free cases.
    flat = [outcome for case in detections for outcome in outcomes(case)]
    assert {(hit, conf > 0) for hit, conf in flat} == {(1, True), (1, False), (0, True)}
    assert any(case.n_references == 0 for case in detections)


def gaussian_blobs(rng: np.random.Generator) -> np.ndarray:
    """A smooth probability map: 3-7 anisotropic Gaussians, some close enough to merge."""
    grid = np.indices(SHAPE, dtype=np.float64)
    total = np.zeros(SHAPE)
    for _ in range(rng.integers(3, 8)):
        center = rng.uniform(0, SHAPE)[:, None, None, None]
        sigma = rng.uniform(1.0, 3.0, size=3)[:, None, None, None]
        total += rng.uniform(0.15, 1.0) * np.exp(-0.5 * (((grid - center) / sigma) ** 2).sum(axis=0))
    return np.clip(total, 0, 1).astype(np.float32)


def test_dynamic_extraction_matches_report_guided_annotation():
    rng = np.random.default_rng(3)
    adjacency_mattered = False
    for _ in range(6):
        softmax = gaussian_blobs(rng)
        settings = dict(
            threshold="dynamic",
            dynamic_threshold_factor=2.5,
            num_lesions_to_extract=1000,
            min_voxels_detection=0,
        )
        _, confidences, indexed = extract_lesion_candidates(
            softmax, remove_adjacent_lesion_candidates=True, **settings
        )
        candidates = extract_candidates(softmax, SPACING, threshold=FLOOR, dynamic=True, dynamic_fraction=0.4)
        # Both number candidates in extraction order, i.e. by descending confidence.
        assert candidates.confidences == tuple(c for _, c in confidences)
        np.testing.assert_array_equal(candidates.label_map, indexed)
        _, kept_adjacent, _ = extract_lesion_candidates(
            softmax, remove_adjacent_lesion_candidates=False, **settings
        )
        adjacency_mattered |= len(kept_adjacent) != len(confidences)
    assert adjacency_mattered  # the maps exercise the removal of adjacent candidates


def test_fixed_threshold_extraction_matches_report_guided_annotation():
    rng = np.random.default_rng(4)
    for _ in range(4):
        softmax = gaussian_blobs(rng)
        _, confidences, indexed = extract_lesion_candidates(softmax, threshold=0.3, min_voxels_detection=0)
        candidates = extract_candidates(softmax, SPACING, threshold=0.3)
        assert candidates.confidences == tuple(c for _, c in confidences)
        np.testing.assert_array_equal(candidates.label_map, indexed)
