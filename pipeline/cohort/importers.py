"""``resseg import``: bring a cohort in from the layouts hospitals have, into our MSD layout.

Each source format lists its cases as ``SourceCase``s: a name, a split, and how to read the
image (all channels) with its label. The import reads each case once, checks it (validate.py), and
writes it as NIfTI; the output folder appears only when the whole import succeeded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from pipeline.cohort.dataset import (
    ACQUISITION_JSON,
    FILE_ENDING,
    load_cohort,
    read_dataset_json,
    write_dataset_json,
)
from pipeline.cohort.qc import conclude
from pipeline.cohort.validate import CaseReport, case_errors, check_case
from pipeline.errors import ConfigError, InputDataError
from pipeline.io import Volume, atomic_directory, read_volume, write_json, write_volume
from pipeline.io.dicom import (
    DicomSeries,
    acquisition,
    find_dicom_seg,
    find_dicom_series,
    read_dicom_seg,
    read_dicom_series,
    site_pseudonym,
)
from pipeline.io.volumes import case_name, volume_ending

# nnU-Net's channel suffix: case_0000.nii.gz is channel 0 of "case".
CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class SourceCase:
    name: str
    split: str  # "train" or "test"
    read: Callable[[], tuple[Volume, Volume | None]]  # image and label (None: unlabelled)
    # DICOM: the first channel's acquisition attributes (io/dicom.py), kept in acquisition.json
    acquisition: Callable[[], dict[str, str]] | None = None
    # dataset.json's CASE_KEYS of the case (patient, site, group), read once the case is imported
    keys: Callable[[], dict[str, str]] = dict


@dataclass(frozen=True)
class SourceCohort:
    channel_names: list[str]
    labels: dict[int, str]
    cases: list[SourceCase]


@dataclass(frozen=True)
class ImportOptions:
    channel_names: list[str] | None = None  # folders/dicom: modality per channel
    label_names: list[str] | None = None  # folders/dicom: names of label values 1, 2, ...
    affine_tolerance_mm: float = 1e-3
    skip_invalid: bool = False
    site_from: str | None = None  # dicom: SITE_ATTRIBUTES, kept as a pseudonym


def run(
    source: Path,
    fmt: str,
    out: Path,
    options: ImportOptions,
    report_path: Path,
    echo: Callable[[str], None] = print,
) -> list[CaseReport]:
    """Import, write the QC report and show its table; stop (writing no cohort) on invalid
    cases unless ``options.skip_invalid``."""
    if not Path(source).is_dir():
        raise InputDataError(f"{source}: not a folder")
    if options.site_from and fmt != "dicom":
        raise ConfigError(
            f"--site-from: only a DICOM source has {options.site_from}; --format {fmt} "
            "gives sites in its dataset.json"
        )
    cohort = SOURCES[fmt](Path(source), options)
    if not cohort.cases:
        raise InputDataError(f"{source}: no case found for format {fmt!r}")
    with atomic_directory(out) as tmp:
        reports = [_import_case(case, cohort, tmp, options) for case in cohort.cases]
        conclude(reports, Path(source), Path(report_path), options.skip_invalid, echo)
        written = [r for r in reports if not r.errors]
        kept = {r.case for r in written}
        acquired = {c.name: c.acquisition() for c in cohort.cases if c.acquisition and c.name in kept}
        case_keys = {c.name: c.keys() for c in cohort.cases if c.name in kept}
        if acquired:
            write_json(tmp / ACQUISITION_JSON, acquired)
        write_dataset_json(
            tmp,
            name=Path(out).name,
            channel_names=cohort.channel_names,
            labels=cohort.labels,
            training=[r.case for r in written if r.split == "train"],
            test=[r.case for r in written if r.split == "test"],
            case_keys=case_keys,
        )
    return reports


def _import_case(case: SourceCase, cohort: SourceCohort, out: Path, options: ImportOptions) -> CaseReport:
    report = CaseReport(case.name, case.split)
    with case_errors(report):
        image, label = case.read()
        check_case(report, image, label, cohort.channel_names, cohort.labels, options.affine_tolerance_mm)
    if report.errors:
        return report
    suffix = "Tr" if case.split == "train" else "Ts"
    write_volume(out / f"images{suffix}" / f"{case.name}{FILE_ENDING}", image.array, image.affine)
    if label is not None:
        values = np.asarray(label.array)
        dtype = np.uint8 if values.max(initial=0) < 256 else np.uint16
        write_volume(
            out / f"labels{suffix}" / f"{case.name}{FILE_ENDING}", values.astype(dtype), image.affine
        )
    return report


# --- source formats ---------------------------------------------------------------------------


def from_msd(source: Path, options: ImportOptions) -> SourceCohort:
    """The cases dataset.json lists, checked against the files as the pipeline checks its own
    cohorts (paths inside the folder, counts, no case file unlisted); missing files are reported
    per case."""
    cohort = load_cohort(source, require_files=False)
    n_channels = len(cohort.channel_names)
    cases = [
        _channel_case(c.name, split, [c.image], n_channels, c.label, c.keys)
        for split, listed in (("train", cohort.training), ("test", cohort.test))
        for c in listed
    ]
    return SourceCohort(cohort.channel_names, cohort.labels, cases)


def from_nnunet(source: Path, options: ImportOptions) -> SourceCohort:
    meta = read_dataset_json(source / "dataset.json")
    try:
        channel_names = [str(meta["channel_names"][k]) for k in sorted(meta["channel_names"], key=int)]
        ending = meta["file_ending"]
        if any(not isinstance(v, int) for v in meta["labels"].values()):
            raise InputDataError(
                f"{source / 'dataset.json'}: region-based labels (lists of values) are not supported"
            )
        labels = {int(v): str(n) for n, v in meta["labels"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise InputDataError(f"{source / 'dataset.json'}: missing or malformed entry ({err!r})") from None
    cases = []
    for split, images_dir, labels_dir in (
        ("train", "imagesTr", "labelsTr"),
        ("test", "imagesTs", "labelsTs"),
    ):
        for name, channel_files in _group_channels(source / images_dir, ending).items():
            label = source / labels_dir / f"{name}{ending}"
            has_label = split == "train" or label.exists()
            cases.append(
                _channel_case(name, split, channel_files, len(channel_names), label if has_label else None)
            )
    return SourceCohort(channel_names, labels, cases)


def from_folders(source: Path, options: ImportOptions) -> SourceCohort:
    channel_names = options.channel_names or ["CT"]
    images = {}
    for path in sorted((source / "images").iterdir()) if (source / "images").is_dir() else []:
        if volume_ending(path):
            images.setdefault(
                _strip_channel(case_name(path)) if len(channel_names) > 1 else case_name(path), []
            ).append(path)
    if not images:
        raise InputDataError(f"{source / 'images'}: no image file found")
    label_files = {case_name(p): p for p in (source / "labels").glob("*") if volume_ending(p)}
    cases = [
        _channel_case(
            name, "train", files, len(channel_names), label_files.get(name, source / "labels" / name)
        )
        for name, files in images.items()
    ]
    return SourceCohort(channel_names, _declared_labels(options, "folders"), cases)


def from_dicom(source: Path, options: ImportOptions) -> SourceCohort:
    """One folder per patient: its image series (one per channel) and its label, either a
    DICOM SEG (each segment is the label its SegmentLabel names) or a single NIfTI/NRRD/MetaImage
    file."""
    channel_names = options.channel_names or ["CT"]
    labels = _declared_labels(options, "dicom")
    patients = sorted(p for p in source.iterdir() if p.is_dir())
    return SourceCohort(
        channel_names,
        labels,
        [_dicom_case(folder, channel_names, labels, options.site_from) for folder in patients],
    )


SOURCES: dict[str, Callable[[Path, ImportOptions], SourceCohort]] = {
    "msd": from_msd,
    "nnunet": from_nnunet,
    "folders": from_folders,
    "dicom": from_dicom,
}


# --- helpers ----------------------------------------------------------------------------------


def _channel_case(
    name: str,
    split: str,
    channel_files: list[Path],
    n_channels: int,
    label: Path | None,
    keys: dict[str, str] | None = None,
) -> SourceCase:
    def read() -> tuple[Volume, Volume | None]:
        if len(channel_files) == 1:
            image = read_volume(channel_files[0], max_channels=n_channels)
        else:
            image = stack_channels([read_volume(path) for path in channel_files], channel_files)
        if label is None:
            return image, None
        if not label.is_file():
            raise InputDataError(f"{label}: label file not found (expected for case {name})")
        return image, read_volume(label)

    return SourceCase(name, split, read, keys=lambda: dict(keys or {}))


def _dicom_case(
    folder: Path, channel_names: list[str], labels: dict[int, str], site_from: str | None
) -> SourceCase:
    def first_series() -> DicomSeries:
        return _series_for_channels(folder, find_dicom_series(folder), channel_names)[0]

    def keys() -> dict[str, str]:
        site = site_pseudonym(first_series(), site_from) if site_from else None
        return {"site": site} if site else {}

    def read() -> tuple[Volume, Volume | None]:
        chosen = _series_for_channels(folder, find_dicom_series(folder), channel_names)
        volumes = [read_dicom_series(series) for series in chosen]
        image = volumes[0] if len(volumes) == 1 else stack_channels(volumes, [folder / s.uid for s in chosen])
        segs = find_dicom_seg(folder)
        label_files = sorted(p for p in folder.iterdir() if p.is_file() and volume_ending(p))
        if len(segs) + len(label_files) > 1:
            raise InputDataError(f"{folder}: {len(segs) + len(label_files)} label candidates; keep one")
        if segs:
            _check_seg_reference(segs[0], chosen)
            return image, Volume(read_dicom_seg(segs[0], volumes[0], labels), image.affine)
        return image, read_volume(label_files[0]) if label_files else None

    return SourceCase(folder.name, "train", read, lambda: acquisition(first_series()), keys)


def _check_seg_reference(seg_path: Path, series: list[DicomSeries]) -> None:
    """A SEG labels the series it references: one placed by geometry alone on another series
    (a later scan of the same patient and frame) would be imported as that series' label."""
    try:
        header = pydicom.dcmread(seg_path, stop_before_pixels=True)
        referenced = {str(item.SeriesInstanceUID) for item in header.ReferencedSeriesSequence}
    except (AttributeError, pydicom.errors.InvalidDicomError, OSError):
        referenced = set()
    if not referenced & {s.uid for s in series}:
        named = ", ".join(sorted(referenced)) or "none"
        raise InputDataError(
            f"{seg_path}: references series {named}, absent from its folder "
            f"(image series: {', '.join(s.uid for s in series)})"
        )


