"""The scans of an input folder: volume files (NIfTI, NRRD, MetaImage), multi-channel groups
(nnU-Net's ``<case>_0000``, ``<case>_0001`` ...) and DICOM series (split by SeriesInstanceUID).

Finding scans reads only names and DICOM headers; pixel data is read later, one scan at a time,
so a damaged file becomes one failed scan instead of a failed run.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import pydicom

from pipeline.errors import InputDataError
from pipeline.io import Volume, read_volume
from pipeline.io.dicom import DicomSeries, find_dicom_series, read_dicom_series
from pipeline.io.volumes import VOLUME_ENDINGS, case_name, volume_ending

# Masks keep their scan's format family; detached headers get their single-file sibling, and
# DICOM series get NIfTI (a DICOM SEG is written on request, besides).
OUTPUT_ENDING = {".nii.gz": ".nii.gz", ".nii": ".nii", ".nrrd": ".nrrd", ".nhdr": ".nrrd", ".mha": ".mha"}
OUTPUT_ENDING[".mhd"] = ".mha"
DICOM_OUTPUT_ENDING = ".nii.gz"
# How DICOM series are named: after their folders, or by their SeriesInstanceUID.
NameBy = Literal["folder", "uid"]
# Files that sit beside scans without being one: detached-header data, notes, tables.
SIDECAR_ENDINGS = (".raw", ".zraw", ".img", ".json", ".txt", ".csv", ".md")
CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Scan:
    name: str  # unique in the folder; the outputs' path under the output folder, without ending
    sources: tuple[Path, ...]  # one file per channel, or the slice files of a DICOM series
    output_ending: str
    series: DicomSeries | None = None

    def read(self, n_channels: int) -> list[Volume]:
        """The scan's volumes, one per channel file (a single file may hold them all); refused
        unless they hold the model's ``n_channels``."""
        if self.series is not None:
            volumes = [read_dicom_series(self.series)]
        else:
            per_file = n_channels if len(self.sources) == 1 else 1
            volumes = [read_volume(path, max_channels=per_file) for path in self.sources]
        found = sum(volume.n_channels for volume in volumes)
        if found != n_channels:
            raise InputDataError(f"{self.source}: {found} channel(s), but the model takes {n_channels}")
        return volumes

    @property
    def source(self) -> Path:
        """What to name in messages: the file, or the DICOM series' folder."""
        return self.sources[0].parent if self.series is not None else self.sources[0]


@dataclass(frozen=True)
class Unusable:
    """Something in the input folder that cannot become a scan, and why."""

    name: str
    source: Path
    reason: str


def find_scans(
    input_dir: Path, n_channels: int, recursive: bool = False, name_by: NameBy = "folder"
) -> tuple[list[Scan], list[Unusable]]:
    """Every scan under ``input_dir``, sorted by name: its files, and the DICOM series of its
    subfolders; with ``recursive``, every file of every subfolder, at any depth.

    A model with several channels takes the ``_0000`` ... files of a case together, or one file
    holding them all; with one channel, nnU-Net's ``_0000`` suffix is dropped from the name.
    A DICOM series is named after its folder (which may be a patient's name), or with
    ``name_by="uid"`` by its SeriesInstanceUID alone (``series_name``).
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputDataError(f"{input_dir}: not a folder")
    below = input_dir.rglob("*") if recursive else input_dir.iterdir()
    subfolders = sorted(
        d
        for d in below
        if d.is_dir() and not any(part.startswith(".") for part in d.relative_to(input_dir).parts)
    )
    scans: list[Scan] = []
    unusable: list[Unusable] = []
    for folder in [input_dir, *subfolders]:
        prefix = folder.relative_to(input_dir).as_posix()
        series_only = not recursive and folder != input_dir
        found, problems = _scan_folder(folder, n_channels, "" if prefix == "." else f"{prefix}/", series_only)
        scans += found
        unusable += problems
    if name_by == "uid":
        scans = [replace(scan, name=series_name(scan.series.uid)) if scan.series else scan for scan in scans]
    return _without_name_clashes(scans, unusable)


def series_name(uid: str) -> str:
    """A name that tells nothing of where or whose the series is: the first 16 hex digits of
    its SeriesInstanceUID's SHA-256 (a collision needs some 4 billion series)."""
    return f"series_{hashlib.sha256(uid.encode()).hexdigest()[:16]}"


