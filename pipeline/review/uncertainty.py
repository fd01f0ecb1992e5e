"""How unsure a prediction is: entropy over what it calls foreground, and disagreement of folds.

Both are measured on what ``resseg predict`` has anyway (the class probabilities on the scan's
grid, each fold's foreground on the network's grid), so they cost a pass over the predicted
foreground, not another prediction.
"""

from __future__ import annotations

import numpy as np

# Probabilities below this count as this, so that a class at exactly 0 adds 0 * log(EPS) = 0.
EPS = 1e-12


def foreground_entropy(probabilities: np.ndarray, label: np.ndarray) -> float | None:
    """Mean entropy of the class probabilities over the voxels predicted as foreground, divided by
    log(classes) so that it lies in [0, 1] whatever the number of classes: 0 where the model is
    certain of every foreground voxel, 1 where it gave every class the same probability. Over
    the foreground only, since the background far from any structure is certain in any scan and
    would hide the rest. None when nothing is predicted."""
    foreground = label > 0
    if not foreground.any():
        return None
    p = probabilities[:, foreground].astype(np.float64)
    entropy = -(p * np.log(np.maximum(p, EPS))).sum(axis=0)
    return float(entropy.mean() / np.log(probabilities.shape[0]))


def fold_disagreement(fold_foregrounds: list[np.ndarray], ensemble_foreground: np.ndarray) -> float | None:
    """1 - the mean Dice of each fold's foreground with the ensemble's: 0 when every fold predicts
    the same voxels. None with a single fold, or when neither fold nor ensemble predicts any."""
    if len(fold_foregrounds) < 2:
        return None
    dices = []
    for fold in fold_foregrounds:
        total = int(fold.sum()) + int(ensemble_foreground.sum())
        if total:
            dices.append(2 * int(np.logical_and(fold, ensemble_foreground).sum()) / total)
    return 1 - float(np.mean(dices)) if dices else None
