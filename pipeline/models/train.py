"""The train stage: one fold of the cross-validation, under a Lightning Trainer.

Resume: with ``train.resume: auto`` a fold directory holding the ``last.ckpt`` of an unfinished
run of the same experiment (same parameters, network, plan and fold) continues from it: epoch, optimiser,
scheduler and best score come from Lightning's checkpoint; the random draws depend only on
the epoch (see data.py). A checkpoint of another experiment is never resumed.

Under DDP every process runs this function; only the global rank 0 writes the model
directory (Lightning's checkpointing and DVCLive already write from rank 0 only).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import torch
from dvclive.lightning import DVCLiveLogger
from lightning.pytorch.strategies import DDPStrategy

from pipeline.config import NetworkParams, TrainParams
from pipeline.errors import ConfigError
from pipeline.models.callbacks import EncoderFreezing, FolderCheckpoint, RunSignature
from pipeline.models.data import PreprocessedDataModule
from pipeline.models.model_dir import ModelDescription, load_state_dict, save_fold, software_versions
from pipeline.models.module import SegmentationModule
from pipeline.models.networks import encoder_parameter_names
from pipeline.models.transfer import initialise_from
from pipeline.preprocess.plans import Plans
from pipeline.review.profile import PROFILE_JSON, CohortProfile


def run(
    params: TrainParams,
    network_params: NetworkParams,
    fold: int,
    preprocessed_dir: str | Path,
    splits_path: str | Path,
    fold_path: str | Path,
    live_dir: str | Path = "dvclive",
) -> dict:
    preprocessed_dir, fold_path = Path(preprocessed_dir), Path(fold_path)
    plans = Plans.load(preprocessed_dir / "plans.json")
    folds = json.loads(Path(splits_path).read_text())
    if fold >= len(folds):
        raise ConfigError(f"--fold: {fold} but {splits_path} has folds 0-{len(folds) - 1}")
    patch_size = plans.patch_size if params.patch_size == "auto" else params.patch_size
    batch_size = plans.batch_size if params.batch_size == "auto" else params.batch_size
    description = ModelDescription(network_params, plans, patch_size=patch_size)
    signature = _signature(params, description, folds[fold])

    L.seed_everything(params.seed, workers=True, verbose=False)
    network = description.build()
    init_report = initialise_from(network, params.init_from, plans.labels) if params.init_from else None
    module = SegmentationModule(network, plans.foreground_labels, patch_size, params)

    checkpoint_dir = fold_path / "checkpoints"
    resume_from = (
        _resumable_checkpoint(checkpoint_dir, signature, params.max_epochs)
        if params.resume == "auto"
        else None
    )
    best = FolderCheckpoint(
        dirpath=checkpoint_dir,
        filename="best",
        monitor="val/dice_mean",
        mode="max",
        enable_version_counter=False,
    )
    # last.ckpt after every epoch (not only when validation runs): a kill loses one epoch at most.
    last = FolderCheckpoint(
        dirpath=checkpoint_dir, filename="last", save_on_train_epoch_end=True, enable_version_counter=False
    )
    callbacks = [best, last, RunSignature(signature)]
    if params.freeze_encoder_epochs:
        callbacks.append(EncoderFreezing(encoder_parameter_names(network), params.freeze_encoder_epochs))

    trainer = L.Trainer(
        max_epochs=params.max_epochs,
        accelerator=params.accelerator,
        devices=params.devices,
        num_nodes=params.num_nodes,
        strategy=_strategy(params),
        precision=_precision(params),
        gradient_clip_val=params.gradient_clip or None,
        logger=DVCLiveLogger(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, resume=bool(resume_from)),
        callbacks=callbacks,
        check_val_every_n_epoch=params.val_every_n_epochs,
        num_sanity_val_steps=0,
        # Each process draws its own patches and validation cases are split in data.py.
        use_distributed_sampler=False,
        log_every_n_steps=min(params.iterations_per_epoch, 50),
        enable_model_summary=False,  # the fold's summary line says what a user needs
    )
    spacing = list(plans.target_spacing)
    data = PreprocessedDataModule(
        preprocessed_dir, folds[fold], patch_size, spacing, len(plans.labels), batch_size, params
    )
    trainer.fit(module, datamodule=data, ckpt_path=resume_from)

    summary = {
        "fold": fold,
        "best_val_dice_mean": float(best.best_model_score) if best.best_model_score is not None else None,
        "epochs": trainer.current_epoch,
        "resumed_from": str(resume_from) if resume_from else None,
    }
    if trainer.is_global_zero:
        # The weights of the best validation epoch, or of the last epoch if none was validated.
        chosen = best.best_model_path or last.best_model_path  # without a monitor: the latest
        network.load_state_dict(load_state_dict(Path(chosen)))
        save_fold(
            fold_path,
            description,
            network.cpu(),
            _training_profile(preprocessed_dir),
            training=params.model_dump(),
            init_from=init_report,
            software=software_versions(),  # for the model card
            **summary,
        )
    return summary


def _training_profile(preprocessed_dir: Path) -> CohortProfile | None:
    """The profile that preprocessing wrote; None for a folder preprocessed before it did."""
    path = preprocessed_dir / PROFILE_JSON
    return CohortProfile.load(path) if path.is_file() else None


def _signature(params: TrainParams, description: ModelDescription, fold_cases: dict) -> str:
    what_is_learned = {
        "train": params.model_dump(exclude=set(TrainParams.RUNTIME)),
        "network": description.network.model_dump(),
        "plans": description.plans.to_dict(),
        "patch_size": description.patch_size,
        "cases": fold_cases,
    }
    return hashlib.sha256(json.dumps(what_is_learned, sort_keys=True).encode()).hexdigest()


def _resumable_checkpoint(checkpoint_dir: Path, signature: str, max_epochs: int) -> Path | None:
    """``last.ckpt`` if it is an unfinished run of this experiment, else None.

    Another experiment's checkpoints, or a finished run's (which DVC reruns when the code
    changed), are left where they are for this run to overwrite: DVC's cache keeps the fold
    directory they belong to. Every DDP process asks this and gets the same answer, as nothing
    is moved.
    """
    last = checkpoint_dir / "last.ckpt"
    if not last.is_file():
        return None
    try:
        checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    except Exception:  # unreadable: not ours to continue
        checkpoint = {}
    if checkpoint.get(RunSignature.KEY) != signature:
        print(f"not resuming: {last} belongs to other parameters or data")
        return None
    if checkpoint["epoch"] + 1 >= max_epochs:
        print(f"not resuming: {last} is a finished run")
        return None
    print(f"resuming from {last} after epoch {checkpoint['epoch'] + 1} of {max_epochs}")
    return last


def _strategy(params: TrainParams):
    if params.strategy == "ddp" and params.freeze_encoder_epochs:
        # Frozen parameters produce no gradient; DDP must not wait for them.
        return DDPStrategy(find_unused_parameters=True)
    return params.strategy


def _precision(params: TrainParams) -> str:
    if params.precision != "auto":
        return params.precision
    on_gpu = params.accelerator == "gpu" or (params.accelerator == "auto" and torch.cuda.is_available())
    return "16-mixed" if on_gpu else "32-true"
