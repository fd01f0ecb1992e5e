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


@dataclass(frozen=True)
class PairedDifference:
    """``statistic(B) - statistic(A)`` on the same cases, with a paired bootstrap interval and a
    two-sided paired permutation p-value; None where the statistic is undefined."""

    a: float | None
    b: float | None
    difference: float | None
    interval: Interval
    p_value: float | None
    n_permutations: int
    exact: bool  # every one of the 2^n swaps enumerated, rather than a random sample of them

    def as_json(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "difference": self.difference,
            **self.interval.as_json(),
            "p_value": self.p_value,
            "n_permutations": self.n_permutations,
            "permutation_exact": self.exact,
        }


def paired_difference(
    statistic: Callable[[Sequence[T]], float | None],
    a: Sequence[T],
    b: Sequence[T],
    *,
    n_resamples: int,
    seed: int,
) -> PairedDifference:
    """Compare two models scored on the same cases: ``a[i]`` and ``b[i]`` belong to case i.

    The interval resamples cases with replacement, each with both of its results, so that what
    varies between cases (a hard case is hard for both models) cancels out. The permutation test
    swaps the two results of each case at random: under the null hypothesis that the models are
    exchangeable, every swap pattern is as likely as the observed one. With at most
    ``n_resamples`` patterns (2^n for n cases) every one is enumerated and the p-value is exact;
    otherwise ``n_resamples`` random ones give (1 + as extreme) / (1 + n_resamples), which is
    never 0 (Phipson & Smyth 2010). Hand-written, as bootstrap_interval is, because a statistic
    (an AUROC, a mean over both-empty cases) may be undefined on a resample or a swap.
    """
    if len(a) != len(b):
        raise ValueError(f"paired cases: {len(a)} against {len(b)}")
    n_cases = len(a)

    def difference(cases_a: Sequence[T], cases_b: Sequence[T]) -> float | None:
        value_a, value_b = statistic(cases_a), statistic(cases_b)
        return None if value_a is None or value_b is None else value_b - value_a

    observed = difference(a, b)
    interval = bootstrap_interval(
        n_cases,
        lambda idx: difference([a[i] for i in idx], [b[i] for i in idx]),
        n_resamples=n_resamples,
        seed=seed,
    )
    exact = 2**n_cases <= n_resamples
    if exact:
        swaps = ((np.arange(2**n_cases)[:, None] >> np.arange(n_cases)) & 1).astype(bool)
    else:
        swaps = np.random.default_rng(seed).integers(0, 2, (n_resamples, n_cases)).astype(bool)
    p_value = None
    if observed is not None:
        swapped = [
            difference(
                [b[i] if s else a[i] for i, s in enumerate(swap)],
                [a[i] if s else b[i] for i, s in enumerate(swap)],
            )
            for swap in swaps
        ]
        # Round-off must not make a difference equal to the observed one count as smaller.
        extreme = sum(d is not None and abs(d) >= abs(observed) - 1e-12 for d in swapped)
        p_value = extreme / len(swaps) if exact else (1 + extreme) / (1 + len(swaps))
    return PairedDifference(
        a=statistic(a),
        b=statistic(b),
        difference=observed,
        interval=interval,
        p_value=p_value,
        n_permutations=len(swaps),
        exact=exact,
    )
