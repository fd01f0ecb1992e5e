"""The plan follows the data: median spacing, patch from the resampled shape, budgets."""

import numpy as np
import pytest

from pipeline.config import PreprocessParams
from pipeline.errors import InputDataError
from pipeline.preprocess.fingerprint import ChannelStatistics, Fingerprint
from pipeline.preprocess.planner import make_plans, plan_batch_size, plan_patch_size

LABELS = {0: "background", 1: "organ"}
CT_STATS = ChannelStatistics(percentile_low=-50.0, percentile_high=250.0, mean=90.0, std=40.0)


def fingerprint(spacings, shapes, channels=(CT_STATS,)):
    return Fingerprint(np.array(spacings, float), np.array(shapes, float), list(channels))


def test_isotropic_cohort_gets_a_cubic_plan():
    plans = make_plans(fingerprint([[1, 1, 1]] * 3, [[96, 96, 96]] * 3), ["CT"], LABELS, PreprocessParams())
    assert plans.target_spacing == (1.0, 1.0, 1.0)
    assert plans.patch_size == [96, 96, 96]


def test_anisotropic_cohort_keeps_the_coarse_axis_coarse():
    spacings = [[0.8, 0.8, 5.0], [0.7, 0.7, 4.0], [0.9, 0.9, 6.0]]
    shapes = [[512, 512, 40], [512, 512, 50], [512, 512, 34]]
    plans = make_plans(fingerprint(spacings, shapes), ["CT"], LABELS, PreprocessParams())
    assert plans.target_spacing == (0.8, 0.8, 5.0)  # median per axis, z stays 5 mm
    x, y, z = plans.patch_size
    assert x == y and z < x  # fewer voxels along the thick-slice axis
    assert all(size % 16 == 0 for size in plans.patch_size)
    assert np.prod(plans.patch_size) <= PreprocessParams().max_patch_voxels


def test_patch_shrinks_along_the_physically_longest_axis():
    params = PreprocessParams(max_patch_voxels=64 * 64 * 32, patch_divisor=16)
    # 128 x 128 x 32 voxels at 1 x 1 x 2 mm: z spans 64 mm, x and y 128 mm, so x and y shrink.
    assert plan_patch_size(np.array([128, 128, 32]), (1.0, 1.0, 2.0), params) == [64, 64, 32]
    # At 1 x 1 x 4 mm, z spans 128 mm too and takes its turn (ties go to the first axis).
    assert plan_patch_size(np.array([128, 128, 32]), (1.0, 1.0, 4.0), params) == [80, 96, 16]


def test_batch_size_rules():
    params = PreprocessParams(max_batch_voxels=8 * 32**3)
    assert plan_batch_size([32, 32, 32], cohort_voxels=1e9, params=params) == 8  # the budget
    assert plan_batch_size([32, 32, 32], cohort_voxels=3 * 32**3 * 20, params=params) == 3  # 5% of the cohort
    assert plan_batch_size([32, 32, 32], cohort_voxels=32**3, params=params) == 2  # never below 2


def test_explicit_target_spacing_wins():
    params = PreprocessParams(target_spacing=[2.0, 2.0, 2.0])
    plans = make_plans(fingerprint([[1, 1, 1]] * 3, [[96, 96, 96]] * 3), ["CT"], LABELS, params)
    assert plans.target_spacing == (2.0, 2.0, 2.0)
    assert plans.patch_size == [48, 48, 48]


def test_normalisation_per_modality():
    ct = make_plans(fingerprint([[1, 1, 1]] * 3, [[64] * 3] * 3), ["CT"], LABELS, PreprocessParams())
    assert ct.normalization[0].scheme == "ct" and ct.normalization[0].clip_low == -50.0
    mri = make_plans(
        fingerprint([[1, 1, 1]] * 3, [[64] * 3] * 3, [CT_STATS] * 2), ["T1", "T2"], LABELS, PreprocessParams()
    )
    assert [n.scheme for n in mri.normalization] == ["zscore", "zscore"]
    with pytest.raises(InputDataError, match="CT is supported as a single channel only"):
        make_plans(
            fingerprint([[1, 1, 1]] * 3, [[64] * 3] * 3, [CT_STATS] * 2),
            ["CT", "T1"],
            LABELS,
            PreprocessParams(),
        )
