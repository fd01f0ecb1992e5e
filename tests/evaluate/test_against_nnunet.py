"""Our Dice against nnU-Net v2's own evaluator on the same NIfTI files.

nnU-Net's rules (nnunetv2/evaluation/evaluate_predictions.py, v2.8): per case and label,
Dice = 2 TP / (2 TP + FP + FN) on the voxel counts, NaN when TP + FP + FN = 0 (the label absent
from both masks), so 0 for a missed or a spurious structure; spacing plays no part. The mean of a
label is ``np.nanmean`` over cases: both-empty cases are left out, and a label absent from every
case has a NaN mean. Ours is None wherever nnU-Net's is NaN.

nnU-Net runs in its own virtualenv, in a subprocess (tests/nnunet_env.py).
"""

import csv
import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import EvaluateParams
from pipeline.evaluate import stage
from pipeline.evaluate.segmentation import STATUSES
from pipeline.io import write_volume
from tests.nnunet_env import require_nnunet, run_nnunet

LABELS = {1: "organ", 2: "lesion", 3: "cyst"}  # no case holds a cyst: nnU-Net's mean is NaN
SHAPE = (14, 12, 9)
AFFINE = np.diag([0.7, 1.3, 2.5, 1.0])


def box(volume: np.ndarray, corner, size, value) -> None:
    volume[tuple(slice(c, c + s) for c, s in zip(corner, size, strict=True))] = value


def cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reference and prediction of each case; the organ partly overlaps its reference in each."""
    pairs = {}
    for name, lesion_in_reference, lesion_in_prediction in (
        ("partial", True, True),
        ("missed", True, False),
        ("spurious", False, True),
        ("lesion_free", False, False),
    ):
        reference, prediction = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
        box(reference, (1, 1, 1), (6, 5, 4), 1)
        box(prediction, (2, 1, 1), (6, 4, 4), 1)
        if lesion_in_reference:
            box(reference, (9, 6, 4), (3, 3, 3), 2)
        if lesion_in_prediction:
            box(prediction, (10, 7, 4), (3, 4, 2), 2)
        pairs[name] = (reference, prediction)
    # Seeded random masks: irregular overlaps, several labels touching.
    rng = np.random.default_rng(0)
    pairs["random"] = tuple(rng.choice([0, 1, 2], SHAPE, p=[0.6, 0.3, 0.1]).astype(np.uint8) for _ in "rp")
    return pairs


def nnunet_summary(labels_dir, predictions_dir, out_file) -> dict:
    script = textwrap.dedent(f"""
        from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
        compute_metrics_on_folder({str(labels_dir)!r}, {str(predictions_dir)!r}, {str(out_file)!r},
                                  SimpleITKIO(), ".nii.gz", {list(LABELS)!r}, num_processes=1)
    """)
    run_nnunet(script)
    return json.loads(out_file.read_text())  # NaN where nnU-Net's Dice is undefined


def test_dice_agrees_with_nnunet_evaluator(tmp_path):
    require_nnunet()
    for name, (reference, prediction) in cases().items():
        write_volume(tmp_path / "labels" / f"{name}.nii.gz", reference, AFFINE)
        write_volume(tmp_path / "pred" / f"{name}.nii.gz", prediction, AFFINE)
    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps({"labels": {"0": "background"} | {str(v): n for v, n in LABELS.items()}}))
    params = EvaluateParams(bootstrap_resamples=10)
    ours = stage.run(params, tmp_path / "labels", tmp_path / "pred", tmp_path / "out", dataset)
    # The cases cover every convention: a lesion partly found, missed, spurious and absent from both.
    assert ours["segmentation"]["cases"]["lesion"] == dict.fromkeys(STATUSES, 1) | {"both_present": 2}
    rows = {r["case"]: r for r in csv.DictReader(open(tmp_path / "out/per_case.csv"))}
    theirs = nnunet_summary(tmp_path / "labels", tmp_path / "pred", tmp_path / "nnunet.json")

    assert len(theirs["metric_per_case"]) == len(rows)
    for case in theirs["metric_per_case"]:
        row = rows[Path(case["reference_file"]).name.removesuffix(".nii.gz")]
        for value, name in LABELS.items():
            dice = case["metrics"][str(value)]["Dice"]
            if math.isnan(dice):
                assert (row[f"status_{name}"], row[f"dice_{name}"]) == ("both_empty", "")
            else:
                assert float(row[f"dice_{name}"]) == pytest.approx(dice, abs=1e-4)  # 4 decimals in the CSV
    for value, name in LABELS.items():
        mean = theirs["mean"][str(value)]["Dice"]
        summary = ours["segmentation"]["dice"][name]
        if math.isnan(mean):
            assert summary["mean"] is None
        else:
            assert summary["mean"] == pytest.approx(mean, abs=1e-6)  # MONAI's float32, unrounded
        n_nan = sum(math.isnan(c["metrics"][str(value)]["Dice"]) for c in theirs["metric_per_case"])
        assert summary["n_excluded"] == n_nan
