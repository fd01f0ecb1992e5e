"""The three residual architectures, their plan-derived topology, and their parameters."""

import pytest
import torch
from monai.networks.blocks import UnetResBlock
from monai.networks.nets.resnet import ResNetBlock
from torch import nn
from torch.nn import functional as F

from pipeline.config import (
    ResidualEncoderUNetParams,
    ResidualUnitUNetParams,
    ResNetUNetParams,
    TrainParams,
    parse_network,
    resolve_network,
)
from pipeline.errors import ConfigError
from pipeline.models.networks import build_network, count_flops, count_parameters, encoder_parameter_names
from pipeline.models.topology import plan_topology
from tests.conftest import REPO_ROOT, TINY_NETWORK

PRESET_DIR = REPO_ROOT / "configs/models"
PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))

# Small enough to train a step in a second on a CPU, one of each architecture.
TINY = {
    "residual_unit_unet": TINY_NETWORK,
    "residual_encoder_unet": ResidualEncoderUNetParams(
        blocks_per_stage=[1, 2, 2], base_features=4, max_features=8
    ),
    "resnet_unet": ResNetUNetParams(depth=10, decoder_channels=[16, 16, 8, 8, 4]),
}


# MONAI's UNet nests its levels: level 0's down, level 1's down, the bottom block.
UNET_ENCODER = ("model.0.", "model.1.submodule.0.", "model.1.submodule.1.submodule.")


def preset(name: str, **overrides):
    return resolve_network(TrainParams(model=name, model_overrides=overrides), PRESET_DIR)


def test_isotropic_patch_halves_every_axis_until_four_voxels():
    topology = plan_topology([64, 64, 64], [1.0, 1.0, 1.0], max_stages=6)
    assert topology.strides == [(1, 1, 1)] + [(2, 2, 2)] * 4  # 64 -> 32 -> 16 -> 8 -> 4
    assert topology.kernel_sizes == [(3, 3, 3)] * 5


def test_thick_slices_are_kept_until_in_plane_catches_up():
    topology = plan_topology([128, 128, 16], [0.8, 0.8, 4.0], max_stages=6)
    # In-plane spacing 0.8 -> 1.6 -> 3.2: z (4.0) is within 2x of 3.2 from stage 3 on; z stops at
    # 4 voxels (16 -> 8 -> 4), in-plane at 4 (128 -> 4).
    assert topology.strides == [(1, 1, 1), (2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 1)]
    # Kernel 1 on z while it is more than 2x the finest spacing (4.0 vs 0.8, then 1.6).
    assert topology.kernel_sizes == [(3, 3, 1), (3, 3, 1)] + [(3, 3, 3)] * 4


