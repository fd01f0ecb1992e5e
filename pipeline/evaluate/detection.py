"""Lesion detection metrics: candidates from a probability map, matching, FROC, CPM, AP, case AUROC.

Per case: ``extract_candidates`` turns the predicted probability of the lesion label into
candidates (26-connected components, each scored by its maximum probability),
``reference_lesions`` turns the reference mask into lesions, and ``match_lesions`` pairs them
one to one. Over a cohort, ``detection_metrics`` reports everything below as JSON-ready values.

Conventions:

- Matching: a candidate and a lesion may pair when their IoU (in voxels) is at least
  ``iou_threshold``; among those pairs, ``scipy.optimize.linear_sum_assignment`` picks the
  one-to-one set with the most pairs and, among those, the largest total IoU (PI-CAI's rule:
  a detection counts more than a better overlap). Matching is done once per case, whatever the confidence
  threshold (as in PI-CAI's picai_eval): at threshold t a lesion counts as detected when its
  matched candidate has confidence >= t; every unmatched candidate at or above t is a false positive
  (picai_eval's ``allow_unmatched_candidates_with_minimal_overlap=False``; its default instead
  ignores an unmatched candidate that overlaps a lesion enough).
- FROC: one point per distinct candidate confidence t, sensitivity = detected lesions / all
  reference lesions, FPs per scan = false positives / number of cases (lesion-free cases included).
- CPM: mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 FPs per scan, where the sensitivity at a
  rate r is that of the lowest threshold whose FPs per scan are <= r (0 if none is). Candidate by
  candidate this is LUNA16's linear interpolation of the FROC staircase; where a true and a false
  positive tie in confidence, LUNA16 interpolates along the diagonal and we keep the achievable point.
- Lesion AP: sum over the FROC thresholds of (recall step) x precision, scikit-learn's
  ``average_precision_score`` definition, but recall counts all reference lesions, so a lesion that
  no candidate matches lowers recall (recall levels never reached add nothing).
- Case level: score = highest candidate confidence (0 without candidates) or, with
  ``case_score="max_probability"``, the highest probability anywhere in the case; a case is positive
  when its reference holds a lesion. AUROC, AP and curves come from scikit-learn.
- A metric that a cohort cannot define (no reference lesion, no positive or no negative case) is
  None with a reason, never NaN; bootstrap resamples on which it is undefined are skipped and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from pipeline.evaluate.statistics import Estimate, estimate_with_interval

FULL_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)  # 26 neighbours
CPM_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
NO_REFERENCE_LESION = "no reference lesion"
CaseScore = Literal["max_candidate", "max_probability"]


@dataclass(frozen=True, eq=False)
class Lesions:
    """Objects of one case as a label map: object i is ``label_map == i + 1``."""

    label_map: np.ndarray
    volumes_mm3: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.volumes_mm3)


@dataclass(frozen=True, eq=False)
class Candidates(Lesions):
    confidences: tuple[float, ...]  # the maximum probability inside each candidate
    max_probability: float  # anywhere in the case: the alternative case score


@dataclass(frozen=True)
class CaseDetections:
    """What the cohort metrics need of one case, once candidates and lesions are matched."""

    confidences: tuple[float, ...]  # per candidate
    matched: tuple[bool, ...]  # per candidate: paired with a reference lesion
    reference_confidences: tuple[float | None, ...]  # per lesion: its candidate's confidence, or None
    max_probability: float

    @property
    def n_references(self) -> int:
        return len(self.reference_confidences)


def extract_candidates(
    probability: np.ndarray,
    spacing: Sequence[float],
    *,
    threshold: float = 0.5,
    dynamic: bool = False,
    dynamic_fraction: float = 0.4,
    min_volume_mm3: float = 0.0,
) -> Candidates:
    """Lesion candidates in one label's probability map; every candidate's confidence is >= threshold.

    Fixed (default): the components of ``probability >= threshold``. Dynamic (PI-CAI's dynamic
    lesion extraction): while the highest remaining probability p is >= threshold, grow its
    component at ``dynamic_fraction * p``, keep it as a candidate, and remove it from the map; a
    component touching an earlier candidate is removed but not kept (PI-CAI's
    ``remove_adjacent_lesion_candidates``). Components under ``min_volume_mm3`` are dropped.
    """
    if not 0 < threshold <= 1 or not 0 < dynamic_fraction <= 1:
        raise ValueError(
            f"threshold ({threshold}) and dynamic_fraction ({dynamic_fraction}) must be in (0, 1]"
        )
    probability = np.asarray(probability)
    voxel_mm3 = float(np.prod(spacing))
    if dynamic:
        label_map, confidences, volumes = _grow_from_peaks(
            probability, threshold, dynamic_fraction, voxel_mm3, min_volume_mm3
        )
    else:
        label_map, volumes = _components(probability >= threshold, voxel_mm3, min_volume_mm3)
        # Over the candidates' voxels only: ndimage.maximum sorts every voxel it is given.
        inside = label_map > 0
        confidences = (
            ndimage.maximum(probability[inside], label_map[inside], index=np.arange(1, len(volumes) + 1))
            if len(volumes)
            else []
        )
    return Candidates(
        label_map,
        tuple(float(v) for v in volumes),
        tuple(float(c) for c in confidences),
        float(probability.max(initial=0.0)),
    )


def reference_lesions(mask: np.ndarray, spacing: Sequence[float], min_volume_mm3: float = 0.0) -> Lesions:
    """The 26-connected components of a reference lesion mask, those under ``min_volume_mm3`` dropped."""
    label_map, volumes = _components(np.asarray(mask).astype(bool), float(np.prod(spacing)), min_volume_mm3)
    return Lesions(label_map, tuple(float(v) for v in volumes))


def match_lesions(candidates: Candidates, references: Lesions, iou_threshold: float = 0.1) -> CaseDetections:
    """One-to-one pairs among those with IoU >= ``iou_threshold``: the most pairs, then the largest
    total IoU."""
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if candidates.label_map.shape != references.label_map.shape:
        raise ValueError(
            f"candidates {candidates.label_map.shape} and lesions {references.label_map.shape} differ"
        )
    iou = _iou_matrix(candidates.label_map, len(candidates), references.label_map, len(references))
    # Each allowed pair is worth 1 + IoU (IoU <= 1): one more pair outweighs any gain in IoU.
    rows, cols = linear_sum_assignment(np.where(iou >= iou_threshold, 1.0 + iou, 0.0), maximize=True)
    pairs = {int(r): int(c) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= iou_threshold}
    matched_to = {c: r for r, c in pairs.items()}
    return CaseDetections(
        confidences=candidates.confidences,
        matched=tuple(i in pairs for i in range(len(candidates))),
        reference_confidences=tuple(
            candidates.confidences[matched_to[j]] if j in matched_to else None for j in range(len(references))
        ),
        max_probability=candidates.max_probability,
    )


def froc(cases: Sequence[CaseDetections]) -> dict[str, list[float]]:
    """FROC points, one per distinct candidate confidence (descending); empty without reference lesions."""
    n_references = sum(c.n_references for c in cases)
    if n_references == 0:
        return {"fps_per_scan": [], "sensitivity": [], "threshold": []}
    thresholds, tp, fp = _ranked_counts(cases)
    return {
        "fps_per_scan": (fp / len(cases)).tolist(),
        "sensitivity": (tp / n_references).tolist(),
        "threshold": thresholds.tolist(),
    }


def sensitivity_at_fp_rates(
    cases: Sequence[CaseDetections], fp_rates: Sequence[float] = CPM_FP_RATES
) -> dict[float, float] | None:
    """Sensitivity at each FPs-per-scan rate (rule in the module docstring); None without lesions."""
    n_references = sum(c.n_references for c in cases)
    if n_references == 0:
        return None
    _, tp, fp = _ranked_counts(cases)
    # As FP counts, not rates: rate x scans is exact in floating point, FPs / scans may not be.
    return {r: float(tp[fp <= r * len(cases)].max(initial=0)) / n_references for r in fp_rates}


def cpm(cases: Sequence[CaseDetections]) -> Estimate:
    """Competition performance metric: mean sensitivity at 1/8 ... 8 FPs per scan."""
    sensitivities = sensitivity_at_fp_rates(cases)
    if sensitivities is None:
        return Estimate(None, NO_REFERENCE_LESION)
    return Estimate(float(np.mean(list(sensitivities.values()))))


def lesion_ap(cases: Sequence[CaseDetections]) -> Estimate:
    """Average precision over candidate confidences, recall over all reference lesions."""
    n_references = sum(c.n_references for c in cases)
    if n_references == 0:
        return Estimate(None, NO_REFERENCE_LESION)
    _, tp, fp = _ranked_counts(cases)
    recall_steps = np.diff(tp, prepend=0) / n_references
    return Estimate(float(np.sum(recall_steps * tp / np.maximum(tp + fp, 1))))


def lesion_pr_curve(cases: Sequence[CaseDetections]) -> dict[str, list[float]]:
    """Recall (over all reference lesions) and precision at each distinct candidate confidence."""
    n_references = sum(c.n_references for c in cases)
    if n_references == 0:
        return {"recall": [], "precision": [], "threshold": []}
    thresholds, tp, fp = _ranked_counts(cases)
    return {
        "recall": (tp / n_references).tolist(),
        "precision": (tp / (tp + fp)).tolist(),
        "threshold": thresholds.tolist(),
    }


def lesion_operating_point(cases: Sequence[CaseDetections], threshold: float) -> dict:
    """Counts and rates of the candidates whose confidence is >= ``threshold``."""
    tp = sum(c is not None and c >= threshold for case in cases for c in case.reference_confidences)
    n_kept = sum(c >= threshold for case in cases for c in case.confidences)
    fp, fn = n_kept - tp, sum(c.n_references for c in cases) - tp
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "fp_per_scan": fp / len(cases),
        "sensitivity": _ratio(tp, tp + fn, NO_REFERENCE_LESION).as_json(),
        "precision": _ratio(tp, tp + fp, "no candidate at or above the threshold").as_json(),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, "no reference lesion and no candidate").as_json(),
    }


def case_score(case: CaseDetections | Candidates, kind: CaseScore = "max_candidate") -> float:
    """How likely the case holds a lesion: its highest candidate confidence (0 without candidates)
    or, for ``"max_probability"``, its highest lesion probability anywhere; of a matched case or,
    before any matching (prediction without a reference), of its candidates."""
    if kind == "max_candidate":
        return max(case.confidences, default=0.0)
    if kind == "max_probability":
        return case.max_probability
    raise ValueError(f"case_score must be 'max_candidate' or 'max_probability', got {kind!r}")


def case_auroc(cases: Sequence[CaseDetections], case_score: CaseScore = "max_candidate") -> Estimate:
    labels, scores = _case_labels_scores(cases, case_score)
    undefined = _one_class_reason(labels)
    return Estimate(None, undefined) if undefined else Estimate(float(roc_auc_score(labels, scores)))


def case_ap(cases: Sequence[CaseDetections], case_score: CaseScore = "max_candidate") -> Estimate:
    labels, scores = _case_labels_scores(cases, case_score)
    if not labels.any():
        return Estimate(None, "no positive case")
    return Estimate(float(average_precision_score(labels, scores)))


def case_operating_point(
    cases: Sequence[CaseDetections], threshold: float, case_score: CaseScore = "max_candidate"
) -> dict:
    """Sensitivity and specificity of calling a case positive when its score is >= ``threshold``."""
    labels, scores = _case_labels_scores(cases, case_score)
    called = scores >= threshold
    return {
        "sensitivity": _ratio(int((called & labels).sum()), int(labels.sum()), "no positive case").as_json(),
        "specificity": _ratio(
            int((~called & ~labels).sum()), int((~labels).sum()), "no negative case"
        ).as_json(),
    }


def case_curves(cases: Sequence[CaseDetections], case_score: CaseScore = "max_candidate") -> dict[str, dict]:
    """scikit-learn's ROC and PR curves as plain lists; a threshold with no score (inf, or the PR
    curve's closing point) is None. A curve is empty when its classes are missing."""
    labels, scores = _case_labels_scores(cases, case_score)
    roc = {"fpr": [], "tpr": [], "threshold": []}
    pr = {"recall": [], "precision": [], "threshold": []}
    if _one_class_reason(labels) is None:
        fpr, tpr, roc_thresholds = roc_curve(labels, scores)
        roc = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "threshold": _finite_or_none(roc_thresholds)}
    if labels.any():
        precision, recall, pr_thresholds = precision_recall_curve(labels, scores)
        pr = {
            "recall": recall.tolist(),
            "precision": precision.tolist(),
            "threshold": _finite_or_none(pr_thresholds) + [None],
        }
    return {"roc": roc, "pr": pr}


