"""The preprocess stage: fingerprint the training cases, plan, and write network-ready arrays.

Output folder:
    plans.json             the plan (see plans.py), the fingerprint and per-case properties
    cohort_profile.json    the training cohort's features, which the model keeps (pipeline/review)
    <case>_image.npy       float32, (channels, x, y, z), RAS, target spacing, normalised
    <case>_label.npy       uint8, (1, x, y, z), same grid

``.npy`` files can be memory-mapped by training. Cases run in ``num_workers`` processes; each
worker holds one case at a time, which bounds memory whatever the cohort size.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.cohort.dataset import Case, load_cohort, read_acquisition
from pipeline.config import PreprocessParams
from pipeline.errors import InputDataError
from pipeline.io import atomic_directory
from pipeline.parallel import map_cases
from pipeline.preprocess.fingerprint import combine, fingerprint_case
from pipeline.preprocess.planner import make_plans
from pipeline.preprocess.plans import Plans
from pipeline.preprocess.transforms import build_preprocessing
from pipeline.review.profile import PROFILE_JSON, CohortProfile


def run(
    params: PreprocessParams, cohort_dir: str | Path, out_dir: str | Path, qc_report: str | Path | None = None
) -> Plans:
    # Files of the cases that validation left out may be missing; those of the others are read.
    cohort = load_cohort(cohort_dir, require_files=qc_report is None)
    cases = _valid_cases(cohort.training, qc_report)
    n_channels = len(cohort.channel_names)
    fingerprints = map_cases(
        fingerprint_case,
        [(case, n_channels, cohort.labels, seed) for seed, case in enumerate(cases)],
        params.num_workers,
        "fingerprint",
    )
    try:
        fingerprint = combine(fingerprints, tuple(params.clip_percentiles))
    except ValueError as err:
        raise InputDataError(f"{cohort.root}: {err}") from None
    plans = make_plans(fingerprint, cohort.channel_names, cohort.labels, params)
    with atomic_directory(out_dir) as tmp:
        properties = map_cases(
            preprocess_case, [(plans, case, tmp) for case in cases], params.num_workers, "preprocess"
        )
        plans.save(tmp / "plans.json", fingerprint=fingerprint.to_dict(), cases=properties)
        recorded = read_acquisition(cohort.root)
        profile = CohortProfile.build(
            [case.description for case in fingerprints],
            [case.label_features for case in fingerprints],
            [recorded[case.name] for case in cases if case.name in recorded],
        )
        profile.save(tmp / PROFILE_JSON)
    return plans


def preprocess_case(plans: Plans, case: Case, out_dir: Path) -> dict:
    """Run the chain on one case, save its arrays, and return what is needed to invert it."""
    data = build_preprocessing(plans)({"image": str(case.image), "label": str(case.label)})
    image = data["image"].numpy().astype(np.float32)
    label = np.rint(data["label"].numpy()).astype(np.uint8)
    np.save(out_dir / f"{case.name}_image.npy", image)
    np.save(out_dir / f"{case.name}_label.npy", label)
    values, counts = np.unique(label, return_counts=True)
    crop = next(op for op in data["image"].applied_operations if op["class"] == "CropForeground")
    original_affine = data["image"].meta["original_affine"]
    return {
        "name": case.name,
        "patient": case.patient,
        "shape": list(image.shape[1:]),
        "label_voxels": {str(v): int(c) for v, c in zip(values, counts, strict=True)},
        "original_shape": list(crop["orig_size"]),
        "original_affine": original_affine.tolist(),
        "original_orientation": "".join(nib.aff2axcodes(original_affine)),
        # Voxels cropped before/after the non-zero box on each original axis.
        "crop": [int(v) for v in crop["extra_info"]["cropped"]],
        "spacing": [float(s) for s in np.diag(data["image"].affine)[:3]],
    }


def _valid_cases(cases: list[Case], qc_report: str | Path | None) -> list[Case]:
    """Leave out the cases that validation found in error (when told to skip them)."""
    if qc_report is None:
        return cases
    try:
        invalid = {row["case"] for row in json.loads(Path(qc_report).read_text())["cases"] if row["errors"]}
    except OSError as err:
        raise InputDataError(f"{qc_report}: cannot be read ({err.strerror})") from None
    except (ValueError, KeyError, TypeError):
        raise InputDataError(f"{qc_report}: not a QC report of resseg validate") from None
    return [case for case in cases if case.name not in invalid]
