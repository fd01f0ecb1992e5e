"""A brain MRI cohort with real anatomy, built offline from the MNI152 template that nilearn ships.

    python benchmarks/mri_cohort.py --out DIR [--train 16] [--test 8] [--seed 0]

(with a Python that has nilearn: the `bench` extra puts it in benchmarks/.venv-nnunet.)

nilearn's wheel holds the ICBM152 2009 T1 template (skull-stripped, 1 mm) and its grey- and
white-matter probability maps (nilearn/datasets/data/mni_icbm152_*.nii.gz, read by
``load_mni152_template`` and friends without any download). Every case is that one brain seen
by another scanner:

- the anatomy moved by its own random similarity: rotation about each axis, scale per axis,
  shift;
- sampled on its own axis-aligned grid of 2.4-3.2 mm voxels (each axis drawn apart) over a field
  of view around the brain, cut into the brain on some sides;
- the T1 image smoothed to about that resolution, times a smooth multiplicative bias field and a
  random scanner gain, with Rician noise, stored as int16;
- labels 1 = grey matter and 2 = white matter: the larger of the two probability maps, sampled
  on the same grid, where it reaches 0.5 (else 0, background: CSF and outside the brain);
- half the cases stored in another orientation: axes permuted and flipped, the affine's columns
  permuted and negated to match, so that the anatomy in world coordinates is unchanged.

The cohort is written in MSD layout (imagesTr, labelsTr, imagesTs, labelsTs, dataset.json, one
channel named "T1", so resseg z-scores it per case) like resseg's synthetic CT cohort, and case
``i`` depends only on (seed, i).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this tree's resseg code

from pipeline.cohort.dataset import FILE_ENDING, write_dataset_json  # noqa: E402
from pipeline.io import atomic_directory, write_volume  # noqa: E402

LABELS = {0: "background", 1: "grey_matter", 2: "white_matter"}


@dataclass(frozen=True)
class MRIParams:
    seed: int = 0
    n_train: int = 16
    n_test: int = 8
    spacing_mm: tuple[float, float] = (2.4, 3.2)  # each axis drawn apart
    rotation_degrees: float = 15.0  # about each axis, at most
    scale_range: tuple[float, float] = (0.9, 1.1)  # per axis
    shift_mm: float = 8.0  # per axis, at most
    margin_mm: tuple[float, float] = (4.0, 16.0)  # field of view beyond the brain, per side
    cut_probability: float = 0.25  # per side: the field of view cuts into the brain ...
    cut_fraction: float = 0.12  # ... by at most this fraction of the brain's extent
    bias_amplitude: tuple[float, float] = (0.1, 0.3)  # of the log of the multiplicative field
    noise_fraction: tuple[float, float] = (0.02, 0.05)  # Rician sigma / bright-tissue intensity
    reoriented_fraction: float = 0.5
    tissue_threshold: float = 0.5


@dataclass(frozen=True)
class Template:
    t1: np.ndarray  # smoothed to the cohort's resolution
    grey: np.ndarray  # probability maps, unsmoothed
    white: np.ndarray
    affine: np.ndarray  # voxel -> MNI world mm (RAS)
    brain_box: np.ndarray  # (2, 3): world corners of the brain's bounding box


@dataclass(frozen=True)
class MRICase:
    image: np.ndarray  # int16
    label: np.ndarray  # uint8, values in LABELS
    affine: np.ndarray
    reoriented: bool


def load_template() -> Template:
    """nilearn's packaged 1 mm template and tissue maps; no download."""
    from nilearn.datasets import load_mni152_gm_template, load_mni152_template, load_mni152_wm_template

    images = [
        load(resolution=1)
        for load in (load_mni152_template, load_mni152_gm_template, load_mni152_wm_template)
    ]
    t1, grey, white = (np.asarray(image.dataobj, dtype=np.float32) for image in images)
    affine = images[0].affine
    # A point spread of about the cohort's voxel size (FWHM 2.5 mm) before sampling it coarsely.
    t1 = ndimage.gaussian_filter(t1, sigma=2.5 / 2.355)
    corners = np.array([np.argwhere(t1 > 0.01).min(0), np.argwhere(t1 > 0.01).max(0)], float)
    box = corners @ affine[:3, :3].T + affine[:3, 3]
    return Template(t1, grey, white, affine, np.sort(box, axis=0))


def run(params: MRIParams, out_dir: str | Path) -> None:
    """Write the cohort in MSD layout."""
    template = load_template()
    names = [f"mri_{i:03d}" for i in range(params.n_train + params.n_test)]
    with atomic_directory(out_dir) as tmp:
        for index, name in enumerate(names):
            case = make_case(template, params, index)
            split = "Tr" if index < params.n_train else "Ts"
            write_volume(tmp / f"images{split}" / f"{name}{FILE_ENDING}", case.image, case.affine)
            write_volume(tmp / f"labels{split}" / f"{name}{FILE_ENDING}", case.label, case.affine)
        write_dataset_json(
            tmp,
            name="mni152_mri",
            channel_names=["T1"],
            labels=LABELS,
            training=names[: params.n_train],
            test=names[params.n_train :],
        )


