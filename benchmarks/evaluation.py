"""Evaluation speed and memory on one large case: resseg's metrics against PI-CAI's code, in one run.

    python benchmarks/evaluation.py [--quick] [--shape X Y Z] [--repeats N] [--budget SECONDS]
                                    [--rows PATH]

The case is synthetic, 512x512x300 voxels at 0.8x0.8x2.5 mm by default: an ellipsoid organ
(label 1) holding eight spherical lesions (label 2); a prediction that shifts and rescales each of
them, misses two lesions and adds three false ones; and a smooth float32 lesion probability map,
a truncated Gaussian on each predicted lesion (true and false). The organ and lesions are the same
in millimetres whatever --shape: a smaller case only has less background.

Per step: the median seconds of up to --repeats runs (fewer once the step has taken --budget
seconds, at least one), with the fastest and slowest; and the peak resident memory of its first
run above what was resident before it (Linux's VmHWM, reset through /proc/self/clear_refs), so that
every allocation counts, numpy's, torch's and scipy's alike. resseg's functions run once on the
case before they are timed (MONAI's first call is slower); PI-CAI's are pure numpy and scipy.

resseg's steps (pipeline/evaluate): segmentation metrics (label_scores: Dice, NSD and HD95 of both
labels); lesion candidates at a fixed threshold and by dynamic extraction; reference lesions and
matching; and one case evaluated from a PI-CAI detection map (each dynamic candidate filled with its
confidence). The peers, from PI-CAI's picai_eval (a dev dependency): report_guided_annotation's
extraction with the same settings, checked to find the same candidates, and picai_eval's
evaluate_case on the same detection map and lesion mask, checked to detect the same lesions.
--quick: a 224x224x64 case, at most 10 s per step, about a minute on two cores. --rows writes
each step's seconds against its PI-CAI peer where it has one, for benchmarks/suite.py
(benchmarks/rows.py).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np
from preprocess_vs_nnunet import fill_defaults
from rows import measured, write_rows

from pipeline.evaluate.detection import Candidates, extract_candidates, match_lesions, reference_lesions
from pipeline.evaluate.segmentation import label_scores

with contextlib.redirect_stdout(io.StringIO()):  # both print a banner on import
    from picai_eval.eval import evaluate_case
    from report_guided_annotation.extract_lesion_candidates import (
        extract_lesion_candidates_dynamic,
        extract_lesion_candidates_static,
    )

SPACING = (0.8, 0.8, 2.5)
ORGAN, LESION = 1, 2
THRESHOLD = 0.1  # params.yaml's candidate_threshold; also the dynamic extraction's floor
DYNAMIC_FRACTION = 0.4  # PI-CAI's dynamic_threshold_factor 2.5
NSD_TOLERANCE_MM = 2.0
PROC_STATUS = Path("/proc/self/status")


def main() -> None:
    args = parse_args()
    case = make_case(tuple(args.shape))
    reference, prediction, probability = case["reference"], case["prediction"], case["probability"]
    lesion_mask = reference == LESION
    lesions = reference_lesions(lesion_mask, SPACING)
    # Also the warm-up of resseg's functions (MONAI's first call especially).
    scores = label_scores(reference, prediction, [ORGAN, LESION], SPACING, NSD_TOLERANCE_MM)
    fixed = extract_candidates(probability, SPACING, threshold=THRESHOLD)
    dynamic = extract_candidates(
        probability, SPACING, threshold=THRESHOLD, dynamic=True, dynamic_fraction=DYNAMIC_FRACTION
    )
    # PI-CAI's input: each (dynamic) candidate filled with its confidence.
    detection_map = np.array([0.0, *dynamic.confidences], np.float32)[dynamic.label_map]
    lowest = min(dynamic.confidences)
    detected = sum(c is not None for c in match_lesions(dynamic, lesions).reference_confidences)

    steps = [
        (
            "segmentation metrics, organ + lesion (Dice, NSD, HD95)",
            "label_scores",
            lambda: label_scores(reference, prediction, [ORGAN, LESION], SPACING, NSD_TOLERANCE_MM),
            None,
        ),
        (
            f"lesion candidates, threshold {THRESHOLD}",
            "extract_candidates",
            lambda: extract_candidates(probability, SPACING, threshold=THRESHOLD),
            ("report_guided_annotation static", lambda: rga_static(probability), same_candidates(fixed)),
        ),
        (
            f"lesion candidates, dynamic ({DYNAMIC_FRACTION} x peak, floor {THRESHOLD})",
            "extract_candidates(dynamic=True)",
            lambda: extract_candidates(
                probability, SPACING, threshold=THRESHOLD, dynamic=True, dynamic_fraction=DYNAMIC_FRACTION
            ),
            ("report_guided_annotation dynamic", lambda: rga_dynamic(probability), same_candidates(dynamic)),
        ),
        (
            "reference lesions + matching",
            "reference_lesions + match_lesions",
            lambda: match_lesions(dynamic, reference_lesions(lesion_mask, SPACING)),
            None,
        ),
        (
            "one case from its detection map (candidates, lesions, matching)",
            "the three above",
            lambda: match_lesions(
                extract_candidates(detection_map, SPACING, threshold=lowest),
                reference_lesions(lesion_mask, SPACING),
            ),
            (
                "picai_eval evaluate_case",
                lambda: evaluate_case(detection_map, lesion_mask),
                lambda result: same_count(detected, sum(hit and c > 0 for hit, c, _ in result[0])),
            ),
        ),
    ]

    size = f"{'x'.join(map(str, args.shape))} voxels at {'x'.join(map(str, SPACING))} mm"
    print(
        f"case: {size}; "
        f"Dice organ {scores[ORGAN].dice:.2f}, lesion {scores[LESION].dice:.2f}; {len(lesions)} reference "
        f"lesions, {len(fixed)} candidates at {THRESHOLD}, {len(dynamic)} dynamic, {detected} detected; "
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores); "
        f"picai_eval {version('picai_eval')}, "
        f"report_guided_annotation {version('report_guided_annotation')}; "
        f"median of up to {args.repeats} runs, fewer once a step has taken {args.budget:g} s\n"
    )
    print(
        "| step | resseg | seconds (min-max) x runs | peak MiB | PI-CAI | seconds (min-max) x runs "
        "| peak MiB | PI-CAI / resseg time |"
    )
    print("|---|---|---:|---:|---|---:|---:|---:|")
    rows = []
    for step, ours_name, ours, peer in steps:
        mine = measure(ours, args.repeats, args.budget)
        cells = [step, f"`{ours_name}`", timing(mine), mebibytes(mine["peak_bytes"])]
        theirs = peer_name = None
        if peer is None:
            cells += ["-", "-", "-", "-"]
        else:
            peer_name, work, check = peer
            theirs = measure(work, args.repeats, args.budget)
            check(theirs["result"])
            ratio = statistics.median(theirs["seconds"]) / statistics.median(mine["seconds"])
            cells += [peer_name, timing(theirs), mebibytes(theirs["peak_bytes"]), f"{ratio:.1f}"]
        print("| " + " | ".join(cells) + " |", flush=True)
        rows.append(
            measured(
                "evaluation",
                f"s, {step}",
                mine["seconds"],
                theirs["seconds"] if theirs else None,
                against=f"PI-CAI ({peer_name})" if theirs else None,
                resseg_peak_gib=gibibytes(mine["peak_bytes"]),
                reference_peak_gib=gibibytes(theirs["peak_bytes"]) if theirs else None,
                note=f"one case of {size}",
            )
        )
    if args.rows:
        write_rows(args.rows, rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shape", type=int, nargs=3, help="voxels; default 512 512 300 (--quick: 224 224 64)"
    )
    parser.add_argument("--repeats", type=int, help="timed runs per step; default 5 (--quick: 3)")
    parser.add_argument(
        "--budget", type=float, help="seconds per step after which no run starts; default 300 (--quick: 10)"
    )
    parser.add_argument("--quick", action="store_true", help="a smaller case, fewer runs")
    parser.add_argument("--rows", type=Path, help="also write the suite's rows here (benchmarks/rows.py)")
    args = parser.parse_args()
    return fill_defaults(
        args,
        quick={"shape": [224, 224, 64], "repeats": 3, "budget": 10.0},
        full={"shape": [512, 512, 300], "repeats": 5, "budget": 300.0},
    )


def make_case(shape: tuple[int, int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Reference and predicted label maps and a lesion probability map; see the module docstring."""
    rng = np.random.default_rng(seed)
    reference, prediction = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    probability = np.zeros(shape, np.float32)
    # The same organ and lesions in millimetres whatever the shape: a larger case adds background.
    organ_center, organ_axes = np.array(shape) * SPACING / 2, np.array([80.0, 60.0, 70.0])
    paint(reference, organ_center, organ_axes, ORGAN)
    paint(prediction, organ_center + rng.normal(0, 2, 3), organ_axes * rng.uniform(0.95, 1.05, 3), ORGAN)
    lesions: list[tuple[np.ndarray, float]] = []
    while len(lesions) < 11:  # eight true lesions, then three false ones (prediction only)
        center = organ_center + rng.uniform(-0.6, 0.6, 3) * organ_axes
        radius = rng.uniform(4, 12)
        if any(np.linalg.norm(center - c) < radius + r + 5 for c, r in lesions):
            continue  # keep lesions apart: eight separate components
        lesions.append((center, radius))
        if len(lesions) <= 8:
            paint(reference, center, np.full(3, radius), LESION)
        if len(lesions) in (7, 8):
            continue  # missed
        center, radius = center + rng.normal(0, 1.5, 3), radius * rng.uniform(0.8, 1.2)
        paint(prediction, center, np.full(3, radius), LESION)
        # A Gaussian of standard deviation radius / 1.5, cut at 3 deviations where it is under
        # 1.2% of its peak: below any level the extraction grows at, so the cut never shows.
        confidence = rng.uniform(0.5, 0.95) if len(lesions) <= 8 else rng.uniform(0.15, 0.6)
        box, distance2 = ellipsoid(shape, center, np.full(3, 2 * radius))
        blob = np.where(distance2 <= 1, confidence * np.exp(-4.5 * distance2), 0).astype(np.float32)
        np.maximum(probability[box], blob, out=probability[box])
    return {"reference": reference, "prediction": prediction, "probability": probability}


