"""The one builder of the preprocessing chain, shared by preprocessing, training and inference.

Every spatial step is a MONAI invertible transform, so inference can map its prediction back
to the scan's own grid with ``Invertd`` over this same chain.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)

from pipeline.preprocess.plans import AXCODES, Plans


def build_preprocessing(plans: Plans, keys: Sequence[str] = ("image", "label")) -> Compose:
    """Load → channel first → RAS → target spacing → clip and z-score the image.

    ``keys`` names the image first and, optionally, the label; labels are resampled with
    nearest-neighbour interpolation so their values stay valid.
    """
    keys = list(keys)
    modes = ["bilinear"] + ["nearest"] * (len(keys) - 1)
    norm = plans.intensity
    return Compose(
        [
            LoadImaged(keys, image_only=True),
            EnsureChannelFirstd(keys),
            Orientationd(keys, axcodes=AXCODES, labels=None),
            Spacingd(keys, pixdim=plans.target_spacing, mode=modes),
            # Clipping then z-scoring is one linear map with clipping: x -> (x - mean) / std.
            ScaleIntensityRanged(
                keys[0],
                a_min=norm.clip_low,
                a_max=norm.clip_high,
                b_min=(norm.clip_low - norm.mean) / norm.std,
                b_max=(norm.clip_high - norm.mean) / norm.std,
                clip=True,
            ),
        ]
    )
