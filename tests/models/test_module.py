"""The training loss and the validation Dice follow nnU-Net's conventions."""

import pytest
import torch

from pipeline.models.module import ScoredDiceMetric, SegmentationModule
from tests.conftest import TINY_TRAIN


def one_hot(label: torch.Tensor, n_classes: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(label.long(), n_classes).movedim(-1, 1)


def test_validation_dice_leaves_both_empty_cases_out_and_scores_a_spurious_lesion_zero():
    reference, prediction = torch.zeros(3, 4, 4, 4), torch.zeros(3, 4, 4, 4)
    reference[:, :2] = 1  # the organ: 32 voxels in every case
    prediction[:, :1] = 1  # 16 of them predicted: Dice 2*16/(32+16) = 2/3
    reference[0, 3, 3, 3] = prediction[0, 3, 3, 3] = 2  # case 0: the lesion found exactly
    prediction[1, 3, 3, 3] = 2  # case 1: a lesion where the reference has none
    # case 2: no lesion in either, so the lesion is not scored
    metric = ScoredDiceMetric(include_background=False, reduction="mean_batch")
    metric(one_hot(prediction), one_hot(reference))
    dice, scored = metric.aggregate()
    assert dice.tolist() == pytest.approx([2 / 3, (1.0 + 0.0) / 2])
    assert scored.tolist() == [3, 2]


def nnunet_dice_ce(logits: torch.Tensor, label: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """nnU-Net's DC_and_CE_loss with batch Dice and no background, written out: cross-entropy plus
    one minus the mean over foreground classes of a soft Dice pooled over the batch (nnU-Net
    subtracts the Dice instead of 1 - Dice: the same gradient)."""
    probabilities = logits.softmax(1)[:, 1:]
    target = one_hot(label[:, 0])[:, 1:].float()
    axes = (0, 2, 3, 4)
    dice = (2 * (probabilities * target).sum(axes) + smooth) / (
        probabilities.sum(axes) + target.sum(axes) + smooth
    )
    return torch.nn.functional.cross_entropy(logits, label[:, 0].long()) + 1 - dice.mean()


def test_the_loss_is_nnunets_dice_and_cross_entropy():
    """Two patches, only one holding the lesion: a per-patch Dice would score the other's lesion
    from the smoothing terms alone; pooled over the batch, it counts through the first."""
    torch.manual_seed(0)
    label = torch.zeros(2, 1, 4, 4, 4)
    label[:, :, :2] = 1
    label[0, :, 3, 3, 3] = 2
    logits = torch.randn(2, 3, 4, 4, 4)
    module = SegmentationModule(torch.nn.Identity(), {1: "organ", 2: "lesion"}, [4, 4, 4], TINY_TRAIN)
    assert module.loss(logits, label).item() == pytest.approx(nnunet_dice_ce(logits, label).item(), rel=1e-5)
