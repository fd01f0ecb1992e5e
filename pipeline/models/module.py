"""The LightningModule: a network, Dice + cross-entropy (with deep supervision), the optimiser,
and sliding-window validation.

It holds no file paths; Lightning's checkpointing and the DataModule own the I/O.
"""

from __future__ import annotations

import lightning as L
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.metrics import DiceMetric
from torch import nn

from pipeline.config import TrainParams


class SegmentationModule(L.LightningModule):
    def __init__(
        self, network: nn.Module, label_names: dict[int, str], patch_size: list[int], params: TrainParams
    ):
        super().__init__()
        self.network = network
        self.label_names = label_names  # foreground only: value -> name
        self.patch_size = patch_size
        self.params = params
        # nnU-Net's DC_and_CE_loss: the Dice term over the foreground classes only, each computed
        # over the whole batch (a class absent from one patch still counts through the others).
        # A deeply supervised network returns logits at every decoder resolution; the label is
        # downsampled to each (nearest), and the coarser outputs weigh less (deep_supervision_weights).
        self.loss = DeepSupervisionLoss(
            DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
        )
        self.val_dice = ScoredDiceMetric(include_background=False, reduction="mean_batch")

    def forward(self, image: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.network(image)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        outputs = self(batch["image"])
        if isinstance(outputs, list):
            self.loss.weights = deep_supervision_weights(len(outputs))
        loss = self.loss(outputs, batch["label"])
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
        # MONAI's metric gathers every process's cases before aggregating, so all processes hold
        # the same value; sync_dist then averages equal numbers (and keeps Lightning quiet).
        per_label, scored = self.val_dice.aggregate()
        self.val_dice.reset()
        for value, dice in zip(sorted(self.label_names), per_label, strict=True):
            self.log(f"val/dice_{self.label_names[value]}", dice, sync_dist=True)
        # Over the labels that some validation case scored (a label no case holds is left out).
        self.log("val/dice_mean", per_label[scored > 0].mean(), prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        p = self.params
        if p.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                self.parameters(),
                lr=p.learning_rate,
                momentum=p.momentum,
                nesterov=p.momentum > 0,
                weight_decay=p.weight_decay,
            )
        else:
            optimizer = torch.optim.AdamW(self.parameters(), lr=p.learning_rate, weight_decay=p.weight_decay)
        # nnU-Net's polynomial decay, stepped per epoch.
        scheduler = torch.optim.lr_scheduler.PolynomialLR(
            optimizer, total_iters=self.trainer.max_epochs, power=p.poly_power
        )
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


class ScoredDiceMetric(DiceMetric):
    """MONAI's Dice with the evaluation's convention (README, "Metrics"): a case where both
    reference and prediction lack a label is not scored for it (NaN, left out of the mean); a
    prediction where the reference is empty scores 0."""

    def __init__(self, **kwargs):
        super().__init__(ignore_empty=False, get_not_nans=True, **kwargs)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dice = super()._compute_tensor(y_pred, y)
        spatial = tuple(range(2, y.ndim))
        start = 0 if self.include_background else 1
        both_empty = (y[:, start:].sum(spatial) == 0) & (y_pred[:, start:].sum(spatial) == 0)
        return torch.where(both_empty, torch.nan, dice)


def deep_supervision_weights(levels: int) -> list[float]:
    """nnU-Net's weights: halving per level, none on the coarsest, normalised to sum 1."""
    if levels == 1:
        return [1.0]
    weights = [0.5**level for level in range(levels - 1)] + [0.0]
    return [w / sum(weights) for w in weights]
