"""The one builder of the preprocessing chain, shared by preprocessing, training and inference.

Every spatial step is a MONAI invertible transform, so inference maps its prediction back to
the scan's own grid with ``Invertd`` over this same chain.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    InvertibleTransform,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityRanged,
    Zoom,
)
from monai.utils import TraceKeys

from pipeline.preprocess.plans import AXCODES, Plans
from pipeline.preprocess.reader import VolumeReader


def build_preprocessing(plans: Plans, keys: Sequence[str] = ("image", "label")) -> Compose:
    """Load → channel first → crop to the non-zero box → RAS → target spacing → normalise.

    ``keys`` names the image first and, optionally, the label (see ``zoom_label``).
    """
    keys = list(keys)
    image = keys[0]
    return Compose(
        [
            LoadImaged(keys, reader=VolumeReader, image_only=True),
            EnsureChannelFirstd(keys),
            # Cropping first saves the resampling work on the empty border (nnU-Net's order).
            CropForegroundd(keys, source_key=image, select_fn=is_nonzero, allow_smaller=True),
            Orientationd(keys, axcodes=AXCODES, labels=None),
            ZoomToSpacingd(keys, plans.target_spacing, labels=keys[1:]),
            _normalization(plans, image),
        ]
    )


def is_nonzero(image: torch.Tensor) -> torch.Tensor:
    return image != 0


def _normalization(plans: Plans, key: str) -> MapTransform:
    (first, *_) = plans.normalization
    if first.scheme == "ct":
        # Clipping then z-scoring is one linear map with clipping: x -> (x - mean) / std.
        return ScaleIntensityRanged(
            key,
            a_min=first.clip_low,
            a_max=first.clip_high,
            b_min=(first.clip_low - first.mean) / first.std,
            b_max=(first.clip_high - first.mean) / first.std,
            clip=True,
        )
    return NormalizeIntensityd(key, nonzero=True, channel_wise=True)


class ZoomToSpacingd(MapTransform, InvertibleTransform):
    """Resample each case to the target spacing with MONAI's ``Zoom`` (torch interpolation).

    MONAI's ``Spacingd`` would do the same through ``grid_sample``, whose sampling grid costs
    12 bytes per output voxel: about 8 GB more for a 512x512x600 CT, and ~30x the time. Like
    nnU-Net's resampling, ``Zoom`` keeps the field of view, so the achieved spacing differs
    from the target by the rounding of the shape to whole voxels.
    """

    def __init__(self, keys: Sequence[str], target_spacing: Sequence[float], labels: Sequence[str] = ()):
        """Images are interpolated linearly; the keys in ``labels`` by ``zoom_label``."""
        super().__init__(keys)
        self.target_spacing = np.asarray(target_spacing, dtype=float)
        self.labels = set(labels)

    def __call__(self, data: dict) -> dict:
        out = dict(data)
        for key in self.key_iterator(out):
            spacing = affine_to_spacing(out[key].affine, r=3).numpy()
            zoom = Zoom(tuple(spacing / self.target_spacing), mode="trilinear", keep_size=False)
            out[key] = zoom_label(out[key], zoom) if key in self.labels else zoom(out[key])
        return out

    def inverse(self, data: dict) -> dict:
        out = dict(data)
        for key in self.key_iterator(out):
            # The Zoom that ran was made for that case; MONAI's identity check would reject a
            # new one, so pop its record unchecked and let Zoom undo it from what it recorded.
            zoom = Zoom(1.0)
            record = zoom.pop_transform(out[key], check=False)
            if record[TraceKeys.CLASS_NAME] != "Zoom":
                raise RuntimeError(f"expected a Zoom record to invert, found {record[TraceKeys.CLASS_NAME]}")
            out[key] = zoom.inverse_transform(out[key], record)
        return out


def zoom_label(label: MetaTensor, zoom: Zoom) -> MetaTensor:
    """nnU-Net's label resampling: each value's indicator is interpolated like the image, and a
    voxel takes the value whose indicator is highest there (ties: the lower value).

    Nearest-neighbour is no substitute: where the new grid falls between old voxels (around
    the middle of a case zoomed by a few per cent) it takes one corner of the eight, so the
    label sits up to half a voxel off the image interpolated there, and a small lesion's label
    covers the organ around it. Memory: four label-sized float arrays at most.
    """
    values = torch.unique(label.as_tensor())
    highest = labelled = None
    for value in values:
        share = zoom((label == value).to(torch.float32))
        if highest is None:
            highest, labelled = share, torch.full(share.shape, value.item(), dtype=share.dtype)
        else:
            higher = share.as_tensor() > highest.as_tensor()
            labelled[higher] = value
            highest = torch.maximum(highest, share)
    highest.array = labelled  # the values, with the Zoom's metadata and record for inversion
    return highest
