"""Network construction from validated parameters, and what training and the benchmark ask of a network.

Three residual architectures, chosen by ``architecture`` in a preset (configs/models/):
``residual_unit_unet`` (MONAI's UNet with residual units), ``residual_encoder_unet`` (nnU-Net's
ResEnc, shaped by the plan's patch and spacing) and ``resnet_unet`` (a MONAI 3D ResNet encoder
under a U-Net decoder).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import UNet
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import NetworkParams, ResidualEncoderUNetParams, ResidualUnitUNetParams, ResNetUNetParams
from pipeline.errors import ConfigError
from pipeline.models.resenc_unet import ResidualEncoderUNet
from pipeline.models.resnet_unet import ResNetUNet
from pipeline.models.topology import MIN_FEATURE_SIZE, plan_topology


def build_network(
    params: NetworkParams,
    in_channels: int,
    out_channels: int,
    patch_size: Sequence[int],
    spacing: Sequence[float],
) -> nn.Module:
    """The network for patches of ``patch_size`` voxels at ``spacing`` mm.

    In train() mode a network with ``params.deep_supervision`` returns a list of logits, full
    resolution first, then each coarser decoder resolution; otherwise, and always in eval()
    mode, one tensor (N, out_channels, *spatial shape of the input).
    """
    if isinstance(params, ResidualUnitUNetParams):
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
    if isinstance(params, ResidualEncoderUNetParams):
        topology = plan_topology(patch_size, spacing, max_stages=len(params.blocks_per_stage))
        if topology.n_stages < 2:
            raise ConfigError(
                f"train.patch_size: {list(patch_size)} at spacing {list(spacing)} cannot be halved on its "
                f"finest axes (each needs an even size of at least {2 * MIN_FEATURE_SIZE})"
            )
        stages = range(topology.n_stages)
        return ResidualEncoderUNet(
            in_channels,
            out_channels,
            topology,
            features=[min(params.base_features * 2**s, params.max_features) for s in stages],
            blocks_per_stage=params.blocks_per_stage[: topology.n_stages],
            deep_supervision=params.deep_supervision,
        )
    if isinstance(params, ResNetUNetParams):
        return ResNetUNet(in_channels, out_channels, params.depth, params.decoder_channels)
    raise TypeError(f"no network for {type(params).__name__}")


def encoder_parameter_names(network: nn.Module) -> set[str]:
    """Names (as in ``network.named_parameters()``) of the encoder's parameters, to freeze them."""
    encoder = _unet_encoder(network) if isinstance(network, UNet) else [network.encoder]
    in_encoder = {id(p) for module in encoder for p in module.parameters()}
    return {name for name, p in network.named_parameters() if id(p) in in_encoder}


def _unet_encoder(unet: UNet) -> list[nn.Module]:
    # MONAI's UNet nests its levels: Sequential(down, SkipConnection(next level), up), down to a
    # bottom block (a ResidualUnit, or a Convolution, which subclasses Sequential).
    encoder, level = [], unet.model
    while type(level) is nn.Sequential:
        down, skip, _up = level
        encoder.append(down)
        level = skip.submodule
    return [*encoder, level]


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def count_flops(network: nn.Module, in_channels: int, patch_size: Sequence[int]) -> int:
    """Forward FLOPs for one patch (batch 1) in eval mode, as PyTorch's FlopCounterMode counts
    them: convolutions and matrix products, a multiply-add being 2; norms and activations are
    not counted."""
    weight = next(network.parameters())
    patch = torch.zeros(1, in_channels, *patch_size, device=weight.device, dtype=weight.dtype)
    was_training = network.training
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            network.eval()(patch)
    finally:
        network.train(was_training)
    return counter.get_total_flops()
