"""Training patches and their augmentation: nnU-Net's recipe, built from MONAI transforms.

A patch is cropped larger than the network's patch, rotated and scaled about its centre, cut
to the patch size, then mirrored and given intensity changes. Cutting after the rotation keeps
the empty corners that a rotation would bring in outside the patch, and keeps a
foreground-centred patch centred on foreground. The label goes through the rotation as one
channel per class, interpolated like the image, and comes out as the class of highest share.

Where the crop lies is nnU-Net's rule: for the requested share of patches, a foreground *class*
present in the case is drawn first (each equally likely), then a voxel of that class, so a
small lesion is centred as often as the organ around it; the other patches lie anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai.transforms import (
    AsDiscreted,
    BorderPadd,
    CenterSpatialCropd,
    Compose,
    Identityd,
    OneOf,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByLabelClassesd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandSimulateLowResolutiond,
    RandSpatialCropSamplesd,
    SpatialPadd,
)

from pipeline.config import AugmentationParams

KEYS = ("image", "label")
# A thick-slice axis (spacing this many times the finest) is not rotated into the others.
ANISOTROPY_RATIO = 3.0
# The background's weight among the classes a foreground-centred crop draws from: it only
# matters, and then decides alone, in a case whose label holds no foreground at all.
BACKGROUND_FALLBACK_WEIGHT = 1e-9


def training_patches(
    patch_size: Sequence[int],
    spacing: Sequence[float],
    n_classes: int,
    foreground_fraction: float,
    params: AugmentationParams,
) -> Compose:
    """``n_classes`` counts the background."""
    in_plane = _in_plane_axes(spacing)
    crop_size = _crop_size(patch_size, params, in_plane)
    rotation = math.radians(params.rotation_degrees)
    # RandAffine's rotate_range is per rotation axis; rotating about axis a mixes the other two.
    rotate_range = [rotation if set(range(3)) - {axis} <= set(in_plane) else 0.0 for axis in range(3)]
    scale_range = [(params.scale_range[0] - 1, params.scale_range[1] - 1)] * 3
    rotate_and_scale = RandAffined(
        KEYS,
        spatial_size=patch_size,
        prob=1.0,  # drawn with affine_prob below
        rotate_range=rotate_range,
        scale_range=scale_range,
        mode="bilinear",
        padding_mode="zeros",
    )
    spatial = [
        *reach_past_edges(patch_size, crop_size),
        crop_location(crop_size, n_classes, foreground_fraction),
        # Unrotated patches are cut from the crop's centre as they are: no resampling, and none
        # of the label's classes split into channels.
        _sometimes(
            params.affine_prob,
            _label_as_classes(rotate_and_scale, n_classes),
            CenterSpatialCropd(KEYS, patch_size),
        ),
    ]
    if params.elastic_prob > 0:
        deform = Rand3DElasticd(
            KEYS,
            sigma_range=(9, 13),
            magnitude_range=(0, 200),
            prob=1.0,
            mode="bilinear",
            padding_mode="zeros",
        )
        spatial.append(_sometimes(params.elastic_prob, _label_as_classes(deform, n_classes), Identityd(KEYS)))
    spatial += [RandFlipd(KEYS, prob=0.5, spatial_axis=axis) for axis in params.mirror_axes]
    intensity = [
        RandGaussianNoised("image", prob=params.noise_prob, std=params.noise_std),
        RandGaussianSmoothd(
            "image",
            prob=params.blur_prob,
            sigma_x=tuple(params.blur_sigma),
            sigma_y=tuple(params.blur_sigma),
            sigma_z=tuple(params.blur_sigma),
        ),
        # Brightness multiplies; contrast multiplies about the mean (v -> v * (1 + f), shifted back).
        RandScaleIntensityd("image", prob=params.brightness_prob, factors=_factors(params.brightness_range)),
        RandScaleIntensityFixedMeand(
            "image", prob=params.contrast_prob, factors=_factors(params.contrast_range), preserve_range=True
        ),
        RandSimulateLowResolutiond(
            "image", prob=params.low_resolution_prob, zoom_range=params.low_resolution_zoom
        ),
        _gamma(params.gamma_range, params.inverted_gamma_prob, inverted=True),
        _gamma(params.gamma_range, params.gamma_prob, inverted=False),
    ]
    return Compose([*spatial, *intensity])


def _gamma(gamma_range: Sequence[float], prob: float, inverted: bool) -> OneOf:
    """nnU-Net's gamma, mean and spread kept: when the range straddles 1, a gamma below 1 or
    above it, each half equally likely (batchgeneratorsv2's BGContrast), where a uniform draw
    over 0.7-1.5 would darken the mid-tones in 5 draws of 8. ``inverted`` applies it to the
    negated image, brightening where the other darkens."""
    low, high = gamma_range
    ranges = [(low, 1.0), (1.0, high)] if low < 1.0 < high else [(low, high)]
    draws = [
        RandAdjustContrastd("image", prob=1.0, gamma=bounds, invert_image=inverted, retain_stats=True)
        for bounds in ranges
    ]
    return _sometimes(prob, OneOf(draws), Identityd("image"))


def _label_as_classes(resampling, n_classes: int) -> Compose:
    """The label resampled as nnU-Net resamples it: each class's indicator interpolated like the
    image, then the class of highest share (nearest-neighbour would shift it by up to half a
    voxel against the image)."""
    return Compose([AsDiscreted("label", to_onehot=n_classes), resampling, AsDiscreted("label", argmax=True)])


def _sometimes(prob: float, transform, otherwise) -> OneOf:
    return OneOf([transform, otherwise], weights=[prob, 1 - prob])


def reach_past_edges(patch_size: Sequence[int], crop_size: Sequence[int]) -> list:
    """Padding that lets the patch lie anywhere in the case, as nnU-Net's loader allows.

    The crop around a patch is larger by the rotation margin; without padding by that margin, a
    case smaller than the crop (common: the demo's, and nnU-Net's plans fit the patch to the
    median case) could only be cropped whole, so every patch sat at the case's centre and the
    foreground-centred draws changed nothing. With it, a patch's centre ranges over every
    position that keeps the patch inside the case; a case smaller than the patch is centred."""
    border = []
    for patch, crop in zip(patch_size, crop_size, strict=True):
        before = crop // 2 - patch // 2  # where CenterSpatialCrop starts the patch in the crop
        border += [before, crop - patch - before]
    return [BorderPadd(KEYS, spatial_border=border), SpatialPadd(KEYS, spatial_size=crop_size)]


def foreground_share(fraction: float, batch_size: int) -> float:
    """The share of patches nnU-Net centres on foreground at ``fraction`` (its
    oversample_foreground_percent): the last B - round(B(1 - f)) of each batch of B, so one of
    two at its 0.33 and a batch of 2. A batch of one keeps ``fraction``, where nnU-Net's rule
    would centre none. resseg draws each patch with this share as its chance instead of fixing
    the positions in the batch, so that every draw stays a function of (seed, epoch, rank)."""
    if batch_size == 1:
        return fraction
    return (batch_size - round(batch_size * (1 - fraction))) / batch_size


def crop_location(crop_size: Sequence[int], n_classes: int, foreground_fraction: float) -> OneOf:
    """nnU-Net's oversampling: class first, then a voxel of it; otherwise anywhere. Both crops
    return a list of one sample, so batches collate alike."""
    foreground_centred = RandCropByLabelClassesd(
        KEYS,
        label_key="label",
        spatial_size=crop_size,
        ratios=[BACKGROUND_FALLBACK_WEIGHT] + [1.0] * (n_classes - 1),
        num_classes=n_classes,
        num_samples=1,
        warn=False,  # a class absent from the case is simply not drawn (lesion-free cases)
    )
    anywhere = RandSpatialCropSamplesd(KEYS, roi_size=crop_size, num_samples=1, random_size=False)
    return OneOf([foreground_centred, anywhere], weights=[foreground_fraction, 1 - foreground_fraction])


def _in_plane_axes(spacing: Sequence[float]) -> list[int]:
    """Axes whose spacing is within ANISOTROPY_RATIO of the finest; all three when isotropic-ish."""
    finest = min(spacing)
    return [axis for axis, s in enumerate(spacing) if s <= ANISOTROPY_RATIO * finest]


def _crop_size(patch_size: Sequence[int], params: AugmentationParams, rotated_axes: list[int]) -> list[int]:
    """A crop that still covers the patch after the largest rotation and zoom-out drawn."""
    if params.affine_prob == 0:
        return list(patch_size)
    angle = math.radians(min(params.rotation_degrees, 45.0))
    rotation_margin = math.cos(angle) + math.sin(angle)
    zoom_out = max(1.0, params.scale_range[1])
    return [
        math.ceil(size * zoom_out * (rotation_margin if axis in rotated_axes else 1.0))
        for axis, size in enumerate(patch_size)
    ]


def _factors(multipliers: Sequence[float]) -> tuple[float, float]:
    # MONAI's factors f scale by (1 + f).
    return (multipliers[0] - 1, multipliers[1] - 1)
