"""Tiny hostile files that claim, or decompress to, far more than they hold are refused before
memory is allocated for them, and detached data files are read only when they are regular files
beside their header. Each read runs in a fresh process that reports how far its peak resident
memory grew, so a refusal after allocating would show."""

import gzip
import os
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pydicom
import pytest

from pipeline.errors import ConfigError, InputDataError
from pipeline.io import read_volume
from pipeline.io.dicom import find_dicom_series, read_dicom_series
from pipeline.io.limits import LIMIT_VARIABLE, max_input_bytes
from tests.io.test_dicom import write_series

MIB = 2**20
# A fresh process's peak may grow by this much for the reader's own buffers, never by a volume.
READER_OVERHEAD = 48 * MIB


def read_in_fresh_process(call: str, limit: int | None = None) -> tuple[int, str]:
    """Bytes by which the peak resident memory of a new process grew while it ran ``call``, and
    the one-line error it raised ('read' if none)."""
    script = textwrap.dedent(
        f"""
        import resource
        from pathlib import Path
        from pipeline.errors import InputDataError
        from pipeline.io import read_volume
        from pipeline.io.dicom import find_dicom_series, read_dicom_series

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            {call}
            outcome = "read"
        except InputDataError as err:
            outcome = str(err)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
        print(outcome)
        """
    )
    env = {**os.environ, LIMIT_VARIABLE: str(limit)} if limit else dict(os.environ)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    grown, outcome = done.stdout.splitlines()
    return int(grown), outcome


def nifti_header(shape, dtype=np.int16) -> bytes:
    """A single-file NIfTI header claiming ``shape``, with no voxels after it."""
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4


