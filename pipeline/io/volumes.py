"""NIfTI volumes in and out, with their geometry (the voxel-to-world affine, in RAS millimetres)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.errors import InputDataError
from pipeline.io.atomic import atomic_output


@dataclass(frozen=True)
class Volume:
    array: np.ndarray
    affine: np.ndarray  # 4x4, voxel indices -> RAS world millimetres

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


def read_volume(path: str | Path) -> Volume:
    """Read a 3D NIfTI volume; any failure is an InputDataError naming the file."""
    path = Path(path)
    try:
        image = nib.load(path)
        array = np.asanyarray(image.dataobj)
    except FileNotFoundError:
        raise InputDataError(f"{path}: file not found") from None
    except Exception as err:  # nibabel raises many types for damaged files
        raise InputDataError(f"{path}: cannot be read as NIfTI ({err})") from None
    if array.ndim != 3:
        raise InputDataError(f"{path}: expected a 3D volume, got shape {array.shape}")
    return Volume(array=array, affine=image.affine.astype(np.float64))


def write_volume(path: str | Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write ``array`` as NIfTI with ``affine`` as both sform and qform (scanner coordinates)."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    with atomic_output(path) as tmp:
        nib.save(image, tmp)
