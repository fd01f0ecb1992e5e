"""Volumes in and out, with their geometry as a voxel-to-world affine in RAS millimetres.

NIfTI goes through nibabel (lazy, fast); NRRD and MetaImage (.mha/.mhd) through SimpleITK,
whose LPS geometry is converted to the RAS affine here, once. Arrays are indexed (x, y, z),
with channels last for multi-channel volumes, as NIfTI stores them.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from nibabel.affines import apply_affine

from pipeline.errors import InputDataError
from pipeline.io.atomic import atomic_output
from pipeline.io.limits import check_input_bytes

NIFTI_ENDINGS = (".nii.gz", ".nii")
SITK_ENDINGS = (".nrrd", ".nhdr", ".mha", ".mhd")
VOLUME_ENDINGS = NIFTI_ENDINGS + SITK_ENDINGS
# Detached-header formats (.nhdr, .mhd) name their data file inside the header, so they cannot
# be written under a temporary name and renamed; we write their single-file siblings only.
WRITABLE_ENDINGS = NIFTI_ENDINGS + (".nrrd", ".mha")
# The header keys that name detached data files, and enough of a header's start to find them.
DATA_FILE_KEYS = {"data file", "datafile", "elementdatafile"}
HEADER_TEXT_BYTES = 2**16
# More slice files than any scan has slices.
MAX_DATA_FILES = 100_000
# Decompressed a piece at a time, so that only the bytes a file really holds take memory.
GZIP_CHUNK_BYTES = 16 * 2**20
# NIfTI's spatial units (the low 3 bits of xyzt_units) in mm; "unknown" (0) is read as mm, as
# ITK and nibabel do. ITK converts metres and microns, nibabel ignores them: we convert.
SPATIAL_UNIT_BITS = 0x07
MM_PER_UNIT = {0: 1.0, 1: 1000.0, 2: 1.0, 3: 0.001}  # unknown, metre, mm, micron
# RAS = LPS with x and y negated.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
# Enough of a file's start to recognise its format: a NIfTI-1 header is 348 bytes, DICOM's
# "DICM" sits at byte 128.
HEAD_BYTES = 352
# The magic number each ending's files start with (NIfTI: the header size, 348 or 540 for
# NIfTI-2, in either byte order; MetaImage: a text header of "Key = value" lines). Readers
# otherwise go by content: ITK reads a PNG named .mha as a 2D PNG.
SIGNATURES = {
    ".nii.gz": re.compile(rb"\x1f\x8b"),
    ".nii": re.compile(
        b"|".join(re.escape(struct.pack(f"{order}i", n)) for order in "<>" for n in (348, 540))
    ),
    ".nrrd": re.compile(rb"NRRD"),
    ".nhdr": re.compile(rb"NRRD"),
    ".mha": re.compile(rb"\s*[A-Za-z]\w*\s*="),
    ".mhd": re.compile(rb"\s*[A-Za-z]\w*\s*="),
}
FORMAT_NAMES = {".nii.gz": "gzipped NIfTI", ".nii": "NIfTI", ".nrrd": "NRRD", ".nhdr": "NRRD header"}
FORMAT_NAMES |= {".mha": "MetaImage", ".mhd": "MetaImage header"}
# What files misnamed as scans often are, to say so in the message.
FOREIGN_SIGNATURES = (
    (re.compile(rb"\x89PNG"), "a PNG image"),
    (re.compile(rb"\xff\xd8\xff"), "a JPEG image"),
    (re.compile(rb".{128}DICM", re.DOTALL), "a DICOM file"),
    (re.compile(rb"\x1f\x8b"), "gzip-compressed data"),
    (re.compile(rb"PK\x03\x04"), "a zip archive"),
    (re.compile(rb"%PDF"), "a PDF document"),
    (re.compile(rb"\s*<(!DOCTYPE html|html)", re.IGNORECASE), "an HTML page"),
    (re.compile(rb"\x93NUMPY"), "a NumPy array"),
    (re.compile(rb"NRRD"), "an NRRD file"),
)


@dataclass(frozen=True)
class NiftiForms:
    """A NIfTI file's own geometry fields, as stored: both transforms with their codes, and the
    spatial unit. A mask written with them lies on its scan in every reader, whichever transform
    the reader prefers (nibabel: the sform; ITK-based viewers may take the qform)."""

    qform: np.ndarray
    qform_code: int
    sform: np.ndarray
    sform_code: int
    unit: int  # NIfTI's spatial unit code, a key of MM_PER_UNIT when valid

    @classmethod
    def of(cls, header: nib.Nifti1Header) -> NiftiForms:
        return cls(
            header.get_qform(), int(header["qform_code"]), header.get_sform(), int(header["sform_code"]),
            int(header["xyzt_units"]) & SPATIAL_UNIT_BITS,
        )  # fmt: skip

    def apply(self, image: nib.Nifti1Image) -> None:
        image.set_qform(self.qform, code=self.qform_code)
        image.set_sform(self.sform, code=self.sform_code)
        image.header.set_xyzt_units(xyz=self.unit)

    def disagreement_mm(self, shape: tuple[int, ...]) -> float:
        """How far apart the qform and the sform place the grid's corners, in mm; 0 unless both
        are in use."""
        if not (self.qform_code and self.sform_code):
            return 0.0
        corners = np.array(list(np.ndindex(2, 2, 2))) * (np.array(shape[:3]) - 1)
        apart = apply_affine(self.qform, corners) - apply_affine(self.sform, corners)
        return float(np.linalg.norm(apart, axis=1).max()) * MM_PER_UNIT[self.unit]


@dataclass(frozen=True)
class Volume:
    array: np.ndarray  # (x, y, z) or (x, y, z, channels)
    affine: np.ndarray  # 4x4, voxel indices -> RAS world millimetres
    nifti: NiftiForms | None = None  # a NIfTI file's own geometry fields, for writing its masks

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape[:3])

    @property
    def n_channels(self) -> int:
        return 1 if self.array.ndim == 3 else self.array.shape[3]

    def in_ras_frame(self) -> Volume:
        """The same voxels with the axes permuted and flipped to the nearest RAS order (a view,
        no copy): the frame MONAI's ``Orientationd`` brings every case to, and so the one the
        network sees. Spacing, shape and array of the result follow the anatomy's axes (x = right,
        y = anterior, z = superior) whatever order the file stored them in. An oblique volume is
        only permuted and flipped: its direction cosines stay in the affine."""
        orientation = nib.orientations.io_orientation(self.affine)
        array = nib.orientations.apply_orientation(self.array, orientation)
        affine = self.affine @ nib.orientations.inv_ornt_aff(orientation, self.shape)
        return Volume(array, affine)


def check_scan_values(path: Path, volume: Volume) -> None:
    """Refuse scans that a network turns into a clean-looking but meaningless mask (and whose
    features would be NaN): NaN or infinite voxels (they poison every window they fall in: the
    mask comes out empty) and blank scans, every voxel one value (a failed export; an all-zero
    one leaves nothing to predict once cropped to its non-zero box)."""
    low, high = volume.array.min(), volume.array.max()  # NaN and infinities show in these
    if not (np.isfinite(low) and np.isfinite(high)):
        bad = volume.array.size - np.count_nonzero(np.isfinite(volume.array))
        raise InputDataError(f"{path}: {bad} of {volume.array.size} voxels are NaN or infinite")
    if low == high:
        raise InputDataError(f"{path}: every voxel is {low:g}, a blank scan: nothing to segment")


def volume_ending(path: str | Path) -> str | None:
    """The recognised file ending of ``path`` ('.nii.gz', '.nrrd' ...), or None."""
    name = Path(path).name.lower()
    return next((ending for ending in VOLUME_ENDINGS if name.endswith(ending)), None)


def case_name(path: str | Path) -> str:
    """The file name without its volume ending: 'case_001.nii.gz' -> 'case_001'."""
    name = Path(path).name
    ending = volume_ending(path)
    return name[: -len(ending)] if ending else name


def read_volume(path: str | Path, max_channels: int = 1) -> Volume:
    """Read a 3D volume (or 4D with up to ``max_channels`` channels, last axis).

    Any failure is an InputDataError naming the file: missing, empty, of another format than its
    ending says, damaged, truncated, 2D, 5D, or with more channels than declared.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{path}: file not found")
    ending = volume_ending(path)
    if ending is None:
        raise InputDataError(f"{path}: unsupported format (expected one of {', '.join(VOLUME_ENDINGS)})")
    try:
        _check_signature(path, ending)
        volume = _read_nifti(path) if ending in NIFTI_ENDINGS else _read_sitk(path)
    except InputDataError:
        raise
    except Exception as err:  # readers raise many types for damaged files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise InputDataError(f"{path}: cannot be read ({reason})") from None
    _check_dimensions(path, volume, max_channels)
    return volume


