"""``resseg predict``: segment every scan of a folder that nobody curated.

Per scan: read (reader threads prefetch the next scans), predict, write (a writer thread
overlaps the next scan's prediction), then write the scan's record ``.records/<scan>.json``.
Each output appears whole under its final name, and the record last, so a scan with an ``ok``
record has complete outputs: a rerun skips those whose model and options are unchanged, and
redoes the rest. A scan that fails becomes an ``error`` record with a one-line reason and the
run goes on.

``summary.csv`` is rebuilt from the records of every scan of the folder at the end of each run,
so shards (``--shard i/n``, one process each) writing into one folder merge by construction: a
scan whose shard has not finished yet is ``pending``, and rerunning without ``--shard`` (every
scan then being complete) writes the merged summary. ``run.json`` identifies the model, the
options and the software.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import sys
import time
import traceback
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

import pipeline
from pipeline.config import DetectionParams
from pipeline.errors import ConfigError, InputDataError, UserError
from pipeline.evaluate.detection import case_score, extract_candidates
from pipeline.evaluate.segmentation import volume_ml
from pipeline.infer.inputs import NameBy, Scan, Unusable, find_scans
from pipeline.infer.memory import GIB, available_memory
from pipeline.infer.outputs import ScanOutputs, scan_outputs, write_outputs
from pipeline.infer.predictor import Predictor
from pipeline.io import Volume, atomic_output, write_json
from pipeline.io.atomic import MAX_NAME_BYTES, TEMPORARY_MARK, remove_stale_temporaries
from pipeline.io.volumes import check_scan_values
from pipeline.models.model_dir import card_sha256, model_sha256
from pipeline.review.flags import COLUMNS as REVIEW_COLUMNS
from pipeline.review.flags import Reviewer

RECORDS_FOLDER = ".records"
FORMAT_ENDINGS = {"nifti": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha"}
# qform and sform are stored in float32 (the qform as a quaternion): rounding alone moves a
# 512-voxel grid's corners by about 1e-3 mm.
FORMS_TOLERANCE_MM = 0.01
SOFTWARE = ("torch", "monai", "numpy", "nibabel", "SimpleITK", "pydicom", "highdicom")


@dataclass(frozen=True)
class BatchOptions:
    output_format: Literal["auto", "nifti", "nrrd", "mha"] = "auto"
    save_probabilities: bool = False
    dicom_seg: bool = False
    keep_identifiers: bool = False  # the SEG keeps the source's patient and study modules
    name_by: NameBy = "folder"  # DICOM series: named after their folders, or by their UIDs
    overwrite: bool = False
    recursive: bool = False
    workers: int = 1  # scans read ahead, each in its own thread
    shard: tuple[int, int] = (0, 1)  # (i, n): this process takes scans i, i + n, i + 2n ...


@dataclass(frozen=True)
class BatchResult:
    n_scans: int  # in this shard
    n_done: int  # segmented by this run
    n_skipped: int  # complete from an earlier run
    failed: list[str]  # names of the scans (or unusable inputs) that failed
    n_to_review: int = 0  # scans of the folder whose review column says yes

    @property
    def all_succeeded(self) -> bool:
        return not self.failed


def run(
    predictor: Predictor,
    model: dict,
    input_dir: str | Path,
    output_dir: str | Path,
    options: BatchOptions,
    detection: DetectionParams,
    reviewer: Reviewer | None = None,
) -> BatchResult:
    """Segment the scans of ``input_dir`` into ``output_dir``; ``model`` identifies the model in
    run.json and in the records (model_identity: {"path", "folds", "sha256", "card_sha256"});
    ``reviewer`` adds the review columns (pipeline/review/flags.py)."""
    input_dir = Path(input_dir)
    scans, unusable = find_scans(
        input_dir, predictor.description.plans.n_channels, options.recursive, options.name_by
    )
    if not scans and not unusable:
        raise InputDataError(f"{input_dir}: no scan found (NIfTI, NRRD, MetaImage or DICOM)")
    return predict_scans(
        predictor, model, scans, unusable, input_dir, Path(output_dir), options, detection, reviewer
    )


def predict_scans(
    predictor: Predictor,
    model: dict,
    scans: list[Scan],
    unusable: list[Unusable],
    input_root: Path,
    output_dir: Path,
    options: BatchOptions,
    detection: DetectionParams,
    reviewer: Reviewer | None = None,
) -> BatchResult:
    """Segment this shard's share of ``scans`` (inputs named relative to ``input_root``), then
    write summary.csv over all of them and run.json."""
    index, count = options.shard
    if not 0 <= index < count:
        raise ConfigError(f"--shard: expected i/n with 0 <= i < n, got {index}/{count}")
    if options.workers < 1:
        raise ConfigError(f"--workers: expected at least 1, got {options.workers}")
    labels = predictor.description.plans.labels
    lesion_values = _lesion_values(detection, labels)
    scans, clashing = _without_shared_outputs(output_dir, scans, options)
    unusable = unusable + clashing
    _check_writable(output_dir)
    signature = _signature(model, predictor, options, detection, reviewed=reviewer is not None)
    mine = scans[index::count]
    todo = [s for s in mine if options.overwrite or not _is_complete(output_dir, s, options, signature)]

    if count == 1:  # a shard cannot tell another shard's file in progress from a killed run's
        remove_stale_temporaries(output_dir)

    step = _ScanStep(
        predictor, input_root, output_dir, options, signature, lesion_values, detection, reviewer
    )
    failed_scans = []
    with tqdm(total=len(todo), unit="scan", desc="predict", mininterval=1.0, file=sys.stderr) as progress:
        for scan, ok in step.run_all(todo):
            failed_scans += [] if ok else [scan.name]
            progress.set_postfix(failed=len(failed_scans), refresh=False)
            progress.update()
    rows = write_summary(output_dir, scans, unusable, labels, lesion_values, reviewed=reviewer is not None)
    write_json(output_dir / "run.json", _run_record(model, predictor, options, detection, len(scans)))
    failed = sorted([u.name for u in unusable] + failed_scans)
    to_review = sum(row.get("review") == "yes" for row in rows)
    return BatchResult(len(mine), len(todo) - len(failed_scans), len(mine) - len(todo), failed, to_review)


class _ScanStep:
    """Read, predict and write the scans of one run, reading ahead and writing behind."""

    def __init__(
        self, predictor, input_root, output_dir, options, signature, lesion_values, detection, reviewer
    ):
        self.predictor = predictor
        self.reviewer = reviewer
        self.input_root = input_root
        self.output_dir = output_dir
        self.options = options
        self.signature = signature
        self.lesion_values = lesion_values
        self.detection = detection

    def run_all(self, scans: list[Scan]):
        """Yield (scan, succeeded) in order, as each scan's record is written."""
        with ThreadPoolExecutor(self.options.workers) as readers, ThreadPoolExecutor(1) as writer:
            n_channels = self.predictor.description.plans.n_channels
            reads = deque(readers.submit(_timed_read, s, n_channels) for s in scans[: self.options.workers])
            writing: tuple[Scan, Future] | None = None
            for position, scan in enumerate(scans):
                read = reads.popleft()
                if position + self.options.workers < len(scans):
                    ahead = scans[position + self.options.workers]
                    reads.append(readers.submit(_timed_read, ahead, n_channels))
                started = time.perf_counter()
                try:
                    volumes, read_seconds, identity = read.result()
                    _check_values(scan, volumes)
                    _check_extent(scan, volumes[0], self.predictor.description.plans.target_spacing)
                    _check_memory(scan, self.predictor.memory_needed(volumes))
                    prediction = self.predictor.predict(volumes)
                    _check_grid(scan, prediction.label, volumes[0])
                except Exception as err:  # one bad scan must not stop the others
                    self._record(scan, _reason(scan, err), time.perf_counter() - started)
                    yield scan, False
                    continue
                if writing is not None:
                    yield writing[0], writing[1].result()
                seconds = read_seconds + time.perf_counter() - started
                writing = (scan, writer.submit(self._write, scan, volumes, prediction, seconds, identity))
            if writing is not None:
                yield writing[0], writing[1].result()

    def _review(self, volumes: list[Volume], prediction) -> dict:
        if self.reviewer is None:
            return {}
        return self.reviewer.review(volumes, prediction.uncertainty, prediction.fold_disagreement)

    def _write(self, scan: Scan, volumes: list[Volume], prediction, seconds: float, identity: str) -> bool:
        """In the writer thread, with the review's features: both overlap the next prediction."""
        started = time.perf_counter()
        volume = volumes[0]
        outputs = _outputs(self.output_dir, scan, self.options)
        try:
            write_outputs(
                outputs,
                prediction,
                volume,
                scan.series,
                self.predictor.description.plans.labels,
                self.lesion_values,
                self.options.keep_identifiers,
            )
        except Exception as err:  # a full or read-only disk fails this scan's writing, not the run
            self._record(scan, _reason(scan, err), seconds + time.perf_counter() - started)
            return False
        report = (
            {"input_identity": identity}
            | self._report(volume, prediction)
            | self._review(volumes, prediction)
        )
        self._record(scan, None, seconds + time.perf_counter() - started, outputs, report)
        return True

    def _report(self, volume: Volume, prediction) -> dict:
        """Volumes in ml per label, and the lesion candidates and case score of each lesion label."""
        labels = self.predictor.description.plans.labels
        report = {"warning": _geometry_warning(volume)} | {
            f"volume_ml_{labels[v]}": round(volume_ml(prediction.label == v, volume.spacing), 4)
            for v in labels
            if v
        }
        for value in self.lesion_values:
            candidates = extract_candidates(
                prediction.probabilities[value],
                volume.spacing,
                threshold=self.detection.candidate_threshold,
                dynamic=self.detection.dynamic_threshold,
                dynamic_fraction=self.detection.dynamic_fraction,
                min_volume_mm3=self.detection.min_candidate_volume_mm3,
            )
            calibration = self.predictor.calibration
            chosen = calibration.lesion_thresholds if calibration else {}
            threshold = chosen.get(labels[value], self.detection.operating_threshold)
            report[f"lesions_{labels[value]}"] = sum(c >= threshold for c in candidates.confidences)
            report[f"case_score_{labels[value]}"] = round(
                case_score(candidates, self.detection.case_score), 4
            )
        return report

    def _record(self, scan, error, seconds, outputs: ScanOutputs | None = None, report: dict | None = None):
        record = {
            "scan": scan.name,
            "status": "error" if error else "ok",
            "error": error,
            "seconds": round(seconds, 3),
            "input": scan.source.relative_to(self.input_root).as_posix(),
            "output": outputs.mask.relative_to(self.output_dir).as_posix() if outputs else None,
            "signature": self.signature,
            **(report or {}),
        }
        write_json(_record_path(self.output_dir, scan.name), record)


