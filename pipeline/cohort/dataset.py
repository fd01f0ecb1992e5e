"""The cohort on disk, in the Medical Segmentation Decathlon (MSD) layout.

    imagesTr/<case>.nii.gz  labelsTr/<case>.nii.gz  imagesTs/<case>.nii.gz  labelsTs/<case>.nii.gz
    dataset.json            labels, modality/channel_names, training and test lists
    acquisition.json        imported from DICOM: each case's acquisition attributes (no identifier)

Multi-channel cases (MRI T1 + T2, say) are 4D NIfTI files with channels on the last axis, as
in MSD's own multi-modal tasks. ``labelsTs`` is our addition to MSD: the test labels that
evaluation compares against.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InputDataError
from pipeline.io import write_json
from pipeline.io.volumes import case_name, volume_ending

FILE_ENDING = ".nii.gz"
ACQUISITION_JSON = "acquisition.json"
# The folders of case files, each of which dataset.json must list.
CASE_FOLDERS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs")


@dataclass(frozen=True)
class Case:
    name: str
    image: Path
    label: Path | None
    # Optional "patient" of a training entry: cases of one patient stay in one fold.
    patient: str | None = None


@dataclass(frozen=True)
class Cohort:
    root: Path
    name: str
    channel_names: list[str]  # modality of each channel: "CT", "T1", "T2", ...
    labels: dict[int, str]  # value -> name, background (0) included
    training: list[Case]
    test: list[Case]

    @property
    def foreground_labels(self) -> dict[int, str]:
        return {value: name for value, name in self.labels.items() if value != 0}


def write_dataset_json(
    root: Path,
    name: str,
    channel_names: list[str],
    labels: dict[int, str],
    training: list[str],
    test: list[str],
) -> None:
    """Describe the case files under ``root``; lists are case names, written as MSD paths."""
    channels = {str(i): channel for i, channel in enumerate(channel_names)}
    write_json(
        root / "dataset.json",
        {
            "name": name,
            "tensorImageSize": "3D" if len(channel_names) == 1 else "4D",
            "modality": channels,
            "channel_names": channels,
            "labels": {str(value): label for value, label in sorted(labels.items())},
            "file_ending": FILE_ENDING,
            "numTraining": len(training),
            "numTest": len(test),
            "training": [
                {"image": f"./imagesTr/{c}{FILE_ENDING}", "label": f"./labelsTr/{c}{FILE_ENDING}"}
                for c in training
            ],
            "test": [f"./imagesTs/{c}{FILE_ENDING}" for c in test],
        },
    )


def read_acquisition(root: Path) -> dict[str, dict[str, str]]:
    """Case name -> its acquisition attributes (pipeline/io/dicom.py); empty for a cohort that
    was not imported from DICOM."""
    path = Path(root) / ACQUISITION_JSON
    if not path.is_file():
        return {}
    try:
        return {
            str(case): dict(values) for case, values in json.loads(path.read_text(encoding="utf-8")).items()
        }
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError):
        raise InputDataError(f"{path}: not the acquisition record resseg import writes") from None


def read_dataset_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))  # JSON is UTF-8, whatever the locale
    except FileNotFoundError:
        raise InputDataError(f"{path}: not found; is {path.parent} a cohort in MSD layout?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputDataError(f"{path}: not valid JSON ({err})") from None


def load_cohort(root: str | Path, require_files: bool = True) -> Cohort:
    """Read ``dataset.json`` and check that it agrees with the files: every path inside the
    cohort folder, the declared counts, no case file left unlisted and, with ``require_files``,
    every listed file present (validation leaves that check to itself, to report each missing
    file per case)."""
    root = Path(root)
    meta_path = root / "dataset.json"
    meta = read_dataset_json(meta_path)
    try:
        labels = {int(value): str(label) for value, label in meta["labels"].items()}
        channels = meta.get("channel_names", meta.get("modality"))
        channel_names = [str(channels[key]) for key in sorted(channels, key=int)]
        training = [_training_case(root, meta_path, entry) for entry in meta["training"]]
        test = [_test_case(root, meta_path, entry) for entry in meta.get("test", [])]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise InputDataError(f"{meta_path}: missing or malformed entry ({err!r})") from None
    _check_counts(meta, meta_path, training, test)
    _check_unique_names(root, meta_path, training + test)
    _check_none_unlisted(root, meta_path, training + test)
    for case in training + test if require_files else []:
        for path in (case.image, case.label):
            if path is not None and not path.is_file():
                raise InputDataError(f"{path}: listed in {meta_path} but missing")
    return Cohort(root, meta.get("name", root.name), channel_names, labels, training, test)


def _training_case(root: Path, meta_path: Path, entry: dict) -> Case:
    image = _inside(root, meta_path, entry["image"])
    return Case(case_name(image), image, _inside(root, meta_path, entry["label"]), entry.get("patient"))


def _test_case(root: Path, meta_path: Path, entry: str | dict) -> Case:
    """A test entry: the image's path (MSD), or {"image": path}; its label, if any, in labelsTs."""
    image = _inside(root, meta_path, entry if isinstance(entry, str) else entry["image"])
    label = root / "labelsTs" / image.name
    return Case(case_name(image), image, label if label.is_file() else None)