def test_stage_count_is_capped_and_odd_sizes_stop_downsampling():
    assert plan_topology([64, 64, 64], [1.0] * 3, max_stages=3).strides == [(1, 1, 1), (2, 2, 2), (2, 2, 2)]
    # The demo's plan: 80 -> 40 -> 20 -> 10 -> 5, which is odd, and z 32 -> 16 -> 8 -> 4.
    topology = plan_topology([80, 80, 32], [1.8, 1.8, 4.1], max_stages=6)
    assert topology.strides == [(1, 1, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert topology.kernel_sizes == [(3, 3, 1)] + [(3, 3, 3)] * 4


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("patch, spacing", [([32, 32, 32], [1.0, 1.0, 1.0]), ([64, 48, 16], [0.8, 0.8, 3.0])])
def test_every_preset_segments_a_patch_at_full_resolution(name, patch, spacing):
    network = build_network(preset(name), 1, 3, patch, spacing).eval()
    with torch.no_grad():
        out = network(torch.randn(1, 1, *patch))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 3, *patch)


def test_deep_supervision_gives_every_decoder_resolution_in_training_only():
    patch, spacing = [64, 48, 16], [0.8, 0.8, 3.0]
    network = build_network(TINY["residual_encoder_unet"], 2, 3, patch, spacing)
    outputs = network.train()(torch.randn(2, 2, *patch))
    # Strides (1,1,1), (2,2,1), (2,2,2): three stages, so the two shallower decoder resolutions.
    assert [o.shape for o in outputs] == [(2, 3, 64, 48, 16), (2, 3, 32, 24, 16)]
    with torch.no_grad():
        assert network.eval()(torch.randn(2, 2, *patch)).shape == (2, 3, *patch)
    plain = parse_network(TINY["residual_encoder_unet"].model_dump() | {"deep_supervision": False})
    outputs = build_network(plain, 2, 3, patch, spacing).train()(torch.randn(2, 2, *patch))
    assert outputs.shape == (2, 3, *patch)


def test_residual_encoder_stages_follow_the_preset_and_the_plan():
    params = preset("resenc_m")
    network = build_network(params, 1, 2, [80, 80, 32], [1.8, 1.8, 4.1])
    # Five stages fit the demo's patch: blocks_per_stage is cut to its first five, widths capped at 320.
    stages = network.encoder["stages"]
    assert [len(stage) for stage in stages] == [1, 3, 4, 6, 6]
    assert [stage[0].conv1.conv.out_channels for stage in stages] == [32, 64, 128, 256, 320]
    assert stages[1][0].conv1.conv.stride == (2, 2, 1)
    assert network.encoder["stem"].conv.kernel_size == (3, 3, 1)


def test_network_is_residual_and_sized_as_configured():
    network = build_network(TINY_NETWORK, 1, 3, patch_size=[32, 32, 16], spacing=[1.0, 1.0, 1.0])
    residual_units = [m for m in network.modules() if type(m).__name__ == "ResidualUnit"]
    assert residual_units, "every level should be built from residual units"
    assert count_parameters(network) > 0
    out = network(torch.zeros(1, 1, 32, 32, 16))
    assert out.shape == (1, 3, 32, 32, 16)


@pytest.mark.parametrize(
    "architecture, block_type, last_norm, activation",
    [
        ("residual_encoder_unet", UnetResBlock, "norm2", lambda x: F.leaky_relu(x, 0.01)),
        ("resnet_unet", ResNetBlock, "bn2", F.relu),
    ],
)
def test_blocks_add_their_input_back(architecture, block_type, last_norm, activation):
    network = build_network(TINY[architecture], 1, 2, [32, 32, 32], [1.0, 1.0, 1.0])
    # The first block whose shortcut is the identity (no projection of the input).
    block = next(m for m in network.modules() if isinstance(m, block_type) and not m.downsample)
    # Silence the residual branch F: what is left, act(F(x) + x), must be act(x).
    nn.init.zeros_(getattr(block, last_norm).weight)
    nn.init.zeros_(getattr(block, last_norm).bias)
    channels = getattr(block, last_norm).num_features
    x = torch.randn(2, channels, 8, 8, 8)
    torch.testing.assert_close(block(x.clone()), activation(x))


@pytest.mark.parametrize(
    "architecture, encoder_prefixes, head_prefix",
    [
        # model.2 is MONAI UNet's top up-block, which ends in the segmentation convolution.
        ("residual_unit_unet", UNET_ENCODER, "model.2."),
        ("residual_encoder_unet", ("encoder.",), "heads."),
        ("resnet_unet", ("encoder.",), "segmentation_head."),
    ],
)
def test_encoder_parameters_are_the_encoder_and_not_the_head(architecture, encoder_prefixes, head_prefix):
    network = build_network(TINY[architecture], 1, 3, [32, 32, 32], [1.0, 1.0, 1.0])
    names = {name for name, _ in network.named_parameters()}
    encoder = encoder_parameter_names(network)
    assert encoder and encoder < names
    assert encoder == {name for name in names if name.startswith(encoder_prefixes)}
    assert any(name.startswith(head_prefix) for name in names - encoder)


def test_count_flops_of_a_convolution_is_two_per_multiply_add():
    conv = nn.Conv3d(2, 4, kernel_size=3, padding=1)
    voxels = 4 * 5 * 6
    assert count_flops(conv, 2, [4, 5, 6]) == 2 * 2 * 4 * 3**3 * voxels
    assert conv.training  # the network's mode is restored


@pytest.mark.parametrize("architecture", sorted(TINY))
def test_one_sgd_step_lowers_the_loss(architecture):
    torch.manual_seed(0)
    network = build_network(TINY[architecture], 1, 2, [32, 32, 32], [1.0, 1.0, 1.0]).train()
    image = torch.randn(2, 1, 32, 32, 32)
    target = (image > 0.5).long()[:, 0]
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-2)

    def loss() -> torch.Tensor:
        out = network(image)
        return F.cross_entropy(out[0] if isinstance(out, list) else out, target)

    before = loss()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        assert loss() < before.detach()


def test_patch_too_small_to_downsample_is_named():
    with pytest.raises(ConfigError, match=r"^train\.patch_size: \[6, 6, 6\] .*cannot be halved"):
        build_network(preset("resenc_s"), 1, 2, [6, 6, 6], [1.0, 1.0, 1.0])


def test_each_architecture_round_trips_through_its_description():
    for params in [*TINY.values(), *(preset(name) for name in PRESETS)]:
        assert parse_network(params.model_dump()) == params
    assert ResidualUnitUNetParams().architecture == "residual_unit_unet"
    assert not ResNetUNetParams().deep_supervision and not ResidualUnitUNetParams().deep_supervision


@pytest.mark.parametrize(
    "model, overrides, message",
    [
        ("resenc_m", {"blocks_per_stage": "x"}, "blocks_per_stage: input should be a valid list, got 'x'"),
        ("resenc_m", {"blocks_per_stage": [1, "3"]}, "blocks_per_stage.1: input should be a valid integer"),
        ("resenc_m", {"channels": [8, 16]}, "channels: unknown key"),
        ("resnet18_unet", {"depth": 19}, "depth: input should be 10, 18, 34 or 50, got 19"),
        (
            "resunet_small",
            {"architecture": "vnet"},
            "architecture: expected one of 'residual_unit_unet', 'residual_encoder_unet', 'resnet_unet', "
            "got 'vnet'",
        ),
    ],
)
def test_a_bad_network_key_is_named_on_one_line(model, overrides, message):
    with pytest.raises(ConfigError) as err:
        preset(model, **overrides)
    text = str(err.value)
    assert text.startswith(f"{PRESET_DIR / model}.yaml + train.model_overrides: {message}")
    assert "\n" not in text
