"""The cohort on disk, in the Medical Segmentation Decathlon (MSD) layout.

    imagesTr/<case>.nii.gz  labelsTr/<case>.nii.gz  imagesTs/<case>.nii.gz  labelsTs/<case>.nii.gz
    dataset.json            labels, modality/channel_names, training and test lists

Multi-channel cases (MRI T1 + T2, say) are 4D NIfTI files with channels on the last axis, as
in MSD's own multi-modal tasks. ``labelsTs`` is our addition to MSD: the test labels that
evaluation compares against.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InputDataError
from pipeline.io import write_json
from pipeline.io.volumes import case_name

FILE_ENDING = ".nii.gz"


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


def read_dataset_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputDataError(f"{path}: not found; is {path.parent} a cohort in MSD layout?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputDataError(f"{path}: not valid JSON ({err})") from None


def load_cohort(root: str | Path, require_files: bool = True) -> Cohort:
    """Read ``dataset.json``; with ``require_files``, check that every file it lists exists
    (validation leaves that check to itself, to report each missing file per case)."""
    root = Path(root)
    meta_path = root / "dataset.json"
    meta = read_dataset_json(meta_path)
    try:
        labels = {int(value): str(label) for value, label in meta["labels"].items()}
        channels = meta.get("channel_names", meta.get("modality"))
        channel_names = [str(channels[key]) for key in sorted(channels, key=int)]
        training = [
            Case(
                case_name(entry["image"]), root / entry["image"], root / entry["label"], entry.get("patient")
            )
            for entry in meta["training"]
        ]
        test = [_test_case(root, entry) for entry in meta.get("test", [])]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise InputDataError(f"{meta_path}: missing or malformed entry ({err!r})") from None
    for case in training + test if require_files else []:
        for path in (case.image, case.label):
            if path is not None and not path.is_file():
                raise InputDataError(f"{path}: listed in {meta_path} but missing")
    return Cohort(root, meta.get("name", root.name), channel_names, labels, training, test)


def _test_case(root: Path, entry: str) -> Case:
    image = root / entry
    label = root / "labelsTs" / image.name
    return Case(case_name(image), image, label if label.is_file() else None)
