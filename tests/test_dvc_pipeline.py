"""The real DVC pipeline in a throw-away repository: every stage runs, with the network blocked,
a rerun does nothing, and an experiment with a changed parameter shows up in ``dvc metrics diff``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.test_dvc_deps import stage_files, stages

TINY_PARAMS = """
cohort: synthetic
folds: [0]
synth: {seed: 3, n_train: 6, n_test: 2}
validate: {num_workers: 1}
preprocess: {target_spacing: [2.0, 2.0, 4.0], num_workers: 1}
split: {n_folds: 2}
train:
  model: resunet_small
  model_overrides: {channels: [8, 16, 32], strides: [2, 2], num_res_units: 1}
  patch_size: [32, 32, 16]
  optimizer: adamw
  learning_rate: 0.003
  iterations_per_epoch: 3
  max_epochs: 2
  val_every_n_epochs: 1
predict: {overlap: 0.25}
evaluate: {detection: {lesion_labels: [lesion]}}
calibrate: {target_sensitivity: 0.5}
compare: {cohorts: []}
card: {intended_use: Testing the pipeline.}
"""


# Imported by every Python process started with this folder on PYTHONPATH (dvc and each stage's
# resseg): a connection other than a local (Unix) socket, or a name lookup, is refused and noted.
NO_NETWORK = """
import os, socket

def refuse(*args, **kwargs):
    with open(os.environ["NETWORK_ATTEMPTS"], "a") as attempts:
        attempts.write(f"{os.getpid()}: {args[1:] or args}\\n")
    raise OSError("network access blocked by the test")

connect = socket.socket.connect
socket.socket.connect = lambda sock, address: (
    connect(sock, address) if sock.family == socket.AF_UNIX else refuse(sock, address)
)
socket.getaddrinfo = refuse
"""


def run(args: list[str], cwd: Path, with_stderr: bool = False, **env_vars: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env_vars}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, encoding="utf-8", errors="replace")
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr if with_stderr else result.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path)


def make_repo(folder: Path) -> Path:
    """A git + DVC project in ``folder`` with this checkout's pipeline and the tiny parameters."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "dvc.yaml", folder)
    shutil.copy(REPO_ROOT / ".dvcignore", folder)
    shutil.copytree(REPO_ROOT / "configs", folder / "configs")
    # Stage dependencies name the code; a copy gives them something to hash.
    shutil.copytree(REPO_ROOT / "pipeline", folder / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "params.yaml").write_text(TINY_PARAMS)
    run(["git", "init", "-q"], folder)
    run(["git", "config", "user.email", "test@example.org"], folder)
    run(["git", "config", "user.name", "test"], folder)
    run(["dvc", "init", "-q"], folder)
    run(["dvc", "config", "core.analytics", "false"], folder)
    run(["git", "add", "-A"], folder)
    run(["git", "commit", "-qm", "pipeline"], folder)
    return folder


