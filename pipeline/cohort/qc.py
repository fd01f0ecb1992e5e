"""The validate stage: QC every case of a cohort in MSD layout, write ``data_qc.json``.

A cohort with errors stops here with a one-line summary, unless ``validate.skip_invalid`` is
set; then preprocessing leaves the listed cases out.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.cohort.dataset import Case, load_cohort
from pipeline.cohort.validate import CaseReport, case_errors, check_case, flag_outliers, summary_table
from pipeline.config import ValidateParams
from pipeline.errors import InputDataError
from pipeline.io import read_volume, write_json
from pipeline.parallel import map_cases


def run(
    params: ValidateParams,
    cohort_dir: str | Path,
    report_path: str | Path,
    echo: Callable[[str], None] = print,
) -> list[CaseReport]:
    cohort = load_cohort(cohort_dir, require_files=False)
    tasks = [(case, "train") for case in cohort.training] + [(case, "test") for case in cohort.test]
    reports = map_cases(
        validate_case,
        [
            (case, split, cohort.channel_names, cohort.labels, params.affine_tolerance_mm)
            for case, split in tasks
        ],
        params.num_workers,
        "validate",
    )
    conclude(reports, Path(cohort_dir), Path(report_path), params.skip_invalid, echo)
    return reports


def validate_case(
    case: Case, split: str, channel_names: list[str], labels: dict[int, str], tolerance_mm: float
) -> CaseReport:
    report = CaseReport(case.name, split)
    with case_errors(report):
        image = read_volume(case.image, max_channels=len(channel_names))
        label = read_volume(case.label) if case.label is not None else None
        check_case(report, image, label, channel_names, labels, tolerance_mm)
    return report


def conclude(
    reports: list[CaseReport],
    cohort: Path,
    report_path: Path,
    skip_invalid: bool,
    echo: Callable[[str], None] = print,
) -> None:
    """Flag cohort outliers, write the report, show the table; stop if cases are invalid."""
    flag_outliers(reports)
    write_report(report_path, cohort, reports)
    echo(summary_table(reports))
    invalid = [r for r in reports if r.errors]
    if invalid and not skip_invalid:
        first = f"{invalid[0].case}: {invalid[0].errors[0]}"
        raise InputDataError(
            f"{cohort}: {len(invalid)} of {len(reports)} cases invalid; first: {first} "
            f"(all in {report_path}; validate.skip_invalid / --skip-invalid leaves them out)"
        )


def write_report(path: str | Path, cohort: str | Path, reports: list[CaseReport]) -> None:
    write_json(
        path,
        {
            "cohort": str(cohort),
            "n_cases": len(reports),
            "n_errors": sum(r.status == "error" for r in reports),
            "n_warnings": sum(r.status == "warning" for r in reports),
            "cases": [r.to_dict() for r in reports],
        },
    )
