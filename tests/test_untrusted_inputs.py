"""Models and scans from elsewhere: no code runs from a model file, no patient identifier leaves a
DICOM input, and nothing reaches for the network."""

import hashlib
import json
import os
import socket

import numpy as np
import pydicom
import pytest
import torch

from pipeline.cli import main
from pipeline.cohort.dataset import load_cohort
from pipeline.config import DetectionParams, EvaluateParams
from pipeline.evaluate import stage as evaluate_stage
from pipeline.infer import batch
from pipeline.infer.inputs import series_name
from pipeline.models.model_dir import ModelDescription, save_fold
from tests.conftest import TINY_NETWORK
from tests.infer.test_predictor import HU_PER_CLASS, PLANS, blob_scan, oracle_predictor
from tests.io.test_dicom import make_seg, write_series

IDENTIFIERS = {
    "PatientName": "Doe^Jane",
    "PatientID": "MRN-4711-XYZ",
    "PatientBirthDate": "19420317",
    "AccessionNumber": "ACC-998877",
    "InstitutionName": "St Elsewhere General",
    "ReferringPhysicianName": "House^Gregory",
    "StudyDate": "20250102",
}


class Payload:
    """Unpickling this runs os.system: the attack a weights file can carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def model_dir(tmp_path):
    description = ModelDescription(TINY_NETWORK, PLANS, patch_size=[32, 32, 16])
    save_fold(tmp_path / "model/fold_0", description, description.build())
    return tmp_path / "model"


@pytest.fixture
def scans(tmp_path):
    (tmp_path / "in").mkdir()
    blob_scan(tmp_path / "in", "scan", np.diag([2.0, 2.0, 4.0, 1.0]))
    return tmp_path / "in"


def predict(model, scans, out, capsys):
    code = main(
        ["predict", "--input", str(scans), "--output", str(out), "--model", str(model), "--device", "cpu"]
    )
    return code, capsys.readouterr().err.strip()


def test_weights_carrying_a_pickle_payload_are_refused_unexecuted(model_dir, scans, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    weights = model_dir / "fold_0/weights.pt"
    torch.save({"network.weight": Payload(marker)}, weights)
    code, error = predict(model_dir, scans, tmp_path / "out", capsys)
    assert code == 3
    assert error.startswith(f"resseg predict: error: {weights}: cannot load weights (UnpicklingError")
    assert len(error.splitlines()) == 1
    assert not marker.exists()
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_model_whose_labels_do_not_fit_its_weights_is_refused_before_inference(
    model_dir, scans, tmp_path, capsys
):
    model_json = model_dir / "fold_0/model.json"
    description = json.loads(model_json.read_text())
    description["plans"]["labels"]["3"] = "metastasis"  # a fourth class the weights do not have
    model_json.write_text(json.dumps(description))
    code, error = predict(model_dir, scans, tmp_path / "out", capsys)
    assert code == 3
    assert error.startswith(
        f"resseg predict: error: {model_dir / 'fold_0/weights.pt'}: does not fit model.json"
    )
    assert not (tmp_path / "out").exists()


def identified_series(folder, uid: str) -> np.ndarray:
    """A CT series whose every slice carries IDENTIFIERS; its HU encode an organ and a lesion."""
    hu = np.zeros((24, 20, 8), np.int16)
    hu[6:18, 5:15, 2:6] = HU_PER_CLASS
    hu[10:14, 8:12, 3:5] = 2 * HU_PER_CLASS
    write_series(folder, hu, uid=uid)
    for path in folder.iterdir():
        dataset = pydicom.dcmread(path)
        for keyword, value in IDENTIFIERS.items():
            setattr(dataset, keyword, value)
        dataset.save_as(path)
    return hu


def assert_no_identifier_in(folders, text: str = "") -> None:
    everything = b"".join(p.read_bytes() for folder in folders for p in folder.rglob("*") if p.is_file())
    everything += text.encode()
    for value in IDENTIFIERS.values():
        assert value.encode() not in everything, value
    assert b"Doe^Jane" not in everything and b"4711" not in everything


def test_no_patient_identifier_reaches_any_output(tmp_path, monkeypatch):
    identified_series(tmp_path / "in/Doe_Jane", uid="1.2.826.0.1.3680043.2.1125.31")
    monkeypatch.chdir(tmp_path)  # the outputs name the folder as given: relative here
    options = batch.BatchOptions(save_probabilities=True, dicom_seg=True)
    model = {"path": "oracle", "folds": None, "sha256": "oracle"}
    detection = DetectionParams(lesion_labels=["lesion"])
    result = batch.run(oracle_predictor(), model, "in", "out", options, detection)
    assert result.all_succeeded

    seg = pydicom.dcmread(tmp_path / "out/Doe_Jane.seg.dcm")
    for keyword in IDENTIFIERS:
        assert not str(seg.get(keyword, "")), keyword
    assert_no_identifier_in([tmp_path / "out"])


def test_named_by_uid_no_output_path_names_the_patient_folder(tmp_path, monkeypatch):
    """A folder named after its patient names the outputs after the patient; --name-by uid names
    them by a hash of the SeriesInstanceUID. summary.csv's input column still maps each name
    back to its folder, for whoever runs it; the masks and SEG carry no name."""
    uid = "1.2.826.0.1.3680043.2.1125.32"
    identified_series(tmp_path / "in/Doe_Jane", uid=uid)
    monkeypatch.chdir(tmp_path)
    options = batch.BatchOptions(dicom_seg=True, name_by="uid")
    model = {"path": "oracle", "folds": None, "sha256": "oracle"}
    result = batch.run(
        oracle_predictor(), model, "in", "out", options, DetectionParams(lesion_labels=["lesion"])
    )
    assert result.all_succeeded
    name = series_name(uid)
    assert name == "series_" + hashlib.sha256(uid.encode()).hexdigest()[:16]
    written = sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("."))
    assert written == sorted([f"{name}.nii.gz", f"{name}.seg.dcm", "run.json", "summary.csv"])
    for output in (tmp_path / "out").glob("series_*"):
        content = output.read_bytes()
        assert not any(value.encode() in content for value in [*IDENTIFIERS.values(), "Doe_Jane"])
    assert not any("Doe" in p.name for p in (tmp_path / "out").rglob("*"))


def test_no_patient_identifier_reaches_an_imported_cohort(tmp_path, capsys):
    """DICOM patients (series and SEG labels, identifiers set) imported, validated and
    preprocessed: the cohort, its QC report, the preprocessed arrays, the plan and everything
    printed carry none of the identifiers; the cases are named by their folders."""
    for index, case in enumerate(("case_a", "case_b")):
        hu = identified_series(tmp_path / "dicom" / case, uid=f"1.2.826.0.1.3680043.2.1125.{40 + index}")
        make_seg(tmp_path / "dicom" / case, (hu // int(HU_PER_CLASS)).astype(np.uint8))
    params = tmp_path / "params.yaml"
    params.write_text("validate: {num_workers: 1}\npreprocess: {num_workers: 1, target_spacing: [2, 2, 4]}\n")
    cohort, reports = tmp_path / "cohort", tmp_path / "reports"
    commands = [
        ["import", "--source", tmp_path / "dicom", "--format", "dicom", "--out", cohort,
         "--labels", "organ,lesion", "--report", reports / "import_qc.json"],
        ["validate", "--cohort", cohort, "--report", reports / "data_qc.json"],
        ["preprocess", "--cohort", cohort, "--out", tmp_path / "preprocessed"],
    ]  # fmt: skip
    for name, *options in commands:
        assert main([str(arg) for arg in (name, "--params", params, *options)]) == 0
    printed = capsys.readouterr()
    assert [case.name for case in load_cohort(cohort).training] == ["case_a", "case_b"]
    assert_no_identifier_in([cohort, reports, tmp_path / "preprocessed"], printed.out + printed.err)


def test_prediction_and_evaluation_run_with_the_network_blocked(scans, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    model = {"path": "oracle", "folds": None, "sha256": "oracle"}
    options = batch.BatchOptions(save_probabilities=True)
    detection = DetectionParams(lesion_labels=["lesion"])
    assert batch.run(oracle_predictor(), model, scans, tmp_path / "out", options, detection).all_succeeded
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels/scan.nii.gz").write_bytes((tmp_path / "out/scan.nii.gz").read_bytes())
    # Without dataset.json, labels are named by value.
    params = EvaluateParams(detection=DetectionParams(lesion_labels=["label_2"]), bootstrap_resamples=10)
    metrics = evaluate_stage.run(
        params, tmp_path / "labels", tmp_path / "out", tmp_path / "report", None,
        tmp_path / "out/probabilities", scans,
    )  # fmt: skip
    assert metrics["segmentation"]["dice"]["label_1"]["mean"] == 1.0
    assert (tmp_path / "report/report.html").is_file()
