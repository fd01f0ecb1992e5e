"""The cohort on disk, in the Medical Segmentation Decathlon (MSD) layout.

    imagesTr/<case>.nii.gz  labelsTr/<case>.nii.gz  imagesTs/<case>.nii.gz  labelsTs/<case>.nii.gz
    dataset.json            labels, modality/channel_names, training and test lists

``labelsTs`` is our addition to MSD: the test labels that evaluation compares against.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InputDataError
from pipeline.io import write_json

FILE_ENDING = ".nii.gz"


@dataclass(frozen=True)
class Case:
    name: str
    image: Path
    label: Path | None


@dataclass(frozen=True)
class Cohort:
    root: Path
    name: str
    modality: str  # of the single channel; multi-channel cohorts arrive with issue 3
    labels: dict[int, str]  # value -> name, background (0) included
    training: list[Case]
    test: list[Case]

    @property
    def foreground_labels(self) -> dict[int, str]:
        return {value: name for value, name in self.labels.items() if value != 0}


def case_name(path: Path) -> str:
    return path.name.removesuffix(FILE_ENDING)


def write_dataset_json(
    root: Path, name: str, modality: str, labels: dict[int, str], training: list[str], test: list[str]
) -> None:
    """Describe the case files under ``root``; lists are case names, written as MSD paths."""
    write_json(
        root / "dataset.json",
        {
            "name": name,
            "tensorImageSize": "3D",
            "modality": {"0": modality},
            "channel_names": {"0": modality},
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


def load_cohort(root: str | Path) -> Cohort:
    """Read ``dataset.json`` and check that every file it lists exists."""
    root = Path(root)
    meta_path = root / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise InputDataError(f"{meta_path}: not found; is {root} a cohort in MSD layout?") from None
    except json.JSONDecodeError as err:
        raise InputDataError(f"{meta_path}: not valid JSON ({err})") from None
    try:
        labels = {int(value): str(label) for value, label in meta["labels"].items()}
        modality = meta.get("channel_names", meta.get("modality"))["0"]
        training = [
            Case(case_name(Path(entry["image"])), root / entry["image"], root / entry["label"])
            for entry in meta["training"]
        ]
        test = [_test_case(root, entry) for entry in meta.get("test", [])]
    except (KeyError, TypeError, ValueError) as err:
        raise InputDataError(f"{meta_path}: missing or malformed entry ({err!r})") from None
    for case in training + test:
        for path in (case.image, case.label):
            if path is not None and not path.is_file():
                raise InputDataError(f"{path}: listed in {meta_path} but missing")
    return Cohort(root, meta.get("name", root.name), modality, labels, training, test)


def _test_case(root: Path, entry: str) -> Case:
    image = root / entry
    label = root / "labelsTs" / image.name
    return Case(case_name(image), image, label if label.is_file() else None)
