"""Our volume reader as a MONAI ``ImageReader``, so ``LoadImaged`` reads every format resseg
accepts (NIfTI, NRRD, MetaImage) with the same geometry as the rest of the package.

MONAI's own readers would need ITK for NRRD/MetaImage and try optional DICOM codecs on
every load; this one delegates to ``pipeline.io.read_volume`` (nibabel / SimpleITK).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
from monai.data import ImageReader
from monai.data.image_reader import _stack_images
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from pipeline.io import Volume, read_volume
from pipeline.io.volumes import volume_ending

# Enough for any multi-channel MRI protocol; the plan checks the count itself.
MAX_CHANNELS = 16

# LoadImaged instantiates every reader MONAI knows even when told which one to use, and its
# DICOM reader probes an optional GPU codec, warning at every load where it is absent.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")


class VolumeReader(ImageReader):
    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        return all(volume_ending(name) is not None for name in ensure_tuple(filename))

    def read(self, data: Sequence[str] | str, **kwargs) -> list[Volume]:
        return [read_volume(name, max_channels=MAX_CHANNELS) for name in ensure_tuple(data)]

    def get_data(self, img: list[Volume]) -> tuple[np.ndarray, dict]:
        """Arrays (x, y, z[, channels]); several files stack as channels on a new first axis."""
        first = img[0]
        meta = {
            MetaKeys.AFFINE: first.affine.copy(),
            MetaKeys.ORIGINAL_AFFINE: first.affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.array(first.shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan") if first.array.ndim == 3 else -1,
        }
        return _stack_images([np.asarray(volume.array) for volume in img], meta), meta
