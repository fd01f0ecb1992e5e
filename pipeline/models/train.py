"""The train stage: one fold of the cross-validation, under a Lightning Trainer."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from dvclive.lightning import DVCLiveLogger
from lightning.pytorch.callbacks import ModelCheckpoint

from pipeline.config import NetworkParams, TrainParams
from pipeline.errors import ConfigError
from pipeline.models.data import PreprocessedDataModule
from pipeline.models.model_dir import ModelDescription, fold_dir, save_description, save_weights
from pipeline.models.module import SegmentationModule
from pipeline.preprocess.plans import Plans


def run(
    params: TrainParams,
    network_params: NetworkParams,
    preprocessed_dir: str | Path,
    splits_path: str | Path,
    model_dir: str | Path,
    live_dir: str | Path = "dvclive",
) -> dict:
    preprocessed_dir, model_dir = Path(preprocessed_dir), Path(model_dir)
    plans = Plans.load(preprocessed_dir / "plans.json")
    folds = json.loads(Path(splits_path).read_text())
    if params.fold >= len(folds):
        raise ConfigError(f"train.fold: {params.fold} but {splits_path} has folds 0-{len(folds) - 1}")

    patch_size = plans.patch_size if params.patch_size == "auto" else params.patch_size
    batch_size = plans.batch_size if params.batch_size == "auto" else params.batch_size

    L.seed_everything(params.seed, workers=True)
    description = ModelDescription(network_params, plans, patch_size=patch_size)
    module = SegmentationModule(
        description.build(),
        label_names=plans.foreground_labels,
        patch_size=patch_size,
        learning_rate=params.learning_rate,
        weight_decay=params.weight_decay,
    )
    checkpoints = ModelCheckpoint(
        dirpath=fold_dir(model_dir, params.fold) / "checkpoints",
        filename="best",
        monitor="val/dice_mean",
        mode="max",
        save_last=True,
    )
    trainer = L.Trainer(
        max_epochs=params.max_epochs,
        accelerator=params.accelerator,
        devices=1,
        logger=DVCLiveLogger(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False),
        callbacks=[checkpoints],
        check_val_every_n_epoch=params.val_every_n_epochs,
        num_sanity_val_steps=0,
        log_every_n_steps=min(params.iterations_per_epoch, 50),
    )
    data = PreprocessedDataModule(preprocessed_dir, folds[params.fold], patch_size, batch_size, params)
    trainer.fit(module, datamodule=data)

    best = torch.load(checkpoints.best_model_path, map_location="cpu", weights_only=True)
    module.load_state_dict(best["state_dict"])
    save_weights(model_dir, params.fold, module.network)
    summary = {"fold": params.fold, "best_val_dice_mean": float(checkpoints.best_model_score)}
    save_description(model_dir, description, training=params.model_dump(), **summary)
    return summary