def _check_signature(path: Path, ending: str) -> None:
    """Refuse an empty file, or one whose first bytes are not its format's magic number, saying
    what it looks like instead."""
    with path.open("rb") as handle:
        head = handle.read(HEAD_BYTES)
    if not head:
        raise InputDataError(f"{path}: empty file (0 bytes)")
    if SIGNATURES[ending].match(head):
        return
    looks_like = next((f"; {what}?" for magic, what in FOREIGN_SIGNATURES if magic.match(head)), "")
    raise InputDataError(f"{path}: not a {FORMAT_NAMES[ending]} file (wrong magic number{looks_like})")


def _read_nifti(path: Path) -> Volume:
    _check_extension_bytes(path)
    image = nib.load(path)  # the header and its extensions only
    shape = image.shape
    # NIfTI keeps the 4th axis for time (our channels) and the 5th for vector components, where
    # ITK writes multi-component images as (x, y, z, 1, c): both are channels; both at once are not.
    if len(shape) > 5 or (len(shape) == 5 and shape[3] != 1):
        raise InputDataError(
            f"{path}: {len(shape)}D image of shape {shape}; expected 3D, or 4D with the channels last"
        )
    affine, forms = _nifti_geometry(path, image)
    array = _read_nifti_data(path, image.dataobj)
    if not array.dtype.isnative:
        # A big-endian file (nibabel's own test MRI is one): torch, and so every MONAI transform,
        # refuses arrays of the other byte order.
        array = array.astype(array.dtype.newbyteorder("="))
    if array.ndim == 5:
        array = array[:, :, :, 0, :]
    return Volume(array=array, affine=affine, nifti=forms)