def write_summary(
    output_dir: Path,
    scans: list[Scan],
    unusable: list[Unusable],
    labels: dict[int, str],
    lesion_values: list[int],
    reviewed: bool = False,
) -> list[dict]:
    """summary.csv: one row per scan of the folder, from its record (``pending`` without one),
    and one ``error`` row per input that is not a scan; ``reviewed`` adds the review columns.
    Returns the rows."""
    columns = ["scan", "status", "error", "warning", "input", "output"]
    columns += REVIEW_COLUMNS if reviewed else []
    columns += [f"volume_ml_{name}" for v, name in labels.items() if v]
    columns += [f"{kind}_{labels[v]}" for v in lesion_values for kind in ("lesions", "case_score")]
    rows = []
    for scan in scans:
        path = _record_path(output_dir, scan.name)
        rows.append(
            json.loads(path.read_text()) if path.is_file() else {"scan": scan.name, "status": "pending"}
        )
    rows += [{"scan": u.name, "status": "error", "error": u.reason, "input": u.source.name} for u in unusable]
    # UTF-8 whatever the locale: scan names are file names, in any script.
    with (
        atomic_output(output_dir / "summary.csv") as tmp,
        tmp.open("w", newline="", encoding="utf-8") as handle,
    ):
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda row: row["scan"]))
    return rows


