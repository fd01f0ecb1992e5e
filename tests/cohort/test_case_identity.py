"""A cohort whose dataset.json lists one case twice under two file names, and a DICOM SEG whose
series is not in its patient's folder, are refused naming the file."""

import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pipeline.cohort import importers
from pipeline.cohort.dataset import load_cohort
from pipeline.errors import InputDataError
from pipeline.io import read_volume, write_volume
from tests.cohort.test_importers import run
from tests.io.test_dicom import make_seg, write_series


@pytest.mark.parametrize("ending", [".nii", ".nrrd"])
def test_one_case_listed_under_two_file_names_is_refused(cohort, ending):
    """a.nii.gz and a.nii (or a.nrrd) are both case "a": merged, and a split would list it twice."""
    meta = json.loads((cohort / "dataset.json").read_text())
    first = meta["training"][0]
    for key in ("image", "label"):
        volume = read_volume(cohort / first[key])
        write_volume(cohort / first[key].replace(".nii.gz", ending), volume.array, volume.affine)
    twin = {key: first[key].replace(".nii.gz", ending) for key in ("image", "label")}
    meta["training"].append(twin)
    meta["numTraining"] += 1
    (cohort / "dataset.json").write_text(json.dumps(meta))
    image, twin_image = Path(first["image"]).as_posix(), Path(twin["image"]).as_posix()
    expected = f"dataset.json: {image} and {twin_image} are one case, 'synth_000'; list it once"
    with pytest.raises(InputDataError, match=re.escape(expected)):
        load_cohort(cohort)


def test_a_seg_referencing_an_absent_series_is_refused(tmp_path):
    hu = np.random.default_rng(3).integers(-1000, 400, size=(16, 12, 6)).astype(np.int16)
    folder = tmp_path / "dicom/p1"
    write_series(folder, hu, uid="1.2.826.0.1.3680043.2.1125.30")
    mask = np.zeros(hu.shape, np.uint8)
    mask[4:9, 3:8, 1:5] = 1
    seg_path = make_seg(folder, mask)
    # The same grid, but another series (a rescan in the same frame of reference): the SEG's own
    # series is absent, and geometry alone would place it on this one.
    seg = pydicom.dcmread(seg_path)
    seg.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.99"
    seg.save_as(seg_path)
    options = importers.ImportOptions(channel_names=["CT"], label_names=["organ", "lesion"])
    with pytest.raises(
        InputDataError,
        match=r"seg.dcm: references series 1.2.826.0.1.3680043.2.1125.99, absent from its folder "
        r"\(image series: 1.2.826.0.1.3680043.2.1125.30\)",
    ):
        run(tmp_path / "dicom", "dicom", tmp_path / "out", options)
    assert not (tmp_path / "out").exists()
