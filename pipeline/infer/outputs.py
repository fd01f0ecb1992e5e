"""What prediction writes for one scan: the mask in the scan's geometry, optionally the class
probabilities and, for a DICOM series, a DICOM SEG referencing it. Every file is written under a
temporary name and renamed, so a file that exists is complete."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

import pipeline
from pipeline.errors import InputDataError
from pipeline.infer.inputs import Scan
from pipeline.infer.predictor import Prediction
from pipeline.io import Volume, write_probabilities, write_volume
from pipeline.io.atomic import atomic_output
from pipeline.io.dicom import DicomSeries

PROBABILITIES_FOLDER = "probabilities"
# The patient and study attributes that a SEG must carry (Type 2 of the Patient and General
# Study modules): written empty, and added empty to a source that lacks them (exports often do).
TYPE_2_PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "ReferringPhysicianName", "StudyDate", "StudyTime", "StudyID",
)  # fmt: skip
# De-identification as an allow-list (DICOM PS3.15's Basic Application Level Confidentiality
# Profile removes or empties every identifying attribute; an allow-list also catches those it
# will name next year and private tags): the SEG keeps its own content as highdicom writes it,
# the UIDs that tie it to its study, series and frame of reference, and the emptied Type 2
# attributes above. Whatever else highdicom copies from the source is dropped.
SEG_OWN_ATTRIBUTES = frozenset({
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceCreationDate",
    "InstanceCreationTime", "ContentDate", "ContentTime", "Modality", "SeriesInstanceUID",
    "SeriesNumber", "InstanceNumber", "Manufacturer", "ManufacturerModelName", "SoftwareVersions",
    "DeviceSerialNumber", "ContributingEquipmentSequence", "ImageType", "ContentLabel",
    "ContentDescription", "ContentCreatorName", "SamplesPerPixel", "PhotometricInterpretation",
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "LossyImageCompression", "PresentationLUTShape", "SegmentationType", "SegmentsOverlap",
    "MaximumFractionalValue", "SegmentationFractionalType", "SegmentSequence", "NumberOfFrames",
    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence", "DimensionIndexSequence",
    "DimensionOrganizationSequence", "DimensionOrganizationType", "ReferencedSeriesSequence",
    "SourceImageSequence", "StudyInstanceUID", "FrameOfReferenceUID", "PositionReferenceIndicator",
    "PixelData",
})  # fmt: skip
SEG_ENDING = ".seg.dcm"


@dataclass(frozen=True)
class ScanOutputs:
    mask: Path
    probabilities: Path | None = None
    seg: Path | None = None

    @property
    def paths(self) -> list[Path]:
        return [p for p in (self.mask, self.probabilities, self.seg) if p is not None]


def scan_outputs(
    output_dir: Path, scan: Scan, ending: str, probabilities: bool, dicom_seg: bool
) -> ScanOutputs:
    """Where one scan's outputs go; a DICOM SEG only for a DICOM series."""
    return ScanOutputs(
        mask=output_dir / f"{scan.name}{ending}",
        probabilities=output_dir / PROBABILITIES_FOLDER / f"{scan.name}.nii.gz" if probabilities else None,
        seg=output_dir / f"{scan.name}{SEG_ENDING}" if dicom_seg and scan.series is not None else None,
    )


def write_outputs(
    outputs: ScanOutputs,
    prediction: Prediction,
    scan: Volume,
    series: DicomSeries | None,
    label_names: dict[int, str],
    lesion_values: list[int],
    keep_identifiers: bool = False,
) -> None:
    """All of a scan's outputs or none of this attempt's: the DICOM SEG is built (and may be
    refused) before any file is written, and a failed write removes the files this call wrote.
    A file of an earlier run that the failure left unreplaced stays as it was."""
    seg = (
        dicom_seg(prediction.label, series, label_names, lesion_values, keep_identifiers)
        if outputs.seg
        else None
    )
    written = []
    try:
        # A NIfTI scan's own qform, sform and unit go into its outputs, so that they lie on it in
        # every viewer, even where its two transforms disagree.
        write_volume(outputs.mask, prediction.label, scan.affine, scan.nifti)
        written.append(outputs.mask)
        if outputs.probabilities is not None:
            write_probabilities(outputs.probabilities, prediction.probabilities, scan.affine, scan.nifti)
            written.append(outputs.probabilities)
        if seg is not None:
            with atomic_output(outputs.seg) as tmp:
                seg.save_as(tmp)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def dicom_seg(
    label: np.ndarray,
    series: DicomSeries,
    label_names: dict[int, str],
    lesion_values: list[int],
    keep_identifiers: bool = False,
) -> hd.seg.Segmentation:
    """A DICOM SEG over the source series, one segment per foreground label (empty or not).

    highdicom copies the patient, study and frame-of-reference modules from the source; unless
    ``keep_identifiers`` (a SEG going back to the PACS it came from), only SEG_OWN_ATTRIBUTES and
    the emptied TYPE_2_PATIENT_STUDY stay.
    """
    sources = [pydicom.dcmread(f) for f in series.files]
    for source in sources:
        for keyword in TYPE_2_PATIENT_STUDY:
            if keyword not in source:
                setattr(source, keyword, "")
    foreground = [v for v in sorted(label_names) if v != 0]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="resseg", version=pipeline.__version__, family=codes.cid7162.ArtificialIntelligence
    )
    # The label's name says what it is; the coded property is only the coarse kind of structure.
    kinds = {
        True: (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion),
        False: (codes.SCT.AnatomicalStructure, codes.SCT.Organ),
    }
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label_names[value],
            segmented_property_category=kinds[value in lesion_values][0],
            segmented_property_type=kinds[value in lesion_values][1],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, value in enumerate(foreground, start=1)
    ]
    # The series' files are in the order of the volume's third axis; SEG frames are (slice, row,
    # column), our arrays (column, row, slice).
    planes = np.stack([label == value for value in foreground], axis=-1).transpose(2, 1, 0, 3)
    try:
        seg = _segmentation(sources, planes, descriptions)
    except ValueError as err:  # highdicom's refusal of the series (a required tag missing ...)
        raise InputDataError(f"{series.files[0].parent}: no DICOM SEG can reference it ({err})") from None
    if not keep_identifiers:
        _keep_only_seg_attributes(seg)
    _set_slice_spacing(seg, sources)
    return seg


def _set_slice_spacing(seg: hd.seg.Segmentation, sources: list[pydicom.Dataset]) -> None:
    """SpacingBetweenSlices from the slices' positions: highdicom copies the source's, which some
    writers fill wrongly (GDCM writes 1 mm), and readers that trust it (highdicom among them)
    then refuse the SEG's regularly placed frames."""
    if len(sources) < 2:
        return
    step = np.subtract(sources[1].ImagePositionPatient, sources[0].ImagePositionPatient)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    measures.SpacingBetweenSlices = f"{np.linalg.norm(step):.6g}"


def _segmentation(sources, planes: np.ndarray, descriptions) -> hd.seg.Segmentation:
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=planes.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=9000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="resseg",
        manufacturer_model_name="resseg",
        software_versions=pipeline.__version__,
        device_serial_number="0",
        omit_empty_frames=False,
    )


def _keep_only_seg_attributes(seg: hd.seg.Segmentation) -> None:
    for element in list(seg):
        if element.keyword in TYPE_2_PATIENT_STUDY:
            element.value = ""
        elif element.keyword not in SEG_OWN_ATTRIBUTES:  # private tags have no keyword
            del seg[element.tag]
