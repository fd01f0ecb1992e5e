"""The README's recipe for retraining on a new site, run as written: train on site A, keep that
model, import site B, fine-tune on it from A, and compare old and new model on both test splits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_dvc_pipeline import make_repo, run

SITE_B = """
synth: {seed: 11, n_train: 6, n_test: 2, noise_hu: 35.0, slice_spacing_mm: [3.5, 4.5]}
"""


@pytest.mark.slow
def test_retrain_on_a_new_site_and_compare_on_both(tmp_path: Path):
    repo = make_repo(tmp_path / "project")
    run(["dvc", "repro"], repo)  # site A: the demo's synthetic cohort
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "site A model"], repo)

    # Keep the model in use as it is, under DVC, before the pipeline trains another.
    shutil.copytree(repo / "models/synthetic", repo / "models/site_a_v1")
    run(["dvc", "add", "models/site_a_v1"], repo)
    # The new site (here another synthetic cohort: other patients, noise and slice spacing).
    (tmp_path / "site_b.yaml").write_text(SITE_B)
    run(["resseg", "synth", "--params", str(tmp_path / "site_b.yaml"), "--out", "data/raw/site_b"], repo)
    run(["dvc", "add", "data/raw/site_b"], repo)
    params = (repo / "params.yaml").read_text(encoding="utf-8").replace("cohort: synthetic", "cohort: site_b")
    params = params.replace(
        "compare: {cohorts: []}",
        "compare: {baseline: models/site_a_v1, cohorts: [synthetic, site_b], margins: {dice: 0.05}}",
    )
    params = params.replace("train:\n", "train:\n  init_from: models/site_a_v1\n", 1)
    (repo / "params.yaml").write_text(params, encoding="utf-8")
    out = run(["dvc", "repro"], repo)

    for stage in ("train@0", "shift", "compare@synthetic", "compare@site_b"):
        assert f"Running stage '{stage}'" in out
    loaded = json.loads((repo / "models/site_b/fold_0/model.json").read_text())["init_from"]
    assert "models/site_a_v1" in loaded["source"] and loaded["loaded"]
    for cohort in ("synthetic", "site_b"):
        result = json.loads((repo / f"reports/compare/{cohort}/compare.json").read_text())
        assert result["n_cases"] == 2
        assert result["a"] == f"data/compare/{cohort}/baseline"
        dice = result["labels"]["organ"]["dice"]
        assert dice["difference"] == pytest.approx(dice["b"] - dice["a"])
        assert dice["margin"] == 0.05 and dice["verdict"] in ("non-inferior", "inferior", "inconclusive")
        assert set(result["labels"]["lesion"]) >= {"dice", "cpm", "auroc"}
    # The retrained model's gain on the new site and its forgetting on the old one, side by side.
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo))
    for cohort in ("synthetic", "site_b"):
        assert "labels.organ.dice.difference" in diff[f"reports/compare/{cohort}/compare.json"]
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], repo)
