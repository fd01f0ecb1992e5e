"""The embedded synthetic CT cohort: deterministic from a seed, written as real NIfTI files.

Each case is rendered in world millimetres and then sampled on its own voxel grid, so that a
flipped affine or a coarser slice spacing changes the array but not the anatomy:

- a body (soft tissue with a fat rim) in air at -1000 HU;
- an organ (label 1): a rotated ellipsoid with a smooth random bulge, 60-130 HU;
- 0 to ``max_lesions`` lesions (label 2) inside the organ, hypo- or hyperdense by 20-45 HU,
  which the image noise makes overlap with the organ;
- partial-volume blur, a smooth additive inhomogeneity and Gaussian noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipeline.cohort.dataset import FILE_ENDING, write_dataset_json
from pipeline.config import SynthParams
from pipeline.io import atomic_directory, write_volume

LABELS = {0: "background", 1: "organ", 2: "lesion"}
AIR_HU = -1000.0
FAT_HU = -100.0


@dataclass(frozen=True)
class SyntheticCase:
    image: np.ndarray  # int16 HU
    label: np.ndarray  # uint8, values in LABELS
    affine: np.ndarray
    n_lesions: int


def run(params: SynthParams, out_dir: str | Path) -> None:
    """Write the cohort in MSD layout; case ``i`` depends only on (seed, i)."""
    names = [f"synth_{i:03d}" for i in range(params.n_train + params.n_test)]
    with atomic_directory(out_dir) as tmp:
        for index, name in enumerate(names):
            _write_case(tmp, name, "Tr" if index < params.n_train else "Ts", make_case(params, index))
        write_dataset_json(
            tmp,
            name="synthetic_ct",
            channel_names=["CT"],
            labels=LABELS,
            training=names[: params.n_train],
            test=names[params.n_train :],
        )


def _write_case(root: Path, name: str, split: str, case: SyntheticCase) -> None:
    write_volume(root / f"images{split}" / f"{name}{FILE_ENDING}", case.image, case.affine)
    write_volume(root / f"labels{split}" / f"{name}{FILE_ENDING}", case.label, case.affine)


def make_case(params: SynthParams, index: int) -> SyntheticCase:
    rng = np.random.default_rng([params.seed, index])
    affine, shape = _random_grid(params, rng)
    world = _world_coordinates(affine, shape)

    body, fat_rim = _body(world, rng)
    organ = _organ(world, rng) & body
    lesions = _lesions(world, organ, index, params, rng)

    label = np.zeros(shape, np.uint8)
    label[organ] = 1
    hu = np.full(shape, AIR_HU)
    hu[body] = rng.uniform(20, 45)
    hu[fat_rim] = FAT_HU
    organ_hu = rng.uniform(60, 130)
    hu[organ] = organ_hu
    for mask in lesions:
        label[mask] = 2
        hu[mask] = organ_hu + rng.choice([-1, 1]) * rng.uniform(20, 45)

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    hu = ndimage.gaussian_filter(hu, sigma=0.8 / spacing)  # ~0.8 mm point spread
    hu += _smooth_field(world, rng, amplitude=rng.uniform(10, 30), wavelength=(150, 300))
    hu += rng.normal(0, params.noise_hu * rng.uniform(0.8, 1.2), shape)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return SyntheticCase(image, label, affine, len(lesions))


def _random_grid(params: SynthParams, rng: np.random.Generator) -> tuple[np.ndarray, tuple]:
    """Anisotropic spacing that varies per case; some cases have flipped in-plane axes."""
    inplane = rng.uniform(*params.inplane_spacing_mm)
    spacing = np.array([inplane, inplane, rng.uniform(*params.slice_spacing_mm)])
    field_of_view = np.array(params.field_of_view_mm) * rng.uniform(1.0, 1.15, size=3)
    shape = tuple(int(n) for n in np.round(field_of_view / spacing))
    signs = np.ones(3)
    if rng.random() < params.flipped_fraction:
        signs[:2] = rng.choice([-1, 1], size=2)
        signs[rng.integers(2)] = -1  # at least one axis flipped
    affine = np.eye(4)
    affine[:3, :3] = np.diag(signs * spacing)
    # Centre the field of view on the world origin whatever the axis directions.
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    return affine, shape


def _world_coordinates(affine: np.ndarray, shape: tuple) -> np.ndarray:
    """World (x, y, z) millimetres of every voxel centre, shape (*shape, 3)."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _body(world: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An elliptic cylinder along z, and its 4-9 mm subcutaneous fat rim."""
    semi_axes = np.array([rng.uniform(52, 60), rng.uniform(40, 50)])
    radius = np.linalg.norm(world[..., :2] / semi_axes, axis=-1)
    rim = rng.uniform(4, 9) / semi_axes.mean()
    body = radius < 1
    return body, body & (radius > 1 - rim)


