"""Real training runs under Lightning: the loss falls, the fold directory is complete, a killed
run resumes where it stopped and ends exactly where an uninterrupted one does."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from pipeline import split
from pipeline.config import SplitParams
from pipeline.errors import ConfigError
from pipeline.models import train
from pipeline.models.callbacks import RunSignature
from pipeline.models.model_dir import load_description, load_fold_networks, load_state_dict
from tests.conftest import TINY_NETWORK, TINY_TRAIN


def read_tsv(path):
    with open(path) as handle:
        return [float(row[path.stem]) for row in csv.DictReader(handle, delimiter="\t")]


@pytest.fixture(scope="module")
def splits(preprocessed_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("splits") / "splits.json"
    split.run(SplitParams(n_folds=3), preprocessed_dir / "plans.json", path)
    return path


@pytest.fixture(scope="module")
def trained(preprocessed_dir, splits, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    summary = train.run(
        TINY_TRAIN, TINY_NETWORK, 0, preprocessed_dir, splits, root / "model/fold_0", root / "dvclive"
    )
    return root, summary


@pytest.mark.slow
def test_training_lowers_the_loss(trained):
    root, summary = trained
    losses = read_tsv(root / "dvclive/plots/metrics/train/loss.tsv")
    assert len(losses) == TINY_TRAIN.max_epochs == summary["epochs"]
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.slow
def test_fold_directory_is_self_contained(trained):
    root, summary = trained
    fold = root / "model/fold_0"
    description = load_description(root / "model")
    assert description.network == TINY_NETWORK
    assert description.plans.labels == {0: "background", 1: "organ", 2: "lesion"}
    assert description.patch_size == TINY_TRAIN.patch_size
    meta = json.loads((fold / "model.json").read_text())
    assert meta["best_val_dice_mean"] == pytest.approx(summary["best_val_dice_mean"])
    assert meta["training"] == json.loads(TINY_TRAIN.model_dump_json())
    assert 0 <= summary["best_val_dice_mean"] <= 1
    assert {p.name for p in (fold / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    (network,) = load_fold_networks(root / "model", description)
    best = torch.load(fold / "checkpoints/best.ckpt", weights_only=True)["state_dict"]
    for name, tensor in network.state_dict().items():
        torch.testing.assert_close(tensor, best[f"network.{name}"])


def test_fold_out_of_range_is_named(preprocessed_dir, splits, tmp_path):
    with pytest.raises(ConfigError, match=r"--fold: 3 but .*splits.json has folds 0-2"):
        train.run(
            TINY_TRAIN, TINY_NETWORK, 3, preprocessed_dir, splits, tmp_path / "fold_3", tmp_path / "live"
        )


def test_only_an_unfinished_run_of_the_same_experiment_is_resumed(tmp_path):
    torch.save({RunSignature.KEY: "same", "epoch": 2}, tmp_path / "last.ckpt")
    assert train._resumable_checkpoint(tmp_path, "same", max_epochs=4) == tmp_path / "last.ckpt"
    assert train._resumable_checkpoint(tmp_path, "changed parameters", max_epochs=4) is None
    assert train._resumable_checkpoint(tmp_path, "same", max_epochs=3) is None  # finished: rerun afresh
    assert train._resumable_checkpoint(tmp_path / "empty", "same", max_epochs=4) is None


def train_command(tmp_path, preprocessed_dir, splits, out):
    params = {
        "train": {
            **json.loads(TINY_TRAIN.model_dump_json()),
            "model_overrides": TINY_NETWORK.model_dump(exclude={"architecture"}),
        }
    }
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    resseg = os.path.join(os.path.dirname(sys.executable), "resseg")
    return [
        *(resseg, "train", "--params", str(params_path), "--preprocessed", str(preprocessed_dir)),
        *("--splits", str(splits), "--out", str(out), "--live-dir", str(out.parent / "live")),
    ]


@pytest.mark.slow
def test_a_killed_run_resumes_and_ends_as_an_uninterrupted_one(
    preprocessed_dir, splits, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # presets are found under configs/ of the working folder
    (tmp_path / "configs").symlink_to(os.path.join(os.path.dirname(__file__), "../../configs"))
    whole = tmp_path / "whole/fold_0"
    subprocess.run(train_command(tmp_path, preprocessed_dir, splits, whole), check=True, capture_output=True)

    killed = tmp_path / "killed/fold_0"
    command = train_command(tmp_path, preprocessed_dir, splits, killed)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (killed / "checkpoints/last.ckpt").exists() and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "model.json").exists()
    stopped_at = torch.load(killed / "checkpoints/last.ckpt", weights_only=True)["epoch"]
    assert stopped_at < TINY_TRAIN.max_epochs - 1

    rerun = subprocess.run(command, check=True, capture_output=True, encoding="utf-8", errors="replace")
    assert (
        f"resuming from {killed / 'checkpoints/last.ckpt'} after epoch {stopped_at + 1} of 4" in rerun.stdout
    )
    resumed = json.loads((killed / "model.json").read_text())
    assert resumed["epochs"] == TINY_TRAIN.max_epochs
    assert resumed["best_val_dice_mean"] == pytest.approx(
        json.loads((whole / "model.json").read_text())["best_val_dice_mean"]
    )
    # Same weights, optimiser state (momentum) and schedule as the run that was never killed.
    reference = torch.load(whole / "checkpoints/last.ckpt", weights_only=True)
    continued = torch.load(killed / "checkpoints/last.ckpt", weights_only=True)
    torch.testing.assert_close(continued["state_dict"], reference["state_dict"])
    torch.testing.assert_close(continued["optimizer_states"], reference["optimizer_states"])
    assert continued["lr_schedulers"] == reference["lr_schedulers"]
    torch.testing.assert_close(load_state_dict(killed / "weights.pt"), load_state_dict(whole / "weights.pt"))
