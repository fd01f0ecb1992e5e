"""Summaries over cases: central values, spread and bootstrap confidence intervals.

A metric that is undefined on a case or a cohort is ``None``, never NaN or inf; summaries
leave such values out and count them, so one undefined case cannot turn a mean into NaN.
Intervals are 95 % percentile-bootstrap intervals over cases: cases are resampled with
replacement by a seeded NumPy Generator, so the same seed gives the same interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

CONFIDENCE = 0.95

T = TypeVar("T")


@dataclass(frozen=True)
class Estimate:
    """A cohort-level metric; ``value`` is None when it is undefined, and ``reason`` says why."""

    value: float | None
    reason: str | None = None

    def as_json(self) -> dict:
        return {"value": self.value, "reason": self.reason}


@dataclass(frozen=True)
class Interval:
    low: float | None
    high: float | None
    n_resamples: int
    n_undefined: int  # resamples on which the statistic was undefined; left out of the percentiles

    def as_json(self) -> dict:
        return {
            "ci95_low": self.low,
            "ci95_high": self.high,
            "n_resamples": self.n_resamples,
            "n_resamples_undefined": self.n_undefined,
        }


def bootstrap_interval(
    n_cases: int, statistic: Callable[[np.ndarray], float | None], *, n_resamples: int, seed: int
) -> Interval:
    """Percentile interval of ``statistic(case_indices)`` over resamples of ``n_cases`` cases.

    Hand-written because scipy.stats.bootstrap cannot skip the resamples on which a metric is
    undefined (a resample without a positive case has no AUROC); here they are counted instead.
    """
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n_cases, n_cases)) for _ in range(n_resamples)]
    defined = [v for v in values if v is not None]
    n_undefined = n_resamples - len(defined)
    if not defined:
        return Interval(None, None, n_resamples, n_undefined)
    tail = 50 * (1 - CONFIDENCE)
    low, high = np.percentile(defined, [tail, 100 - tail])
    return Interval(float(low), float(high), n_resamples, n_undefined)


def estimate_with_interval(
    metric: Callable[[Sequence[T]], Estimate], cases: Sequence[T], *, n_resamples: int, seed: int
) -> dict:
    """A cohort metric and its bootstrap interval over ``cases``, JSON-ready."""
    interval = bootstrap_interval(
        len(cases), lambda idx: metric([cases[i] for i in idx]).value, n_resamples=n_resamples, seed=seed
    )
    return metric(cases).as_json() | interval.as_json()


def summarize(values: Sequence[float | None], *, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Mean, median, standard deviation and bootstrap interval of the mean over the defined values.

    ``n`` counts the values summarised and ``n_excluded`` the None ones left out.
    """
    defined = np.array([v for v in values if v is not None], dtype=float)
    summary = {"n": int(defined.size), "n_excluded": len(values) - int(defined.size)}
    if defined.size == 0:
        return {"mean": None, "median": None, "std": None, "ci95_low": None, "ci95_high": None} | summary
    interval = bootstrap_interval(
        defined.size, lambda idx: float(defined[idx].mean()), n_resamples=n_resamples, seed=seed
    )
    return {
        "mean": float(defined.mean()),
        "median": float(np.median(defined)),
        "std": float(defined.std()),
        "ci95_low": interval.low,
        "ci95_high": interval.high,
    } | summary
