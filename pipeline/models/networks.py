"""Network construction from validated parameters; MONAI provides the building blocks."""

from __future__ import annotations

from monai.networks.nets import UNet
from torch import nn

from pipeline.config import NetworkParams


def build_network(params: NetworkParams, in_channels: int, out_channels: int) -> nn.Module:
    """A 3D U-Net whose every level is a stack of residual units (output = F(x) + x)."""
    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=params.channels,
        strides=params.strides,
        num_res_units=params.num_res_units,
        norm=params.norm,
        dropout=params.dropout,
    )


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())
