"""What every benchmark script hands to the suite (benchmarks/suite.py): rows of one table.

A script given ``--rows PATH`` writes its figures there as a JSON list of ``Row``; the suite runs
each script in turn and prints all rows as one table. A row compares one figure of resseg with
the same figure of a reference measured in the same run: nnU-Net v2, PI-CAI's code, or the
machine's own limit (a matrix-multiply peak).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Row:
    step: str  # preprocessing, training, inference, evaluation, scaling
    measure: str  # what is compared, with its unit: "s / scan", "cases / s", "GFLOP/s"
    resseg: float  # the median over the repetitions (a rate: over all of them, waits included)
    resseg_range: tuple[float, float]  # the fastest and the slowest repetition
    repeats: int
    reference: float | None = None  # the same measure of the reference, measured in the same run
    reference_range: tuple[float, float] | None = None
    against: str | None = None  # "nnU-Net v2", "PI-CAI (report_guided_annotation)", "matmul peak"
    higher_is_better: bool = False  # True for throughputs
    resseg_peak_gib: float | None = None  # peak memory of this step (RSS on CPU, allocated on GPU)
    reference_peak_gib: float | None = None
    device: str = "cpu"
    note: str = ""  # the setting that matters: "3 scans of 512x512x100, bf16"

    @property
    def ratio(self) -> float | None:
        """resseg's figure over the reference's."""
        return None if not self.reference else self.resseg / self.reference


def measured(
    step: str, measure: str, values: list[float], reference: list[float] | None = None, **fields
) -> Row:
    """A row from every repetition's figure: medians and ranges of resseg's and the reference's."""
    return Row(
        step,
        measure,
        statistics.median(values),
        (min(values), max(values)),
        len(values),
        statistics.median(reference) if reference else None,
        (min(reference), max(reference)) if reference else None,
        **fields,
    )


def write_rows(path: Path, rows: list[Row]) -> None:
    path.write_text(json.dumps([asdict(row) for row in rows], indent=2))


def read_rows(path: Path) -> list[Row]:
    return [
        Row(**{**row, "resseg_range": tuple(row["resseg_range"]), "reference_range": _pair(row)})
        for row in json.loads(path.read_text())
    ]


def _pair(row: dict) -> tuple[float, float] | None:
    return tuple(row["reference_range"]) if row["reference_range"] else None
