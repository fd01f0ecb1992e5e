"""The model card: every field from what the pipeline measured, the same bytes from the same inputs,
no identifier of a DICOM-imported cohort, and its identity in resseg predict's run.json."""

from __future__ import annotations

import hashlib
import json
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import card, split
from pipeline.cli import main
from pipeline.config import CardParams, SplitParams
from pipeline.models import train
from pipeline.models.model_dir import (
    ModelDescription,
    load_description,
    model_sha256,
    save_fold,
    software_versions,
)
from pipeline.preprocess.plans import Plans
from pipeline.review.profile import PROFILE_JSON, CohortProfile
from tests.conftest import TINY_NETWORK, TINY_SYNTH, TINY_TRAIN
from tests.infer.test_predictor import HU_PER_CLASS
from tests.io.test_dicom import make_seg
from tests.test_untrusted_inputs import IDENTIFIERS, identified_series

PARAMS = """
evaluate: {bootstrap_resamples: 50, detection: {lesion_labels: [lesion]}}
card:
  intended_use: Research on synthetic CT.
  limitations: Six synthetic cases.
"""
# dvc.lock as DVC writes it, for a project holding models/tiny: the raw cohort added with `dvc add`.
LOCK = """schema: '2.0'
stages:
  preprocess:
    cmd: resseg preprocess --cohort data/raw/tiny --out data/preprocessed
    deps:
    - path: data/raw/tiny
      hash: md5
      md5: 11111111111111111111111111111111.dir
    - path: pipeline/preprocess
      hash: md5
      md5: 22222222222222222222222222222222.dir
    outs:
    - path: data/preprocessed
      hash: md5
      md5: 33333333333333333333333333333333.dir
  train@0:
    cmd: resseg train --fold 0 --out models/tiny/fold_0
    deps:
    - path: data/preprocessed
      hash: md5
      md5: 33333333333333333333333333333333.dir
    - path: pipeline/models
      hash: md5
      md5: 44444444444444444444444444444444.dir
    outs:
    - path: models/tiny/fold_0
      hash: md5
      md5: 55555555555555555555555555555555.dir
"""


def approx(value):
    """What the card keeps of a figure: 6 significant digits, or None."""
    return None if value is None else pytest.approx(value, rel=1e-5)


