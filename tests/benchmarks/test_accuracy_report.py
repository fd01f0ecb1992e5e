"""The accuracy benchmark's report of earlier runs (--report): seeds of several runs together,
and the paired difference over seeds against a hand computation. (No training here: the figures
are made up; the benchmark itself is run by `make bench`.)"""

import json
import sys

import pytest

from pipeline.preprocess.plans import ChannelNormalization, Plans
from tests.conftest import REPO_ROOT

sys.path.append(str(REPO_ROOT / "benchmarks"))
from accuracy_vs_nnunet import merged_results, paired_over_seeds  # noqa: E402

PLANS = Plans(
    ["CT"], {0: "background", 1: "organ"}, (2.0, 2.0, 4.0), [ChannelNormalization("zscore")], [8, 8, 8], 2
)


def run_file(path, dice_by_seed: dict[int, tuple[float, float]]):
    """A --json file of one cohort: per seed, (resseg's, nnU-Net's) organ Dice."""
    runs = {}
    for seed, (ours, theirs) in dice_by_seed.items():
        by_tool = {"resseg": {"organ": {"dice": ours}}, "nnU-Net v2": {"organ": {"dice": theirs}}}
        runs[str(seed)] = {"scores": {"resseg": by_tool}}
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