def _inside(root: Path, meta_path: Path, entry: str) -> Path:
    """A path of dataset.json, which must stay inside the cohort folder: a cohort from elsewhere
    must not make the pipeline read, and its reports name, files outside it. Checked on the text,
    so a cohort whose files are links (DVC's symlink cache) is still accepted."""
    if os.path.isabs(entry) or os.path.normpath(entry).split(os.sep)[0] == os.pardir:
        raise InputDataError(
            f"{meta_path}: entry {entry!r} points outside {root}; paths must be relative to it"
        )
    return root / entry


def _check_counts(meta: dict, meta_path: Path, training: list[Case], test: list[Case]) -> None:
    """numTraining and numTest, where given, must count the listed cases: a mismatch means a
    dataset.json edited by hand, or written before cases were added or removed."""
    for key, listed, cases in (("numTraining", "training", training), ("numTest", "test", test)):
        if key in meta and meta[key] != len(cases):
            raise InputDataError(
                f"{meta_path}: {key} is {meta[key]!r} but {len(cases)} cases are listed in {listed!r}"
            )


def _check_unique_names(root: Path, meta_path: Path, cases: list[Case]) -> None:
    """Cases are known by name (a file name without its ending), so ``a.nii`` and ``a.nii.gz``
    listed as two cases would be merged into one, and a split list that case twice."""
    first_of: dict[str, Case] = {}
    for case in cases:
        other = first_of.setdefault(case.name, case)
        if other is not case:
            raise InputDataError(
                f"{meta_path}: {other.image.relative_to(root)} and {case.image.relative_to(root)} "
                f"are one case, {case.name!r}; list it once"
            )


def _check_none_unlisted(root: Path, meta_path: Path, cases: list[Case]) -> None:
    """A case file that dataset.json does not list is a case silently left out, most often one
    added after dataset.json was written. Hidden files (macOS's ``._`` copies in MSD archives)
    and files of other types are not case files."""
    listed = {
        os.path.normpath(path) for case in cases for path in (case.image, case.label) if path is not None
    }
    unlisted = sorted(
        path
        for folder in CASE_FOLDERS
        if (root / folder).is_dir()
        for path in (root / folder).iterdir()
        if volume_ending(path) and not path.name.startswith(".") and os.path.normpath(path) not in listed
    )
    if unlisted:
        first = unlisted[0].relative_to(root)
        raise InputDataError(
            f"{meta_path}: {first} is not listed ({len(unlisted)} unlisted case file(s) in all); "
            f"list it, or move it out of {root}"
        )