def model_identity(model_dir: Path, folds: list[int] | None = None, card: bool = False) -> dict:
    """The model as run.json and the records name it; its SHA-256 covers the chosen folds'
    model.json, weights and training cohort profile and the model's calibration, so equal hashes
    mean equal predictions and review columns (model_dir.model_sha256). ``card``: also the
    SHA-256 of the model's card (model_card.json) where it describes these weights, else None;
    the records' signature leaves it out, so a rewritten card redoes no scan."""
    sha256 = model_sha256(Path(model_dir), folds)
    described = card_sha256(Path(model_dir), sha256 if folds is None else None) if card else None
    return {"path": str(model_dir), "folds": folds, "sha256": sha256, "card_sha256": described}


def _timed_read(scan: Scan, n_channels: int) -> tuple[list[Volume], float, str | None]:
    started = time.perf_counter()
    identity = _input_identity(scan)  # before reading: a scan replaced meanwhile is redone next run
    return scan.read(n_channels), time.perf_counter() - started, identity


def _input_identity(scan: Scan) -> str | None:
    """The scan's files as a rerun tells them apart: name, size and modification time of each
    (a hash, so that a series of a thousand slices keeps its record small)."""
    try:
        stats = [(path.name, (stat := path.stat()).st_size, stat.st_mtime_ns) for path in scan.sources]
    except OSError:  # a file gone since the folder was listed: reading it names it
        return None
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


