"""DICOM input: image series through SimpleITK's GDCM series reader, segmentations (DICOM SEG)
through pydicom, mapped onto their image's voxel grid by geometry."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataelem import RawDataElement

from pipeline.errors import InputDataError
from pipeline.io.limits import check_input_bytes
from pipeline.io.volumes import Volume, sitk_to_volume

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
# Objects that share folders with image series but hold no image volume to segment.
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG", "DOC"}
# Slice steps may differ by this fraction of the usual one (positions are rounded decimals).
SPACING_TOLERANCE = 0.01
# Slices may drift sideways by this many pixels over a whole series before it counts as tilted:
# ignoring that drift misplaces no voxel by more, and rounded positions drift a little anyway.
TILT_TOLERANCE_PIXELS = 0.5
# Header values longer than this are left unread, so that PixelData's length costs no memory.
DEFER_BYTES = 1024
# Slices closer than this along their normal sit at one position (duplicates, or a series whose
# positions were all written alike), leaving the slice spacing unknown.
SAME_POSITION_MM = 0.01
# Direction cosines are rounded decimals; this much error in them moves no voxel noticeably.
ORIENTATION_TOLERANCE = 1e-3


@dataclass(frozen=True)
class DicomSeries:
    uid: str  # SeriesInstanceUID
    modality: str
    description: str
    files: tuple[Path, ...]  # slice files, in the order the GDCM series reader sorts them


# What a scanner and protocol make of a series, for comparing cohorts (pipeline/review/shift.py);
# none of them identifies a patient.
ACQUISITION_ATTRIBUTES = (
    "Manufacturer",
    "ManufacturerModelName",
    "KVP",
    "SliceThickness",
    "MagneticFieldStrength",
    "ContrastBolusAgent",
    "ConvolutionKernel",
)


# What a case's site may be derived from (resseg import --site-from).
SITE_ATTRIBUTES = ("InstitutionName", "Manufacturer")


def site_pseudonym(series: DicomSeries, attribute: str) -> str | None:
    """The site of a series as ``site-`` and the first 12 hex digits of the SHA-256 of
    ``attribute``'s value (case and surrounding spaces ignored); None where the tag is absent or
    blank. The name itself is never written; but a hash of a public name is a pseudonym, not a
    secret: whoever holds a list of hospital names can find which one it is."""
    header = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    value = str(getattr(header, attribute, "") or "").strip().casefold()
    return f"site-{hashlib.sha256(value.encode()).hexdigest()[:12]}" if value else None


def acquisition(series: DicomSeries) -> dict[str, str]:
    """ACQUISITION_ATTRIBUTES of a series' first slice, as text ("" where a tag is absent)."""
    header = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    return {name: str(getattr(header, name, "") or "") for name in ACQUISITION_ATTRIBUTES}


def find_dicom_series(folder: Path, recursive: bool = True) -> list[DicomSeries]:
    """Every image series under ``folder``, told apart by SeriesInstanceUID; sorted by uid."""
    folder = Path(folder)
    directories = [folder, *sorted(d for d in folder.rglob("*") if d.is_dir())] if recursive else [folder]
    found: dict[str, DicomSeries] = {}
    for directory in directories:
        series_of_file = _series_uid_per_file(directory)
        for uid in _series_ids(directory):
            files = tuple(Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), uid))
            _check_none_dropped(uid, files, series_of_file)
            header = pydicom.dcmread(files[0], stop_before_pixels=True)
            modality = str(header.get("Modality", ""))
            if modality in NON_IMAGE_MODALITIES or "Rows" not in header:
                continue
            found.setdefault(uid, DicomSeries(uid, modality, str(header.get("SeriesDescription", "")), files))
    return sorted(found.values(), key=lambda series: series.uid)


def _series_uid_per_file(directory: Path) -> dict[Path, str]:
    """SeriesInstanceUID of every DICOM file in ``directory``, read by pydicom, which still
    reads the header of a file whose pixel data is damaged."""
    uids = {}
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except (pydicom.errors.InvalidDicomError, OSError, EOFError):
            continue
        if "SeriesInstanceUID" in header:
            uids[path] = str(header.SeriesInstanceUID)
    return uids