def detection_metrics(
    cases: Sequence[CaseDetections],
    *,
    operating_threshold: float = 0.5,
    case_score: CaseScore = "max_candidate",
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Lesion- and case-level metrics of a cohort, with bootstrap intervals for CPM, lesion AP and
    case AUROC; only floats, ints, None, strings, lists and dicts."""
    if not cases:
        raise ValueError("detection metrics need at least one case")
    sensitivities = sensitivity_at_fp_rates(cases) or {}
    curves = case_curves(cases, case_score)

    def with_interval(metric):
        return estimate_with_interval(metric, cases, n_resamples=n_resamples, seed=seed)

    return {
        "n_cases": len(cases),
        "n_positive_cases": sum(c.n_references > 0 for c in cases),
        "n_reference_lesions": sum(c.n_references for c in cases),
        "n_candidates": sum(len(c.confidences) for c in cases),
        "operating_threshold": operating_threshold,
        "lesion": {
            **lesion_operating_point(cases, operating_threshold),
            "cpm": with_interval(cpm),
            "sensitivity_at_fp_per_scan": {str(r): s for r, s in sensitivities.items()},
            "ap": with_interval(lesion_ap),
        },
        "case": {
            "score": case_score,
            **case_operating_point(cases, operating_threshold, case_score),
            "auroc": with_interval(lambda sample: case_auroc(sample, case_score)),
            "ap": case_ap(cases, case_score).as_json(),
        },
        "curves": {
            "froc": froc(cases),
            "lesion_pr": lesion_pr_curve(cases),
            "roc": curves["roc"],
            "case_pr": curves["pr"],
        },
    }


def _components(mask: np.ndarray, voxel_mm3: float, min_volume_mm3: float) -> tuple[np.ndarray, np.ndarray]:
    """26-connected components of at least ``min_volume_mm3``, numbered from 1, and their volumes."""
    label_map, n = ndimage.label(mask, structure=FULL_CONNECTIVITY)
    volumes = np.bincount(label_map.ravel(), minlength=n + 1)[1:] * voxel_mm3
    keep = volumes >= min_volume_mm3
    renumber = np.zeros(n + 1, np.int32)
    renumber[1:][keep] = np.arange(1, keep.sum() + 1)
    return renumber[label_map], volumes[keep]


def _grow_from_peaks(
    probability: np.ndarray, floor: float, fraction: float, voxel_mm3: float, min_volume_mm3: float
) -> tuple[np.ndarray, list[float], list[float]]:
    """Dynamic lesion extraction; see ``extract_candidates``."""
    # A float copy of the input's precision, so that a confidence is the input's value exactly.
    working = probability.astype(np.result_type(probability, np.float32), copy=True)
    label_map = np.zeros(probability.shape, np.int32)
    confidences: list[float] = []
    volumes: list[float] = []
    # Each grown blob lies inside one component of the lowest level any peak can grow at, since
    # peaks are >= floor and the working map only loses voxels: label only that component's box,
    # one voxel wider so that the adjacency test below sees the blob's neighbours.
    coarse, _ = ndimage.label(probability >= fraction * floor, structure=FULL_CONNECTIVITY)
    boxes = ndimage.find_objects(coarse)
    while (peak := float(working.max(initial=0.0))) >= floor:
        seed = np.unravel_index(np.argmax(working), working.shape)
        box = tuple(
            slice(max(s.start - 1, 0), min(s.stop + 1, n))
            for s, n in zip(boxes[coarse[seed] - 1], working.shape, strict=True)
        )
        grown, _ = ndimage.label(working[box] >= fraction * peak, structure=FULL_CONNECTIVITY)
        blob = grown == grown[tuple(i - s.start for i, s in zip(seed, box, strict=True))]
        working[box][blob] = 0.0
        # As in PI-CAI, a blob touching an earlier candidate is that candidate's fringe, left
        # behind under its growing level, not a lesion of its own.
        touches = (ndimage.binary_dilation(blob, FULL_CONNECTIVITY) & (label_map[box] > 0)).any()
        volume = float(blob.sum()) * voxel_mm3
        if volume >= min_volume_mm3 and not touches:
            confidences.append(peak)
            volumes.append(volume)
            label_map[box][blob] = len(confidences)
    return label_map, confidences, volumes


def _iou_matrix(
    candidates: np.ndarray, n_candidates: int, references: np.ndarray, n_references: int
) -> np.ndarray:
    """IoU in voxels of every candidate (rows) with every reference lesion (columns)."""
    joint = candidates.astype(np.int64) * (n_references + 1) + references
    counts = np.bincount(joint.ravel(), minlength=(n_candidates + 1) * (n_references + 1))
    counts = counts.reshape(n_candidates + 1, n_references + 1)
    intersection = counts[1:, 1:]
    union = counts[1:, :].sum(axis=1)[:, None] + counts[:, 1:].sum(axis=0)[None, :] - intersection
    return intersection / np.maximum(union, 1)


def _ranked_counts(cases: Sequence[CaseDetections]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct candidate confidences (descending) and the TP and FP counts at or above each."""
    confidences = np.array([c for case in cases for c in case.confidences], dtype=float)
    matched = np.array([m for case in cases for m in case.matched], dtype=bool)
    order = np.argsort(-confidences, kind="stable")
    confidences, matched = confidences[order], matched[order]
    tp, fp = np.cumsum(matched), np.cumsum(~matched)
    last_of_tie = np.diff(confidences, append=-np.inf) != 0  # tied candidates enter together
    return confidences[last_of_tie], tp[last_of_tie], fp[last_of_tie]


def _case_labels_scores(cases: Sequence[CaseDetections], kind: CaseScore) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([c.n_references > 0 for c in cases], dtype=bool)
    return labels, np.array([case_score(c, kind) for c in cases], dtype=float)


def _one_class_reason(labels: np.ndarray) -> str | None:
    if not labels.any():
        return "no positive case"
    return "no negative case" if labels.all() else None


def _ratio(numerator: int, denominator: int, undefined_reason: str) -> Estimate:
    return Estimate(numerator / denominator) if denominator else Estimate(None, undefined_reason)


def _finite_or_none(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]
