"""A two-channel MRI cohort (T1 + T2, nnU-Net layout, NRRD files) goes through every stage."""

import json

import numpy as np
import pytest

from pipeline import split
from pipeline.cohort import importers, qc
from pipeline.config import DetectionParams, PreprocessParams, SplitParams, ValidateParams
from pipeline.infer import batch
from pipeline.infer.predictor import Predictor
from pipeline.io import read_volume, write_volume
from pipeline.models import train
from pipeline.preprocess import stage as preprocess_stage
from tests.conftest import TINY_NETWORK, TINY_TRAIN


def write_mri_source(root, n_train=4, n_test=1):
    """Spheres bright in T2 and dark in T1 on a noisy head-like background."""
    rng = np.random.default_rng(0)
    shape = (28, 26, 12)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    for index in range(n_train + n_test):
        centre = np.array(shape) / 2 + rng.uniform(-3, 3, size=3)
        inside = np.linalg.norm((grid - centre) / [6, 6, 3], axis=-1) < 1
        head = np.linalg.norm((grid - np.array(shape) / 2) / [13, 12, 6], axis=-1) < 1
        t1 = np.where(head, 300 - 150 * inside + rng.normal(0, 20, shape), 0).astype(np.int16)
        t2 = np.where(head, 200 + 400 * inside + rng.normal(0, 30, shape), 0).astype(np.int16)
        label = inside.astype(np.uint8)
        affine = np.diag([1.1, -1.1, 3.0, 1.0])
        split_dir = "Tr" if index < n_train else "Ts"
        write_volume(root / f"images{split_dir}" / f"mr_{index:02d}_0000.nrrd", t1, affine)
        write_volume(root / f"images{split_dir}" / f"mr_{index:02d}_0001.nrrd", t2, affine)
        write_volume(root / f"labels{split_dir}" / f"mr_{index:02d}.nrrd", label, affine)
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "T1", "1": "T2"},
                "labels": {"background": 0, "lesion": 1},
                "numTraining": n_train,
                "file_ending": ".nrrd",
            }
        )
    )


@pytest.mark.slow
def test_two_channel_mri_end_to_end(tmp_path):
    write_mri_source(tmp_path / "source")
    cohort = tmp_path / "raw/mri"
    quiet = {"echo": lambda _: None}
    importers.run(
        tmp_path / "source", "nnunet", cohort, importers.ImportOptions(), tmp_path / "qc.json", **quiet
    )
    qc.run(ValidateParams(num_workers=1), cohort, tmp_path / "qc.json", **quiet)

    plans = preprocess_stage.run(
        PreprocessParams(num_workers=1, patch_divisor=8), cohort, tmp_path / "pre", tmp_path / "qc.json"
    )
    assert plans.channel_names == ["T1", "T2"]
    assert [n.scheme for n in plans.normalization] == ["zscore", "zscore"]
    image = np.load(tmp_path / "pre/mr_00_image.npy")
    assert image.shape[0] == 2
    inside = image[0] != 0  # per-case z-score over the non-zero (head) voxels of each channel
    assert abs(image[1][inside].mean()) < 0.1 and abs(image[1][inside].std() - 1) < 0.1

    split.run(SplitParams(n_folds=2), tmp_path / "pre/plans.json", tmp_path / "splits.json")
    params = TINY_TRAIN.model_copy(
        update={"max_epochs": 1, "iterations_per_epoch": 2, "val_every_n_epochs": 1}
    )
    train.run(
        params,
        TINY_NETWORK,
        0,
        tmp_path / "pre",
        tmp_path / "splits.json",
        tmp_path / "model/fold_0",
        tmp_path / "live",
    )

    predictor = Predictor.from_model_dir(tmp_path / "model", device="cpu")
    options, model = batch.BatchOptions(), {"sha256": "test"}
    result = batch.run(predictor, model, cohort / "imagesTs", tmp_path / "pred", options, DetectionParams())
    assert result.all_succeeded and result.n_done == 1
    (written,) = (tmp_path / "pred").glob("*.nii.gz")
    scan = read_volume(cohort / "imagesTs" / written.name, max_channels=2)
    mask = read_volume(written)
    assert mask.shape == scan.shape and scan.n_channels == 2
    np.testing.assert_allclose(mask.affine, scan.affine, atol=1e-5)
