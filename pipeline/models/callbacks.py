"""Lightning callbacks of the train stage: encoder freezing and run identity."""

from __future__ import annotations

import lightning as L


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