@pytest.mark.slow
def test_repro_then_up_to_date_then_experiment(repo: Path, tmp_path_factory):
    blocker = tmp_path_factory.mktemp("no_network")
    (blocker / "sitecustomize.py").write_text(NO_NETWORK)
    no_network = {"PYTHONPATH": str(blocker), "NETWORK_ATTEMPTS": str(blocker / "attempts.log")}
    probe = "import socket; socket.create_connection(('192.0.2.1', 80), timeout=1)"
    with pytest.raises(AssertionError, match="network access blocked"):
        run([sys.executable, "-c", probe], repo, **no_network)
    (blocker / "attempts.log").unlink()  # the probe's: the blocker works in a child process

    out = run(["dvc", "repro"], repo, with_stderr=True, **no_network)
    assert not (blocker / "attempts.log").exists(), (blocker / "attempts.log").read_text()
    # Quiet: stage progress and results, none of the libraries' known notices and deprecations.
    for noise in ("Warning", "deprecated", "Tip:", "TPU available", "Total params"):
        assert noise not in out, noise
    stages_run = ("synth", "validate", "preprocess", "split", "train@0", "crossval@0", "calibrate", "shift")
    for stage in (*stages_run, "predict", "evaluate", "card"):
        assert f"Running stage '{stage}'" in out
    # Out-of-fold: fold 0 of 2 holds out 3 of the 6 training cases, each segmented and scored.
    validation = json.loads((repo / "data/splits.json").read_text())[0]["val"]
    masks = repo / "data/crossval/fold_0"
    assert sorted(p.name for p in masks.glob("*.nii.gz")) == [f"{n}.nii.gz" for n in validation]
    assert sorted(p.name for p in (masks / "probabilities").iterdir()) == [f"{n}.nii.gz" for n in validation]
    assert json.loads((repo / "reports/crossval/fold_0/metrics.json").read_text())["n_cases"] == 3
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert set(metrics["segmentation"]["dice"]) == {"organ", "lesion"}
    assert metrics["detection"]["lesion"]["n_cases"] == 2
    for curve in ("froc", "lesion_pr", "roc", "case_pr"):
        assert (repo / f"reports/curves/lesion/{curve}.csv").is_file()
    assert (repo / "reports/report.html").is_file() and (
        repo / "reports/crossval/fold_0/report.html"
    ).is_file()
    assert metrics["n_cases"] == 2
    assert (repo / "models/synthetic/fold_0/weights.pt").is_file()
    # The review: the model keeps its cohort's profile and its calibration from the 3 out-of-fold
    # cases; every test scan has its review column; no init_from, so no shift to report.
    assert (repo / "models/synthetic/fold_0/cohort_profile.json").is_file()
    calibration = json.loads((repo / "models/synthetic/calibration.json").read_text())
    assert calibration["n_cases"] == 3 and calibration["temperature"] > 0
    assert calibration["lesion_thresholds"]["lesion"]["target_sensitivity"] == 0.5
    assert metrics["calibration"]["temperature"] == calibration["temperature"]
    summary = (repo / "data/predictions/summary.csv").read_text(encoding="utf-8").splitlines()
    assert "review" in summary[0].split(",") and len(summary) == 3
    assert json.loads((repo / "reports/shift.json").read_text())["model"] is None
    # The model card: the figures above, and the DVC hashes of this run's training (dvc.lock was
    # written stage by stage, so the card stage read train@0's entry of this run).
    card = json.loads((repo / "models/synthetic/model_card.json").read_text(encoding="utf-8"))
    assert (repo / "models/synthetic/MODEL_CARD.md").is_file()
    evaluation, fitted = card["evaluation"], card["calibration"]["out_of_fold"]
    assert evaluation["test"]["n_cases"] == 2 and evaluation["out_of_fold"]["0"]["n_cases"] == 3
    assert fitted["temperature"] == pytest.approx(calibration["temperature"], rel=1e-5)
    trained = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["train@0"]
    fold = next(out for out in trained["outs"] if out["path"] == "models/synthetic/fold_0")
    assert card["provenance"]["training"]["train@0"]["outs"]["models/synthetic/fold_0"] == fold["md5"]
    assert set(card["provenance"]["data"]) >= {"data/raw/synthetic", "data/preprocessed", "data/splits.json"}
    # The test split's predictions came before the card, and say so.
    assert json.loads((repo / "data/predictions/run.json").read_text())["model"]["card_sha256"] is None

    assert "Data and pipelines are up to date" in run(["dvc", "repro"], repo)

    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)
    # A float as people write it, through DVC's YAML 1.2 into the stage's reader.
    run(["dvc", "exp", "run", "-S", "train.max_epochs=1", "-S", "train.learning_rate=3e-3"], repo)
    diff = json.loads(run(["dvc", "metrics", "diff", "--all", "--json"], repo))
    assert diff["dvclive/fold_0/metrics.json"]["epoch"] == {"old": 1, "new": 0, "diff": -1}
    # Segmentation and detection figures of the two runs side by side, as the README shows.
    for key in ("segmentation.dice.lesion.mean", "detection.lesion.lesion.cpm.value"):
        assert set(diff["reports/metrics.json"][key]) >= {"old", "new"}


@pytest.mark.slow
def test_switching_to_an_imported_cohort(repo: Path, cohort_dir: Path):
    """The README's steps: import, dvc add, one parameter, dvc repro."""
    run(
        ["resseg", "import", "--source", str(cohort_dir), "--format", "msd", "--out", "data/raw/hospital"],
        repo,
    )
    run(["dvc", "add", "data/raw/hospital"], repo)
    assert (repo / "data/raw/hospital.dvc").is_file()
    params = (repo / "params.yaml").read_text().replace("cohort: synthetic", "cohort: hospital")
    (repo / "params.yaml").write_text(params)
    out = run(["dvc", "repro", "evaluate"], repo)
    assert "Running stage 'synth'" not in out  # evaluate needs only the imported cohort
    assert "resseg validate --cohort data/raw/hospital" in out
    assert (repo / "models/hospital/fold_0/model.json").is_file()
    assert json.loads((repo / "reports/data_qc.json").read_text())["cohort"] == "data/raw/hospital"


@pytest.mark.slow
def test_two_clones_give_the_same_lock_and_a_code_edit_reruns_the_stages_that_import_it(tmp_path):
    """Two projects of the same files in different folders give byte-identical dvc.lock files
    (checkpoints name their files relative to their folder; run records stay out of the
    hashes). Then an edit to a shared module shows in ``dvc status`` for exactly the stages
    whose commands import it."""
    first, second = make_repo(tmp_path / "first"), make_repo(tmp_path / "second_clone_elsewhere")
    for clone in (first, second):
        run(["dvc", "repro"], clone)
    assert (first / "dvc.lock").read_bytes() == (second / "dvc.lock").read_bytes()

    files = stage_files()  # folds: [0]; no cohort to compare on, so no compare stage
    names = {stage: f"{stage}@0" if stage in ("train", "crossval") else stage for stage in stages()}
    del names["compare"]
    for module in ("pipeline/parallel.py", "pipeline/config.py", "pipeline/io/volumes.py"):
        edited = first / module
        original = edited.read_bytes()
        edited.write_bytes(original + b"\n# edited\n")
        status = json.loads(run(["dvc", "status", "--json"], first))
        edited.write_bytes(original)
        expected = {names[stage] for stage in names if REPO_ROOT / module in files[stage]}
        assert set(status) == expected, module
        assert expected  # every module here is imported by some stage
