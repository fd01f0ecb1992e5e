"""Which scans to review: the per-scan columns of ``resseg predict``'s summary.csv.

- ``shift_score``: how far the scan lies from the training cohort (profile.py): the largest of
  its features' distances from the centre of their training range, in half-widths of that range,
  so 1 is the range's edge; empty when the model keeps no profile;
- ``uncertainty``: the mean entropy over the predicted foreground (uncertainty.py);
- ``fold_disagreement``: 1 - the mean Dice of each fold's foreground with the ensemble's (with
  two folds or more);
- ``review``: ``yes`` when a feature lies outside its training range or the uncertainty beyond
  the limit the out-of-fold predictions set (calibrate.py), and ``review_reasons`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.io import Volume
from pipeline.models.model_dir import fold_dirs
from pipeline.review.features import describe, stacked
from pipeline.review.model_calibration import Calibration
from pipeline.review.profile import PROFILE_JSON, CohortProfile

COLUMNS = ["review", "review_reasons", "shift_score", "uncertainty", "fold_disagreement"]


@dataclass(frozen=True)
class Reviewer:
    profile: CohortProfile | None
    uncertainty_limit: float | None

    @classmethod
    def from_model_dir(cls, model_dir: Path, folds: list[int] | None = None) -> Reviewer:
        """The first fold's profile (every fold of a model is trained on one preprocessed
        cohort) and the model's calibration, each when present."""
        profile_path = fold_dirs(Path(model_dir), folds)[0] / PROFILE_JSON
        profile = CohortProfile.load(profile_path) if profile_path.is_file() else None
        calibration = Calibration.load(Path(model_dir))
        return cls(profile, calibration.uncertainty_limit if calibration else None)

    def review(self, volumes: list[Volume], uncertainty: float | None, disagreement: float | None) -> dict:
        reasons, shift_score = [], None
        if self.profile is not None:
            shift = self.profile.check(describe(stacked(volumes)))
            shift_score = round(shift.score, 3)
            reasons += [str(finding) for finding in shift.findings]
        limit = self.uncertainty_limit
        if uncertainty is not None and limit is not None and uncertainty > limit:
            reasons.append(f"uncertainty {uncertainty:.3f} above {limit:.3f}, the out-of-fold cases' limit")
        return {
            "review": "yes" if reasons else "no",
            "review_reasons": "; ".join(reasons),
            "shift_score": shift_score,
            "uncertainty": None if uncertainty is None else round(uncertainty, 4),
            "fold_disagreement": None if disagreement is None else round(disagreement, 4),
        }
