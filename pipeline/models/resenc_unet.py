"""nnU-Net's residual-encoder U-Net (ResEnc, ``ResidualEncoderUNet`` of dynamic_network_architectures),
assembled from MONAI blocks.

Encoder: a stem convolution, then per stage a stack of residual blocks whose first block is
strided (no pooling). Decoder, deliberately light: per stage one transposed convolution up, the
skip concatenated, one convolution. Deep supervision: a 1x1x1 segmentation head per decoder stage.
Instance norm and leaky ReLU throughout. Strides and kernels come from the plan (models/topology.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, UnetOutBlock, UnetResBlock
from monai.networks.blocks.dynunet_block import get_conv_layer
from monai.networks.nets import DynUNet
from torch import nn

from pipeline.models.topology import Topology

NORM = ("instance", {"affine": True})
ACT = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})


class ResidualEncoderUNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        topology: Topology,
        features: Sequence[int],
        blocks_per_stage: Sequence[int],
        deep_supervision: bool,
    ):
        super().__init__()
        if not len(features) == len(blocks_per_stage) == topology.n_stages:
            raise ValueError("one feature count and one block count per stage of the topology")
        self.deep_supervision = deep_supervision
        stem = Convolution(
            3, in_channels, features[0], kernel_size=topology.kernel_sizes[0], norm=NORM, act=ACT
        )
        self.encoder = nn.ModuleDict(
            {
                "stem": stem,
                "stages": nn.ModuleList(
                    _residual_stage(
                        features[max(s - 1, 0)], features[s], n, topology.kernel_sizes[s], topology.strides[s]
                    )
                    for s, n in enumerate(blocks_per_stage)
                ),
            }
        )
        # Decoder stage s brings stage s+1's features up to stage s's resolution.
        shallower = range(topology.n_stages - 1)
        self.up = nn.ModuleList(
            get_conv_layer(
                3,
                features[s + 1],
                features[s],
                kernel_size=topology.strides[s + 1],
                stride=topology.strides[s + 1],
                is_transposed=True,
            )
            for s in shallower
        )
        self.decode = nn.ModuleList(
            Convolution(
                3, 2 * features[s], features[s], kernel_size=topology.kernel_sizes[s], norm=NORM, act=ACT
            )
            for s in shallower
        )
        # Without deep supervision only the full-resolution head exists: an unused head would
        # break DDP, which expects every parameter to receive a gradient.
        self.heads = nn.ModuleList(
            UnetOutBlock(3, features[s], out_channels) for s in (shallower if deep_supervision else [0])
        )
        self.apply(DynUNet.initialize_weights)  # He init for leaky ReLU, as nnU-Net and DynUNet do
        for block in self.modules():
            if isinstance(block, UnetResBlock):
                # Each block starts as its shortcut (nnU-Net's init_last_bn_before_add_to_0), which
                # keeps the deep stacks of the larger presets stable in the first iterations.
                nn.init.zeros_(block.norm2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        x = self.encoder["stem"](x)
        for stage in self.encoder["stages"]:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        every_resolution = self.deep_supervision and self.training
        outputs = []
        for s in reversed(range(len(self.up))):
            x = self.decode[s](torch.cat([self.up[s](x), skips[s]], dim=1))
            if every_resolution or s == 0:
                outputs.append(self.heads[s](x))
        outputs.reverse()  # full resolution first
        return outputs if every_resolution else outputs[0]


def _residual_stage(
    in_channels: int, out_channels: int, n_blocks: int, kernel_size: Sequence[int], stride: Sequence[int]
) -> nn.Sequential:
    return nn.Sequential(
        *(
            UnetResBlock(
                3,
                in_channels if b == 0 else out_channels,
                out_channels,
                kernel_size=kernel_size,
                stride=stride if b == 0 else 1,
                norm_name=NORM,
                act_name=ACT,
            )
            for b in range(n_blocks)
        )
    )