def _nifti_geometry(path: Path, image: nib.Nifti1Image) -> tuple[np.ndarray, NiftiForms]:
    """The affine in millimetres (nibabel's, which ignores the spatial unit), and the fields
    to write a mask of this file with."""
    forms = NiftiForms.of(image.header)
    if forms.unit not in MM_PER_UNIT:
        raise InputDataError(
            f"{path}: xyzt_units gives spatial unit code {forms.unit}, not one NIfTI defines "
            "(metres, mm, microns)"
        )
    return np.diag([*[MM_PER_UNIT[forms.unit]] * 3, 1.0]) @ image.affine, forms


def _check_extension_bytes(path: Path) -> None:
    """nibabel reads (and decompresses) a single-file NIfTI's header extensions up to the voxels'
    offset, ``vox_offset``, before anything else: that offset is checked against the input limit
    first, from the header alone (NIfTI-1 or NIfTI-2, parsed by nibabel without its extensions)."""
    with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as handle:
        head = handle.read(nib.Nifti2Header.sizeof_hdr)
    for header_class in (nib.Nifti1Header, nib.Nifti2Header):
        block = head[: header_class.sizeof_hdr]
        if len(block) == header_class.sizeof_hdr and header_class.may_contain_header(block):
            offset = float(header_class(block, check=False)["vox_offset"])
            if math.isfinite(offset) and offset > 0:
                check_input_bytes(path, (int(offset),), 1)
            return


def _read_nifti_data(path: Path, proxy: nib.arrayproxy.ArrayProxy) -> np.ndarray:
    """The voxels, once the header's size is within the limit and the file is known to hold them:
    a 74-byte file claiming 2 GiB is refused before anything is allocated for it."""
    needed = check_input_bytes(path, proxy.shape, proxy.dtype.itemsize)
    gzipped = path.name.lower().endswith(".gz")
    data, held = _gunzip(path, proxy.offset + needed) if gzipped else (None, path.stat().st_size)
    if held - proxy.offset < needed:
        raise InputDataError(
            f"{path}: truncated: the header claims {needed} bytes of voxels, the file holds "
            f"{max(held - proxy.offset, 0)}"
        )
    if data is None:
        return np.asanyarray(proxy)
    raw = np.ndarray(proxy.shape, proxy.dtype, buffer=data, offset=proxy.offset, order=proxy.order)
    return nib.volumeutils.apply_read_scaling(raw, proxy.slope, proxy.inter)