def resseg(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def project(cohort_dir, preprocessed_dir, tmp_path_factory) -> Path:
    """The pipeline in miniature, as dvc.yaml runs it: one trained fold, its out-of-fold metrics,
    calibration, the test split's predictions and metrics, and a dvc.lock."""
    root = tmp_path_factory.mktemp("project")
    (root / "params.yaml").write_text(PARAMS)
    (root / "dvc.lock").write_text(LOCK)
    (root / "data/raw").mkdir(parents=True)
    (root / "data/raw/tiny.dvc").write_text("outs:\n- md5: 11111111111111111111111111111111.dir\n")
    split.run(SplitParams(n_folds=3), preprocessed_dir / "plans.json", root / "data/splits.json")
    model = root / "models/tiny"
    train.run(
        TINY_TRAIN,
        TINY_NETWORK,
        0,
        preprocessed_dir,
        root / "data/splits.json",
        model / "fold_0",
        root / "dvclive",
    )
    common = ["--params", root / "params.yaml"]
    assert resseg(
        "crossval", *common, "--fold", 0, "--model", model / "fold_0", "--cohort", cohort_dir,
        "--splits", root / "data/splits.json", "--masks", root / "data/crossval/fold_0",
        "--report", root / "reports/crossval/fold_0", "--device", "cpu",
    ) == 0  # fmt: skip
    assert resseg(
        "calibrate", *common, "--crossval", root / "data/crossval", "--cohort", cohort_dir,
        "--out", model / "calibration.json",
    ) == 0  # fmt: skip
    predictions = root / "data/predictions"
    assert resseg(
        "predict", *common, "--input", cohort_dir / "imagesTs", "--output", predictions, "--model", model,
        "--device", "cpu", "--save-probabilities", "--no-card",
    ) == 0  # fmt: skip
    assert resseg(
        "evaluate", *common, "--labels", cohort_dir / "labelsTs", "--predictions", predictions,
        "--probabilities", predictions / "probabilities", "--dataset-json", cohort_dir / "dataset.json",
        "--calibration", model / "calibration.json", "--out", root / "reports",
    ) == 0  # fmt: skip
    return root


def write_card(root: Path, out_dir: Path | None = None, metrics: Path | None = None) -> dict:
    args = ["card", "--params", root / "params.yaml", "--model", root / "models/tiny"]
    args += [
        "--crossval-reports",
        root / "reports/crossval",
        "--metrics",
        metrics or root / "reports/metrics.json",
    ]
    args += ["--splits", root / "data/splits.json", "--dvc-lock", root / "dvc.lock"]
    assert resseg(*args, *(["--out-dir", out_dir] if out_dir else [])) == 0
    return json.loads(((out_dir or root / "models/tiny") / "model_card.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_the_card_holds_the_model_its_data_training_metrics_and_provenance(project):
    root, model = project, project / "models/tiny"
    content = write_card(root)

    described = content["model"]
    assert described["sha256"] == model_sha256(model)
    assert described["architecture"] == "residual_unit_unet" and described["folds"] == ["0"]
    network = load_description(model).build()
    assert described["parameters"] == sum(p.numel() for p in network.parameters())
    assert described["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
    assert described["channels"] == ["CT"]
    assert content["plan"]["patch_size"] == TINY_TRAIN.patch_size

    # The training cohort: counts and spreads, no case.
    data = content["training_data"]
    assert data["n_cases"] == TINY_SYNTH.n_train
    profile = CohortProfile.load(model / "fold_0" / PROFILE_JSON)
    spacing = data["scans"]["spacing_z"]
    assert spacing["min"] == pytest.approx(min(profile.features["spacing_z"]), rel=1e-5)
    assert spacing["max"] == pytest.approx(max(profile.features["spacing_z"]), rel=1e-5)
    assert spacing["min"] <= spacing["median"] <= spacing["max"]
    organ = data["labels"]["organ"]
    assert organ["cases_with_label"] == TINY_SYNTH.n_train
    assert organ["volume_ml"]["median"] == pytest.approx(
        np.median(profile.labels["volume_ml_organ"]), rel=1e-5
    )
    assert data["split"] == {"n_folds": 3, "cases": {"0": {"training": 4, "validation": 2}}}

    training = content["training"]
    assert training["parameters"] == json.loads(TINY_TRAIN.model_dump_json())
    assert training["folds"]["0"]["epochs"] == TINY_TRAIN.max_epochs
    assert training["software"]["source"].startswith("recorded by training")
    assert training["software"]["versions"]["torch"] == metadata.version("torch")

    evaluation = content["evaluation"]
    out_of_fold = json.loads((root / "reports/crossval/fold_0/metrics.json").read_text())
    test = json.loads((root / "reports/metrics.json").read_text())
    for summary, metrics in ((evaluation["out_of_fold"]["0"], out_of_fold), (evaluation["test"], test)):
        assert summary["n_cases"] == metrics["n_cases"] == 2
        dice = metrics["segmentation"]["dice"]["organ"]
        for key in ("mean", "ci95_low", "ci95_high"):
            assert summary["segmentation"]["dice"]["organ"][key] == pytest.approx(dice[key], rel=1e-5)
        auroc = metrics["detection"]["lesion"]["case"]["auroc"]["value"]  # None: undefined
        assert summary["detection"]["lesion"]["case_auroc"]["value"] == approx(auroc)
        assert set(summary["detection"]["lesion"]["lesion_cpm"]) == {"value", "ci95_low", "ci95_high"}
    assert evaluation["per_site"] == card.NOT_MEASURED  # the synthetic cohort gives no sites

    calibration = json.loads((model / "calibration.json").read_text())
    assert content["calibration"]["out_of_fold"]["temperature"] == pytest.approx(
        calibration["temperature"], rel=1e-5
    )
    assert content["calibration"]["out_of_fold"]["n_cases"] == 2
    assert set(content["calibration"]["test"]["ece"]) == {"before", "after"}

    provenance = content["provenance"]
    assert provenance["training"] == {
        "train@0": {
            "deps": {
                "data/preprocessed": "33333333333333333333333333333333.dir",
                "pipeline/models": "44444444444444444444444444444444.dir",
            },
            "outs": {"models/tiny/fold_0": "55555555555555555555555555555555.dir"},
        }
    }
    # Upstream: the data, not the code of the stages that made it.
    assert provenance["data"] == {
        "data/preprocessed": "33333333333333333333333333333333.dir",
        "data/raw/tiny": "11111111111111111111111111111111.dir",
    }

    assert content["statements"]["intended_use"] == "Research on synthetic CT."
    assert content["statements"]["contact"] == card.NOT_STATED
    text = (model / "MODEL_CARD.md").read_text(encoding="utf-8")
    sha256 = hashlib.sha256((model / "model_card.json").read_bytes()).hexdigest()
    assert sha256 in text and content["model"]["sha256"] in text
    for heading in ("Intended use", "Limitations", "Model details", "Training data", "Training", "Evaluation",
                    "Out-of-fold", "Test", "Per site", "Calibration", "Provenance", "Contact"):  # fmt: skip
        assert f"# {heading}" in text, heading
    assert "Research on synthetic CT." in text and "Six synthetic cases." in text
    assert str(root) not in text and str(root) not in json.dumps(content)  # no absolute path


@pytest.mark.slow
def test_sites_of_the_test_metrics_are_carried(project, tmp_path):
    metrics = json.loads((project / "reports/metrics.json").read_text())
    pooled = {key: metrics[key] for key in ("n_cases", "segmentation", "detection")}
    metrics["sites"] = {"site-0a1b2c3d4e5f": pooled, "site-ffeeddccbbaa": pooled}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    content = write_card(project, tmp_path / "card", tmp_path / "metrics.json")
    assert set(content["evaluation"]["per_site"]) == {"site-0a1b2c3d4e5f", "site-ffeeddccbbaa"}
    assert content["evaluation"]["per_site"]["site-0a1b2c3d4e5f"] == content["evaluation"]["test"]
    assert "#### site-ffeeddccbbaa" in (tmp_path / "card/MODEL_CARD.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_the_same_inputs_give_the_same_bytes(project, tmp_path):
    write_card(project, tmp_path / "first")
    write_card(project, tmp_path / "second")
    for name in ("model_card.json", "MODEL_CARD.md"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes()


@pytest.mark.slow
def test_predict_records_the_card_of_these_weights(project, cohort_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside a project: no params.yaml, no dvc.lock
    model = tmp_path / "model"
    shutil.copytree(project / "models/tiny", model)
    shutil.copytree(cohort_dir / "imagesTs", tmp_path / "scans")
    for path in sorted((tmp_path / "scans").iterdir())[1:]:
        path.unlink()  # one scan is enough
    assert resseg("card", "--model", model) == 0
    card_sha256 = hashlib.sha256((model / "model_card.json").read_bytes()).hexdigest()

    def predicted_with(*options) -> dict:
        out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
        assert (
            resseg("predict", "--input", tmp_path / "scans", "--output", out, "--model", model, *options) == 0
        )
        return json.loads((out / "run.json").read_text())["model"]

    recorded = predicted_with("--device", "cpu")
    assert recorded["card_sha256"] == card_sha256 and recorded["sha256"] == model_sha256(model)
    assert predicted_with("--device", "cpu", "--no-card")["card_sha256"] is None
    # Recalibrated since the card was written: the card no longer describes this model.
    calibration = json.loads((model / "calibration.json").read_text())
    (model / "calibration.json").write_text(json.dumps(calibration | {"temperature": 1.5}))
    assert predicted_with("--device", "cpu")["card_sha256"] is None


def test_a_model_alone_gets_a_card_that_says_what_was_not_measured(
    random_model, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # no params.yaml, no dvc.lock
    assert resseg("card", "--model", random_model) == 0
    assert (
        "not measured: out-of-fold metrics, test metrics, calibration, provenance" in capsys.readouterr().out
    )
    content = json.loads((random_model / "model_card.json").read_text())
    for section in ("out_of_fold", "test", "per_site"):
        assert content["evaluation"][section] == card.NOT_MEASURED
    assert content["calibration"] == content["provenance"] == content["training_data"] == card.NOT_MEASURED
    assert content["training"]["software"]["source"].startswith("installed when the card was written")
    assert content["statements"] == dict.fromkeys(
        ["intended_use", "out_of_scope", "limitations", "contact", "license"], card.NOT_STATED
    )
    assert content["title"] == "model"
    text = (random_model / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Not measured" in text and "not stated" in text


def test_an_unknown_card_parameter_fails_naming_it(random_model, tmp_path, capsys):
    (tmp_path / "params.yaml").write_text("card:\n  intended_usage: research\n")
    assert resseg("card", "--params", tmp_path / "params.yaml", "--model", random_model) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "card.intended_usage: unknown key" in err
    assert not (random_model / "model_card.json").exists()


@pytest.mark.parametrize(
    "text, reason",
    [
        ("{", "not valid JSON"),
        ('{"n_cases": 2}', "not a metrics.json written by resseg evaluate"),
        ("[]", "not a"),
    ],
)
def test_malformed_metrics_is_one_line_naming_the_file(random_model, tmp_path, capsys, text, reason):
    (tmp_path / "metrics.json").write_text(text)
    assert resseg("card", "--model", random_model, "--metrics", tmp_path / "metrics.json") == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'metrics.json'}: {reason}" in err
    assert not (random_model / "model_card.json").exists()


def test_a_folder_without_folds_is_one_line(tmp_path, capsys):
    assert resseg("card", "--model", tmp_path) == 3
    assert "no fold_*/model.json" in capsys.readouterr().err


def test_no_identifier_of_a_dicom_cohort_reaches_the_card(tmp_path, capsys, monkeypatch):
    """DICOM patients (identifiers set) imported, preprocessed and split; a fold built on them the
    way training writes it: neither card file, nor what the command prints, holds an identifier, a
    UID or a case name."""
    monkeypatch.chdir(tmp_path)
    uids = [f"1.2.826.0.1.3680043.2.1125.{50 + index}" for index in range(2)]
    cases = ("case_a", "case_b")
    for case, uid in zip(cases, uids, strict=True):
        hu = identified_series(tmp_path / "dicom" / case, uid=uid)
        make_seg(tmp_path / "dicom" / case, (hu // int(HU_PER_CLASS)).astype(np.uint8))
    params = tmp_path / "params.yaml"
    params.write_text("validate: {num_workers: 1}\npreprocess: {num_workers: 1, target_spacing: [2, 2, 4]}\n")
    cohort, preprocessed = tmp_path / "cohort", tmp_path / "preprocessed"
    commands = [
        ["import", "--source", tmp_path / "dicom", "--format", "dicom", "--out", cohort,
         "--labels", "organ,lesion", "--report", tmp_path / "import_qc.json"],
        ["preprocess", "--cohort", cohort, "--out", preprocessed],
    ]  # fmt: skip
    for name, *options in commands:
        assert resseg(name, "--params", params, *options) == 0
    split.run(SplitParams(n_folds=2), preprocessed / "plans.json", tmp_path / "splits.json")
    assert cases[0] in (tmp_path / "splits.json").read_text()  # the names are there to leave out
    description = ModelDescription(TINY_NETWORK, Plans.load(preprocessed / "plans.json"), [16, 16, 8])
    torch.manual_seed(0)
    save_fold(
        tmp_path / "model/fold_0",
        description,
        description.build(),
        CohortProfile.load(preprocessed / PROFILE_JSON),
        training=TINY_TRAIN.model_dump(),
        software=software_versions(),
        fold=0,
    )
    capsys.readouterr()

    written = card.run(CardParams(), tmp_path / "model", splits_path=tmp_path / "splits.json")
    assert (
        resseg(
            "card", "--params", params, "--model", tmp_path / "model", "--splits", tmp_path / "splits.json"
        )
        == 0
    )
    assert written.content["training_data"]["n_cases"] == 2
    assert written.content["training_data"]["split"]["cases"] == {"0": {"training": 1, "validation": 1}}
    printed = capsys.readouterr()
    everything = printed.out + printed.err
    for name in ("model_card.json", "MODEL_CARD.md"):
        everything += (tmp_path / "model" / name).read_text(encoding="utf-8")
    for value in [*IDENTIFIERS.values(), "Doe", "MRN", "1.2.826.0.1.3680043", *cases]:
        assert value not in everything, value
