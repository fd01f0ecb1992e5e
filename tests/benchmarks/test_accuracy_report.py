"""The accuracy benchmark's report of earlier runs (--report): seeds of several runs together,
and the paired differences over seeds (as a whole, and split into training and prediction)
against a hand computation. (No training here: the figures
are made up; the benchmark itself is run by `make bench`.)"""

import json
import sys

import pytest

from pipeline.preprocess.plans import ChannelNormalization, Plans
from tests.conftest import REPO_ROOT

sys.path.append(str(REPO_ROOT / "benchmarks"))
from accuracy_vs_nnunet import APART, merged_results, paired_cells, paired_over_seeds  # noqa: E402

PLANS = Plans(
    ["CT"], {0: "background", 1: "organ"}, (2.0, 2.0, 4.0), [ChannelNormalization("zscore")], [8, 8, 8], 2
)


def run_file(path, dice_by_seed: dict[int, tuple[float, ...]]):
    """A --json file of one cohort: per seed, (resseg's, nnU-Net's) organ Dice, each tool's
    weights under its own predictor; optionally then (nnU-Net's weights under resseg's
    predictor, resseg's under nnU-Net's), the crossed predictions."""
    runs = {}
    for seed, (ours, theirs, *crossed) in dice_by_seed.items():
        by_tool = {"resseg": {"organ": {"dice": ours}}, "nnU-Net v2": {"organ": {"dice": theirs}}}
        runs[str(seed)] = {"scores": {"resseg": by_tool}}
        if crossed:
            by_trainer = dict(zip(("nnU-Net v2", "resseg"), crossed, strict=True))
            runs[str(seed)]["crossed"] = {tool: {"organ": {"dice": d}} for tool, d in by_trainer.items()}
    result = {"setting": {}, "plans": PLANS.to_dict(), "labels": {"1": "organ"}, "runs": runs, "cohort": "c"}
    path.write_text(json.dumps({"synthetic": result}))
    return path


def test_seeds_of_two_runs_are_reported_together(tmp_path):
    first = run_file(tmp_path / "a.json", {0: (0.90, 0.89), 1: (0.92, 0.90)})
    second = run_file(tmp_path / "b.json", {2: (0.93, 0.90)})
    merged = merged_results([first, second])["synthetic"]
    assert sorted(merged["runs"]) == ["0", "1", "2"]
    assert merged["plans"] == PLANS
    # Differences 0.01, 0.02, 0.03: mean 0.02; of the 2^3 sign patterns only all-plus and
    # all-minus are as far from 0, so the exact p-value is 2/8.
    seeds, mean, interval, p = (cell.strip() for cell in paired_over_seeds(merged, "organ").split("|"))
    assert (seeds, mean, p) == ("3", "+0.020", "0.25")
    low, high = (float(bound) for bound in interval.split(" to "))
    assert 0.01 - 1e-9 <= low <= high <= 0.03 + 1e-9


def test_a_seed_in_two_runs_is_refused(tmp_path):
    first = run_file(tmp_path / "a.json", {0: (0.90, 0.89)})
    again = run_file(tmp_path / "b.json", {0: (0.91, 0.89)})
    with pytest.raises(SystemExit, match=r"b\.json repeats seed\(s\) \['0'\]"):
        merged_results([first, again])


def test_the_difference_is_split_into_training_and_prediction(tmp_path):
    # Per seed: resseg, nnU-Net, nnU-Net's weights by resseg's predictor, resseg's by nnU-Net's.
    path = run_file(
        tmp_path / "a.json",
        {0: (0.90, 0.89, 0.88, 0.91), 1: (0.92, 0.90, 0.91, 0.93), 2: (0.94, 0.91, 0.92, 0.95)},
    )
    result = merged_results([path])["synthetic"]
    cells = {name: paired_cells(result, "organ", ours, theirs).split("|") for name, ours, theirs in APART}
    means = {name: mean.strip() for name, (_, mean, _, _) in cells.items()}
    assert means == {
        # 0.90 - 0.88, 0.92 - 0.91, 0.94 - 0.92
        "training, resseg's predictor": "+0.017",
        # 0.91 - 0.89, 0.93 - 0.90, 0.95 - 0.91
        "training, nnU-Net's predictor": "+0.030",
        # 0.90 - 0.91, 0.92 - 0.93, 0.94 - 0.95
        "prediction, resseg's weights": "-0.010",
        # 0.88 - 0.89, 0.91 - 0.90, 0.92 - 0.91
        "prediction, nnU-Net's weights": "+0.003",
    }


def test_a_run_without_crossed_predictions_leaves_the_split_empty(tmp_path):
    result = merged_results([run_file(tmp_path / "a.json", {0: (0.90, 0.89), 1: (0.92, 0.90)})])["synthetic"]
    for _, ours, theirs in APART:
        assert paired_cells(result, "organ", ours, theirs) == "0 | - | - | -"
