"""What the training cases look like: spacings, shapes and foreground intensities."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pipeline.cohort.dataset import Case
from pipeline.io import read_volume

# Foreground voxels sampled per case: enough for stable percentiles, bounded memory.
SAMPLES_PER_CASE = 10_000


@dataclass(frozen=True)
class Fingerprint:
    spacings: list[list[float]]
    shapes: list[list[int]]
    foreground_percentiles: dict[str, float]  # "0.5" and "99.5" etc. -> HU
    foreground_mean: float
    foreground_std: float

    @property
    def median_spacing(self) -> list[float]:
        return np.median(np.array(self.spacings), axis=0).tolist()

    def to_dict(self) -> dict:
        return {**asdict(self), "median_spacing": self.median_spacing}


def compute_fingerprint(cases: list[Case], percentiles: tuple[float, float], seed: int = 0) -> Fingerprint:
    rng = np.random.default_rng(seed)
    spacings, shapes, samples = [], [], []
    for case in cases:
        image, label = read_volume(case.image), read_volume(case.label)
        spacings.append(list(image.spacing))
        shapes.append(list(image.array.shape))
        foreground = np.asarray(image.array, np.float64)[np.asarray(label.array) > 0]
        take = min(len(foreground), SAMPLES_PER_CASE)
        samples.append(rng.choice(foreground, size=take, replace=False))
    values = np.concatenate(samples)
    if values.size == 0:
        raise ValueError("no foreground voxel in any training label")
    low, high = np.percentile(values, percentiles)
    clipped = np.clip(values, low, high)
    return Fingerprint(
        spacings=spacings,
        shapes=shapes,
        foreground_percentiles={str(p): float(v) for p, v in zip(percentiles, (low, high), strict=True)},
        foreground_mean=float(clipped.mean()),
        foreground_std=float(clipped.std()),
    )
