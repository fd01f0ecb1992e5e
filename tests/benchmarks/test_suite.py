"""The benchmark suite's plumbing: rows from repetitions, their round trip, and the one table.
(The benchmarks' figures are never asserted: they are times.)"""

import argparse
import sys
from datetime import datetime, timezone

import pytest

from tests.conftest import REPO_ROOT

sys.path.append(str(REPO_ROOT / "benchmarks"))
from rows import measured, read_rows, write_rows  # noqa: E402
from suite import report  # noqa: E402


def test_a_row_holds_medians_ranges_and_the_ratio_of_the_repetitions(tmp_path):
    row = measured(
        "inference", "s / scan, bf16", [3.0, 1.0, 2.0], [8.0, 4.0, 6.0, 5.0], against="nnU-Net v2", note="n"
    )
    assert (row.resseg, row.resseg_range, row.repeats) == (2.0, (1.0, 3.0), 3)
    assert (row.reference, row.reference_range) == (5.5, (4.0, 8.0))
    assert row.ratio == pytest.approx(2.0 / 5.5)
    alone = measured("scaling", "predict s, 64x64x64", [1.0, 2.0])
    assert alone.reference is None and alone.ratio is None

    write_rows(tmp_path / "rows.json", [row, alone])
    assert read_rows(tmp_path / "rows.json") == [row, alone]


def test_the_table_has_a_line_per_row_with_its_ratio_and_the_failures():
    rows = [
        measured("inference", "s / scan, bf16", [2.0], [5.0], against="nnU-Net v2", resseg_peak_gib=2.4),
        measured("training", "patches / s", [10.0, 12.0], higher_is_better=True),
    ]
    args = argparse.Namespace(quick=True, only=None)
    started = datetime(2026, 11, 25, 17, 0, tzinfo=timezone.utc)
    table = report(rows, args, "cpu", started, {"inference.py": 60.0}, ["scaling.py (exit 1)"])

    lines = table.splitlines()
    assert lines[0].startswith("`make bench QUICK=1` on 2026-11-25 17:00 UTC, 1 min;")
    inference, training = (
        line for line in lines if line.startswith("| inference") or line.startswith("| training")
    )
    assert "| 2 (2-2), 1 runs | 5 (5-5) | nnU-Net v2 | 0.4x | 2.4 / - |" in inference
    assert "patches / s (higher is better) | 11 (10-12), 2 runs |" in training
    assert lines[-1] == "Failed: scaling.py (exit 1)"
