"""Outputs appear whole or not at all: write to a temporary name beside the target, then rename.

A write the file system refuses (disk full, read-only, a file where a folder should be) is an
InputDataError naming the target and the system's reason, and leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import InputDataError

# Temporaries are named ".<name>.tmp-<pid><suffixes>": hidden, and traceable to their writer.
TEMPORARY_MARK = ".tmp-"
# The longest file name most file systems take, in bytes.
MAX_NAME_BYTES = 255
# Errors that only writing can cause: whatever raised them, the target could not be written.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path with the target's suffixes; rename it onto ``path`` on success.

    The temporary keeps the suffixes (``.nii.gz``) because writers choose the format by them.
    On any exception the temporary is removed and the target is left as it was.
    """
    path = Path(path)
    tmp = _temporary(path)
    _make_parent(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if not _refused(err, path, tmp):
            raise
        raise _cannot_write(path, err) from None
    finally:
        # On a read-only file system even removing a file that is not there fails.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _temporary(path: Path) -> Path:
    suffixes = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    tmp = path.with_name(f".{stem}{TEMPORARY_MARK}{os.getpid()}{suffixes}")
    if len(os.fsencode(tmp.name)) <= MAX_NAME_BYTES:
        return tmp
    # A target named near the limit (a scan named by its series description) leaves no room for
    # the mark: a digest of its name instead, with the endings writers choose the format by
    # (.nii.gz; a long "suffix" is part of a dotted name, not an ending).
    digest = hashlib.sha256(os.fsencode(path.name)).hexdigest()[:16]
    ending = "".join(s for s in path.suffixes[-2:] if len(s) <= 8)
    return path.with_name(f".{digest}{TEMPORARY_MARK}{os.getpid()}{ending}")


def write_json(path: str | Path, obj) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``path`` only once it is complete.

    The previous folder is renamed away before the new one is renamed in, so a process killed at
    any point leaves either folder whole (or, between the two renames, none); the temporaries of
    killed runs for the same ``path`` are removed on the next run.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}")
    previous = tmp.with_name(f"{tmp.name}.previous")
    _make_parent(path)
    try:
        for stale in path.parent.glob(f".{glob.escape(path.name)}{TEMPORARY_MARK}*"):
            _remove_if_stale(stale)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        yield tmp
        if path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except OSError as err:
        if not _refused(err, path, tmp, previous):
            raise
        raise _cannot_write(path, err) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _cannot_write(path, err) from None


def _refused(err: OSError, *ours: Path) -> bool:
    """Whether ``err`` is the file system refusing our writes (disk full, read-only, a file where
    a folder should be ...) rather than a writer's bug or a failed read of an input, which keep
    their traceback (or their reader's message)."""
    filename = Path(err.filename) if err.filename is not None else None
    touched = filename is not None and any(filename == p or p in filename.parents for p in ours)
    return err.errno in WRITE_ERRNOS or touched


def _cannot_write(path: Path, err: OSError) -> InputDataError:
    return InputDataError(f"{path}: cannot be written ({err.strerror or err})")


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporaries under ``folder`` left by killed processes of this machine (a
    process killed by SIGKILL cannot clean up after itself)."""
    for path in Path(folder).rglob(f".*{TEMPORARY_MARK}*"):
        _remove_if_stale(path)


def _remove_if_stale(path: Path) -> None:
    """Remove a temporary whose writer (the pid in its name) is no longer running."""
    pid = path.name.split(TEMPORARY_MARK, 1)[1].split(".", 1)[0]
    if pid.isdigit() and not _is_running(int(pid)):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True