def _gunzip(path: Path, n_bytes: int) -> tuple[np.ndarray, int]:
    """The first ``n_bytes`` a gzip file decompresses to, and how many it held. nibabel would
    allocate (and zero) them all first; here memory pages are committed only as data arrives, and
    decompression stops at ``n_bytes``, however much more the file would give (a gzip bomb)."""
    data = np.empty(n_bytes, np.uint8)
    held = 0
    with gzip.open(path) as stream:
        while held < n_bytes and (n := stream.readinto(data[held : held + GZIP_CHUNK_BYTES])):
            held += n
    return data, held


def _read_sitk(path: Path) -> Volume:
    _check_data_files(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    if reader.GetDimension() != 3:
        size = tuple(reader.GetSize())
        raise InputDataError(f"{path}: {reader.GetDimension()}D image of size {size}; expected 3D")
    # ITK allocates the header's size, then reads (or decompresses) only that much.
    component = sitk.Image([1, 1, 1], reader.GetPixelID(), reader.GetNumberOfComponents())
    check_input_bytes(
        path, (*reader.GetSize(), reader.GetNumberOfComponents()), component.GetSizeOfPixelComponent()
    )
    return sitk_to_volume(reader.Execute())


def _check_data_files(path: Path) -> None:
    """A header may keep its voxels in other files (NRRD's "data file", MetaImage's
    "ElementDataFile"): each must be a regular file in the header's folder or below it, never a
    FIFO that blocks forever, /dev/zero that never ends, nor a file elsewhere on the system.
    The name is judged as written, not resolved, so DVC's symlinked cache still works."""
    for name in _data_file_names(path):
        if Path(name).is_absolute() or os.path.normpath(name).split(os.sep)[0] == "..":
            raise InputDataError(f"{path}: its data file {name} lies outside the header's folder")
        if not (path.parent / name).is_file():
            raise InputDataError(f"{path}: its data file {name} is missing or not a regular file")


def _data_file_names(path: Path) -> list[str]:
    """The data files a NRRD or MetaImage header names: one, a LIST on the lines that follow, or
    a printf pattern with its first, last and step (empty when the voxels follow the header)."""
    with path.open("rb") as handle:
        lines = handle.read(HEADER_TEXT_BYTES).decode("latin-1").splitlines()
    for i, line in enumerate(lines):
        if not line.strip() and lines[0].startswith("NRRD"):
            return []  # a NRRD header ends at its first empty line; the voxels follow
        key, _, value = line.partition("=" if "=" in line.split(":")[0] else ":")
        if key.strip().lower() not in DATA_FILE_KEYS:
            continue
        words = value.split()
        if not words or words[0] == "LOCAL":
            return []
        if words[0] == "LIST":
            return [name.strip() for name in lines[i + 1 :] if name.strip()]
        if "%" in words[0] and len(words) >= 4:
            indices = range(int(words[1]), int(words[2]) + (1 if int(words[3]) > 0 else -1), int(words[3]))
            if len(indices) > MAX_DATA_FILES:
                raise InputDataError(f"{path}: names {len(indices)} data files, more than {MAX_DATA_FILES}")
            return [words[0] % index for index in indices]
        return [value.strip()]
    return []


def sitk_to_volume(image: sitk.Image) -> Volume:
    """SimpleITK image (LPS, arrays indexed z, y, x) -> Volume (RAS affine, arrays x, y, z)."""
    if image.GetDimension() != 3:
        raise InputDataError(f"expected a 3D image, got {image.GetDimension()}D")
    array = sitk.GetArrayViewFromImage(image)
    array = np.ascontiguousarray(array.transpose(2, 1, 0) if array.ndim == 3 else array.transpose(2, 1, 0, 3))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin())
    return Volume(array=array, affine=affine)


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """The inverse of ``sitk_to_volume``."""
    array = volume.array.transpose(2, 1, 0) if volume.array.ndim == 3 else volume.array.transpose(2, 1, 0, 3)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=volume.array.ndim == 4)
    spacing = np.array(volume.spacing)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((LPS_TO_RAS @ volume.affine[:3, :3] / spacing).flatten().tolist())
    image.SetOrigin((LPS_TO_RAS @ volume.affine[:3, 3]).tolist())
    return image


