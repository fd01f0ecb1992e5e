"""Data QC: tell the user precisely what is wrong with each case of a cohort.

Per case: the image reads as 3D (or 4D with the declared channels), holds no NaN/Inf, has
intensities that look like its declared modality; the label has the image's shape and
geometry and only declared values. Across the cohort: spacings and shapes far from the median
are flagged. Errors make a case unusable; warnings are worth a look but do not stop anything.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import nibabel as nib
import numpy as np

from pipeline.errors import InputDataError
from pipeline.io import Volume

# Cohort outliers: spacing beyond this factor of the median, voxel count beyond its square.
OUTLIER_FACTOR = 2.0
# No CT or MRI voxel is this small; resampling a scan that claims it would ask for billions.
MIN_SPACING_MM = 0.01
# A CT scan of a body holds air; without any voxel below this it is unlikely to be in HU.
CT_AIR_HU = -500.0


@dataclass
class CaseReport:
    case: str
    split: str  # "train" or "test"
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    shape: list[int] | None = None
    spacing: list[float] | None = None  # per stored axis, as the file gives it
    orientation: str | None = None
    # Per anatomical axis (R, A, S), as preprocessing sees it: what the cohort is compared on.
    spacing_ras: list[float] | None = None
    intensity: list[dict] | None = None  # per channel: min, max, p0.5, p99.5
    label_voxels: dict[str, int] | None = None

    @property
    def status(self) -> str:
        return "error" if self.errors else "warning" if self.warnings else "ok"

    def to_dict(self) -> dict:
        return {**asdict(self), "status": self.status}


@contextlib.contextmanager
def case_errors(report: CaseReport) -> Iterator[None]:
    """Reading and checking one case: what fails becomes the case's error, and the cohort goes on.
    A failure no check foresaw also prints its traceback, so that it can be reported."""
    try:
        yield
    except InputDataError as err:
        report.errors.append(str(err))
    except Exception as err:
        traceback.print_exception(err, file=sys.stderr)
        first_line = (str(err).strip().splitlines() or [""])[0]
        report.errors.append(f"cannot be checked ({err.__class__.__name__}: {first_line})")


def check_case(
    report: CaseReport,
    image: Volume,
    label: Volume | None,
    channel_names: list[str],
    labels: dict[int, str],
    affine_tolerance_mm: float,
) -> CaseReport:
    """All per-case checks on volumes already read (by the QC stage or by an importer)."""
    check_image(report, image, channel_names)
    if label is not None:
        check_label(report, image, label, labels, affine_tolerance_mm)
    elif report.split == "train":
        report.errors.append("no label file")
    return report


def check_image(report: CaseReport, image: Volume, channel_names: list[str]) -> None:
    report.shape = list(image.shape)
    if image.array.dtype.kind not in "biuf":
        report.errors.append(f"voxels are {image.array.dtype}, not real numbers (an RGB or complex image?)")
        return
    if not np.isfinite(image.affine).all():
        report.errors.append("the voxel-to-world matrix (NIfTI sform or qform) holds NaN or Inf")
        return
    if np.linalg.matrix_rank(image.affine[:3, :3]) < 3:
        report.errors.append("the voxel-to-world matrix (NIfTI sform or qform) is singular: no geometry")
        return
    report.spacing = [round(s, 4) for s in image.spacing]
    if min(image.spacing) < MIN_SPACING_MM:
        report.errors.append(
            f"spacing {[float(f'{s:.3g}') for s in image.spacing]} mm: below {MIN_SPACING_MM} mm on an "
            "axis (a header in other units, or a damaged affine?)"
        )
        return
    report.orientation = "".join(nib.aff2axcodes(image.affine))
    report.spacing_ras = [round(s, 4) for s in image.in_ras_frame().spacing]
    if image.n_channels != len(channel_names):
        report.errors.append(
            f"image has {image.n_channels} channel(s), dataset declares {len(channel_names)}"
        )
        return
    channels = image.array if image.array.ndim == 4 else image.array[..., None]
    report.intensity = []
    for index, name in enumerate(channel_names):
        values = np.asarray(channels[..., index])
        finite = np.isfinite(values)
        if not finite.all():
            report.errors.append(f"channel {index} ({name}) has {int((~finite).sum())} NaN/Inf voxels")
            values = values[finite]
        if values.size == 0:
            continue
        low, high = np.percentile(values, [0.5, 99.5])
        report.intensity.append(
            {"min": float(values.min()), "max": float(values.max()), "p0.5": float(low), "p99.5": float(high)}
        )
        if name.upper() == "CT" and values.min() > CT_AIR_HU:
            report.warnings.append(
                f"channel {index} (CT): no voxel below {CT_AIR_HU:.0f} HU (range {values.min():.0f} to "
                f"{values.max():.0f}); does not look like CT in Hounsfield units"
            )


def check_label(
    report: CaseReport, image: Volume, label: Volume, labels: dict[int, str], affine_tolerance_mm: float
) -> None:
    if label.shape != image.shape:
        report.errors.append(f"label shape {list(label.shape)} differs from image shape {list(image.shape)}")
        return
    deviation = float(np.abs(label.affine - image.affine).max())
    if deviation > affine_tolerance_mm:
        report.errors.append(
            f"label geometry differs from the image's by up to {deviation:.4g} mm "
            f"(tolerance {affine_tolerance_mm:g} mm)"
        )
    values, counts = np.unique(np.asarray(label.array), return_counts=True)
    if not np.all(values == np.round(values)):
        report.errors.append("label holds non-integer values")
        return
    undeclared = sorted(int(v) for v in values if int(v) not in labels)
    if undeclared:
        report.errors.append(f"label values {undeclared} are not declared (declared: {sorted(labels)})")
    report.label_voxels = {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}
    if set(report.label_voxels) <= {"0"}:
        report.warnings.append("label is empty (background only)")


def flag_outliers(reports: list[CaseReport]) -> None:
    """Spacing or size far from the cohort's median: often a wrong file or a different protocol."""
    measured = [r for r in reports if r.spacing_ras is not None and r.shape is not None]
    if len(measured) < 3:
        return
    median_spacing = np.median([r.spacing_ras for r in measured], axis=0)
    median_voxels = np.median([np.prod(r.shape) for r in measured])
    for report in measured:
        ratio = np.array(report.spacing_ras) / median_spacing
        if np.any(ratio > OUTLIER_FACTOR) or np.any(ratio < 1 / OUTLIER_FACTOR):
            median = np.round(median_spacing, 3).tolist()
            report.warnings.append(
                f"spacing {report.spacing_ras} (R, A, S axes) is an outlier (cohort median {median})"
            )
        size = np.prod(report.shape) / median_voxels
        if size > OUTLIER_FACTOR**2 or size < 1 / OUTLIER_FACTOR**2:
            report.warnings.append(f"shape {report.shape} is an outlier ({size:.2g}x the median voxel count)")


def summary_table(reports: list[CaseReport]) -> str:
    """A readable table for the terminal: one row per case, its first problem if any."""
    header = (
        f"{'case':<24} {'split':<5} {'shape':<16} {'spacing (mm)':<20} {'orient':<6} {'status':<7} problem"
    )
    rows = [header, "-" * len(header)]
    for r in reports:
        shape = "x".join(map(str, r.shape)) if r.shape else "-"
        spacing = "x".join(f"{s:.2f}" for s in r.spacing) if r.spacing else "-"
        problem = (r.errors or r.warnings or [""])[0]
        orientation = r.orientation or "-"
        rows.append(
            f"{r.case:<24} {r.split:<5} {shape:<16} {spacing:<20} {orientation:<6} {r.status:<7} {problem}"
        )
    ok, warning, error = (sum(r.status == status for r in reports) for status in ("ok", "warning", "error"))
    rows.append(f"{len(reports)} cases: {ok} ok, {warning} with warnings, {error} in error")
    return "\n".join(rows)
