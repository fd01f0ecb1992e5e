"""Two real DDP processes (gloo, CPU) train one fold; one model directory comes out, and the
synchronised validation Dice equals the one a single process computes over the same cases."""

import json
import os
import subprocess
import sys

import lightning as L
import pytest
import yaml

from pipeline import split
from pipeline.config import SplitParams
from pipeline.models.data import PreprocessedDataModule
from pipeline.models.model_dir import load_description, load_state_dict
from pipeline.models.module import SegmentationModule
from tests.conftest import REPO_ROOT, TINY_NETWORK, TINY_TRAIN


@pytest.mark.slow
def test_two_process_ddp_training(preprocessed_dir, tmp_path):
    # Three validation cases: DDP splits them 2 + 1, which Lightning's own sampler would pad to 2 + 2.
    split.run(SplitParams(n_folds=2), preprocessed_dir / "plans.json", tmp_path / "splits.json")
    fold = json.loads((tmp_path / "splits.json").read_text())[0]
    assert len(fold["val"]) == 3
    params = TINY_TRAIN.model_copy(
        update={
            "max_epochs": 2,
            "val_every_n_epochs": 1,
            "accelerator": "cpu",
            "devices": 2,
            "strategy": "ddp",
            "model_overrides": TINY_NETWORK.model_dump(exclude={"architecture"}),
        }
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": json.loads(params.model_dump_json())}))
    out = tmp_path / "model/fold_0"
    resseg = os.path.join(os.path.dirname(sys.executable), "resseg")
    command = [
        *(resseg, "train", "--params", "params.yaml", "--preprocessed", str(preprocessed_dir)),
        *("--splits", "splits.json", "--out", str(out), "--live-dir", "live"),
    ]
    (tmp_path / "configs").symlink_to(REPO_ROOT / "configs")
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, encoding="utf-8", errors="replace", timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Two processes joined one process group (on a CPU, Lightning's DDP uses gloo; resseg's
    # entry point keeps Lightning's notice that says so quiet).
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in result.stderr and "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr

    # One model directory, written once.
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["fold_0"]
    assert {p.name for p in out.iterdir()} == {
        "model.json",
        "weights.pt",
        "cohort_profile.json",
        "checkpoints",
    }
    meta = json.loads((out / "model.json").read_text())
    assert meta["epochs"] == 2

    ddp_dice = json.loads((tmp_path / "live/metrics.json").read_text())["val"]["dice_mean"]
    description = load_description(tmp_path / "model")
    network = description.build()
    network.load_state_dict(load_state_dict(out / "checkpoints/last.ckpt"))
    module = SegmentationModule(
        network, description.plans.foreground_labels, description.patch_size, TINY_TRAIN
    )
    plans = description.plans
    data = PreprocessedDataModule(
        preprocessed_dir,
        fold,
        description.patch_size,
        list(plans.target_spacing),
        len(plans.labels),
        2,
        TINY_TRAIN,
    )
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (single,) = trainer.validate(module, datamodule=data, verbose=False)
    assert single["val/dice_mean"] == pytest.approx(ddp_dice, abs=1e-5)
