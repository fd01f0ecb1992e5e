"""The cohort on disk, in the Medical Segmentation Decathlon (MSD) layout.

    imagesTr/<case>.nii.gz  labelsTr/<case>.nii.gz  imagesTs/<case>.nii.gz  labelsTs/<case>.nii.gz
    dataset.json            labels, modality/channel_names, training and test lists
    acquisition.json        imported from DICOM: each case's acquisition attributes (no identifier)

A case entry (a training entry, or a test entry written as {"image": ...}) may carry
``CASE_KEYS``: its ``patient`` (cases of one patient stay in one fold), its ``site`` and a free
``group``, by which evaluation reports its metrics as well as pooled.

Multi-channel cases (MRI T1 + T2, say) are 4D NIfTI files with channels on the last axis, as
in MSD's own multi-modal tasks. ``labelsTs`` is our addition to MSD: the test labels that
evaluation compares against.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import InputDataError
from pipeline.io import write_json
from pipeline.io.volumes import case_name, volume_ending

FILE_ENDING = ".nii.gz"
ACQUISITION_JSON = "acquisition.json"
# The folders of case files, each of which dataset.json must list.
CASE_FOLDERS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs")
CASE_KEYS = ("patient", "site", "group")
# The subgroups that evaluation reports metrics for, and the name of a case without one.
SUBGROUP_KEYS = ("site", "group")
UNSPECIFIED = "unspecified"


@dataclass(frozen=True)
class Case:
    name: str
    image: Path
    label: Path | None
    keys: dict[str, str] = field(default_factory=dict)  # CASE_KEYS the entry gives

    @property
    def patient(self) -> str | None:
        return self.keys.get("patient")


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
    case_keys: dict[str, dict[str, str]] | None = None,
) -> None:
    """Describe the case files under ``root``; lists are case names, written as MSD paths, and
    ``case_keys`` gives a case's CASE_KEYS (a test case with keys is written as a dict)."""
    case_keys = case_keys or {}

    def test_entry(case: str) -> str | dict:
        image = f"./imagesTs/{case}{FILE_ENDING}"
        return {"image": image, **case_keys[case]} if case_keys.get(case) else image

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
                {
                    "image": f"./imagesTr/{c}{FILE_ENDING}",
                    "label": f"./labelsTr/{c}{FILE_ENDING}",
                    **case_keys.get(c, {}),
                }
                for c in training
            ],
            "test": [test_entry(c) for c in test],
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


def case_subgroups(meta_path: Path) -> dict[str, dict[str, str]]:
    """SUBGROUP_KEY -> case name -> its value, for each key that some case of dataset.json gives;
    a case without it is UNSPECIFIED. Empty when no case gives any (a dataset.json may list no
    cases at all: nnU-Net's does not)."""
    meta = read_dataset_json(meta_path)
    try:
        entries = [*meta.get("training", []), *meta.get("test", [])]
        keys = {
            case_name(Path(entry if isinstance(entry, str) else entry["image"])): _case_keys(meta_path, entry)
            for entry in entries
        }
    except (KeyError, TypeError, AttributeError) as err:
        raise InputDataError(f"{meta_path}: missing or malformed entry ({err!r})") from None
    return {
        key: {case: given.get(key, UNSPECIFIED) for case, given in keys.items()}
        for key in SUBGROUP_KEYS
        if any(key in given for given in keys.values())
    }


def _training_case(root: Path, meta_path: Path, entry: dict) -> Case:
    image = _inside(root, meta_path, entry["image"])
    label = _inside(root, meta_path, entry["label"])
    return Case(case_name(image), image, label, _case_keys(meta_path, entry))


def _test_case(root: Path, meta_path: Path, entry: str | dict) -> Case:
    """A test entry: the image's path (MSD), or {"image": path}; its label, if any, in labelsTs."""
    image = _inside(root, meta_path, entry if isinstance(entry, str) else entry["image"])
    label = root / "labelsTs" / image.name
    return Case(case_name(image), image, label if label.is_file() else None, _case_keys(meta_path, entry))


def _case_keys(meta_path: Path, entry: str | dict) -> dict[str, str]:
    """The CASE_KEYS an entry gives, each a non-empty text: a site becomes a key of the metrics and
    a column of the report."""
    if isinstance(entry, str):
        return {}
    keys = {key: entry[key] for key in CASE_KEYS if entry.get(key) is not None}
    for key, value in keys.items():
        if not (isinstance(value, str | int) and str(value).strip()):
            raise InputDataError(f"{meta_path}: {key} {value!r} of {entry.get('image')!r} is not a name")
    return {key: str(value) for key, value in keys.items()}


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
