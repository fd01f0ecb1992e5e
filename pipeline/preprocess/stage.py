"""The preprocess stage: fingerprint the training cases, plan, and write network-ready arrays.

Output folder:
    plans.json             the plan (see plans.py), the fingerprint and per-case properties
    <case>_image.npy       float32, (channels, x, y, z), RAS, target spacing, normalised
    <case>_label.npy       uint8, (1, x, y, z), same grid
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.cohort.dataset import Cohort, load_cohort
from pipeline.config import PreprocessParams
from pipeline.errors import InputDataError
from pipeline.io import atomic_directory
from pipeline.preprocess.fingerprint import Fingerprint, compute_fingerprint
from pipeline.preprocess.plans import IntensityNormalization, Plans
from pipeline.preprocess.transforms import build_preprocessing


def run(params: PreprocessParams, cohort_dir: str | Path, out_dir: str | Path) -> Plans:
    cohort = load_cohort(cohort_dir)
    if cohort.modality.upper() != "CT":
        raise InputDataError(f"{cohort.root}: modality {cohort.modality!r}; only CT is planned so far")
    try:
        fingerprint = compute_fingerprint(cohort.training, tuple(params.clip_percentiles))
    except ValueError as err:
        raise InputDataError(f"{cohort.root}: {err}") from None
    plans = make_plans(cohort, fingerprint, params)
    chain = build_preprocessing(plans)
    with atomic_directory(out_dir) as tmp:
        properties = [_preprocess_case(chain, case, tmp) for case in cohort.training]
        plans.save(tmp / "plans.json", fingerprint=fingerprint.to_dict(), cases=properties)
    return plans


def make_plans(cohort: Cohort, fingerprint: Fingerprint, params: PreprocessParams) -> Plans:
    low, high = fingerprint.foreground_percentiles.values()
    return Plans(
        modality=cohort.modality,
        labels=cohort.labels,
        target_spacing=tuple(params.target_spacing),
        intensity=IntensityNormalization(
            clip_low=low,
            clip_high=high,
            mean=fingerprint.foreground_mean,
            # A constant foreground (std 0) would divide by zero; 1 leaves it merely centred.
            std=fingerprint.foreground_std or 1.0,
        ),
    )


def _preprocess_case(chain, case, out_dir: Path) -> dict:
    data = chain({"image": str(case.image), "label": str(case.label)})
    image = data["image"].numpy().astype(np.float32)
    label = np.rint(data["label"].numpy()).astype(np.uint8)
    np.save(out_dir / f"{case.name}_image.npy", image)
    np.save(out_dir / f"{case.name}_label.npy", label)
    values, counts = np.unique(label, return_counts=True)
    return {
        "name": case.name,
        "shape": list(image.shape[1:]),
        "label_voxels": {str(v): int(c) for v, c in zip(values, counts, strict=True)},
    }
