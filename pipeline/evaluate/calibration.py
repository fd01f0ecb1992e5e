"""Temperature scaling of a segmentation model's class probabilities, and its calibration error.

A model is calibrated when, of the voxels it gives class c with probability p, a share p belongs
to class c. Temperature scaling (Guo et al., ICML 2017) divides the log-probabilities by one
scalar T fitted on held-out cases (out-of-fold predictions): T > 1 softens an over-confident
model, T < 1 sharpens an under-confident one, and the argmax, so the segmentation, is unchanged.

Arrays: ``probabilities`` of shape (C, X, Y, Z), summing to 1 over axis 0, class 0 the
background; ``label`` of shape (X, Y, Z), integers 0..C-1.

- ``apply_temperature`` / ``undo_temperature``: scale, or recover the unscaled probabilities.
- ``calibration_region``: the box the calibration is measured and fitted on.
- ``fit_temperature``: the T of least negative log-likelihood over a pool of cases.
- ``calibration_errors``: expected calibration error (ECE) per foreground class, one-vs-rest.
- ``reliability_bins``: one class's per-bin statistics, for a reliability diagram; they add up
  to its ECE.

Binning is MONAI's (``CalibrationErrorMetric`` and its ``calibration_binning``): ``n_bins``
equal-width bins over [0, 1]; ECE = sum over bins of count / total * |frequency - confidence|,
its ``calibration_reduction="expected"``. A confidence on an inner edge k/n counts in the lower
bin, and 0 in the first: MONAI nudges its edges up by a float32 epsilon and bucketizes with
``right=False``, so its bins are (low, high], not the [low, high) its docstring says.

MONAI's code itself is not run on the volume: ``calibration_binning`` counts and sums in float32.
Past 2**24 (16.7M) voxels in one bin its count stops growing (a 512x512x300 CT holds 78M voxels),
and well before that its running sums drift (the mean of 4M equal probabilities comes out 4 %
off). The same edges and rule are applied here with float64 sums and integer counts; the tests
check the result against ``CalibrationErrorMetric`` where that is exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

# The clamp before the log: the smallest normal float32. A float32 (or float16) softmax rounds a
# far-off class to 0, i.e. a logit gap of at least ~87; a larger clamp would understate that gap
# and, at a high temperature, hand the class visible mass (clamped at 1e-7, a gap of 16: at T = 20
# the class would get 0.45 times the top class's weight).
EPS = np.float32(np.finfo(np.float32).tiny)
TEMPERATURE_BOUNDS = (0.05, 20.0)
# Volumes are binned and sampled a slab at a time, which bounds the temporaries (int64 bin indices,
# float64 weights, log-probabilities) whatever the size of the scan.
SLAB_VOXELS = 1 << 18


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(max(p, EPS)) / T) over the class axis, as float32.

    For a single softmax network, log p is the logits less their per-voxel log-sum-exp, a
    constant the softmax cancels: this is exactly temperature scaling of the logits. For a fold
    ensemble's averaged probabilities it is temperature scaling of the ensemble's
    log-probabilities (not of each fold's logits before averaging), which is what can be fitted
    on the ensemble's own outputs.

    T = 1 returns the input as float32 without computing anything, so bit for bit unchanged (the
    array itself when it is float32 already). Otherwise a new float32 array, computed in place:
    no float64 copy of the volume.
    """
    _check_temperature(temperature)
    if temperature == 1:
        return np.asarray(probabilities, dtype=np.float32)
    scaled = np.maximum(probabilities, EPS, dtype=np.float32)
    np.log(scaled, out=scaled)
    scaled *= np.float32(1.0 / temperature)
    scaled -= scaled.max(axis=0, keepdims=True)  # the largest is then 0: exp cannot overflow
    np.exp(scaled, out=scaled)
    scaled /= scaled.sum(axis=0, keepdims=True)
    return scaled


