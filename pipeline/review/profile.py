"""The training cohort as a model remembers it, and the rule that tells a scan unlike it.

A profile holds, for each feature of features.py, its values over the training cases (no case
names, no voxels), each channel's intensity histogram averaged over the cases, and each training
case's distance to that histogram. From these follow the ranges a new scan is checked against:

- a feature's range is the training cases' [min, max] widened on each side by RANGE_MARGIN of its
  width plus a floor (FLOOR: a share of the median for sizes and noise, of the cohort's intensity
  span for intensities), so that a cohort whose scans all share one spacing still lets a scan
  differ by rounding;
- a channel's histogram distance (Jensen-Shannon, base 2: 0 for equal histograms, 1 for disjoint)
  may reach HISTOGRAM_MARGIN times the largest distance of a training case, and at least
  HISTOGRAM_FLOOR (a cohort of one case, or of identical ones, is at distance 0 from itself).

So a scan is flagged only beyond what the training cases themselves showed, with a margin; the
synthetic cohort's own test scans lie inside (tests/review/test_flags.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.distance import jensenshannon

from pipeline.errors import InputDataError
from pipeline.io import write_json
from pipeline.review.features import ScanDescription

PROFILE_JSON = "cohort_profile.json"
HISTOGRAM_BINS = 64
RANGE_MARGIN = 0.25
# Floors of the margin: spacings and fields of view may differ by 10% of the cohort's median,
# noise by 50% of it, intensity percentiles by 5% of the cohort's p01-p99 span.
FLOOR = {"spacing": 0.10, "extent": 0.10, "noise": 0.50, "intensity": 0.05}
HISTOGRAM_MARGIN = 1.5
HISTOGRAM_FLOOR = 0.05
# What the reasons call each kind of feature.
KIND_NAMES = {"spacing": "spacing", "extent": "field of view", "noise": "noise", "p01": "intensity"}
KIND_NAMES |= {"p50": "intensity", "p99": "intensity", "histogram": "intensity"}
UNITS = {"spacing": " mm", "extent": " mm"}


@dataclass(frozen=True)
class Histogram:
    edges: list[float]
    density: list[float]  # the training cases' mean, summing to 1
    case_distances: list[float]  # each training case's Jensen-Shannon distance to ``density``

    @property
    def limit(self) -> float:
        return max(HISTOGRAM_MARGIN * max(self.case_distances), HISTOGRAM_FLOOR)

    def distance(self, samples: np.ndarray) -> float:
        return float(jensenshannon(_density(samples, self.edges), self.density, base=2))


@dataclass(frozen=True)
class Finding:
    """One feature of a scan outside its range."""

    feature: str
    value: float
    low: float
    high: float

    @property
    def kind(self) -> str:
        return KIND_NAMES[self.feature.split("_")[0]]

    def __str__(self) -> str:
        kind, _, which = self.feature.partition("_")
        if kind == "histogram":
            return (
                f"intensity histogram of channel {which} at distance {self.value:.2f} from the "
                f"training cohort's (at most {self.high:.2f})"
            )
        unit = UNITS.get(kind, "")
        allowed = f"{self.low:.3g} to {self.high:.3g}{unit}"
        return f"{kind} {which} {self.value:.3g}{unit} outside the training range {allowed}"


@dataclass(frozen=True)
class ScanShift:
    score: float  # the largest feature's distance from its range's centre, in half-widths: > 1 is outside
    findings: list[Finding]


@dataclass(frozen=True)
class CohortProfile:
    n_cases: int
    features: dict[str, list[float]]  # scan feature -> its value in each training case
    histograms: list[Histogram]  # one per channel
    labels: dict[str, list[float]]  # label feature (volumes, counts) -> value in each training case
    # DICOM acquisition attribute -> value -> training cases (a cohort imported from DICOM)
    acquisition: dict[str, dict[str, int]]

    @classmethod
    def build(
        cls, scans: list[ScanDescription], label_features: list[dict], acquisitions: list[dict[str, str]]
    ) -> CohortProfile:
        """From the training cases' descriptions, label features (features.label_features) and,
        for those imported from DICOM, acquisition attributes (counted per value)."""
        histograms = []
        for channel in range(len(scans[0].samples)):
            pooled = np.concatenate([scan.samples[channel] for scan in scans])
            edges = np.linspace(*np.percentile(pooled, [0.5, 99.5]), HISTOGRAM_BINS + 1)
            densities = [_density(scan.samples[channel], edges) for scan in scans]
            mean = np.mean(densities, axis=0)
            distances = [float(jensenshannon(d, mean, base=2)) for d in densities]
            histograms.append(Histogram(edges.tolist(), mean.tolist(), distances))
        return cls(
            n_cases=len(scans),
            features={name: [scan.features[name] for scan in scans] for name in scans[0].features},
            histograms=histograms,
            labels={name: [case[name] for case in label_features] for name in label_features[0]},
            acquisition=count_values(acquisitions),
        )

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {name: self._range(name) for name in self.features}

    def check(self, scan: ScanDescription) -> ScanShift:
        """How far one scan lies from the training cohort, and which features lie outside."""
        score, findings = 0.0, []
        for name, (low, high) in self.ranges().items():
            value = scan.features[name]
            half_width = (high - low) / 2
            score = max(score, abs(value - (low + high) / 2) / half_width if half_width else 0.0)
            if not low <= value <= high:
                findings.append(Finding(name, value, low, high))
        for channel, histogram in enumerate(self.histograms):
            distance = histogram.distance(scan.samples[channel])
            score = max(score, distance / histogram.limit)
            if distance > histogram.limit:
                findings.append(Finding(f"histogram_{channel}", distance, 0.0, histogram.limit))
        return ScanShift(score, findings)

    def _range(self, name: str) -> tuple[float, float]:
        values = self.features[name]
        kind = name.split("_")[0]
        if kind in ("spacing", "extent", "noise"):
            return widened(values, FLOOR[kind] * abs(float(np.median(values))))
        channel = name.split("_")[1]
        span = np.median(self.features[f"p99_{channel}"]) - np.median(self.features[f"p01_{channel}"])
        return widened(values, FLOOR["intensity"] * float(span))

    def to_dict(self) -> dict:
        return {
            "n_cases": self.n_cases,
            "features": self.features,
            "histograms": [vars(h) for h in self.histograms],
            "labels": self.labels,
            "acquisition": self.acquisition,
        }

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> CohortProfile:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(
                n_cases=int(data["n_cases"]),
                features={str(k): [float(v) for v in values] for k, values in data["features"].items()},
                histograms=[Histogram(**h) for h in data["histograms"]],
                labels={str(k): [float(v) for v in values] for k, values in data["labels"].items()},
                acquisition={str(k): dict(v) for k, v in data.get("acquisition", {}).items()},
            )
        except OSError as err:
            raise InputDataError(f"{path}: cannot be read ({err.strerror})") from None
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InputDataError(f"{path}: not a cohort profile written by resseg") from None


def widened(values: list[float], floor: float) -> tuple[float, float]:
    """The values' [min, max], widened on each side by RANGE_MARGIN of its width plus ``floor``."""
    low, high = min(values), max(values)
    margin = RANGE_MARGIN * (high - low) + floor
    return low - margin, high + margin


def count_values(acquisitions: list[dict[str, str]]) -> dict[str, dict[str, int]]:
    """Attribute -> value -> how many scans have it ("(empty)" for an absent tag)."""
    counts: dict[str, dict[str, int]] = {}
    for attributes in acquisitions:
        for name, value in attributes.items():
            key = value or "(empty)"
            counts.setdefault(name, {})[key] = counts.get(name, {}).get(key, 0) + 1
    return {name: dict(sorted(values.items())) for name, values in counts.items()}


def _density(samples: np.ndarray, edges) -> np.ndarray:
    """Share of samples per bin; values beyond the edges count in the end bins, so that a scan
    whose intensities lie elsewhere still has a histogram to compare."""
    clipped = np.clip(samples, edges[0], edges[-1])
    counts, _ = np.histogram(clipped, bins=edges)
    return counts / max(counts.sum(), 1)