def _series_for_channels(
    folder: Path, series: list[DicomSeries], channel_names: list[str]
) -> list[DicomSeries]:
    """The series of each channel: the only one, or the one whose description or modality
    names the channel ("T2" matches "AX T2 FLAIR")."""
    if not series:
        raise InputDataError(f"{folder}: no DICOM image series found")
    if len(series) == 1 and len(channel_names) == 1:
        return series
    chosen = []
    for channel in channel_names:
        matches = [s for s in series if channel.lower() in f"{s.description} {s.modality}".lower()]
        if len(matches) != 1:
            found = ", ".join(f"{s.description or s.modality!r} ({s.uid})" for s in series)
            raise InputDataError(f"{folder}: {len(matches)} series match channel {channel!r} among: {found}")
        chosen.append(matches[0])
    return chosen


def stack_channels(channels: list[Volume], paths: list[Path], tolerance_mm: float = 1e-3) -> Volume:
    """Single-channel volumes of one case (``_0000``, ``_0001`` ...) as one multi-channel volume."""
    first = channels[0]
    for volume, path in zip(channels[1:], paths[1:], strict=True):
        if volume.shape != first.shape or np.abs(volume.affine - first.affine).max() > tolerance_mm:
            raise InputDataError(f"{path}: geometry differs from channel 0 ({paths[0].name})")
    return Volume(np.stack([np.asarray(v.array) for v in channels], axis=-1), first.affine)


def _group_channels(folder: Path, ending: str) -> dict[str, list[Path]]:
    """nnU-Net's ``{case}_{XXXX}{ending}`` files grouped by case, channels in order."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(folder.glob(f"*{ending}")) if folder.is_dir() else []:
        match = CHANNEL_SUFFIX.match(path.name[: -len(ending)])
        if match is None:
            raise InputDataError(f"{path}: expected nnU-Net's {{case}}_{{XXXX}}{ending} channel naming")
        groups.setdefault(match["case"], []).append(path)
    return groups


def _strip_channel(name: str) -> str:
    match = CHANNEL_SUFFIX.match(name)
    return match["case"] if match else name


def _declared_labels(options: ImportOptions, fmt: str) -> dict[int, str]:
    """Formats without a dataset.json name their labels on the command line."""
    if not options.label_names:
        raise ConfigError(f"--labels: required for --format {fmt} (names of label values 1, 2, ...)")
    return {0: "background", **{i + 1: name for i, name in enumerate(options.label_names)}}
