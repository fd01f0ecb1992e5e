"""The one preprocessing chain: orientation, spacing and intensity, checked against the input."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd, Zoom

from pipeline.io import write_volume
from pipeline.preprocess.plans import ChannelNormalization, Plans
from pipeline.preprocess.transforms import build_preprocessing, zoom_label

PLANS = Plans(
    channel_names=["CT"],
    labels={0: "background", 1: "organ"},
    target_spacing=(2.0, 2.0, 4.0),
    normalization=[ChannelNormalization("ct", clip_low=-100.0, clip_high=200.0, mean=50.0, std=25.0)],
    patch_size=[32, 32, 16],
    batch_size=2,
)


def write_pair(tmp_path, name, image, label, affine):
    write_volume(tmp_path / f"{name}_image.nii.gz", image, affine)
    write_volume(tmp_path / f"{name}_label.nii.gz", label, affine)
    return {"image": str(tmp_path / f"{name}_image.nii.gz"), "label": str(tmp_path / f"{name}_label.nii.gz")}


def test_output_is_ras_at_target_spacing(tmp_path):
    # LPS-like storage, 1 x 1 x 2 mm: x and y flipped relative to RAS.
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])
    image = np.full((16, 12, 8), -1000, np.int16)  # air everywhere: nothing to crop
    label = np.zeros((16, 12, 8), np.uint8)
    out = build_preprocessing(PLANS)(write_pair(tmp_path, "a", image, label, affine))
    assert tuple(out["image"].shape) == (1, 8, 6, 4)
    np.testing.assert_allclose(np.diag(out["image"].affine.numpy())[:3], [2.0, 2.0, 4.0])
    assert out["label"].shape == out["image"].shape


def test_flipped_storage_gives_the_same_network_input(tmp_path):
    """The same anatomy stored with flipped x gives identical preprocessed arrays."""
    rng = np.random.default_rng(0)
    image = rng.integers(-200, 300, size=(12, 10, 6)).astype(np.int16)
    label = (image > 100).astype(np.uint8)
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    flipped_affine = affine.copy()
    flipped_affine[0, 0] = -2.0
    flipped_affine[0, 3] = 2.0 * (image.shape[0] - 1)  # voxel i lands where voxel n-1-i was
    plain = build_preprocessing(PLANS)(write_pair(tmp_path, "plain", image, label, affine))
    flipped = build_preprocessing(PLANS)(
        write_pair(tmp_path, "flip", image[::-1], label[::-1], flipped_affine)
    )
    np.testing.assert_allclose(plain["image"].numpy(), flipped["image"].numpy(), atol=1e-5)
    np.testing.assert_array_equal(plain["label"].numpy(), flipped["label"].numpy())


@pytest.mark.parametrize(
    "hu, expected", [(-1000, (-100 - 50) / 25), (50, 0.0), (100, 2.0), (900, (200 - 50) / 25)]
)
def test_ct_intensity_is_clipped_then_z_scored(tmp_path, hu, expected):
    image = np.full((4, 4, 4), hu, np.int16)
    out = build_preprocessing(PLANS, keys=("image",))(
        {
            "image": write_pair(tmp_path, "c", image, image.astype(np.uint8), np.diag([2.0, 2.0, 4.0, 1.0]))[
                "image"
            ]
        }
    )
    assert torch.allclose(out["image"].as_tensor(), torch.tensor(expected, dtype=torch.float32), atol=1e-5)


def test_inversion_restores_geometry_and_labels_exactly(tmp_path):
    """No resampling needed (spacing = target): crop, reorientation and their inverses must
    give back the stored label voxel for voxel, on the original grid."""
    rng = np.random.default_rng(1)
    image = np.zeros((20, 18, 10), np.int16)  # zero border: cropped away by preprocessing
    image[3:17, 2:15, 1:9] = rng.integers(-900, 300, size=(14, 13, 8))
    label = np.zeros_like(image, dtype=np.uint8)
    label[5:12, 4:10, 2:7] = 1
    label[7:9, 5:7, 3:5] = 2
    affine = np.diag([-2.0, 2.0, -4.0, 1.0])  # flipped x and z, at the target spacing
    affine[:3, 3] = [40.0, -10.0, 30.0]
    chain = build_preprocessing(PLANS)
    out = chain(write_pair(tmp_path, "inv", image, label, affine))
    assert tuple(out["label"].shape[1:]) == (14, 13, 8)  # cropped to the non-zero box
    restored = Invertd("label", chain, orig_keys="label", nearest_interp=True)(out)["label"]
    np.testing.assert_array_equal(restored[0].numpy().astype(np.uint8), label)
    np.testing.assert_allclose(restored.affine.numpy(), affine)


def test_a_label_is_resampled_by_its_classes_interpolated_shares():
    """Zoomed by 1.5 along x, the new voxels' centres fall at -0.17, 0.5, 1.17, 1.83, 2.5 and
    3.17 old voxels: the two at x.5 lie halfway, where the object's share is exactly 1/2 and the
    tie goes to the background, so the object stays centred. Nearest-neighbour gives
    [0, 1, 1, 1, 0, 0], half a voxel off the image interpolated at the same points."""
    label = MetaTensor(torch.tensor([0.0, 1.0, 1.0, 0.0]).reshape(1, 4, 1, 1))
    zoomed = zoom_label(label, Zoom((1.5, 1.0, 1.0), mode="trilinear", keep_size=False))
    assert zoomed.flatten().tolist() == [0, 0, 1, 1, 0, 0]


def test_the_resampled_label_follows_the_resampled_image(tmp_path):
    """An organ (label 1) holding small lesions (label 2), each with its own intensity, resampled
    from 1.9 x 1.9 x 3.5 mm to the plan's 2 x 2 x 4 mm: each voxel's label is the class whose
    intensity the interpolated image is closest to (ties left out), and each class keeps the
    size the image gives it. Nearest-neighbour labels had the lesions 27% larger than the image
    shows them."""
    rng = np.random.default_rng(3)
    label = np.zeros((40, 40, 20), np.uint8)
    label[8:30, 10:33, 4:16] = 1
    for _ in range(6):  # lesions a few voxels across
        x, y, z = rng.integers([10, 12, 5], [26, 29, 13])
        label[x : x + 3, y : y + 4, z : z + 2] = 2
    intensity = np.array([-100.0, 100.0, 200.0])  # background, organ, lesion (HU)
    affine = np.diag([1.9, 1.9, 3.5, 1.0])
    pair = write_pair(tmp_path, "z", intensity[label].astype(np.int16), label, affine)
    out = build_preprocessing(PLANS)(pair)
    image = out["image"][0].numpy() * 25.0 + 50.0  # back to HU (the plan's z-score; nothing clipped)
    distance = np.abs(image[..., None] - intensity)
    closest = distance.argmin(-1)
    clear = np.sort(distance, -1)[..., 1] - distance.min(-1) > 30  # not halfway between two
    resampled = out["label"][0].numpy()
    np.testing.assert_array_equal(resampled[clear], closest[clear])
    for value in (1, 2):
        assert abs((resampled == value).sum() / (closest == value).sum() - 1) < 0.05