def _check_extent(scan: Scan, volume: Volume, target_spacing: list[float]) -> None:
    """A scan less than one voxel of the model's grid across (a spacing of 1e-6 mm) would be
    resampled to nothing: refused with both sizes."""
    ras = volume.in_ras_frame()
    extent = np.multiply(ras.shape, ras.spacing)
    if not np.all(extent >= target_spacing):  # NaN included
        raise InputDataError(
            f"{scan.source}: {'x'.join(f'{e:.3g}' for e in extent)} mm across, less than one voxel "
            f"of the model's {'x'.join(f'{s:.3g}' for s in target_spacing)} mm spacing"
        )


def _check_memory(scan: Scan, needed: int) -> None:
    """Refuse a scan too large to predict with the memory left, before the OS kills the run."""
    available = available_memory()
    if available is not None and needed > available:
        raise InputDataError(
            f"{scan.source}: predicting it needs about {needed / GIB:.1f} GiB of memory, "
            f"{available / GIB:.1f} GiB is available"
        )


def _check_values(scan: Scan, volumes: list[Volume]) -> None:
    files = scan.sources if len(scan.sources) == len(volumes) else [scan.source] * len(volumes)
    for path, volume in zip(files, volumes, strict=True):
        check_scan_values(path, volume)


def _geometry_warning(volume: Volume) -> str | None:
    """NIfTI transforms that disagree: the user should know which one the mask was made on."""
    apart = volume.nifti.disagreement_mm(volume.shape) if volume.nifti else 0.0
    if apart <= FORMS_TOLERANCE_MM:
        return None
    return (
        f"qform and sform disagree by up to {apart:.3g} mm: segmented on the sform's grid; "
        "the mask carries both, as the scan does, so viewers place them alike"
    )


def _check_grid(scan: Scan, label: np.ndarray, volume: Volume) -> None:
    if label.shape != volume.shape:
        raise RuntimeError(f"{scan.source}: the mask's shape {label.shape} is not the scan's {volume.shape}")


def _reason(scan: Scan, err: Exception) -> str:
    """One line for summary.csv; a bug also prints its traceback, so it can be reported."""
    if isinstance(err, UserError):
        return str(err)
    traceback.print_exception(err, file=sys.stderr)
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{scan.source}: {err.__class__.__name__}: {first_line}".rstrip(": ")


def _outputs(output_dir: Path, scan: Scan, options: BatchOptions) -> ScanOutputs:
    ending = scan.output_ending if options.output_format == "auto" else FORMAT_ENDINGS[options.output_format]
    return scan_outputs(output_dir, scan, ending, options.save_probabilities, options.dicom_seg)


