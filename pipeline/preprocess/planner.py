"""From a fingerprint to a plan: target spacing, normalisation, patch size and batch size."""

from __future__ import annotations

import numpy as np

from pipeline.config import PreprocessParams
from pipeline.errors import InputDataError
from pipeline.preprocess.fingerprint import Fingerprint
from pipeline.preprocess.plans import ChannelNormalization, Plans

# Batches may hold at most this fraction of the cohort's voxels (nnU-Net's rule).
MAX_BATCH_FRACTION_OF_COHORT = 0.05


def make_plans(
    fingerprint: Fingerprint, channel_names: list[str], labels: dict[int, str], params: PreprocessParams
) -> Plans:
    target = plan_spacing(fingerprint.spacings, params)
    resampled_shapes = fingerprint.shapes * fingerprint.spacings / np.array(target)
    patch = plan_patch_size(np.median(resampled_shapes, axis=0), target, params)
    return Plans(
        channel_names=channel_names,
        labels=labels,
        target_spacing=target,
        normalization=plan_normalization(channel_names, fingerprint),
        patch_size=patch,
        batch_size=plan_batch_size(patch, float(np.prod(resampled_shapes, axis=1).sum()), params),
    )


def plan_spacing(spacings: np.ndarray, params: PreprocessParams) -> tuple[float, float, float]:
    """The median spacing per axis. For an anisotropic cohort that already keeps the coarse
    axis coarse: thick slices are not interpolated into thin ones that hold no information."""
    if params.target_spacing != "auto":
        return tuple(float(s) for s in params.target_spacing)
    return tuple(float(s) for s in np.median(spacings, axis=0))


def plan_patch_size(median_shape: np.ndarray, spacing: tuple, params: PreprocessParams) -> list[int]:
    """The median resampled shape, each axis rounded to a multiple of the divisor, then shrunk
    along its physically longest axis until it fits the voxel budget."""
    step = params.patch_divisor
    patch = np.maximum(step, np.round(median_shape / step) * step).astype(int)
    while np.prod(patch) > params.max_patch_voxels:
        shrinkable = patch > step
        if not shrinkable.any():
            break
        extent_mm = np.where(shrinkable, patch * np.array(spacing), -np.inf)
        patch[int(np.argmax(extent_mm))] -= step
    return patch.tolist()


def plan_batch_size(patch: list[int], cohort_voxels: float, params: PreprocessParams) -> int:
    patch_voxels = int(np.prod(patch))
    by_budget = params.max_batch_voxels // patch_voxels
    by_cohort = int(MAX_BATCH_FRACTION_OF_COHORT * cohort_voxels // patch_voxels)
    return max(2, min(by_budget, by_cohort))


def plan_normalization(channel_names: list[str], fingerprint: Fingerprint) -> list[ChannelNormalization]:
    is_ct = [name.upper() == "CT" for name in channel_names]
    if any(is_ct) and len(channel_names) > 1:
        # One MONAI transform normalises CT with cohort statistics; mixing it per channel with
        # per-case z-scoring is not built yet.
        raise InputDataError(f"channels {channel_names}: CT is supported as a single channel only")
    if is_ct[0]:
        stats = fingerprint.channels[0]
        return [
            ChannelNormalization(
                "ct",
                clip_low=stats.percentile_low,
                clip_high=stats.percentile_high,
                mean=stats.mean,
                # A constant foreground (std 0) would divide by zero; 1 leaves it merely centred.
                std=stats.std or 1.0,
            )
        ]
    return [ChannelNormalization("zscore") for _ in channel_names]