def undo_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities before ``apply_temperature(., temperature)``: it with 1 / T.

    softmax(T * log softmax(l / T)) = softmax(l - T * logsumexp(l / T)) = softmax(l): exact but
    for float32 rounding and the EPS clamp, which only touches classes whose scaled probability
    underflowed (sharpening, T < 1), and those were below exp(-87 T) of the top class before.
    """
    _check_temperature(temperature)
    return apply_temperature(probabilities, 1.0 / temperature)


def calibration_region(
    label: np.ndarray, prediction: np.ndarray, margin: int = 5
) -> tuple[slice, slice, slice]:
    """The bounding box of the reference's and the prediction's foreground (values != 0), grown
    by ``margin`` voxels on each side and clipped to the volume; the whole volume when both are
    empty."""
    # Far from any structure the background is trivially confident and right: over a whole CT it
    # would bring every calibration error near 0 and pull a fitted temperature toward
    # over-confidence. The box is where the boundaries and the lesions are.
    label, prediction = np.asarray(label), np.asarray(prediction)
    if label.shape != prediction.shape:
        raise ValueError(f"label of shape {label.shape} and prediction of shape {prediction.shape} differ")
    if margin < 0:
        raise ValueError(f"margin must be >= 0 voxels, got {margin}")
    foreground = (label != 0) | (prediction != 0)
    if not foreground.any():
        return tuple(slice(0, n) for n in label.shape)
    return tuple(_axis_extent(foreground, axis, margin) for axis in range(foreground.ndim))


def fit_temperature(
    cases: Iterable[tuple[np.ndarray, np.ndarray]], max_voxels: int = 2_000_000, seed: int = 0
) -> float:
    """The temperature, in [0.05, 20], of least mean negative log-likelihood of the true class.

    ``cases`` yields (probabilities, label) pairs, e.g. out-of-fold predictions, read one at a
    time. The voxels of each case's ``calibration_region`` (prediction: the argmax) are pooled,
    and a uniform sample of at most ``max_voxels`` of them, drawn with
    ``numpy.random.default_rng(seed)``, is kept: the same cases in the same order give the same
    temperature. A case whose reference and prediction are both empty adds no voxel: its region
    would be the whole scan, the trivially right background the region leaves out.

    The minimum is found over log T by scipy's bounded scalar minimisation.
    """
    log_p, truth = _sample_voxels(cases, max_voxels, np.random.default_rng(seed))
    true_log_p = np.mean(log_p[truth, np.arange(truth.size)], dtype=np.float64)

    def mean_nll(log_t: float) -> float:
        # The log of apply_temperature's output for the true class, without its float32 rounding.
        # float64 is affordable here: the sample is bounded, not a volume.
        scaled = log_p.astype(np.float64) * math.exp(-log_t)
        return float(np.mean(logsumexp(scaled, axis=0)) - true_log_p * math.exp(-log_t))

    bounds = tuple(math.log(t) for t in TEMPERATURE_BOUNDS)
    result = minimize_scalar(mean_nll, bounds=bounds, method="bounded", options={"xatol": 1e-6})
    return float(math.exp(result.x))


def calibration_errors(
    probabilities: np.ndarray,
    label: np.ndarray,
    region: tuple[slice, ...] | None = None,
    n_bins: int = 15,
) -> dict[int, float | None]:
    """Expected calibration error of each foreground class (1..C-1), one-vs-rest, on ``region``
    (default: ``calibration_region`` of the label and the argmax).

    The value of MONAI's ``CalibrationErrorMetric(num_bins=n_bins, calibration_reduction=
    "expected")``, in float64 (see the module's docstring). MONAI's ECE is NaN only when no voxel
    falls in any bin, i.e. an empty region: None here, the project's mark of an undefined value.
    A class absent from both the reference and the prediction in the region still has one, as in
    MONAI: the mean probability the model puts on a class that is not there, a genuine
    calibration error.
    """
    probabilities, label, region = _prepared(probabilities, label, region)
    return {
        value: _expected_error(_binned(probabilities, label, value, region, n_bins))
        for value in range(1, len(probabilities))
    }


def reliability_bins(
    probabilities: np.ndarray,
    label: np.ndarray,
    value: int,
    region: tuple[slice, ...] | None = None,
    n_bins: int = 15,
) -> list[dict]:
    """Class ``value``'s reliability diagram on ``region`` (default as ``calibration_errors``):
    per equal-width confidence bin over [0, 1], its edges ``low`` and ``high``, the voxel
    ``count``, the ``mean_confidence`` and the ``frequency`` (share of the bin's voxels of the
    class); both means are None in an empty bin. The sum over bins of count / total *
    |frequency - mean_confidence| is the class's ``calibration_errors`` value.
    """
    probabilities, label, region = _prepared(probabilities, label, region)
    if not 0 <= value < len(probabilities):
        raise ValueError(f"class value {value} is not one of the {len(probabilities)} classes")
    counts, confidences, hits = _binned(probabilities, label, value, region, n_bins)
    return [
        {
            "low": k / n_bins,
            "high": (k + 1) / n_bins,
            "mean_confidence": float(confidences[k] / counts[k]) if counts[k] else None,
            "frequency": float(hits[k] / counts[k]) if counts[k] else None,
            "count": int(counts[k]),
        }
        for k in range(n_bins)
    ]


def _check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be positive and finite, got {temperature}")


def _check_case(probabilities: np.ndarray, label: np.ndarray) -> None:
    if probabilities.shape[1:] != label.shape or probabilities.ndim != label.ndim + 1:
        raise ValueError(
            f"probabilities of shape {probabilities.shape} do not match a label of shape {label.shape}: "
            "expected (classes, *label shape)"
        )
    classes = len(probabilities)
    if label.size and (label.min() < 0 or label.max() >= classes):
        raise ValueError(f"label values {label.min()}..{label.max()} are not all among {classes} classes")


def _prepared(
    probabilities: np.ndarray, label: np.ndarray, region: tuple[slice, ...] | None
) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...]]:
    probabilities, label = np.asarray(probabilities), np.asarray(label)
    _check_case(probabilities, label)
    if region is None:
        region = calibration_region(label, _predicted_foreground(probabilities))
    return probabilities, label, region


def _predicted_foreground(probabilities: np.ndarray) -> np.ndarray:
    """argmax != 0 without an int64 label map of the volume: argmax takes the first of tied
    maxima, so background wins ties."""
    return probabilities[1:].max(axis=0) > probabilities[0]


def _axis_extent(foreground: np.ndarray, axis: int, margin: int) -> slice:
    others = tuple(a for a in range(foreground.ndim) if a != axis)
    present = np.flatnonzero(foreground.any(axis=others))
    return slice(max(int(present[0]) - margin, 0), min(int(present[-1]) + margin + 1, foreground.shape[axis]))


def _slabs(shape: tuple[int, ...]) -> Iterator[slice]:
    """Consecutive ranges along the first axis of a crop of ``shape``, each of at most
    SLAB_VOXELS voxels (or one slice, if a slice holds more)."""
    step = max(1, SLAB_VOXELS // max(1, math.prod(shape[1:])))
    return (slice(start, start + step) for start in range(0, shape[0], step))


def _binned(
    probabilities: np.ndarray, label: np.ndarray, value: int, region: tuple[slice, ...], n_bins: int
) -> np.ndarray:
    """Per bin of class ``value``'s probability over ``region``: the voxel count, the sum of
    probabilities and the number of voxels of the class; float64, shape (3, n_bins)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    # MONAI's calibration_binning's edges and bucketing, so that every voxel lands in its bin.
    edges = torch.linspace(0.0, 1.0 + torch.finfo(torch.float32).eps, n_bins + 1)[1:]
    confidence, truth = probabilities[value][region], label[region]
    totals = np.zeros((3, n_bins))
    for slab in _slabs(truth.shape):
        p = np.ascontiguousarray(confidence[slab], dtype=np.float32).ravel()
        bins = torch.bucketize(torch.from_numpy(p), edges).clamp_(max=n_bins - 1).numpy()
        hits = (truth[slab] == value).ravel()
        totals += [
            np.bincount(bins, minlength=n_bins),
            np.bincount(bins, p, n_bins),
            np.bincount(bins, hits, n_bins),
        ]
    return totals


def _expected_error(binned: np.ndarray) -> float | None:
    counts, confidences, hits = binned
    total = counts.sum()
    # count * |hits / count - confidences / count| = |hits - confidences|, summed and averaged.
    return float(np.abs(hits - confidences).sum() / total) if total else None


def _sample_voxels(
    cases: Iterable[tuple[np.ndarray, np.ndarray]], max_voxels: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The clamped log-probabilities (C, n), float32, and true classes (n) of a uniform sample of
    at most ``max_voxels`` of the cases' region voxels."""
    if max_voxels < 1:
        raise ValueError(f"max_voxels must be >= 1, got {max_voxels}")
    sample = _VoxelSample(max_voxels, rng)
    for probabilities, label in cases:
        probabilities, label = np.asarray(probabilities), np.asarray(label)
        _check_case(probabilities, label)
        predicted = _predicted_foreground(probabilities)
        if not (label.any() or predicted.any()):
            continue
        region = calibration_region(label, predicted)
        crop, truth = probabilities[(slice(None), *region)], label[region]
        for slab in _slabs(truth.shape):
            sample.add(crop[:, slab], truth[slab])
    return sample.result()


class _VoxelSample:
    """A uniform sample without replacement of at most ``size`` voxels from a stream of slabs.

    Bottom-k sampling: every voxel draws a uniform key, and the ``size`` smallest keys seen are
    kept, whatever the order the voxels came in. Slabs are held until twice ``size`` voxels, then
    cut back to ``size``: one partial sort per ``size`` voxels added, memory for 2 * ``size``.
    """

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, self.rng = size, rng
        self.keys: list[np.ndarray] = []
        self.log_p: list[np.ndarray] = []
        self.truth: list[np.ndarray] = []
        self.held = 0

    def add(self, probabilities: np.ndarray, label: np.ndarray) -> None:
        if self.log_p and len(probabilities) != len(self.log_p[0]):
            raise ValueError(
                f"cases disagree on the number of classes: {len(self.log_p[0])} and {len(probabilities)}"
            )
        log_p = np.maximum(probabilities, EPS, dtype=np.float32).reshape(len(probabilities), -1)
        self.log_p.append(np.log(log_p, out=log_p))
        self.truth.append(label.ravel())
        self.keys.append(self.rng.random(label.size))
        self.held += label.size
        if self.held > 2 * self.size:
            self._cut()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.held:
            raise ValueError("no voxel to fit a temperature on: no case, or none with any foreground")
        self._cut()
        return self.log_p[0], self.truth[0]

    def _cut(self) -> None:
        keys, truth = np.concatenate(self.keys), np.concatenate(self.truth)
        log_p = np.concatenate(self.log_p, axis=1)
        if keys.size > self.size:
            kept = np.argpartition(keys, self.size - 1)[: self.size]
            keys, log_p, truth = keys[kept], log_p[:, kept], truth[kept]
        self.keys, self.log_p, self.truth, self.held = [keys], [log_p], [truth], keys.size