def _is_complete(output_dir: Path, scan: Scan, options: BatchOptions, signature: str) -> bool:
    path = _record_path(output_dir, scan.name)
    if not path.is_file():
        return False
    record = json.loads(path.read_text())
    outputs = _outputs(output_dir, scan, options)
    return (
        record.get("status") == "ok"
        and record.get("signature") == signature
        and all(p.is_file() for p in outputs.paths)
        # A scan replaced under the same name must not keep the mask of the one before.
        and record.get("input_identity") == _input_identity(scan)
    )


def _without_shared_outputs(
    output_dir: Path, scans: list[Scan], options: BatchOptions
) -> tuple[list[Scan], list[Unusable]]:
    """Scans that would write the same output path (with --recursive, the masks of a subfolder
    named probabilities/ are other scans' probability files) are all refused, naming each other,
    as inputs of the same name are: no output may overwrite another. Paths compare
    case-insensitively, as macOS and Windows file systems do."""
    writers = defaultdict(list)
    for scan in scans:
        for path in _outputs(output_dir, scan, options).paths:
            writers[str(path).casefold()].append((scan, path))
    reasons = {}
    for sharing in (group for group in writers.values() if len(group) > 1):
        for scan, path in sharing:
            others = ", ".join(str(other.source) for other, _ in sharing if other is not scan)
            reason = f"{scan.source}: its output {path} would also be that of {others}; rename or move one"
            reasons.setdefault(scan.name, reason)
    refused = [Unusable(s.name, s.source, reasons[s.name]) for s in scans if s.name in reasons]
    return [s for s in scans if s.name not in reasons], refused


def _record_path(output_dir: Path, name: str) -> Path:
    """``<scan>.json``; a name too long to take the ending (a file system takes 255 bytes) is
    replaced by its digest: the record itself says which scan it belongs to."""
    record = f"{name}.json"
    if len(os.fsencode(record)) > MAX_NAME_BYTES:
        record = f"{hashlib.sha256(os.fsencode(name)).hexdigest()}.json"
    return output_dir / RECORDS_FOLDER / record


def _signature(
    model: dict, predictor: Predictor, options: BatchOptions, detection: DetectionParams, reviewed: bool
) -> str:
    """What makes two runs' outputs of a scan the same: model, sliding-window settings, the
    calibration, formats, the detection parameters behind the lesion columns of its record, and
    whether it has the review columns."""
    parts = (model["sha256"], predictor.overlap, predictor.mirror, predictor.precision, predictor.temperature,
             options.output_format, options.save_probabilities, options.dicom_seg,
             json.dumps(detection.model_dump(), sort_keys=True), reviewed)  # fmt: skip
    return "|".join(str(p) for p in parts)


def _lesion_values(detection: DetectionParams, labels: dict[int, str]) -> list[int]:
    by_name = {name: value for value, name in labels.items() if value}
    unknown = [name for name in detection.lesion_labels if name not in by_name]
    if unknown:
        raise ConfigError(
            f"evaluate.detection.lesion_labels: {unknown} not among the model's labels {list(by_name)}"
        )
    return [by_name[name] for name in detection.lesion_labels]


def _check_writable(output_dir: Path) -> None:
    """Name an output folder that cannot be created or written before any scan is read (a full
    disk shows at the first write: an empty file still fits)."""
    probe = output_dir / f".write-test{TEMPORARY_MARK}{os.getpid()}"  # a killed run's is removed
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise InputDataError(f"{output_dir}: cannot write the outputs there ({err.strerror})") from None


def _run_record(model: dict, predictor: Predictor, options: BatchOptions, detection, n_scans: int) -> dict:
    """run.json: which model and options made these outputs, with which software. Like
    summary.csv it holds no time, so that the same inputs and model give the same bytes (and
    DVC the same hash); the scans' seconds stay in their records."""
    return {
        "resseg_version": pipeline.__version__,
        "model": model,
        "n_scans": n_scans,
        "options": {
            **asdict(options),
            "overlap": predictor.overlap,
            "mirror": predictor.mirror,
            "sw_batch_size": predictor.sw_batch_size,
            "precision": predictor.precision,
            "device": str(predictor.device),
        },
        "detection": detection.model_dump(),
        "software": {"python": platform.python_version(), **{name: _version(name) for name in SOFTWARE}},
    }


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