def make_case(template: Template, params: MRIParams, index: int) -> MRICase:
    rng = np.random.default_rng([params.seed, index])
    # The case's anatomy: world point x of the case shows template point inverse(x).
    centre = template.brain_box.mean(0)
    linear = rotation(rng, np.radians(params.rotation_degrees)) @ np.diag(rng.uniform(*params.scale_range, 3))
    shift = rng.uniform(-params.shift_mm, params.shift_mm, 3)

    def to_case(points: np.ndarray) -> np.ndarray:
        return (points - centre) @ linear.T + centre + shift

    affine, shape = field_of_view(to_case(box_corners(template.brain_box)), params, rng)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    in_template = (world - centre - shift) @ np.linalg.inv(linear).T + centre
    voxels = (in_template - template.affine[:3, 3]) @ np.linalg.inv(template.affine[:3, :3]).T

    def sample(volume: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(volume, voxels.T, order=1, cval=0.0).reshape(shape)

    grey, white = sample(template.grey), sample(template.white)
    label = np.where(white > grey, 2, 1).astype(np.uint8)
    label[np.maximum(grey, white) < params.tissue_threshold] = 0

    t1 = sample(template.t1)
    bright = np.percentile(t1[label > 0], 95) if (label > 0).any() else t1.max()
    bias = np.exp(rng.uniform(*params.bias_amplitude) * smooth_field(world.reshape(*shape, 3), rng))
    signal = t1 * bias * rng.uniform(300, 900) / max(bright, 1e-6)  # bright tissue at a scanner's gain
    sigma = rng.uniform(*params.noise_fraction) * np.percentile(signal[label > 0], 95)
    noisy = np.hypot(signal + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))  # Rician
    image = np.clip(np.rint(noisy), 0, np.iinfo(np.int16).max).astype(np.int16)

    reoriented = bool(rng.random() < params.reoriented_fraction)
    if reoriented:
        image, label, affine = reorient(image, label, affine, rng)
    return MRICase(image, label, affine, reoriented)


def box_corners(box: np.ndarray) -> np.ndarray:
    return np.array([[box[i, 0], box[j, 1], box[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])


def field_of_view(
    corners: np.ndarray, params: MRIParams, rng: np.random.Generator
) -> tuple[np.ndarray, tuple]:
    """An axis-aligned grid of random spacing around the moved brain, margins on each side, and
    on some sides a cut into the brain."""
    low, high = corners.min(0), corners.max(0)
    extent = high - low
    cut = rng.random((2, 3)) < params.cut_probability
    margin = np.where(
        cut, -rng.uniform(0, params.cut_fraction, (2, 3)) * extent, rng.uniform(*params.margin_mm, (2, 3))
    )
    low, high = low - margin[0], high + margin[1]
    spacing = rng.uniform(*params.spacing_mm, 3)
    shape = tuple(int(n) for n in np.ceil((high - low) / spacing))
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = low + spacing / 2
    return affine, shape


def reorient(
    image: np.ndarray, label: np.ndarray, affine: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same anatomy stored with permuted and flipped axes: array axis a of the result is
    axis ``order[a]`` of the input, and the affine's columns follow."""
    order = rng.permutation(3)
    while (order == np.arange(3)).all():
        order = rng.permutation(3)
    flips = rng.random(3) < 0.5
    image, label = image.transpose(order), label.transpose(order)
    affine = affine.copy()
    affine[:3, :3] = affine[:3, order]
    for axis in np.flatnonzero(flips):
        image, label = np.flip(image, axis), np.flip(label, axis)
        affine[:3, 3] += affine[:3, axis] * (image.shape[axis] - 1)
        affine[:3, axis] *= -1
    return np.ascontiguousarray(image), np.ascontiguousarray(label), affine


def rotation(rng: np.random.Generator, max_angle: float) -> np.ndarray:
    """Rotations about x, y and z, each by at most ``max_angle`` radians."""
    matrix = np.eye(3)
    for axis in range(3):
        angle = rng.uniform(-max_angle, max_angle)
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        about = np.eye(3)
        about[i, i], about[i, j], about[j, i], about[j, j] = c, -s, s, c
        matrix = about @ matrix
    return matrix


def smooth_field(world: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A sum of three random plane waves of 150-300 mm wavelength, roughly within ±1."""
    field = np.zeros(world.shape[:-1])
    for _ in range(3):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = 2 * np.pi / rng.uniform(150, 300)
        field += np.cos(world @ (k * direction) + rng.uniform(0, 2 * np.pi))
    return field / 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=MRIParams.n_train)
    parser.add_argument("--test", type=int, default=MRIParams.n_test)
    parser.add_argument("--seed", type=int, default=MRIParams.seed)
    parser.add_argument(
        "--spacing", type=float, nargs=2, default=MRIParams.spacing_mm, help="voxel size range, mm"
    )
    args = parser.parse_args()
    params = MRIParams(seed=args.seed, n_train=args.train, n_test=args.test, spacing_mm=tuple(args.spacing))
    run(params, args.out)
    print(f"MRI cohort of {args.train} + {args.test} cases written to {args.out}")


if __name__ == "__main__":
    main()