def ellipsoid(shape, center_mm: np.ndarray, semi_axes_mm: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    """The ellipsoid's bounding box in the volume, and each box voxel's squared normalised distance
    from its centre (<= 1 inside): computed on the box only, not the whole volume."""
    low = np.clip(np.floor((center_mm - semi_axes_mm) / SPACING), 0, shape).astype(int)
    high = np.clip(np.ceil((center_mm + semi_axes_mm) / SPACING) + 1, 0, shape).astype(int)
    box = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
    grid = np.ogrid[box]
    distance2 = sum(
        ((g * s - c) / a) ** 2 for g, s, c, a in zip(grid, SPACING, center_mm, semi_axes_mm, strict=True)
    )
    return box, distance2


def paint(volume: np.ndarray, center_mm: np.ndarray, semi_axes_mm: np.ndarray, value: int) -> None:
    box, distance2 = ellipsoid(volume.shape, center_mm, semi_axes_mm)
    volume[box][distance2 <= 1] = value


def rga_static(probability: np.ndarray):
    """report_guided_annotation's extraction at a fixed threshold, with resseg's settings: no size
    filter, confidences not rounded."""
    return extract_lesion_candidates_static(
        probability, THRESHOLD, min_voxels_detection=0, max_prob_round_decimals=None
    )


def rga_dynamic(probability: np.ndarray):
    """Its dynamic extraction with resseg's settings: no size filter, no cap on the number of
    candidates, the same floor (its extract_lesion_candidates fixes it at 0.01)."""
    return extract_lesion_candidates_dynamic(
        probability,
        min_voxels_detection=0,
        num_lesions_to_extract=10**6,
        dynamic_threshold_factor=1 / DYNAMIC_FRACTION,
        max_prob_failsafe_stopping_threshold=THRESHOLD,
    )


def same_candidates(ours: Candidates) -> Callable[[tuple], None]:
    """A check that a peer's extraction found our candidates: the peers must do the same work."""

    def check(result: tuple) -> None:
        _, confidences, index = result
        if ours.confidences != tuple(c for _, c in confidences) or not np.array_equal(ours.label_map, index):
            raise SystemExit("report_guided_annotation found other candidates than resseg")

    return check


def same_count(ours: int, theirs: int) -> None:
    if ours != theirs:
        raise SystemExit(f"picai_eval detected {theirs} lesions, resseg {ours}")


def measure(work: Callable[[], object], repeats: int, budget_s: float) -> dict:
    """Seconds of up to ``repeats`` runs, fewer once ``budget_s`` is spent; the peak resident memory
    of the first run above what was resident before it; and the last run's result."""
    peak_bytes = None
    track_memory = PROC_STATUS.exists()
    if track_memory:
        release_free_memory()
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
        before = proc_status_bytes("VmRSS")
    seconds: list[float] = []
    while len(seconds) < repeats and sum(seconds) < budget_s:
        start = time.perf_counter()
        result = work()
        seconds.append(time.perf_counter() - start)
        if track_memory and len(seconds) == 1:
            peak_bytes = proc_status_bytes("VmHWM") - before
    return {"seconds": seconds, "peak_bytes": peak_bytes, "result": result}


def release_free_memory() -> None:
    """Hand memory that malloc holds free back to the system, so that a step reusing it shows in
    the resident size: glibc keeps freed blocks under its mmap threshold, which it raises (up to
    32 MiB) each time a larger block is freed."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the peak may read low
        ctypes.CDLL(None).malloc_trim(0)


def proc_status_bytes(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", PROC_STATUS.read_text(), re.MULTILINE).group(1)) * 1024


def timing(result: dict) -> str:
    seconds = result["seconds"]
    return f"{statistics.median(seconds):.2f} ({min(seconds):.2f}-{max(seconds):.2f}) x {len(seconds)}"


def mebibytes(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def gibibytes(value: int | None) -> float | None:
    return None if value is None else value / 2**30


if __name__ == "__main__":
    main()
