"""Prediction averages the folds of a model directory: a fold left there by an earlier
experiment on the same plan, trained with other parameters, is refused by name instead of being
averaged in silently; folds that differ only in where they ran are one model."""

import pytest

from pipeline.config import TrainParams
from pipeline.errors import InputDataError
from pipeline.models.model_dir import ModelDescription, load_description, save_fold
from tests.conftest import TINY_NETWORK
from tests.infer.test_predictor import PLANS


def save(model_dir, fold, **training):
    description = ModelDescription(TINY_NETWORK, PLANS, patch_size=[32, 32, 16])
    params = TrainParams(**training).model_dump()
    save_fold(model_dir / f"fold_{fold}", description, description.build(), training=params, fold=fold)


def test_a_fold_of_another_experiment_is_refused_by_name(tmp_path):
    save(tmp_path, 0, max_epochs=80)
    save(tmp_path, 1, max_epochs=80)
    save(tmp_path, 3, max_epochs=10)  # an earlier, shorter experiment's fold
    with pytest.raises(InputDataError, match=r"fold_3: trained with other parameters than .*fold_0 "
                       r"\(train.max_epochs: 10 against 80\)"):  # fmt: skip
        load_description(tmp_path)
    # Choosing the folds leaves it out.
    assert load_description(tmp_path, folds=[0, 1]) == load_description(tmp_path / "fold_0")


def test_folds_that_differ_only_in_where_they_ran_are_one_model(tmp_path):
    save(tmp_path, 0, num_workers=2, devices=1)
    save(tmp_path, 1, num_workers=0, accelerator="cpu", resume="never")
    load_description(tmp_path)