def _check_none_dropped(uid: str, files: tuple[Path, ...], series_of_file: dict[Path, str]) -> None:
    """GDCM silently leaves out slices it cannot parse; a series must not lose one unnoticed."""
    dropped = sorted(p for p, u in series_of_file.items() if u == uid and p not in set(files))
    if dropped:
        raise InputDataError(f"{dropped[0]}: slice of series {uid} cannot be read (truncated or corrupt?)")


def _series_ids(directory: Path) -> tuple[str, ...]:
    try:
        return sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory))
    except RuntimeError as err:  # GDCM gives up on the whole folder over one malformed file
        reason = str(err).strip().splitlines()[-1]
        raise InputDataError(f"{directory}: cannot be scanned for DICOM series ({reason})") from None


def read_dicom_series(series: DicomSeries) -> Volume:
    """One series as a 3D volume; rescale slope and intercept applied (Hounsfield units for CT)."""
    folder = series.files[0].parent
    # Every slice's header read once; PixelData is deferred, so its length costs no memory.
    headers = [pydicom.dcmread(f, defer_size=DEFER_BYTES) for f in series.files]
    _check_pixel_data(series, headers)
    _check_slice_geometry(series, headers)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in series.files])
    try:
        image = reader.Execute()
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
        raise InputDataError(f"{folder}: series {series.uid} cannot be read ({reason})") from None
    if image.GetDimension() != 3 or image.GetSize()[2] < 2:
        raise InputDataError(f"{folder}: series {series.uid} has only 1 slice, expected a 3D volume")
    return sitk_to_volume(image)


