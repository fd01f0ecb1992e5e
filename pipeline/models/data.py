"""The DataModule: preprocessed cases of one fold, random patches for training, whole volumes
for validation."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from monai.data import CacheDataset, DataLoader
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)
from torch.utils.data import RandomSampler

from pipeline.config import TrainParams

KEYS = ("image", "label")


def case_files(preprocessed_dir: Path, names: list[str]) -> list[dict]:
    return [{key: str(preprocessed_dir / f"{name}_{key}.npy") for key in KEYS} for name in names]


def load_preprocessed() -> Compose:
    # The arrays are already channel-first; NumpyReader knows no metadata to tell it so.
    return Compose(
        [LoadImaged(KEYS, reader="NumpyReader", image_only=True), EnsureChannelFirstd(KEYS, channel_dim=0)]
    )


def training_augmentation(patch_size: list[int], foreground_fraction: float) -> Compose:
    """Patches with foreground oversampling, mirroring, and mild intensity changes."""
    return Compose(
        [
            SpatialPadd(KEYS, spatial_size=patch_size),
            RandCropByPosNegLabeld(
                KEYS,
                label_key="label",
                spatial_size=patch_size,
                pos=foreground_fraction,
                neg=1 - foreground_fraction,
                num_samples=1,
            ),
            *[RandFlipd(KEYS, prob=0.5, spatial_axis=axis) for axis in range(3)],
            RandScaleIntensityd("image", factors=0.1, prob=0.2),
            RandShiftIntensityd("image", offsets=0.1, prob=0.2),
            RandGaussianNoised("image", std=0.1, prob=0.15),
        ]
    )


class PreprocessedDataModule(L.LightningDataModule):
    def __init__(
        self, preprocessed_dir: Path, fold: dict, patch_size: list[int], batch_size: int, params: TrainParams
    ):
        super().__init__()
        self.preprocessed_dir = Path(preprocessed_dir)
        self.fold = fold
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.params = params

    def setup(self, stage: str) -> None:
        self.train_set = CacheDataset(
            case_files(self.preprocessed_dir, self.fold["train"]),
            Compose(
                [load_preprocessed(), training_augmentation(self.patch_size, self.params.foreground_fraction)]
            ),
            progress=False,
        )
        self.val_set = CacheDataset(
            case_files(self.preprocessed_dir, self.fold["val"]), load_preprocessed(), progress=False
        )

    def train_dataloader(self) -> DataLoader:
        # An epoch is a fixed number of iterations, as in nnU-Net, whatever the cohort size.
        sampler = RandomSampler(
            self.train_set,
            replacement=True,
            num_samples=self.params.iterations_per_epoch * self.batch_size,
        )
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.params.num_workers,
            persistent_workers=self.params.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=1, num_workers=self.params.num_workers)
