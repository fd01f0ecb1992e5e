"""The LightningModule: a network, Dice + cross-entropy, and sliding-window validation.

It holds no file paths; Lightning's checkpointing and the DataModule own the I/O.
"""

from __future__ import annotations

import lightning as L
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from torch import nn


class SegmentationModule(L.LightningModule):
    def __init__(
        self,
        network: nn.Module,
        label_names: dict[int, str],
        patch_size: list[int],
        learning_rate: float,
        weight_decay: float,
    ):
        super().__init__()
        self.network = network
        self.label_names = label_names  # foreground only: value -> name
        self.patch_size = patch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        # Both empty counts as a perfect 1.0 (see README, "Metric conventions").
        self.val_dice = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network(image)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["image"]), batch["label"])
        self.log(
            "train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["image"])
        )
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = sliding_window_inference(
            batch["image"], self.patch_size, sw_batch_size=2, predictor=self, overlap=0.25, mode="gaussian"
        )
        n_classes = logits.shape[1]
        prediction = nn.functional.one_hot(logits.argmax(1), n_classes).movedim(-1, 1)
        reference = nn.functional.one_hot(batch["label"][:, 0].long(), n_classes).movedim(-1, 1)
        self.val_dice(prediction, reference)

    def on_validation_epoch_end(self) -> None:
        per_label = self.val_dice.aggregate()
        self.val_dice.reset()
        for value, dice in zip(sorted(self.label_names), per_label, strict=True):
            self.log(f"val/dice_{self.label_names[value]}", dice, sync_dist=True)
        self.log("val/dice_mean", per_label.mean(), prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )
        # nnU-Net's polynomial decay, stepped per epoch.
        scheduler = torch.optim.lr_scheduler.PolynomialLR(
            optimizer, total_iters=self.trainer.max_epochs, power=0.9
        )
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
