"""The split stage: k folds of the training cases for cross-validation, with scikit-learn.

Cases of one patient (``"patient"`` in dataset.json's training entries) stay in one fold.
Folds are stratified by which labels a case contains (so lesion-free cases land in every
fold) when each such group has at least ``n_folds`` cases; otherwise they are plain k-fold.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from pipeline.config import SplitParams
from pipeline.errors import InputDataError
from pipeline.io import write_json


def run(params: SplitParams, plans_path: str | Path, out_path: str | Path) -> list[dict]:
    cases = json.loads(Path(plans_path).read_text())["cases"]
    if len(cases) < params.n_folds:
        raise InputDataError(
            f"split.n_folds: {params.n_folds} folds need at least as many training cases, "
            f"{plans_path} has {len(cases)}"
        )
    names = [case["name"] for case in cases]
    # A case without a patient id is its own patient.
    patients = [case.get("patient") or case["name"] for case in cases]
    if len(set(patients)) < params.n_folds:
        raise InputDataError(
            f"split.n_folds: {params.n_folds} folds need at least as many patients, {plans_path} has "
            f"{len(set(patients))}"
        )
    folds = make_folds(names, [_label_signature(case) for case in cases], patients, params)
    write_json(out_path, folds)
    return folds


def make_folds(names: list[str], strata: list[str], patients: list[str], params: SplitParams) -> list[dict]:
    stratify = min(Counter(strata).values()) >= params.n_folds
    grouped = len(set(patients)) < len(names)
    if grouped and stratify:
        splitter = StratifiedGroupKFold(params.n_folds, shuffle=True, random_state=params.seed)
    elif grouped:
        splitter = GroupKFold(params.n_folds, shuffle=True, random_state=params.seed)
    elif stratify:
        splitter = StratifiedKFold(params.n_folds, shuffle=True, random_state=params.seed)
    else:
        splitter = KFold(params.n_folds, shuffle=True, random_state=params.seed)
    return [
        {"train": sorted(names[i] for i in train), "val": sorted(names[i] for i in val)}
        for train, val in splitter.split(names, strata, groups=patients if grouped else None)
    ]


def _label_signature(case: dict) -> str:
    """'0,1,2' for a case with organ and lesion, '0,1' for one without a lesion."""
    return ",".join(sorted(case["label_voxels"]))
