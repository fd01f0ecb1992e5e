"""No command writes into, replaces or deletes its inputs: an output that is an input, holds one
or lies inside an input folder stops the command before it does anything (exit 2, one line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main

# Every path option of every command, each input with its kind: the clash is refused whatever the
# files hold, so folders hold one small file and files a few bytes.
FOLDERS = {"--input", "--model", "--source", "--cohort", "--preprocessed", "--labels", "--predictions",
           "--probabilities", "--images", "--crossval-reports"}  # fmt: skip
COMMANDS = {
    "synth": (["--out"], []),
    "import": (["--out", "--report"], ["--source"]),
    "validate": (["--report"], ["--cohort"]),
    "preprocess": (["--out"], ["--cohort", "--qc"]),
    "split": (["--out"], ["--plans"]),
    "train": (["--out", "--live-dir"], ["--preprocessed", "--splits"]),
    "predict": (["--output"], ["--input", "--model"]),
    "crossval": (["--masks", "--report"], ["--model", "--cohort", "--splits"]),
    "evaluate": (["--out"], ["--labels", "--predictions", "--probabilities", "--images", "--dataset-json"]),
    # The card is written into --model by design: that one is not an input kept apart.
    "card": (["--out-dir"], ["--crossval-reports", "--metrics", "--splits", "--dvc-lock"]),
}
EXTRA = {"import": ["--format", "msd"], "crossval": ["--fold", "0"], "card": ["--model", "model"]}
# How the output is spelled against the input, and what the message calls it.
RELATIONS = {
    "equal": (lambda source: source, "is the input"),
    "parent": (lambda source: source.parent, "holds the input"),
    "child": (lambda source: source / "sub", "lies inside the input"),
    "symlink": (lambda source: _link(source), "is the input"),
    "through a symlink": (lambda source: _link(source) / "sub", "lies inside the input"),
    "dotted": (lambda source: source.parent / ".." / source.parent.name / source.name, "is the input"),
}
# Nothing lies inside an input file.
INSIDE = ("child", "through a symlink")
CLASHES = [
    (command, output, source, relation)
    for command, (outputs, inputs) in COMMANDS.items()
    for output in outputs
    for source in [*inputs, "--params"]
    for relation in RELATIONS
    if source in FOLDERS or relation not in INSIDE
]


@pytest.mark.parametrize(("command", "output", "source", "relation"), CLASHES)
def test_an_output_clashing_with_an_input_stops_the_command_before_anything(
    tmp_path, capsys, command, output, source, relation
):
    paths = _inputs(tmp_path, command)
    spell, message = RELATIONS[relation]
    clash = spell(paths[source])
    before = _tree(tmp_path)

    args = [
        command,
        *(a for option, path in paths.items() for a in (option, str(path))),
        *EXTRA.get(command, []),
    ]
    outputs = COMMANDS[command][0]
    args += [
        a for option in outputs for a in (option, str(clash if option == output else tmp_path / "o" / option))
    ]
    assert main(args) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"resseg {command}: error: {output} {clash} {message} {source}"
    )
    assert "Traceback" not in err
    assert _tree(tmp_path) == before  # inputs byte-identical, nothing written


def _inputs(root: Path, command: str) -> dict[str, Path]:
    """The command's inputs, each alone in its own folder (so that folder holds only it)."""
    paths = {}
    for option in [*COMMANDS[command][1], "--params"]:
        path = root / option.strip("-") / ("in" if option in FOLDERS else "in.json")
        path.parent.mkdir()
        if option in FOLDERS:
            path.mkdir()
            (path / "a.nii.gz").write_bytes(b"scan " + option.encode())
        else:
            path.write_text("{}\n")
        paths[option] = path
    return paths


def _link(source: Path) -> Path:
    link = source.parent.parent / f"link-to-{source.parent.name}"
    link.symlink_to(source, target_is_directory=source.is_dir())
    return link


def _tree(root: Path) -> dict[str, bytes | str]:
    return {
        p.relative_to(root).as_posix(): (
            f"-> {p.readlink()}" if p.is_symlink() else p.read_bytes() if p.is_file() else "folder"
        )
        for p in sorted(root.rglob("*"))
    }
