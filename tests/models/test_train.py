"""A short real training run under Lightning, and the model directory it leaves."""

import csv
import json

import pytest
import torch

from pipeline import split
from pipeline.config import SplitParams
from pipeline.models import train
from pipeline.models.model_dir import load_description, load_fold_networks
from pipeline.models.networks import build_network, count_parameters
from tests.conftest import TINY_NETWORK, TINY_TRAIN


def read_tsv(path):
    with open(path) as handle:
        return [float(row[path.stem]) for row in csv.DictReader(handle, delimiter="\t")]


@pytest.fixture(scope="module")
def trained(preprocessed_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    split.run(SplitParams(n_folds=3), preprocessed_dir / "plans.json", root / "splits.json")
    summary = train.run(
        TINY_TRAIN, TINY_NETWORK, preprocessed_dir, root / "splits.json", root / "model", root / "dvclive"
    )
    return root, summary


@pytest.mark.slow
def test_training_lowers_the_loss(trained):
    root, _ = trained
    losses = read_tsv(root / "dvclive/plots/metrics/train/loss.tsv")
    assert len(losses) == TINY_TRAIN.max_epochs
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.slow
def test_model_directory_is_self_contained(trained):
    root, summary = trained
    model_dir = root / "model"
    description = load_description(model_dir)
    assert description.network == TINY_NETWORK
    assert description.plans.labels == {0: "background", 1: "organ", 2: "lesion"}
    assert description.patch_size == TINY_TRAIN.patch_size
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["best_val_dice_mean"] == pytest.approx(summary["best_val_dice_mean"])
    assert 0 <= summary["best_val_dice_mean"] <= 1
    assert (model_dir / "fold_0/checkpoints/last.ckpt").is_file()
    assert (model_dir / "fold_0/checkpoints/best.ckpt").is_file()
    (network,) = load_fold_networks(model_dir, description)
    best = torch.load(model_dir / "fold_0/checkpoints/best.ckpt", weights_only=True)["state_dict"]
    for name, tensor in network.state_dict().items():
        torch.testing.assert_close(tensor, best[f"network.{name}"])


def test_network_is_residual_and_sized_as_configured():
    network = build_network(TINY_NETWORK, in_channels=1, out_channels=3)
    residual_units = [m for m in network.modules() if type(m).__name__ == "ResidualUnit"]
    assert residual_units, "every level should be built from residual units"
    assert count_parameters(network) > 0
    out = network(torch.zeros(1, 1, 32, 32, 16))
    assert out.shape == (1, 3, 32, 32, 16)


def test_fold_out_of_range_is_named(preprocessed_dir, tmp_path):
    from pipeline.errors import ConfigError

    split.run(SplitParams(n_folds=3), preprocessed_dir / "plans.json", tmp_path / "splits.json")
    params = TINY_TRAIN.model_copy(update={"fold": 3})
    with pytest.raises(ConfigError, match=r"train.fold: 3 but .*splits.json has folds 0-2"):
        train.run(
            params,
            TINY_NETWORK,
            preprocessed_dir,
            tmp_path / "splits.json",
            tmp_path / "model",
            tmp_path / "live",
        )