def _check_pixel_data(series: DicomSeries, headers: list[pydicom.Dataset]) -> None:
    """ITK allocates the whole series from the first slice's Rows x Columns (x frames) before it
    reads a pixel: that size is checked against the input limit first. And ITK fills a slice
    whose PixelData is shorter than Rows x Columns say with whatever memory held, giving a mask
    of garbage, so uncompressed PixelData must hold them all."""
    for index, (path, header) in enumerate(zip(series.files, headers, strict=True)):
        missing = [key for key in ("Rows", "Columns", "BitsAllocated", "PixelData") if key not in header]
        if missing:
            raise InputDataError(f"{path}: no {missing[0]} tag")
        frames = int(header.get("NumberOfFrames") or 1)
        samples = int(header.get("SamplesPerPixel") or 1)
        values = (header.Columns, header.Rows, frames * samples)
        if index == 0:
            bytes_per_value = max(header.BitsAllocated // 8, 1)  # 1-bit images read as bytes
            where = f"{path.parent}: series {series.uid}"
            check_input_bytes(where, (*values[:2], values[2] * len(series.files)), bytes_per_value)
        needed = -(-math.prod(values) * header.BitsAllocated // 8)
        pixel_data = header.get_item("PixelData")
        held = pixel_data.length if isinstance(pixel_data, RawDataElement) else len(pixel_data.value)
        encapsulated = header.file_meta.TransferSyntaxUID.is_encapsulated  # compressed: the decoder checks
        if not encapsulated and held < needed:
            raise InputDataError(
                f"{path}: PixelData (7FE0,0010) holds {held} bytes, fewer than the {needed} that "
                f"Rows x Columns ({header.Rows} x {header.Columns}) need"
            )


def _check_slice_geometry(series: DicomSeries, headers: list[pydicom.Dataset]) -> None:
    """ITK stacks a series' slices evenly along their normal: it only warns about missing or
    unevenly spaced slices, and ignores the sideways shift of a gantry tilt, misplacing them
    either way. Such series are refused rather than resampled, as a mask must lie on the series'
    own voxel grid: no affine describes uneven slices, and ITK-based readers of NIfTI drop the
    shear of a tilt (the qform they fall back to cannot hold one)."""
    if len(headers) < 2:
        return  # the reader refuses a single slice
    where = f"{series.files[0].parent}: series {series.uid}"
    orientation, positions, pixel_mm = _patient_geometry(where, series.files, headers)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = positions[np.argsort(positions @ normal)]
    _check_tilt(where, positions, normal, pixel_mm)
    _check_spacing(where, positions @ normal)


def _patient_geometry(
    where: str, files: tuple[Path, ...], headers: list[pydicom.Dataset]
) -> tuple[np.ndarray, np.ndarray, float]:
    """The slices' orientation, their positions and the smallest pixel spacing, each present on
    every slice and consistent. Where one is missing or degenerate ITK invents it (origin 0,
    1 mm pixels, slices SliceThickness or 1 mm apart), and the mask would lie elsewhere than the
    scan in every viewer."""
    orientations = _tag_per_slice(where, files, headers, "ImageOrientationPatient", 6)
    positions = _tag_per_slice(where, files, headers, "ImagePositionPatient", 3)
    spacings = _tag_per_slice(where, files, headers, "PixelSpacing", 2)
    if not np.allclose(orientations, orientations[0], atol=ORIENTATION_TOLERANCE):
        raise InputDataError(f"{where}: ImageOrientationPatient differs between slices")
    rows, columns = orientations[0, :3], orientations[0, 3:]
    unit = np.allclose(np.linalg.norm([rows, columns], axis=1), 1, atol=ORIENTATION_TOLERANCE)
    if not unit or abs(rows @ columns) > ORIENTATION_TOLERANCE:
        raise InputDataError(
            f"{where}: ImageOrientationPatient {orientations[0].tolist()} is not two perpendicular "
            "unit vectors"
        )
    if not np.all(spacings > 0) or not np.allclose(spacings, spacings[0]):
        raise InputDataError(
            f"{where}: PixelSpacing must be positive and the same on every slice, "
            f"found {spacings.min():g} to {spacings.max():g} mm"
        )
    return orientations[0], positions, float(spacings[0].min())


def _tag_per_slice(
    where: str, files: tuple[Path, ...], headers: list[pydicom.Dataset], keyword: str, count: int
) -> np.ndarray:
    """The ``count`` numbers of ``keyword`` on every slice, (slices, count); a slice lacking
    them is named."""
    values = []
    for path, header in zip(files, headers, strict=True):
        value = _numbers(header.get(keyword))
        if value is None or value.shape != (count,):
            missing = keyword not in header or header[keyword].is_empty
            found = "missing" if missing else f"{header.get(keyword)} is not {count} finite numbers"
            raise InputDataError(f"{where}: {keyword} {found} in {path.name}; the scan's geometry is unknown")
        values.append(value)
    return np.array(values)


def _numbers(value) -> np.ndarray | None:
    """A DICOM multi-valued decimal as finite floats; None where it is absent or not numeric."""
    try:
        numbers = np.atleast_1d(np.array(value if value is not None else [], float))
    except (TypeError, ValueError):
        return None
    return numbers if numbers.size and np.all(np.isfinite(numbers)) else None


def _check_tilt(where: str, positions: np.ndarray, normal: np.ndarray, pixel_mm: float) -> None:
    offsets = positions - positions[0]
    sideways = offsets - np.outer(offsets @ normal, normal)
    drift = float(np.linalg.norm(sideways, axis=1).max())
    if drift > TILT_TOLERANCE_PIXELS * pixel_mm:
        tilt = np.degrees(np.arctan2(np.linalg.norm(sideways[-1]), offsets[-1] @ normal))
        raise InputDataError(
            f"{where}: slices shift sideways by up to {drift:.3g} mm, a gantry tilt of {tilt:.3g} "
            "degrees; resample it onto an untilted grid first (dcm2niix, for one, corrects gantry tilt)"
        )


def _check_spacing(where: str, heights: np.ndarray) -> None:
    """Heights: the slices' sorted positions along their normal, in mm."""
    steps = np.diff(heights)
    repeats = int(np.count_nonzero(steps < SAME_POSITION_MM))
    if repeats:
        raise InputDataError(
            f"{where}: {repeats} of {heights.size} slices repeat another's ImagePositionPatient; "
            "the slice spacing is unknown"
        )
    usual = float(np.median(steps))
    tolerance = SPACING_TOLERANCE * max(usual, 1e-6)
    if steps.max() - steps.min() <= tolerance:
        return
    multiples = np.round(steps / max(usual, 1e-6))
    if np.all(multiples >= 1) and np.all(np.abs(steps - multiples * usual) <= tolerance):
        first = int(np.flatnonzero(multiples > 1)[0])
        missing = int((multiples - 1).sum())
        raise InputDataError(
            f"{where}: {missing} slice(s) missing, the first after {heights[first]:.4g} mm "
            f"along the slice normal (a step of {steps[first]:.3g} mm where the others are {usual:.3g})"
        )
    raise InputDataError(
        f"{where}: unevenly spaced slices (steps from {steps.min():.3g} to {steps.max():.3g} mm); "
        "resample it onto even slices first"
    )


def read_dicom_folder(folder: Path) -> tuple[DicomSeries, Volume]:
    """The single image series of ``folder``."""
    series = find_dicom_series(folder)
    if len(series) != 1:
        uids = ", ".join(s.uid for s in series)
        raise InputDataError(f"{folder}: {len(series)} image series found ({uids}); expected one")
    return series[0], read_dicom_series(series[0])


def find_dicom_seg(folder: Path) -> list[Path]:
    """The DICOM SEG files under ``folder``."""
    segs = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        except (pydicom.errors.InvalidDicomError, OSError):
            continue
        if header.get("SOPClassUID") == SEG_SOP_CLASS_UID:
            segs.append(path)
    return segs


def read_dicom_seg(path: Path, reference: Volume, labels: dict[int, str]) -> np.ndarray:
    """A DICOM SEG, read by highdicom, as a label map on ``reference``'s grid.

    Each segment takes the value of the cohort label its SegmentLabel names (case and spaces
    aside), whatever its number: Slicer and OHIF number segments in the order they were drawn.
    A segment naming no label of ``labels`` (value -> name) is refused. Where segments overlap,
    the higher label value wins; a FRACTIONAL segment counts where it exceeds one half."""
    try:
        # Unpacking a BINARY SEG takes a byte per value: its size is checked from the header
        # before highdicom reads the (deferred) pixels.
        dataset = pydicom.dcmread(path, defer_size=DEFER_BYTES)
        check_input_bytes(path, (dataset.Columns, dataset.Rows, int(dataset.get("NumberOfFrames") or 1)), 1)
        seg = hd.seg.Segmentation.from_dataset(_without_spacing_hint(dataset), copy=False)
        numbers = seg.get_segment_numbers()
        names = {number: seg.get_segment_description(number).segment_label for number in numbers}
        segments = seg.get_volume(combine_segments=False, rescale_fractional=True)
    except InputDataError:
        raise
    except Exception as err:  # pydicom and highdicom raise many types for damaged or foreign files
        raise InputDataError(
            f"{path}: cannot be read as DICOM SEG ({err.__class__.__name__}: {err})"
        ) from None
    values = {number: _label_value(path, number, names[number], labels) for number in numbers}
    grid = hd.Volume.from_nibabel(
        nib.Nifti1Image(np.zeros(reference.shape, np.uint8), reference.affine), coordinate_system="PATIENT"
    )
    try:
        placed = segments.match_geometry(grid).array  # (x, y, z, segment), the reference's axes
    except RuntimeError:  # highdicom: not the same grid up to axis order, flips, cropping or padding
        raise InputDataError(f"{path}: frames do not fall on the image's voxel grid") from None
    threshold = 0.5 if seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL else 0
    label = np.zeros(reference.shape, np.uint8)
    for index in sorted(range(len(numbers)), key=lambda i: values[numbers[i]]):
        label[placed[..., index] > threshold] = values[numbers[index]]
    return label


def _without_spacing_hint(seg: pydicom.Dataset) -> pydicom.Dataset:
    """The slice spacing is the frames' positions' to tell: SpacingBetweenSlices is informative,
    and SEGs copy it from sources that may hold a wrong one (GDCM writes 1 mm for a lone slice),
    which makes highdicom refuse frames that are regularly placed."""
    for group in seg.get("SharedFunctionalGroupsSequence", []):
        for measures in group.get("PixelMeasuresSequence", []):
            measures.pop("SpacingBetweenSlices", None)
    return seg


def _label_value(path: Path, number: int, name: str, labels: dict[int, str]) -> int:
    by_name = {_normalised(label_name): value for value, label_name in labels.items()}
    if _normalised(name) not in by_name:
        declared = ", ".join(labels[value] for value in sorted(labels) if value)
        raise InputDataError(
            f"{path}: segment {number} is labelled {name!r}, which names no label of the cohort ({declared})"
        )
    return by_name[_normalised(name)]


def _normalised(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())