def _organ(world: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    centre = np.array([rng.uniform(-12, 12), rng.uniform(-8, 8), rng.uniform(-10, 10)])
    semi_axes = np.array([rng.uniform(22, 34), rng.uniform(16, 24), rng.uniform(20, 34)])
    rotation = _rotation(rng, max_tilt=0.3)
    local = (world - centre) @ rotation
    radius = np.linalg.norm(local / semi_axes, axis=-1)
    bulge = _smooth_field(world, rng, amplitude=0.12, wavelength=(40, 90))
    return radius + bulge < 1


def _is_lesion_free(index: int, fraction: float) -> bool:
    """Exactly ``fraction`` of every run of cases, spread evenly, so small cohorts get negatives."""
    return int((index + 1) * fraction) > int(index * fraction)


def _lesions(
    world: np.ndarray,
    organ: np.ndarray,
    index: int,
    params: SynthParams,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Spheroids placed at organ voxels deep enough to hold them."""
    if _is_lesion_free(index, params.lesion_free_fraction):
        return []
    count = int(rng.integers(1, params.max_lesions + 1))
    spacing = [np.linalg.norm(world[tuple(np.eye(3, dtype=int)[a])] - world[0, 0, 0]) for a in range(3)]
    depth_mm = ndimage.distance_transform_edt(organ, sampling=spacing)
    lesions = []
    # At least one voxel of organ all around, so a lesion never touches the background.
    margin = max(spacing)
    room = depth_mm.max() - margin - 1e-3
    for _ in range(count):
        semi_axes = rng.uniform(5, 11) * rng.uniform(0.8, 1.2, size=3)
        semi_axes *= min(1.0, room / semi_axes.max())  # shrink to fit a small organ
        candidates = np.argwhere(depth_mm > semi_axes.max() + margin)
        centre = world[tuple(candidates[rng.integers(len(candidates))])]
        lesions.append(np.linalg.norm((world - centre) / semi_axes, axis=-1) < 1)
    return lesions


def _rotation(rng: np.random.Generator, max_tilt: float) -> np.ndarray:
    """A free rotation about z composed with a small tilt about x."""
    yaw, tilt = rng.uniform(0, np.pi), rng.uniform(-max_tilt, max_tilt)
    cz, sz, cx, sx = np.cos(yaw), np.sin(yaw), np.cos(tilt), np.sin(tilt)
    about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return about_z @ about_x


def _smooth_field(
    world: np.ndarray, rng: np.random.Generator, amplitude: float, wavelength: tuple[float, float]
) -> np.ndarray:
    """A sum of three random plane waves: smooth, low-frequency, roughly ±amplitude."""
    field = np.zeros(world.shape[:-1])
    for _ in range(3):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = 2 * np.pi / rng.uniform(*wavelength)
        field += np.cos(world @ (k * direction) + rng.uniform(0, 2 * np.pi))
    return amplitude * field / 3
