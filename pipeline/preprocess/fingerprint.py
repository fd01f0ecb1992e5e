"""What the training cases look like: spacings, shapes and per-channel foreground intensities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.cohort.dataset import Case
from pipeline.io import read_volume
from pipeline.review.features import ScanDescription, describe, label_features

# Foreground voxels sampled per case and channel: enough for stable percentiles, bounded memory.
SAMPLES_PER_CASE = 10_000


@dataclass(frozen=True)
class CaseFingerprint:
    name: str
    spacing: list[float]  # per RAS axis
    shape: list[int]  # per RAS axis, after cropping to the non-zero box as preprocessing does
    foreground_samples: np.ndarray  # (channels, n)
    description: ScanDescription  # what the model directory remembers of it (pipeline/review)
    label_features: dict


@dataclass(frozen=True)
class ChannelStatistics:
    percentile_low: float
    percentile_high: float
    mean: float  # of the foreground, clipped to the percentiles
    std: float


@dataclass(frozen=True)
class Fingerprint:
    spacings: np.ndarray  # (cases, 3), RAS axes
    shapes: np.ndarray  # (cases, 3), RAS axes
    channels: list[ChannelStatistics]

    def to_dict(self) -> dict:
        return {
            "spacings": self.spacings.tolist(),
            "shapes": self.shapes.tolist(),
            "median_spacing": np.median(self.spacings, axis=0).tolist(),
            "median_shape": np.median(self.shapes, axis=0).tolist(),
            "channels": [vars(c) for c in self.channels],
        }


def fingerprint_case(case: Case, n_channels: int, labels: dict[int, str], seed: int) -> CaseFingerprint:
    """Measured in the RAS frame that preprocessing brings the case to, so that a cohort whose
    files store their axes in different orders (sagittal acquisitions, slices-first converters)
    is planned per anatomical axis; the foreground is sampled in that frame's voxel order too,
    so that the statistics do not depend on the storage order either."""
    image = read_volume(case.image, max_channels=n_channels).in_ras_frame()
    label = read_volume(case.label).in_ras_frame()
    channels = image.array if image.array.ndim == 4 else image.array[..., None]
    foreground = np.asarray(label.array) > 0
    rng = np.random.default_rng(seed)
    count = int(foreground.sum())
    chosen = rng.choice(count, size=min(count, SAMPLES_PER_CASE), replace=False)
    samples = np.stack(
        [np.asarray(channels[..., c][foreground], np.float64)[chosen] for c in range(n_channels)]
    )
    return CaseFingerprint(
        case.name,
        list(image.spacing),
        _nonzero_box_shape(channels),
        samples,
        describe(image),
        label_features(np.asarray(label.array), label.spacing, labels),
    )


def combine(cases: list[CaseFingerprint], percentiles: tuple[float, float]) -> Fingerprint:
    samples = np.concatenate([case.foreground_samples for case in cases], axis=1)
    if samples.shape[1] == 0:
        raise ValueError("no foreground voxel in any training label")
    return Fingerprint(
        spacings=np.array([case.spacing for case in cases]),
        shapes=np.array([case.shape for case in cases]),
        channels=[_channel_statistics(values, percentiles) for values in samples],
    )


def _channel_statistics(values: np.ndarray, percentiles: tuple[float, float]) -> ChannelStatistics:
    low, high = np.percentile(values, percentiles)
    clipped = np.clip(values, low, high)
    return ChannelStatistics(float(low), float(high), float(clipped.mean()), float(clipped.std()))


def _nonzero_box_shape(channels: np.ndarray) -> list[int]:
    nonzero = np.any(channels != 0, axis=-1)
    extents = []
    for axis in range(3):
        hits = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(3) if a != axis)))
        extents.append(int(hits[-1] - hits[0] + 1) if hits.size else 0)
    return extents