def _check_dimensions(path: Path, volume: Volume, max_channels: int) -> None:
    shape = volume.array.shape
    if volume.array.ndim < 3:
        raise InputDataError(f"{path}: expected a 3D volume, got {volume.array.ndim}D shape {shape}")
    if volume.n_channels > max_channels:
        expected = "a 3D volume" if max_channels == 1 else f"3D with at most {max_channels} channels"
        raise InputDataError(f"{path}: expected {expected}, got {volume.n_channels} channels, shape {shape}")
    if min(shape[:3]) < 2:
        raise InputDataError(f"{path}: expected a 3D volume, got a single slice, shape {shape}")


def write_volume(
    path: str | Path, array: np.ndarray, affine: np.ndarray, nifti: NiftiForms | None = None
) -> None:
    """Write a volume; the format follows the file ending (.nii, .nii.gz, .nrrd or .mha).
    NIfTI gets the geometry fields ``nifti`` (those of the scan a mask is of) where given."""
    ending = volume_ending(path)
    if ending not in WRITABLE_ENDINGS:
        raise ValueError(f"{path}: can only write {', '.join(WRITABLE_ENDINGS)}")
    with atomic_output(path) as tmp:
        if ending in NIFTI_ENDINGS:
            nib.save(_nifti_image(array, affine, nifti), tmp)
        else:
            sitk.WriteImage(volume_to_sitk(Volume(array, affine)), str(tmp), useCompression=True)


def write_probabilities(
    path: str | Path, probabilities: np.ndarray, affine: np.ndarray, nifti: NiftiForms | None = None
) -> None:
    """Class probabilities (classes, x, y, z) as a 4D NIfTI, class c in volume c of the 4th axis.

    Stored as uint16 with NIfTI's scale factor (nibabel picks it from the value range): a quarter
    of float32's size, within 1e-5 of the input, and read back as floats by any NIfTI reader.
    """
    if volume_ending(path) not in NIFTI_ENDINGS:
        raise ValueError(f"{path}: probabilities are written as NIfTI (.nii, .nii.gz)")
    image = _nifti_image(np.moveaxis(np.asarray(probabilities, np.float32), 0, -1), affine, nifti)
    image.set_data_dtype(np.uint16)
    with atomic_output(path) as tmp:
        nib.save(image, tmp)


def _nifti_image(array: np.ndarray, affine: np.ndarray, nifti: NiftiForms | None) -> nib.Nifti1Image:
    """A NIfTI image with the geometry fields ``nifti``, or else ``affine`` as both transforms."""
    image = nib.Nifti1Image(array, affine)
    if nifti is not None:
        nifti.apply(image)
    else:
        image.header.set_xyzt_units("mm")
        image.set_sform(affine, code=1)
        image.set_qform(affine, code=1)
    return image


def read_probabilities(path: str | Path) -> np.ndarray:
    """Every class's probabilities from a file of ``write_probabilities``: (classes, x, y, z) float32."""
    path = Path(path)
    try:
        image = nib.load(path)
        if len(image.shape) != 4:
            raise InputDataError(
                f"{path}: expected class probabilities on the 4th axis, got shape {image.shape}"
            )
        check_input_bytes(path, image.shape, image.dataobj.dtype.itemsize)
        return np.moveaxis(np.asarray(image.dataobj, dtype=np.float32), -1, 0)
    except InputDataError:
        raise
    except FileNotFoundError:
        raise InputDataError(f"{path}: file not found") from None
    except Exception as err:
        raise InputDataError(f"{path}: cannot be read as probabilities ({err.__class__.__name__})") from None


def read_probability(path: str | Path, label: int) -> Volume:
    """The probability map of one class (label value) from a file of ``write_probabilities``."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{path}: file not found")
    try:
        image = nib.load(path)
        n_classes = image.shape[3] if len(image.shape) == 4 else 0
        if label >= n_classes:
            raise InputDataError(
                f"{path}: expected class probabilities on the 4th axis, up to label {label}; "
                f"got shape {image.shape}"
            )
        array = np.asarray(image.dataobj[..., label], dtype=np.float32)
    except InputDataError:
        raise
    except Exception as err:
        raise InputDataError(f"{path}: cannot be read as probabilities ({err.__class__.__name__})") from None
    return Volume(array=array, affine=_nifti_geometry(path, image)[0])
