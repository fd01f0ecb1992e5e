"""The training loss and its gradient against nnU-Net v2's own ``DC_and_CE_loss`` (the settings of
nnUNetTrainer for 3d_fullres: batch Dice, smoothing 1e-5, background left out of the Dice term,
weights 1 and 1), run by nnU-Net's code on the same logits and labels."""

import textwrap

import pytest
import torch

from pipeline.models.module import SegmentationModule
from tests.conftest import TINY_TRAIN
from tests.nnunet_env import require_nnunet, run_nnunet


def test_loss_and_gradient_equal_nnunets(tmp_path):
    require_nnunet()
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 12, 10, 6) * 2
    label = torch.zeros(2, 1, 12, 10, 6)
    label[:, :, 3:9, 2:8, 1:5] = 1
    label[0, :, 5:7, 4:6, 2:4] = 2  # the lesion in one patch of the two
    torch.save((logits, label), tmp_path / "batch.pt")
    run_nnunet(
        textwrap.dedent(f"""
            import torch
            from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
            from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
            logits, label = torch.load({str(tmp_path / "batch.pt")!r}, weights_only=True)
            logits.requires_grad_(True)
            loss = DC_and_CE_loss({{"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}}, {{}},
                                  weight_ce=1, weight_dice=1, ignore_label=None,
                                  dice_class=MemoryEfficientSoftDiceLoss)(logits, label)
            loss.backward()
            torch.save((loss.detach(), logits.grad), {str(tmp_path / "nnunet.pt")!r})
        """)
    )
    nnunet_loss, nnunet_gradient = torch.load(tmp_path / "nnunet.pt", weights_only=True)

    module = SegmentationModule(torch.nn.Identity(), {1: "organ", 2: "lesion"}, [12, 10, 6], TINY_TRAIN)
    logits.requires_grad_(True)
    loss = module.loss(logits, label)
    loss.backward()
    # nnU-Net's Dice term is -Dice, MONAI's 1 - Dice: the same gradient, the loss 1 apart.
    assert loss.item() == pytest.approx(nnunet_loss.item() + 1, rel=1e-6)
    assert torch.allclose(logits.grad, nnunet_gradient, rtol=1e-5, atol=1e-9)
    assert logits.grad.abs().max() > 1e-5  # a gradient worth comparing
