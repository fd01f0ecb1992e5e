"""``resseg predict``: segment every scan in a folder, writing masks in each scan's geometry."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import InputDataError
from pipeline.infer.predictor import Predictor
from pipeline.io import read_volume, write_probabilities, write_volume

NIFTI_ENDINGS = (".nii.gz", ".nii")


def find_scans(input_dir: Path) -> list[Path]:
    scans = sorted(p for p in Path(input_dir).iterdir() if p.name.endswith(NIFTI_ENDINGS))
    if not scans:
        raise InputDataError(f"{input_dir}: no NIfTI scan (.nii, .nii.gz) found")
    return scans


PROBABILITIES_FOLDER = "probabilities"


def run(
    predictor: Predictor, input_dir: str | Path, output_dir: str | Path, save_probabilities: bool = False
) -> list[Path]:
    return predict_scans(predictor, find_scans(Path(input_dir)), Path(output_dir), save_probabilities)


def predict_scans(
    predictor: Predictor, scans: list[Path], output_dir: Path, save_probabilities: bool = False
) -> list[Path]:
    """Write ``output_dir/<scan name>`` for each scan, and with ``save_probabilities`` its class
    probabilities to ``output_dir/probabilities/<scan name>``; each file appears only when complete."""
    written = []
    for scan in scans:
        prediction = predictor.predict(scan)
        # The scan's own affine, read independently of MONAI, is the geometry we promise.
        reference = read_volume(scan, max_channels=predictor.description.plans.n_channels)
        if prediction.label.shape != reference.shape:
            shapes = f"{prediction.label.shape} vs {reference.shape}"
            raise RuntimeError(f"{scan}: inverse preprocessing did not restore the scan's shape: {shapes}")
        out = output_dir / scan.name
        write_volume(out, prediction.label, reference.affine)
        if save_probabilities:
            write_probabilities(
                output_dir / PROBABILITIES_FOLDER / scan.name, prediction.probabilities, reference.affine
            )
        written.append(out)
    return written
