"""Inference returns masks on the scan's own voxel grid, whatever the scan's orientation."""

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.evaluate.segmentation import dice_per_label
from pipeline.infer.predictor import Predictor, resolve_precision
from pipeline.io import read_volume, write_volume
from pipeline.models.model_dir import ModelDescription
from pipeline.preprocess.plans import ChannelNormalization, Plans
from tests.conftest import TINY_NETWORK

HU_PER_CLASS = 100.0
PLANS = Plans(
    channel_names=["CT"],
    labels={0: "background", 1: "organ", 2: "lesion"},
    target_spacing=(2.0, 2.0, 4.0),
    # An identity normalisation, so the oracle below can read HU back.
    normalization=[ChannelNormalization("ct", clip_low=-1000.0, clip_high=1000.0, mean=0.0, std=1.0)],
    patch_size=[32, 32, 16],
    batch_size=2,
)


class Oracle(nn.Module):
    """A 'network' that knows the answer: class = round(HU / 100), so any error is geometry."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        classes = torch.round(x[:, 0] / HU_PER_CLASS).clamp(0, 2).long()
        return 20.0 * nn.functional.one_hot(classes, 3).movedim(-1, 1).float()


def oracle_predictor():
    description = ModelDescription(TINY_NETWORK, PLANS, patch_size=[32, 32, 16])
    return Predictor(description, [Oracle()], overlap=0.25, device="cpu")


def blob_scan(tmp_path, name, affine, shape=(40, 36, 14)):
    """Two nested ellipsoids, stored with ``affine``; image HU encode the label."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt(((grid / np.array([0.8, 0.7, 0.9])[:, None, None, None]) ** 2).sum(0))
    label = (radius < 1).astype(np.uint8) + (radius < 0.5).astype(np.uint8)
    write_volume(tmp_path / f"{name}.nii.gz", (label * HU_PER_CLASS).astype(np.int16), affine)
    return label


@pytest.mark.parametrize(
    "diagonal",
    [(1.5, 1.5, 3.0), (-1.3, 1.7, 5.0), (-1.6, -1.6, -2.5)],
    ids=["ras", "flipped_x", "all_flipped"],
)
def test_prediction_is_on_the_scan_grid(tmp_path, diagonal):
    affine = np.diag([*diagonal, 1.0])
    affine[:3, 3] = [-30.0, 12.0, 7.0]
    (tmp_path / "in").mkdir()
    label = blob_scan(tmp_path / "in", "scan", affine)
    prediction = oracle_predictor().predict(read_volume(tmp_path / "in/scan.nii.gz"))
    assert prediction.label.shape == label.shape
    # Resampling to 2x2x4 mm and back moves only edge voxels; a wrong inversion (a flip or
    # shift left in) would drop these far below.
    dice = dice_per_label(label, prediction.label, [1, 2])
    assert dice[1] > 0.9 and dice[2] > 0.85


