"""The DICOM SEG of ``resseg predict --dicom-seg`` against DICOM PS3.15's Basic Application
Level Confidentiality Profile: every attribute the profile names (its table as the maintained
dicom-anonymizer package holds it) is set on the source series with a value of its own, and
none of those values may appear in any byte that the run writes."""

import numpy as np
import pydicom
import pytest
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.datadict import dictionary_keyword, dictionary_VR

from tests.infer.test_batch import run_batch
from tests.infer.test_predictor import HU_PER_CLASS
from tests.io.test_dicom import write_series

PROFILE_TABLE = "dicomfields_2026c"  # the newest table dicom-anonymizer ships
# Values by VR, each written so that it cannot occur by chance: text carries its tag's number.
DATE, TIME, DATE_TIME, AGE = "19010203", "010203.040506", "19010203010203", "099Y"
TEXT_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "UC", "CS", "AE", "UR"}
# UIDs are named by the profile too (to be replaced), but a SEG must reference its source's
# study, series, instances and frame of reference by them: they stay, and are not checked here.


def profile_values() -> dict[int, tuple[str, str]]:
    """tag -> (VR, value) for every attribute of the profile that holds a date, time, age or
    text (numbers and sequences are left out: a small number cannot be told apart in bytes)."""
    tags = dicom_anonymization_database_selector(PROFILE_TABLE)["ALL_TAGS"]
    values = {}
    for group, element in (t for t in tags if len(t) == 2):  # 4: masks over repeating groups
        tag = (group << 16) | element
        try:
            vr, keyword = dictionary_VR(tag), dictionary_keyword(tag)
        except KeyError:  # retired or repeating-group entries pydicom's dictionary lacks
            continue
        fixed = {"DA": DATE, "TM": TIME, "DT": DATE_TIME, "AS": AGE}
        if vr in fixed:
            values[tag] = (vr, fixed[vr])
        elif vr in TEXT_VRS and keyword and keyword != "PatientSex":  # M, F or O: checked below
            values[tag] = (vr, f"QX{tag:08X}")  # CS allows capitals and digits, 16 characters
    return values


@pytest.fixture
def identified_series(tmp_path):
    folder = tmp_path / "in"
    hu = np.zeros((24, 20, 6), np.int16)
    hu[6:18, 5:15, 1:5] = HU_PER_CLASS
    hu[10:14, 8:12, 2:4] = 2 * HU_PER_CLASS
    write_series(folder / "ct", hu, uid="1.2.826.0.1.3680043.2.1125.9")
    values = profile_values()
    for path in (folder / "ct").iterdir():
        dataset = pydicom.dcmread(path)
        for tag, (vr, value) in values.items():
            dataset.add_new(tag, vr, value)
        dataset.PatientSex = "O"
        dataset.add_new(0x00091010, "LO", "QXPRIVATEVALUE")  # a private tag
        dataset.save_as(path)
    return folder, values


def output_bytes(folder) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file())


def test_no_value_the_profile_names_reaches_any_output(identified_series, tmp_path):
    folder, values = identified_series
    assert len(values) > 250  # most of the profile's attributes hold text or dates
    run_batch(folder, tmp_path / "out", dicom_seg=True)
    written = output_bytes(tmp_path / "out")
    assert b"DICM" in written  # the SEG is among them
    leaked = sorted(dictionary_keyword(t) for t, (_, v) in values.items() if v.encode() in written)
    assert not leaked
    assert b"QXPRIVATEVALUE" not in written
    seg = pydicom.dcmread(tmp_path / "out/ct.seg.dcm")
    # The Type 2 attributes a SEG must carry are there, empty.
    assert seg.PatientName == "" and seg.PatientID == "" and seg.StudyID == "" and seg.StudyDate == ""
    assert seg.PatientSex == ""


def test_keep_identifiers_keeps_the_patient_and_study_modules(identified_series, tmp_path):
    folder, _ = identified_series
    run_batch(folder, tmp_path / "out", dicom_seg=True, keep_identifiers=True)
    seg = pydicom.dcmread(tmp_path / "out/ct.seg.dcm")
    source = pydicom.dcmread(next((folder / "ct").iterdir()))
    assert seg.PatientName == source.PatientName and seg.OtherPatientNames == source.OtherPatientNames
    assert seg.StudyID == source.StudyID


def test_a_source_without_type_2_attributes_still_gets_its_seg(tmp_path):
    """Exports often drop StudyID or AccessionNumber; highdicom needs them present, the standard
    allows them empty."""
    folder = tmp_path / "in"
    hu = np.zeros((24, 20, 6), np.int16)
    hu[6:18, 5:15, 1:5] = HU_PER_CLASS
    write_series(folder / "ct", hu, uid="1.2.826.0.1.3680043.2.1125.9")
    for path in (folder / "ct").iterdir():
        dataset = pydicom.dcmread(path)
        for keyword in ("StudyID", "AccessionNumber", "ReferringPhysicianName", "PatientSex"):
            if keyword in dataset:
                delattr(dataset, keyword)
        dataset.save_as(path)
    assert run_batch(folder, tmp_path / "out", dicom_seg=True).failed == []
    seg = pydicom.dcmread(tmp_path / "out/ct.seg.dcm")
    assert seg.StudyID == "" and seg.AccessionNumber == ""
