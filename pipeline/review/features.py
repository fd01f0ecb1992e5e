"""What a scan looks like, in numbers that need no label: the features that tell a scan unlike
the training cohort (another modality, another resolution, a cut field of view, heavy noise).

Every feature is measured the same way on the training cases (at preprocessing) and on each
new scan (``resseg shift``, ``resseg predict``), from the raw scan:

- ``spacing_{x,y,z}``: voxel size in mm along the anatomical (RAS) axes, whatever the order the
  file stores them in;
- ``extent_{x,y,z}``: the field of view, shape times spacing, in mm along the same axes;
- ``p01_<c>``, ``p50_<c>``, ``p99_<c>``: intensity percentiles of channel ``c`` over the scan
  (a fixed-seed sample of SAMPLES voxels: the same scan always gives the same values);
- ``noise_<c>``: the noise's standard deviation, estimated from differences of neighbouring
  voxels in the scan's central box (their median absolute value, which edges barely move,
  scaled to a Gaussian's standard deviation). Percentiles hardly move under noise that is heavy
  for a network; this does.

None of them identifies a patient: the training cohort's are kept in the model directory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.io import Volume

AXES = ("x", "y", "z")
SAMPLES = 200_000
# The first of them make each scan's histogram: a training cohort of a thousand cases keeps 160
# MB of them while its profile is built, and a scan's histogram of 64 bins is as steady.
HISTOGRAM_SAMPLES = 20_000
PERCENTILES = {"p01": 1.0, "p50": 50.0, "p99": 99.0}
# Median absolute deviation of a Gaussian, in standard deviations; the difference of two
# independent noisy voxels has sqrt(2) times the noise's standard deviation.
MAD_PER_SD = 0.6745
DIFFERENCE_PER_SD = np.sqrt(2.0)


@dataclass(frozen=True)
class ScanDescription:
    features: dict[str, float]
    samples: list[np.ndarray]  # per channel, HISTOGRAM_SAMPLES intensities for the histograms


def describe(volume: Volume) -> ScanDescription:
    """The features of one scan (all channels of a multi-channel volume)."""
    ras = volume.in_ras_frame()
    extent = np.multiply(ras.shape, ras.spacing)
    features = {f"spacing_{a}": float(s) for a, s in zip(AXES, ras.spacing, strict=True)}
    features |= {f"extent_{a}": float(e) for a, e in zip(AXES, extent, strict=True)}
    samples = _intensity_samples(volume)
    for channel, (values, noise) in enumerate(zip(samples, _noise(volume), strict=True)):
        found = np.percentile(values, list(PERCENTILES.values()))
        features |= {f"{kind}_{channel}": float(v) for kind, v in zip(PERCENTILES, found, strict=True)}
        features[f"noise_{channel}"] = noise
    return ScanDescription(features, [values[:HISTOGRAM_SAMPLES] for values in samples])


def stacked(volumes: list[Volume]) -> Volume:
    """One volume holding every channel (a multi-channel scan read one file per channel), as
    the training cases were described."""
    if len(volumes) == 1:
        return volumes[0]
    return Volume(np.stack([v.array for v in volumes], axis=-1), volumes[0].affine)


def _intensity_samples(volume: Volume) -> list[np.ndarray]:
    """A fixed-seed sample of each channel's voxels (with replacement: a draw over a 100-million
    voxel scan without it costs more than the prediction's reading)."""
    channels = _channels(volume)
    flat = [np.ravel(channel) for channel in channels]  # a view where the array is contiguous
    chosen = np.random.default_rng(0).integers(0, flat[0].size, size=SAMPLES)
    return [np.asarray(values[chosen], np.float64) for values in flat]


def _noise(volume: Volume) -> list[float]:
    """Per channel, along the axis of finest spacing (the least blurred by slice thickness)."""
    axis = int(np.argmin(volume.spacing))
    centre = tuple(slice(s // 4, s - s // 4) if s >= 4 else slice(None) for s in volume.shape)
    noise = []
    for channel in _channels(volume):
        box = np.asarray(channel[centre], np.float32)
        if box.shape[axis] < 2:
            noise.append(0.0)
            continue
        differences = np.abs(np.diff(box, axis=axis))
        noise.append(float(np.median(differences)) / MAD_PER_SD / DIFFERENCE_PER_SD)
    return noise


def _channels(volume: Volume) -> list[np.ndarray]:
    array = volume.array
    return [array] if array.ndim == 3 else [array[..., c] for c in range(array.shape[-1])]


def label_features(label: np.ndarray, spacing: tuple[float, float, float], labels: dict[int, str]) -> dict:
    """Per foreground label of a training case: its volume in ml and its number of connected
    structures (lesions, for a lesion label)."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    features = {}
    for value, name in labels.items():
        if value == 0:
            continue
        mask = label == value
        features[f"volume_ml_{name}"] = float(mask.sum()) * voxel_ml
        features[f"count_{name}"] = int(ndimage.label(mask)[1])
    return features
