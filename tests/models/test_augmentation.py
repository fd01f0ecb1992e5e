"""Training patches: the requested share is centred on foreground, a foreground class first (as
nnU-Net draws them), and augmented patches keep their size and their label values."""

import numpy as np
import pytest
import torch
from monai.data.utils import set_rnd

from pipeline.config import AugmentationParams
from pipeline.models.augmentation import (
    _crop_size,
    _gamma,
    _in_plane_axes,
    foreground_share,
    training_patches,
)

PATCH = [15, 15, 9]  # odd sizes: mirroring keeps the centre voxel in place


def volume_with_small_foreground():
    """A 40x40x20 volume whose foreground is one 4x4x4 cube: a random patch centre almost never
    falls on it by chance, so a centre on foreground means the sampler chose foreground."""
    label = torch.zeros(1, 40, 40, 20)
    label[:, 30:34, 5:9, 12:16] = 1
    image = torch.randn(1, 40, 40, 20)
    return {"image": image, "label": label}


@pytest.mark.parametrize("fraction", [0.33, 0.8])
def test_requested_share_of_patches_is_centred_on_foreground(fraction):
    params = AugmentationParams(affine_prob=0.0)
    patches = training_patches(PATCH, [1.0, 1.0, 1.0], 2, fraction, params)
    set_rnd(patches, 0)
    centre = tuple(s // 2 for s in PATCH)
    n = 900
    on_foreground = sum(
        float(patches(volume_with_small_foreground())[0]["label"][(0, *centre)]) == 1 for _ in range(n)
    )
    # Binomial standard deviation at n=900 is at most 0.017; allow four of them.
    assert abs(on_foreground / n - fraction) < 0.07


def organ_with_small_lesion(lesion: bool = True):
    """A 20x20x10 organ (4000 voxels, label 1) holding a 2x2x2 lesion (8 voxels, label 2)."""
    data = volume_with_small_foreground()
    data["label"][:] = 0
    data["label"][:, 10:30, 10:30, 5:15] = 1
    if lesion:
        data["label"][:, 19:21, 19:21, 9:11] = 2
    return data


def centre_labels(patches, data, n):
    centre = (0, *(s // 2 for s in PATCH))
    return [int(patches(data)[0]["label"][centre]) for _ in range(n)]


def test_a_foreground_class_is_drawn_first_so_a_small_lesion_is_centred_as_often_as_the_organ():
    """Of the foreground-centred half of the patches, half go to the 8-voxel lesion: a quarter of
    all draws (a voxel-first draw would centre the lesion in 0.1% of them)."""
    patches = training_patches(PATCH, [1.0, 1.0, 1.0], 3, 0.5, AugmentationParams(affine_prob=0.0))
    set_rnd(patches, 0)
    n = 1200
    centres = centre_labels(patches, organ_with_small_lesion(), n)
    # Binomial standard deviation of a 0.25 share at n=1200 is 0.0125; allow four of them. A
    # patch placed anywhere lands on the lesion with chance 8/8112: negligible here.
    assert abs(centres.count(2) / n - 0.25) < 0.05
    # The organ: its forced quarter, and the random half lands on it with chance 4000/8112 ≈ 0.49.
    assert abs(centres.count(1) / n - (0.25 + 0.5 * 3992 / 8112)) < 0.06


def test_a_case_without_a_class_or_without_any_foreground_still_gets_its_patches():
    patches = training_patches(PATCH, [1.0, 1.0, 1.0], 3, 1.0, AugmentationParams(affine_prob=0.0))
    set_rnd(patches, 0)
    # Lesion-free: every foreground-centred patch goes to the organ.
    assert set(centre_labels(patches, organ_with_small_lesion(lesion=False), 50)) == {1}
    empty = organ_with_small_lesion(lesion=False)
    empty["label"][:] = 0
    assert set(centre_labels(patches, empty, 20)) == {0}


def test_augmented_patches_have_the_patch_size_and_only_the_label_values():
    params = AugmentationParams(affine_prob=1.0, elastic_prob=0.5, low_resolution_prob=1.0, gamma_prob=1.0)
    patches = training_patches(PATCH, [0.8, 0.8, 3.0], 3, 0.5, params)
    set_rnd(patches, 1)
    data = volume_with_small_foreground()
    data["label"][:, 10:30, 10:30, 5:15] = 2
    for _ in range(20):
        (patch,) = patches(data)
        assert tuple(patch["image"].shape) == (1, *PATCH)
        assert tuple(patch["label"].shape) == (1, *PATCH)
        assert set(np.unique(patch["label"].numpy())) <= {0.0, 1.0, 2.0}


def test_thick_slices_are_rotated_in_plane_only():
    assert _in_plane_axes([0.8, 0.8, 3.0]) == [0, 1]
    assert _in_plane_axes([1.0, 1.2, 2.5]) == [0, 1, 2]
    # The crop covers a 30-degree rotation and a 1.4x zoom-out in-plane; the thick axis only the zoom.
    params = AugmentationParams(rotation_degrees=30, scale_range=[0.7, 1.4])
    assert _crop_size([100, 100, 10], params, rotated_axes=[0, 1]) == [192, 192, 14]
    assert _crop_size([100, 100, 10], AugmentationParams(affine_prob=0), [0, 1]) == [100, 100, 10]


# Rotation and zoom at their defaults but never drawn: the crop is larger than the patch by the
# rotation margin, and each patch is the crop's centre, unchanged, so positions can be read back.
UNROTATED_WITH_MARGIN = AugmentationParams(
    affine_prob=1e-9,
    noise_prob=0.0,
    blur_prob=0.0,
    brightness_prob=0.0,
    contrast_prob=0.0,
    low_resolution_prob=0.0,
    gamma_prob=0.0,
    inverted_gamma_prob=0.0,
)


def test_a_patch_reaches_every_position_of_a_case_smaller_than_the_crop_around_it():
    """A 24x24x14 case against a 29x29x18 crop: the patch's centre must range over every
    position that keeps the 15x15x9 patch inside the case (as in nnU-Net's loader), not sit at
    the case's centre because the crop can only take the case whole."""
    shape = (24, 24, 14)
    assert all(c > s for c, s in zip(_crop_size(PATCH, UNROTATED_WITH_MARGIN, [0, 1, 2]), shape, strict=True))
    index = torch.arange(np.prod(shape), dtype=torch.float32).reshape(1, *shape)
    patches = training_patches(PATCH, [1.0, 1.0, 1.0], 2, 0.0, UNROTATED_WITH_MARGIN)
    set_rnd(patches, 0)
    centre = (0, *(s // 2 for s in PATCH))
    data = {"image": index, "label": torch.zeros(1, *shape)}
    centres = np.array([np.unravel_index(int(patches(data)[0]["image"][centre]), shape) for _ in range(600)])
    for axis, (size, patch) in enumerate(zip(shape, PATCH, strict=True)):
        assert set(centres[:, axis]) == set(range(patch // 2, size - patch // 2))


def test_foreground_centred_patches_reach_a_lesion_at_the_edge_of_a_case_smaller_than_the_crop():
    shape = (24, 24, 14)
    label = torch.zeros(1, *shape)
    label[:, 21:24, 21:24, 11:14] = 1  # outside the case's central patch
    data = {"image": torch.randn(1, *shape), "label": label}
    patches = training_patches(PATCH, [1.0, 1.0, 1.0], 2, 0.8, UNROTATED_WITH_MARGIN)
    set_rnd(patches, 0)
    n = 400
    holding_lesion = sum(float(patches(data)[0]["label"].max()) == 1 for _ in range(n))
    # Every foreground-centred patch holds it (clamped to the case, it still reaches the corner);
    # a patch at the case's centre never does, and one placed anywhere seldom.
    assert abs(holding_lesion / n - 0.8) < 0.08


def test_the_foreground_share_is_nnunets_count_per_batch():
    # nnU-Net centres the last B - round(B * (1 - f)) patches of a batch of B.
    assert foreground_share(0.33, 2) == 0.5
    assert foreground_share(0.33, 3) == pytest.approx(1 / 3)
    assert foreground_share(0.33, 4) == 0.25
    assert foreground_share(0.33, 12) == pytest.approx(4 / 12)
    assert foreground_share(0.0, 2) == 0.0 and foreground_share(1.0, 2) == 1.0
    assert foreground_share(0.33, 1) == 0.33  # nnU-Net's rule would centre none


@pytest.mark.parametrize("inverted", [False, True])
def test_gamma_below_and_above_one_are_equally_likely(inverted):
    """nnU-Net's draw (BGContrast): half the gammas in 0.7-1, half in 1-1.5, where a uniform draw
    over 0.7-1.5 gives 0.375 below 1. On the image [0, 0.5, 1] a gamma below 1 lifts the middle
    voxel above the mean that the transform restores (0.5), one above 1 drops it below; the
    inverted gamma does the opposite."""
    gamma = _gamma([0.7, 1.5], prob=1.0, inverted=inverted)
    set_rnd(gamma, 0)
    n = 2000
    image = torch.tensor([0.0, 0.5, 1.0]).reshape(1, 3, 1, 1)
    lifted = sum(float(gamma({"image": image})["image"][0, 1, 0, 0]) > 0.5 for _ in range(n))
    share_below_one = 1 - lifted / n if inverted else lifted / n
    # Binomial standard deviation at n=2000: 0.011; four of them, far from 0.375.
    assert abs(share_below_one - 0.5) < 0.045


def test_gamma_keeps_mean_and_spread():
    image = torch.rand(1, 8, 8, 4) * 3 - 1
    for inverted in (False, True):
        out = _gamma([0.7, 1.5], prob=1.0, inverted=inverted)({"image": image})["image"]
        assert float(out.mean()) == pytest.approx(float(image.mean()), abs=1e-5)
        assert float(out.std()) == pytest.approx(float(image.std()), rel=1e-4)
        assert not torch.allclose(out, image)