def test_probabilities_are_a_distribution(tmp_path):
    (tmp_path / "in").mkdir()
    blob_scan(tmp_path / "in", "scan", np.diag([2.0, 2.0, 4.0, 1.0]))
    prediction = oracle_predictor().predict(read_volume(tmp_path / "in/scan.nii.gz"))
    assert prediction.probabilities.shape == (3, 40, 36, 14)
    np.testing.assert_allclose(prediction.probabilities.sum(0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(prediction.label, prediction.probabilities.argmax(0))


class Ramp(nn.Module):
    """Organ log-odds against the background of HU - 315, so the organ starts at 315 HU; no lesion."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        organ = x[:, :1] - 315.0
        return torch.cat([torch.zeros_like(organ), organ, torch.full_like(organ, -1e3)], dim=1)


def test_the_boundary_is_placed_inside_a_coarse_voxel(tmp_path):
    # HU = 10 x + 10 along x at 1 mm, predicted at 4 mm: the organ starts at x = 31 (320 HU).
    # The log-odds are linear in x, so resampled back linearly they cross 0 there exactly. The
    # probabilities would be saturated on the 4 mm grid (log-odds -10 and +30 on either side),
    # and resampled back put the boundary half-way between those two voxels: x = 32.
    hu = np.broadcast_to((10.0 * np.arange(64) + 10.0)[:, None, None], (64, 8, 8))
    write_volume(tmp_path / "ramp.nii.gz", hu.astype(np.int16), np.diag([1.0, 4.0, 4.0, 1.0]))
    description = ModelDescription(TINY_NETWORK, PLANS, patch_size=[32, 32, 16])
    predictor = Predictor(description, [Ramp()], overlap=0.25, device="cpu")
    prediction = predictor.predict(read_volume(tmp_path / "ramp.nii.gz"))
    expected = np.broadcast_to((np.arange(64) >= 31)[:, None, None], (64, 8, 8)).astype(np.uint8)
    np.testing.assert_array_equal(prediction.label, expected)
    # Where the coarse grid's log-odds are within float32's reach (|x| < 87), they are the network's.
    organ_log_odds = np.log(prediction.probabilities[1] / prediction.probabilities[0])
    np.testing.assert_allclose(organ_log_odds[24:39, 4, 4], hu[24:39, 4, 4] - 315.0, atol=1e-3)


def test_the_padding_of_a_cropped_border_is_background(tmp_path):
    (tmp_path / "in").mkdir()
    blob_scan(tmp_path / "in", "scan", np.diag([2.0, 2.0, 4.0, 1.0]))
    scan = read_volume(tmp_path / "in/scan.nii.gz")
    # The oracle sees 0 HU as background; the zero border is cropped before it sees anything.
    prediction = oracle_predictor().predict(scan)
    outside = scan.array == 0
    assert outside[0].all() and outside.sum() > 1000
    np.testing.assert_allclose(prediction.probabilities[0][outside], 1.0, atol=1e-6)


def test_mirroring_averages_the_windows_and_their_mirror_images(tmp_path):
    (tmp_path / "in").mkdir()
    blob_scan(tmp_path / "in", "scan", np.diag([2.0, 2.0, 4.0, 1.0]))
    scan = read_volume(tmp_path / "in/scan.nii.gz")
    description = ModelDescription(TINY_NETWORK, PLANS, patch_size=[32, 32, 16])
    plain, mirrored = (
        Predictor(description, [Oracle()], overlap=0.25, device="cpu", mirror=mirror).predict(scan)
        for mirror in (False, True)
    )
    np.testing.assert_allclose(mirrored.probabilities, plain.probabilities, atol=1e-5)

    class Ramped(nn.Module):
        """The oracle plus a ramp along x on class 1's logit: flipping x negates the ramp."""

        def forward(self, x):
            logits = Oracle()(x)
            logits[:, 1] += torch.linspace(-30, 30, x.shape[2])[:, None, None]
            return logits

    ramped = Predictor(description, [Ramped()], overlap=0.25, device="cpu", mirror=False).predict(scan)
    assert np.abs(ramped.probabilities - plain.probabilities).max() > 0.5
    # Four of the eight mirror images flip x: the ramps cancel, and the oracle is left.
    unramped = Predictor(description, [Ramped()], overlap=0.25, device="cpu", mirror=True).predict(scan)
    np.testing.assert_allclose(unramped.probabilities, plain.probabilities, atol=1e-5)


def test_mixed_precision_follows_float32(tmp_path):
    """bfloat16 arithmetic (the CPU default where the CPU has it) moves probabilities by a few
    hundredths at most, and the mask hardly at all, against float32 with the same weights."""
    (tmp_path / "in").mkdir()
    blob_scan(tmp_path / "in", "scan", np.diag([2.0, 2.0, 4.0, 1.0]))
    scan = read_volume(tmp_path / "in/scan.nii.gz")
    description = ModelDescription(TINY_NETWORK, PLANS, patch_size=[32, 32, 16])
    torch.manual_seed(0)
    network = description.build()
    exact, mixed = (
        Predictor(description, [network], overlap=0.25, device="cpu", precision=precision).predict(scan)
        for precision in ("fp32", "bf16")
    )
    difference = np.abs(mixed.probabilities - exact.probabilities)
    assert 0 < difference.max() < 0.05
    assert (mixed.label == exact.label).mean() > 0.99


@pytest.mark.parametrize(
    ("device", "precision", "resolved"),
    [("cpu", "fp32", "fp32"), ("cpu", "bf16", "bf16"), ("cuda", "auto", "fp16")],
)
def test_precision_is_resolved_for_the_device(device, precision, resolved):
    assert resolve_precision(precision, torch.device(device)) == resolved
