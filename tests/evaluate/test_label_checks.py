"""Masks holding values that are not declared labels, and label names that are not folder names,
stop the evaluation with one line naming the file, instead of being scored as if they meant
something or writing outside the output folder."""

import json
import re

import numpy as np
import pytest

from pipeline.config import EvaluateParams
from pipeline.errors import InputDataError
from pipeline.evaluate import stage
from tests.evaluate.test_stage import make_pair

LABELS = {"0": "background", "1": "organ", "2": "lesion"}


def write_dataset_json(path, labels):
    path.write_text(json.dumps({"labels": labels}))
    return path


@pytest.mark.parametrize(
    ("value", "dtype", "message"),
    [
        (7, np.uint8, r"holds label value\(s\) \[7\] that dataset.json does not declare \(\[1, 2\]\)"),
        (255, np.uint8, r"holds label value\(s\) \[255\] that dataset.json does not declare"),
        (0.5, np.float32, r"holds \[0.5\], not label values \(whole numbers from 0\)"),
        (np.nan, np.float32, r"holds \[nan\], not label values"),
        (-1, np.int16, r"holds \[-1\], not label values"),
    ],
)
def test_undeclared_or_fractional_label_values_are_named(tmp_path, value, dtype, message):
    reference = np.zeros((6, 6, 6), np.uint8)
    reference[1:4, 1:4, 1:4] = 1
    prediction = reference.astype(dtype)
    prediction[5, 5, 5] = value
    make_pair(tmp_path, "a", reference, prediction)
    dataset_json = write_dataset_json(tmp_path / "dataset.json", LABELS)
    with pytest.raises(InputDataError, match=rf"^{tmp_path / 'pred/a.nii.gz'}: {message}"):
        stage.run(EvaluateParams(), tmp_path / "labels", tmp_path / "pred", tmp_path / "out", dataset_json)
    assert not (tmp_path / "out/metrics.json").exists()


def test_without_dataset_json_any_whole_value_is_a_label_and_fractions_are_refused(tmp_path):
    reference = np.zeros((6, 6, 6), np.uint8)
    reference[1:4, 1:4, 1:4] = 7
    make_pair(tmp_path, "a", reference, reference)
    metrics = stage.run(EvaluateParams(), tmp_path / "labels", tmp_path / "pred", tmp_path / "out")
    assert metrics["segmentation"]["dice"]["label_7"]["mean"] == 1.0
    make_pair(tmp_path, "a", reference, reference * np.float32(0.5))
    with pytest.raises(InputDataError, match=r"pred/a.nii.gz: holds \[3.5\], not label values"):
        stage.run(EvaluateParams(), tmp_path / "labels", tmp_path / "pred", tmp_path / "out2")


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", "", "back\\slash"])
def test_label_names_that_are_not_folder_names_are_refused(tmp_path, name):
    reference = np.zeros((6, 6, 6), np.uint8)
    reference[1:4, 1:4, 1:4] = 2
    make_pair(tmp_path, "a", reference, reference)
    dataset_json = write_dataset_json(tmp_path / "dataset.json", {**LABELS, "2": name})
    params = EvaluateParams.model_validate({"detection": {"lesion_labels": [name]}})
    with pytest.raises(
        InputDataError, match=re.escape(f"dataset.json: label name {name!r} cannot be a folder")
    ):
        stage.run(params, tmp_path / "labels", tmp_path / "pred", tmp_path / "out", dataset_json)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "out/curves").exists()
