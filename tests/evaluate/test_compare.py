"""resseg compare: paired differences, their interval and p-value, and the non-inferiority verdict."""

import csv
import json

import numpy as np
import pytest
from scipy import stats

from pipeline.cli import main
from pipeline.evaluate.compare import INCONCLUSIVE, INFERIOR, NON_INFERIOR, verdict
from pipeline.evaluate.statistics import paired_difference
from pipeline.io import write_volume


def mean(values):
    return float(np.mean(values))


def test_exact_permutation_p_value_by_hand():
    """Differences 0.1, 0.2, 0.3 on three cases: of the 8 ways to swap the pairs, only 'none
    swapped' and 'all swapped' give a mean difference as far from 0 as 0.2: p = 2/8."""
    a = [0.5, 0.5, 0.5]
    b = [0.6, 0.7, 0.8]
    result = paired_difference(mean, a, b, n_resamples=1000, seed=0)
    assert result.exact and result.n_permutations == 8
    assert result.difference == pytest.approx(0.2)
    assert result.p_value == pytest.approx(2 / 8)
    # Every resample of these cases has a mean difference between 0.1 and 0.3.
    assert 0.1 - 1e-9 <= result.interval.low < 0.2 < result.interval.high <= 0.3 + 1e-9


def test_permutation_p_value_agrees_with_scipy():
    rng = np.random.default_rng(3)
    a = rng.uniform(0.6, 0.9, 9)
    b = a + rng.normal(0.02, 0.05, 9)
    ours = paired_difference(mean, list(a), list(b), n_resamples=1000, seed=0)
    theirs = stats.permutation_test(
        (a, b),
        lambda x, y, axis: np.mean(y, axis=axis) - np.mean(x, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=2**9,
    )
    assert ours.exact
    assert ours.p_value == pytest.approx(theirs.pvalue, abs=1e-12)


def test_sampled_permutation_p_value_is_never_zero():
    a = [0.0] * 20
    b = [1.0] * 20
    result = paired_difference(mean, a, b, n_resamples=200, seed=0)
    assert not result.exact
    assert result.p_value == pytest.approx(1 / 201)


def test_identical_models_differ_by_nothing():
    values = [0.3, 0.9, 0.5, 0.7]
    result = paired_difference(mean, values, values, n_resamples=500, seed=0)
    assert result.difference == 0.0 and result.p_value == 1.0
    assert result.interval.low <= 0.0 <= result.interval.high


def test_undefined_statistic_gives_no_p_value():
    result = paired_difference(lambda values: None, [1, 2], [3, 4], n_resamples=100, seed=0)
    assert result.difference is None and result.p_value is None
    assert result.interval.low is None and result.interval.n_undefined == 100


@pytest.mark.parametrize(
    ("low", "high", "margin", "higher_is_better", "expected"),
    [
        (-0.005, 0.02, 0.01, True, NON_INFERIOR),
        (-0.03, -0.02, 0.01, True, INFERIOR),
        (-0.02, 0.01, 0.01, True, INCONCLUSIVE),
        # HD95: a longer distance is worse, so the margin bounds the interval from above.
        (-1.0, 0.5, 1.0, False, NON_INFERIOR),
        (1.5, 3.0, 1.0, False, INFERIOR),
        (-1.0, 2.0, 1.0, False, INCONCLUSIVE),
        (None, None, 1.0, True, INCONCLUSIVE),
    ],
)
def test_verdict(low, high, margin, higher_is_better, expected):
    assert verdict(low, high, margin, higher_is_better) == expected


def write_models(root, n_cases=6):
    """Model A segments every case's organ exactly; model B misses one of its five slices (Dice
    8/9 on every case)."""
    for k in range(n_cases):
        reference = np.zeros((8, 8, 8), np.uint8)
        reference[2:7, 2:6, 2:6] = 1
        missed = reference.copy()
        missed[6] = 0
        for folder, mask in (("labels", reference), ("a", reference), ("b", missed)):
            write_volume(root / folder / f"case{k}.nii.gz", mask, np.eye(4))
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "organ"}}))


def compare(root, first, second, *options):
    return main(
        [
            "compare",
            "--labels", str(root / "labels"),
            "--predictions", str(root / first), str(root / second),
            "--dataset-json", str(root / "dataset.json"),
            "--lesion-labels", "organ",
            "--out", str(root / f"{first}_{second}"),
            *options,
        ]
    )  # fmt: skip


def test_compare_command_finds_the_known_difference(tmp_path, capsys):
    write_models(tmp_path)
    assert compare(tmp_path, "a", "b", "--margin", "dice=0.05,auroc=0.02") == 0
    result = json.loads((tmp_path / "a_b/compare.json").read_text())
    dice = result["labels"]["organ"]["dice"]
    assert dice["a"] == pytest.approx(1.0) and dice["b"] == pytest.approx(8 / 9)
    # The same difference on every case: every resample gives it, and of the 2^6 swap patterns
    # only none and all are as extreme.
    assert dice["difference"] == pytest.approx(-1 / 9)
    assert dice["ci95_low"] == pytest.approx(-1 / 9) and dice["ci95_high"] == pytest.approx(-1 / 9)
    assert dice["p_value"] == pytest.approx(2 / 64) and dice["permutation_exact"]
    assert dice["verdict"] == INFERIOR  # 1/9 is more than the margin of 0.05
    hd95 = result["labels"]["organ"]["hd95_mm"]
    assert hd95["difference"] == pytest.approx(1.0) and hd95["verdict"] is None  # no margin given
    # Each case holds one "lesion" (the organ), found by both: the same AUROC-free cohort.
    auroc = result["labels"]["organ"]["auroc"]
    assert auroc["a"] is None and auroc["verdict"] == INCONCLUSIVE
    rows = list(csv.DictReader(open(tmp_path / "a_b/compare.csv", encoding="utf-8")))
    assert [(r["label"], r["metric"]) for r in rows][:3] == [("organ", m) for m in ("dice", "nsd", "hd95_mm")]
    assert "inferior" in capsys.readouterr().out
    assert "Dice organ B" in (tmp_path / "a_b/report.html").read_text(encoding="utf-8")


def test_compare_a_model_with_itself(tmp_path):
    write_models(tmp_path)
    assert compare(tmp_path, "b", "b", "--margin", "dice=0.01") == 0
    compared = json.loads((tmp_path / "b_b/compare.json").read_text())["labels"]["organ"]
    for row in compared.values():
        if row["difference"] is not None:
            assert row["difference"] == 0.0 and row["p_value"] == 1.0
            assert row["ci95_low"] <= 0.0 <= row["ci95_high"]
    assert compared["dice"]["verdict"] == NON_INFERIOR


@pytest.mark.parametrize(
    ("margin", "message"),
    [
        ("dice=abc", "--margin: expected metric=non-negative number, got 'dice=abc'"),
        ("dice=-0.1", "--margin: expected metric=non-negative number, got 'dice=-0.1'"),
        ("sensitivity=0.1", "--margin: 'sensitivity' is not a compared metric"),
    ],
)
def test_bad_margin_is_one_line(tmp_path, capsys, margin, message):
    write_models(tmp_path, n_cases=2)
    assert compare(tmp_path, "a", "b", "--margin", margin) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "a_b").exists()


def test_a_case_missing_from_one_model_is_named(tmp_path, capsys):
    write_models(tmp_path, n_cases=2)
    (tmp_path / "b/case1.nii.gz").unlink()
    assert compare(tmp_path, "a", "b") != 0
    assert "no prediction for 1 case(s): case1.nii.gz" in capsys.readouterr().err
