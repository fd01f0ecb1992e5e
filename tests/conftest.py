"""Shared fixtures: one tiny synthetic cohort per test session, written and preprocessed for real."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.cohort import synthetic
from pipeline.config import PreprocessParams, ResidualUnitUNetParams, SynthParams, TrainParams
from pipeline.preprocess import stage as preprocess_stage

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY_SYNTH = SynthParams(seed=7, n_train=6, n_test=2)
TINY_NETWORK = ResidualUnitUNetParams(channels=[8, 16, 32], strides=[2, 2], num_res_units=1)
TINY_TRAIN = TrainParams(
    patch_size=[32, 32, 16],
    batch_size=2,
    iterations_per_epoch=6,
    max_epochs=4,
    val_every_n_epochs=2,
    optimizer="adamw",
    learning_rate=3e-3,
)


@pytest.fixture(scope="session")
def cohort_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort") / "synthetic"
    synthetic.run(TINY_SYNTH, out)
    return out


@pytest.fixture
def cohort(cohort_dir, tmp_path) -> Path:
    """A copy of the tiny cohort, for a test to damage."""
    copy = tmp_path / "cohort"
    shutil.copytree(cohort_dir, copy)
    return copy


@pytest.fixture(scope="session")
def preprocessed_dir(cohort_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("preprocessed") / "preprocessed"
    preprocess_stage.run(PreprocessParams(), cohort_dir, out)
    return out


@pytest.fixture
def random_model(tmp_path) -> Path:
    """A real model directory (untrained weights): what the command line needs."""
    import torch

    from pipeline.models.model_dir import ModelDescription, save_fold
    from tests.infer.test_predictor import PLANS  # imported here: that module imports this one

    description = ModelDescription(TINY_NETWORK, PLANS, patch_size=[32, 32, 16])
    torch.manual_seed(0)
    save_fold(tmp_path / "model/fold_0", description, description.build())
    return tmp_path / "model"