def _scan_folder(
    folder: Path, n_channels: int, prefix: str, series_only: bool
) -> tuple[list[Scan], list[Unusable]]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    others = [p for p in files if not volume_ending(p) and not p.name.lower().endswith(SIDECAR_ENDINGS)]
    dicom = [p for p in others if _is_dicom(p)]
    scans, unusable = [], []
    if not series_only:
        scans, unusable = _volume_scans([p for p in files if volume_ending(p)], n_channels, prefix)
        expected = f"expected one of {', '.join(VOLUME_ENDINGS)} or DICOM"
        unusable += [
            Unusable(f"{prefix}{p.name}", p, f"unsupported format ({expected})")
            for p in others
            if p not in dicom
        ]
    if dicom:
        found, problems = _dicom_scans(folder, prefix)
        scans += found
        unusable += problems
    return scans, unusable


def _volume_scans(files: list[Path], n_channels: int, prefix: str) -> tuple[list[Scan], list[Unusable]]:
    if n_channels == 1:
        scans = []
        for path in files:
            match = CHANNEL_SUFFIX.match(case_name(path))
            name = match["case"] if match and match["channel"] == "0000" else case_name(path)
            scans.append(Scan(f"{prefix}{name}", (path,), OUTPUT_ENDING[volume_ending(path)]))
        return scans, []
    cases: dict[str, dict[int, Path]] = defaultdict(dict)
    scans, unusable = [], []
    for path in files:
        match = CHANNEL_SUFFIX.match(case_name(path))
        if match is None:  # one file holding every channel (MSD's 4D layout)
            scans.append(Scan(f"{prefix}{case_name(path)}", (path,), OUTPUT_ENDING[volume_ending(path)]))
        else:
            cases[match["case"]][int(match["channel"])] = path
    for case, channels in sorted(cases.items()):
        first = channels[min(channels)]
        if sorted(channels) != list(range(n_channels)):
            found = ", ".join(f"_{c:04d}" for c in sorted(channels))
            unusable.append(
                Unusable(
                    f"{prefix}{case}",
                    first,
                    f"expected channels _0000 to _{n_channels - 1:04d}, found {found}",
                )
            )
        else:
            sources = tuple(channels[c] for c in range(n_channels))
            scans.append(Scan(f"{prefix}{case}", sources, OUTPUT_ENDING[volume_ending(first)]))
    return scans, unusable


def _dicom_scans(folder: Path, prefix: str) -> tuple[list[Scan], list[Unusable]]:
    """One scan per image series of the folder, named after the folder (and the series, when the
    folder holds several)."""
    base = f"{prefix}{folder.name}" if not prefix else prefix.rstrip("/")
    try:
        series = find_dicom_series(folder, recursive=False)
    except InputDataError as err:
        return [], [Unusable(base, folder, str(err))]
    if len(series) == 1:
        return [Scan(base, series[0].files, DICOM_OUTPUT_ENDING, series[0])], []
    return [Scan(f"{base}_{s.uid.rsplit('.', 1)[-1]}", s.files, DICOM_OUTPUT_ENDING, s) for s in series], []


def _is_dicom(path: Path) -> bool:
    return path.suffix.lower() == ".dcm" or pydicom.misc.is_dicom(path)


def _without_name_clashes(scans: list[Scan], unusable: list[Unusable]) -> tuple[list[Scan], list[Unusable]]:
    """Two inputs that would write the same output (``a.nii`` and ``a.nii.gz``) are both refused."""
    by_name: dict[str, list[Scan]] = defaultdict(list)
    for scan in scans:
        by_name[scan.name].append(scan)
    kept = []
    for name, group in sorted(by_name.items()):
        if len(group) == 1:
            kept.append(group[0])
        else:
            sources = ", ".join(s.source.name for s in group)
            unusable += [
                Unusable(name, s.source, f"several inputs have this name ({sources})") for s in group
            ]
    return kept, sorted(unusable, key=lambda u: u.name)