def write_gzip(path, head: bytes, zeros: int) -> None:
    """``head``, then ``zeros`` zero bytes, gzipped a piece at a time (never all in memory)."""
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(head)
        for _ in range(zeros // (16 * MIB)):
            out.write(bytes(16 * MIB))


def test_a_gzipped_nifti_with_an_extension_bomb_is_refused_before_nibabel_reads_it(tmp_path):
    """nibabel reads a header's extensions up to the voxels' offset: a 256 MiB extension of
    zeros, gzipped to about 1 MiB, would be decompressed before any size is checked."""
    offset = 256 * MIB
    header = nib.Nifti1Header()
    header.set_data_shape((2, 2, 2))
    header["vox_offset"] = offset
    extension = np.array([offset - 352, 0], "<i4").tobytes()  # esize, ecode
    path = tmp_path / "extension.nii.gz"
    write_gzip(path, header.binaryblock + b"\x01\0\0\0" + extension, offset)
    assert path.stat().st_size < 2 * MIB
    grown, outcome = read_in_fresh_process(f"read_volume({str(path)!r})", limit=64 * MIB)
    assert outcome.startswith(f"{path}: the header claims {offset} values of 1 bytes")
    assert grown < READER_OVERHEAD


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_a_header_claiming_more_than_the_file_holds_is_refused_before_allocating(tmp_path, ending):
    """74 bytes claiming 2 GiB: within a 4 GiB limit, so only the data's absence can refuse it."""
    path = tmp_path / f"claims{ending}"
    head = nifti_header((1024, 1024, 1024))
    path.write_bytes(gzip.compress(head) if ending == ".nii.gz" else head)
    grown, outcome = read_in_fresh_process(f"read_volume({str(path)!r})", limit=4 * 2**30)
    assert outcome == f"{path}: truncated: the header claims {2**31} bytes of voxels, the file holds 0"
    assert grown < READER_OVERHEAD


def test_a_gzip_bomb_is_refused_from_its_header_and_decompressed_no_further_than_it_claims(tmp_path):
    """256 MiB of zeros in a 1.2 MB file: refused when the header claims them all (over a 64 MiB
    limit); read, decompressing only the 2 MiB claimed, when the header claims less."""
    bomb = tmp_path / "bomb.nii.gz"
    write_gzip(bomb, nifti_header((512, 512, 512), np.uint8), 256 * MIB)
    assert bomb.stat().st_size < 2 * MIB
    grown, outcome = read_in_fresh_process(f"read_volume({str(bomb)!r})", limit=64 * MIB)
    assert outcome.startswith(f"{bomb}: the header claims 512x512x512 values of 1 bytes = 0.125 GiB")
    assert outcome.endswith(f"more than the 0.0625 GiB an input may take (set {LIMIT_VARIABLE} to change it)")
    assert grown < READER_OVERHEAD

    small_claim = tmp_path / "small_claim.nii.gz"
    write_gzip(small_claim, nifti_header((128, 128, 128), np.uint8), 256 * MIB)
    grown, outcome = read_in_fresh_process(
        f"assert read_volume({str(small_claim)!r}).shape == (128, 128, 128)", limit=64 * MIB
    )
    assert outcome == "read" and grown < 2 * MIB + READER_OVERHEAD


def nrrd_header(sizes, encoding="gzip", data_file=None) -> bytes:
    lines = [
        "NRRD0004",
        "type: short",
        "dimension: 3",
        f"sizes: {sizes}",
        f"encoding: {encoding}",
        "endian: little",
    ]
    return ("\n".join(lines + ([f"data file: {data_file}"] if data_file else [])) + "\n\n").encode()


def test_a_gzipped_nrrd_bomb_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.nrrd"
    path.write_bytes(nrrd_header("512 512 512") + gzip.compress(bytes(16 * MIB), compresslevel=1))
    grown, outcome = read_in_fresh_process(f"read_volume({str(path)!r})", limit=64 * MIB)
    assert outcome.startswith(f"{path}: the header claims 512x512x512x1 values of 2 bytes = 0.25 GiB")
    assert grown < READER_OVERHEAD


def metaimage_header(data_file: str) -> str:
    fields = ["ObjectType = Image", "NDims = 3", "DimSize = 1024 1024 1024", "ElementType = MET_SHORT"]
    return "\n".join([*fields, f"ElementDataFile = {data_file}", ""])


@pytest.mark.parametrize(
    ("data_file", "message"),
    [
        ("/dev/zero", "its data file /dev/zero lies outside the header's folder"),
        ("../secret.raw", "its data file ../secret.raw lies outside the header's folder"),
        ("fifo.raw", "its data file fifo.raw is missing or not a regular file"),
        ("zero_link.raw", "its data file zero_link.raw is missing or not a regular file"),
        ("LIST\nslice0.raw\nfifo.raw", "its data file fifo.raw is missing or not a regular file"),
        ("slice%d.raw 0 1 1", "its data file slice1.raw is missing or not a regular file"),
    ],
    ids=["dev_zero", "parent_folder", "fifo", "link_to_dev_zero", "list", "pattern"],
)
def test_a_detached_data_file_must_be_a_regular_file_beside_its_header(tmp_path, data_file, message):
    """A FIFO would block forever and /dev/zero never end; a file elsewhere is not the user's scan.
    Refused before any reader opens them, whatever the limit (the process would otherwise hang)."""
    folder = tmp_path / "scans"
    folder.mkdir()
    (tmp_path / "secret.raw").write_bytes(bytes(64))
    (folder / "slice0.raw").write_bytes(bytes(64))
    os.mkfifo(folder / "fifo.raw")
    (folder / "zero_link.raw").symlink_to("/dev/zero")
    for header in [folder / "scan.mhd", folder / "scan.nhdr"]:
        is_nrrd = header.suffix == ".nhdr"
        text = (
            nrrd_header("1024 1024 1024", "raw", data_file).decode()
            if is_nrrd
            else metaimage_header(data_file)
        )
        header.write_text(text)
        grown, outcome = read_in_fresh_process(f"read_volume({str(header)!r})", limit=4 * 2**30)
        assert outcome == f"{header}: {message}"
        assert grown < READER_OVERHEAD


def test_a_detached_data_file_beside_its_header_or_below_it_is_read(tmp_path):
    (tmp_path / "data").mkdir()
    np.arange(24, dtype=np.int16).tofile(tmp_path / "data/scan.raw")
    header = tmp_path / "scan.mhd"
    header.write_text(metaimage_header("data/scan.raw").replace("1024 1024 1024", "4 3 2"))
    np.testing.assert_array_equal(read_volume(header).array, np.arange(24).reshape(2, 3, 4).T)


@pytest.fixture
def series(tmp_path):
    hu = np.zeros((16, 12, 4), np.int16)
    write_series(tmp_path / "patient", hu, uid="1.2.826.0.1.3680043.2.1125.7")
    return tmp_path / "patient"


def edit_slice(path, **tags):
    dataset = pydicom.dcmread(path)
    for keyword, value in tags.items():
        setattr(dataset, keyword, value)
    dataset.save_as(path)


def test_dicom_rows_and_columns_edited_upwards_are_refused_before_reading(series):
    """ITK would allocate 4 x 30000 x 30000 int16 (7 GB) from the first slice's header."""
    first = sorted(series.iterdir())[0]
    edit_slice(first, Rows=30000, Columns=30000)
    grown, outcome = read_in_fresh_process(
        f"read_dicom_series(find_dicom_series(Path({str(series)!r}))[0])", limit=4 * 2**30
    )
    assert outcome.startswith(
        f"{series}: series 1.2.826.0.1.3680043.2.1125.7: the header claims 30000x30000x4"
    )
    assert grown < READER_OVERHEAD


def test_dicom_pixel_data_shorter_than_rows_times_columns_is_named(series):
    """Within the limit, but the PixelData holds 16 x 12 values where the header claims 32 x 24:
    ITK would read the rest from whatever memory held. Cut short, likewise."""
    first, second = sorted(series.iterdir())[:2]
    edit_slice(first, Rows=24, Columns=32)
    dataset = pydicom.dcmread(second)
    dataset.PixelData = dataset.PixelData[:100]
    dataset.save_as(second)
    [found] = find_dicom_series(series)
    with pytest.raises(InputDataError) as err:
        read_dicom_series(found)
    assert str(err.value) == (
        f"{first}: PixelData (7FE0,0010) holds 384 bytes, "
        "fewer than the 1536 that Rows x Columns (24 x 32) need"
    )
    edit_slice(first, Rows=12, Columns=16)
    with pytest.raises(
        InputDataError, match=rf"^{second}: PixelData \(7FE0,0010\) holds 100 bytes, fewer than the 384"
    ):
        read_dicom_series(found)


def test_the_limit_is_an_eighth_of_the_memory_left_unless_set(monkeypatch):
    monkeypatch.delenv(LIMIT_VARIABLE, raising=False)
    monkeypatch.setattr("pipeline.io.limits.available_memory", lambda: 8 * 2**30)
    assert max_input_bytes() == 2**30
    monkeypatch.setenv(LIMIT_VARIABLE, "3e9")
    assert max_input_bytes() == 3 * 10**9
    for wrong in ["lots", "-1", "0", "inf", "nan"]:
        monkeypatch.setenv(LIMIT_VARIABLE, wrong)
        with pytest.raises(
            ConfigError, match=rf"^{LIMIT_VARIABLE}: expected a positive number of bytes, got '{wrong}'$"
        ):
            max_input_bytes()
