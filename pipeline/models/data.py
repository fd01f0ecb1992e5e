"""The DataModule: preprocessed cases of one fold, random patches for training, whole volumes
for validation.

Every epoch's random draws (which cases, which patches, which augmentations) are a function of
(seed, epoch, process rank) alone, so a run resumed at epoch k draws exactly what an
uninterrupted run would have. Each process draws its own patches; validation cases are split
between processes without the padding of Lightning's sampler, so each case counts once in
the synchronised metric.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from monai.data import CacheDataset, DataLoader, DistributedSampler
from monai.data.utils import set_rnd
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from torch.utils.data import RandomSampler

from pipeline.config import TrainParams
from pipeline.models.augmentation import KEYS, foreground_share, training_patches


def case_files(preprocessed_dir: Path, names: list[str]) -> list[dict]:
    return [{key: str(preprocessed_dir / f"{name}_{key}.npy") for key in KEYS} for name in names]


def load_preprocessed() -> Compose:
    # The arrays are already channel-first; NumpyReader knows no metadata to tell it so.
    return Compose(
        [LoadImaged(KEYS, reader="NumpyReader", image_only=True), EnsureChannelFirstd(KEYS, channel_dim=0)]
    )


class PreprocessedDataModule(L.LightningDataModule):
    def __init__(
        self,
        preprocessed_dir: Path,
        fold: dict,
        patch_size: list[int],
        spacing: list[float],
        n_classes: int,
        batch_size: int,
        params: TrainParams,
    ):
        """``n_classes`` counts the background."""
        super().__init__()
        self.preprocessed_dir = Path(preprocessed_dir)
        self.fold = fold
        self.patch_size = patch_size
        self.spacing = spacing
        self.n_classes = n_classes
        self.batch_size = batch_size
        self.params = params

    def setup(self, stage: str) -> None:
        patches = training_patches(
            self.patch_size,
            self.spacing,
            self.n_classes,
            foreground_share(self.params.foreground_fraction, self.batch_size),
            self.params.augmentation,
        )
        self.train_set = CacheDataset(
            case_files(self.preprocessed_dir, self.fold["train"]),
            Compose([load_preprocessed(), patches]),
            progress=False,
        )
        self.val_set = CacheDataset(
            case_files(self.preprocessed_dir, self.fold["val"]), load_preprocessed(), progress=False
        )

    def train_dataloader(self) -> DataLoader:
        return EpochSeededLoader(
            self.train_set,
            epoch_seed=lambda: epoch_seed(self.params.seed, self._epoch(), self.trainer.global_rank),
            samples_per_epoch=self.params.iterations_per_epoch * self.batch_size,
            batch_size=self.batch_size,
            num_workers=self.params.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        sampler = None
        if self.trainer and self.trainer.world_size > 1:
            sampler = DistributedSampler(
                self.val_set,
                even_divisible=False,
                num_replicas=self.trainer.world_size,
                rank=self.trainer.global_rank,
                shuffle=False,
            )
        return DataLoader(self.val_set, batch_size=1, sampler=sampler, num_workers=self.params.num_workers)

    def _epoch(self) -> int:
        # Counted in optimiser steps: when a resumed run creates its first iterator, Lightning has
        # restored the step count but not yet trainer.current_epoch.
        return self.trainer.global_step // self.params.iterations_per_epoch


class EpochSeededLoader(DataLoader):
    """Draws ``samples_per_epoch`` cases with replacement (an epoch is a number of steps, not a
    pass over the cases) and reseeds everything random when an epoch's iterator is created.

    Reseeding here rather than in a callback matters: Lightning creates the first epoch's
    iterator of a run, resumed or not, before any epoch hook runs. One generator drives the
    sampler and the loader workers' seeds (MONAI seeds each worker's transforms from it); the
    transforms of this process (``num_workers=0``) are reseeded directly.
    """

    def __init__(self, dataset, epoch_seed: Callable[[], int], samples_per_epoch: int, **kwargs):
        self.epoch_seed = epoch_seed
        generator = torch.Generator()
        sampler = RandomSampler(dataset, replacement=True, num_samples=samples_per_epoch, generator=generator)
        super().__init__(dataset, sampler=sampler, generator=generator, **kwargs)

    def __iter__(self):
        seed = self.epoch_seed()
        self.generator.manual_seed(seed)
        set_rnd(self.dataset, seed)
        return super().__iter__()


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    digest = hashlib.sha256(f"{seed}/{epoch}/{rank}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
