"""Lightning callbacks of the train stage: encoder freezing, run identity, checkpoints that do
not name the folder they were written in."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class EncoderFreezing(L.Callback):
    """Keep the encoder's weights fixed for the first epochs of a fine-tuning run.

    Freezing happens per epoch, after Lightning has wrapped the model for DDP, so the frozen
    parameters stay registered with DDP and are synchronised again once they train.
    """

    def __init__(self, parameter_names: set[str], epochs: int):
        self.parameter_names = parameter_names
        self.epochs = epochs

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        frozen = trainer.current_epoch < self.epochs
        for name, parameter in module.network.named_parameters():
            if name in self.parameter_names:
                parameter.requires_grad_(not frozen)


class RunSignature(L.Callback):
    """Stamps checkpoints with the signature of the parameters, plan and data that made them,
    so that ``train.resume: auto`` continues only a run of the same experiment."""

    KEY = "resseg_run_signature"

    def __init__(self, signature: str):
        self.signature = signature

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[self.KEY] = self.signature


class FolderCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, with its own state (written into every checkpoint) naming
    the checkpoint files relative to its folder: Lightning's absolute paths made the same run's
    checkpoints differ between two clones of a project, and so their DVC hashes and dvc.lock."""

    PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["dirpath"] = "."
        for key in self.PATH_KEYS:
            state[key] = self._relative(state[key])
        state["best_k_models"] = {self._relative(p): score for p, score in state["best_k_models"].items()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        if state.get("dirpath") == ".":
            state["dirpath"] = self.dirpath
            for key in self.PATH_KEYS:
                state[key] = self._absolute(state[key])
            state["best_k_models"] = {self._absolute(p): score for p, score in state["best_k_models"].items()}
        super().load_state_dict(state)

    def _relative(self, path: str) -> str:
        return os.path.relpath(path, self.dirpath) if path else path

    def _absolute(self, path: str) -> str:
        return os.path.join(self.dirpath, path) if path else path
