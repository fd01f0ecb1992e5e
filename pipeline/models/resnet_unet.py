"""A U-Net whose encoder is a MONAI 3D ResNet (10, 18, 34 or 50): MONAI's FlexibleUNet, trained
from scratch (no pretrained weights are ever downloaded), accepting any patch size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import FlexibleUNet
from torch.nn import functional as F

# The encoder halves every axis five times (strided stem, max-pool, three strided layers).
DIVISOR = 2**5


class ResNetUNet(FlexibleUNet):
    """The decoder's shapes line up only for sizes divisible by 32, and the plan's patches need
    not be (the demo's is 80x80x32): other inputs are padded at the far end by replicating the
    border and the logits are cropped back, so every voxel the loss sees is a real one. The
    padding costs compute (80 -> 96 per axis), not accuracy; a patch divisible by 32
    (``train.patch_size``) avoids it.

    The encoder keeps MONAI's batch norm (as its published MedicalNet weights expect), so training
    needs at least two values per channel at the deepest level: a batch of 2 (the plan's least) or
    a patch of more than 32 voxels on some axis. The decoder is FlexibleUNet's (upsampling, skip
    concatenated, two convolutions), the head a 3x3x3 convolution at full resolution.
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int, decoder_channels: Sequence[int]):
        super().__init__(
            in_channels,
            out_channels,
            backbone=f"resnet{depth}",
            pretrained=False,
            decoder_channels=tuple(decoder_channels),
            spatial_dims=3,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[2:]
        # F.pad takes (before, after) pairs starting from the last axis.
        padding = [amount for n in reversed(shape) for amount in (0, -n % DIVISOR)]
        logits = super().forward(F.pad(x, padding, mode="replicate"))
        return logits[(..., *(slice(0, n) for n in shape))]
