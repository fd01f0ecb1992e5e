"""The uncertainty columns against hand-computed values, and on a model of two folds."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from pipeline.cohort.dataset import load_cohort
from pipeline.io import read_volume
from pipeline.models.model_dir import WEIGHTS
from pipeline.review.uncertainty import fold_disagreement, foreground_entropy


def test_foreground_entropy_by_hand():
    # Two foreground voxels: (0.5, 0.5) has entropy ln 2, (0.1, 0.9) has 0.325; divided by ln 2:
    # 1 and 0.469, mean 0.7345. The background voxel (label 0) does not count.
    probabilities = np.array([[0.5, 0.1, 0.5], [0.5, 0.9, 0.5]])
    label = np.array([1, 1, 0])
    expected = (1 + -(0.1 * np.log(0.1) + 0.9 * np.log(0.9)) / np.log(2)) / 2
    assert foreground_entropy(probabilities, label) == pytest.approx(expected)
    assert foreground_entropy(probabilities, np.zeros(3, int)) is None


def test_fold_disagreement_by_hand():
    ensemble = np.array([1, 1, 0, 0], bool)
    folds = [np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0], bool)]
    # Dice 1 and 2 * 1 / (1 + 2): disagreement 1 - (1 + 2/3) / 2.
    assert fold_disagreement(folds, ensemble) == pytest.approx(1 / 6)
    assert fold_disagreement(folds[:1], ensemble) is None


def test_two_identical_folds_agree_and_two_different_ones_do_not(random_model, cohort_dir):
    from pipeline.infer.predictor import Predictor

    scan = read_volume(load_cohort(cohort_dir).test[0].image)
    options = {"device": "cpu", "precision": "fp32"}
    single = Predictor.from_model_dir(random_model, **options).predict(scan)
    assert single.fold_disagreement is None and 0 < single.uncertainty <= 1

    shutil.copytree(random_model / "fold_0", random_model / "fold_1")
    same = Predictor.from_model_dir(random_model, **options).predict(scan)
    assert same.fold_disagreement == 0.0
    weights = torch.load(random_model / "fold_1" / WEIGHTS, weights_only=True)
    torch.manual_seed(1)
    weights = {
        name: t + 0.5 * torch.randn_like(t) if t.is_floating_point() else t for name, t in weights.items()
    }
    torch.save(weights, random_model / "fold_1" / WEIGHTS)
    different = Predictor.from_model_dir(random_model, **options).predict(scan)
    assert different.fold_disagreement > 0
