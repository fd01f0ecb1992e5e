"""Metrics per site and group: each site's metrics are those of its cases evaluated alone."""

import csv
import json
import shutil

import numpy as np
import pytest

from pipeline.config import EvaluateParams
from pipeline.errors import InputDataError
from pipeline.evaluate import stage
from pipeline.io import write_probabilities, write_volume

SITES = {"c0": "north", "c1": "north", "c2": "north", "c3": "south", "c4": "south", "c5": "south"}
LABELS = {"0": "background", "1": "organ", "2": "lesion"}
PARAMS = EvaluateParams(bootstrap_resamples=200)


def write_case(root, name, rng):
    """An organ with a lesion in some cases; the prediction shifted by a random amount."""
    reference = np.zeros((12, 12, 10), np.uint8)
    reference[2:10, 2:10, 2:8] = 1
    if rng.random() < 0.6:
        reference[4:7, 4:7, 3:6] = 2
    shift = int(rng.integers(0, 3))
    prediction = np.roll(reference, shift, axis=0)
    probability = np.stack([prediction == v for v in range(3)]).astype(np.float32)
    probability[2] *= rng.uniform(0.3, 1.0)
    probability[0] = 1 - probability[1] - probability[2]
    write_volume(root / "labels" / f"{name}.nii.gz", reference, np.eye(4))
    write_volume(root / "pred" / f"{name}.nii.gz", prediction, np.eye(4))
    write_probabilities(root / "prob" / f"{name}.nii.gz", probability, np.eye(4))


def write_dataset(root, sites):
    entries = [{"image": f"./imagesTs/{c}.nii.gz", "site": s} for c, s in sites.items()]
    (root / "dataset.json").write_text(json.dumps({"labels": LABELS, "training": [], "test": entries}))


def evaluate(root, out):
    return stage.run(
        PARAMS,
        root / "labels",
        root / "pred",
        root / out,
        root / "dataset.json",
        probabilities_dir=root / "prob",
    )


def test_each_site_equals_its_cases_evaluated_alone(tmp_path):
    rng = np.random.default_rng(4)
    for name in SITES:
        write_case(tmp_path, name, rng)
    write_dataset(tmp_path, SITES)
    pooled = evaluate(tmp_path, "all")
    assert set(pooled["sites"]) == {"north", "south"} and "groups" not in pooled
    for site in ("north", "south"):
        alone = tmp_path / site
        for folder in ("labels", "pred", "prob"):
            (alone / folder).mkdir(parents=True)
            for name in (c for c, s in SITES.items() if s == site):
                shutil.copy(tmp_path / folder / f"{name}.nii.gz", alone / folder)
        write_dataset(alone, {c: s for c, s in SITES.items() if s == site})
        metrics = evaluate(alone, "out")
        assert pooled["sites"][site] == {k: metrics[k] for k in ("n_cases", "segmentation", "detection")}
    rows = list(csv.DictReader(open(tmp_path / "all/per_case.csv", encoding="utf-8")))
    assert [r["site"] for r in rows] == list(SITES.values())
    report = (tmp_path / "all/report.html").read_text(encoding="utf-8")
    assert "<h2>Per site</h2>" in report and "<th>south</th>" in report


def test_a_case_without_a_site_is_unspecified(tmp_path):
    rng = np.random.default_rng(5)
    for name in ("c0", "c1"):
        write_case(tmp_path, name, rng)
    (tmp_path / "dataset.json").write_text(
        json.dumps(
            {
                "labels": LABELS,
                "training": [],
                "test": [{"image": "./imagesTs/c0.nii.gz", "group": "contrast"}, "./imagesTs/c1.nii.gz"],
            }
        )
    )
    metrics = evaluate(tmp_path, "out")
    assert "sites" not in metrics
    assert {g: m["n_cases"] for g, m in metrics["groups"].items()} == {"contrast": 1, "unspecified": 1}


@pytest.mark.parametrize("site", ["", "  ", ["a"], {"x": 1}])
def test_a_site_that_is_not_a_name_is_refused(tmp_path, site):
    rng = np.random.default_rng(6)
    write_case(tmp_path, "c0", rng)
    (tmp_path / "dataset.json").write_text(
        json.dumps(
            {"labels": LABELS, "training": [], "test": [{"image": "./imagesTs/c0.nii.gz", "site": site}]}
        )
    )
    with pytest.raises(
        InputDataError, match=r"dataset.json: site .* of './imagesTs/c0.nii.gz' is not a name"
    ):
        evaluate(tmp_path, "out")
