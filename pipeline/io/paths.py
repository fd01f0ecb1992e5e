"""Outputs kept apart from inputs: no command writes into, replaces or deletes its own inputs.

Paths are compared as the file system sees them: symlinks resolved and ``..`` collapsed (the real
path), then folders told apart by device and inode, so two spellings of one folder (a different
case on a case-insensitive disk, a bind mount) are one folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import ConfigError


def check_outputs_apart(
    outputs: list[tuple[str, Path | None]], inputs: list[tuple[str, Path | None]]
) -> None:
    """Refuse, before anything is done, an output (named by its option) that is an input, holds
    one, or lies inside an input folder: writing it would overwrite or delete the input. An option
    may name several paths (one pair each)."""
    for out_option, output in outputs:
        for in_option, source in inputs:
            if output is None or source is None:
                continue
            relation = _relation(Path(output), Path(source))
            if relation:
                raise ConfigError(
                    f"{out_option} {output} {relation} {in_option} {source}: "
                    "writing it would overwrite or delete the inputs"
                )


def _relation(output: Path, source: Path) -> str | None:
    output_id, source_id = _identity(output), _identity(source)
    if source_id is None:  # a missing input is its reader's error, not a clash
        return None
    if output_id == source_id:
        return "is the input"
    if output_id is not None and output_id in _ancestor_identities(source):
        return "holds the input"
    if source_id in _ancestor_identities(output):
        return "lies inside the input"
    return None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _ancestor_identities(path: Path) -> set[tuple[int, int]]:
    """The folders above ``path`` once its symlinks are resolved (an output need not exist yet)."""
    return {identity for p in Path(os.path.realpath(path)).parents if (identity := _identity(p))}
