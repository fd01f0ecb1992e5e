"""Each DVC stage depends on every module of the package that its command can import, derived
from the imports themselves (not from a hand-kept list): a module a stage misses is code that
changes its outputs without ``dvc repro`` noticing."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

PACKAGE = "pipeline"
CLI = REPO_ROOT / PACKAGE / "cli.py"


def module_file(name: str) -> Path | None:
    """The file of a dotted module name inside the package: a module or a package's __init__."""
    path = REPO_ROOT.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def imported_modules(node: ast.AST) -> set[str]:
    """Package modules imported anywhere under ``node``, function bodies included; ``from a
    import b`` counts b when b is a module, else a."""
    names = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Import):
            names |= {alias.name for alias in child.names}
        elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
            names.add(child.module)
            names |= {f"{child.module}.{alias.name}" for alias in child.names}
    return {name for name in names if name.split(".")[0] == PACKAGE and module_file(name)}


def closure(modules: set[str]) -> set[Path]:
    """Every file those modules load: their imports, transitively, and each parent package."""
    files, todo = set(), list(modules)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
            path = module_file(".".join(parts[:depth]))
            if path and path not in files:
                files.add(path)
                todo.extend(imported_modules(ast.parse(path.read_text(encoding="utf-8"))))
    return files


def command_files() -> dict[str, set[Path]]:
    """Per ``resseg`` subcommand: the files its handler in cli.py can import, through the helpers
    of cli.py it calls, plus what cli.py imports at its top."""
    tree = ast.parse(CLI.read_text(encoding="utf-8"))
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    top_level = imported_modules(
        ast.Module(body=[n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)], type_ignores=[])
    )
    handlers = {
        call.args[0].value: call.args[1].id
        for call in ast.walk(functions["build_parser"])
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "command"
    }

    def reachable(name: str, seen: set[str]) -> set[str]:
        seen.add(name)
        modules = imported_modules(functions[name])
        for call in ast.walk(functions[name]):
            callee = getattr(call, "id", None)
            if callee in functions and callee not in seen and callee != "build_parser":
                modules |= reachable(callee, seen)
        return modules

    return {name: {CLI} | closure(top_level | reachable(func, set())) for name, func in handlers.items()}


def stages() -> dict[str, dict]:
    """dvc.yaml's stages, a foreach stage by its ``do`` template."""
    spec = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {name: stage.get("do", stage) for name, stage in spec.items()}


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(REPO_ROOT)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


def stage_files() -> dict[str, set[Path]]:
    """Per stage: the files that the resseg commands it runs (one, or a list) can import."""
    files = command_files()
    found = {}
    for name, spec in stages().items():
        commands = spec["cmd"] if isinstance(spec["cmd"], list) else [spec["cmd"]]
        words = [shlex.split(command) for command in commands]
        found[name] = set().union(*(files[w[w.index("resseg") + 1]] for w in words))
    return found


@pytest.mark.parametrize("stage", sorted(stages()))
def test_a_stage_depends_on_every_module_its_command_imports(stage):
    deps = stages()[stage]["deps"]
    missing = sorted(str(f.relative_to(REPO_ROOT)) for f in stage_files()[stage] if not covered(f, deps))
    assert not missing, f"stage {stage} imports modules outside its deps: {missing}"


def test_the_import_graph_is_read_through_function_level_imports():
    # cli.py imports the stages inside its handlers; a reader of top-level imports alone would
    # give every command the same few modules.
    files = command_files()
    assert REPO_ROOT / "pipeline/models/train.py" in files["train"]
    assert REPO_ROOT / "pipeline/models/train.py" not in files["evaluate"]
    assert REPO_ROOT / "pipeline/config.py" in files["evaluate"]
