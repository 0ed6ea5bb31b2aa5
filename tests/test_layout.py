"""The package layout: each stage imports only the stages before it.

capture -> streams -> decoders -> outputs, with the Record contract (events)
below all of them and the CLI above; formats (pcapng) is shared by the writer
(outputs) and the reader (cli).  Walks every module's imports (ast) and fails
on one that runs back up the chain.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "usniff"

# stage -> the stages it may import (itself always); "usniff" is the package's
# own __init__ (__version__)
ALLOWED = {
    "__main__": {"cli"},  # python -m usniff
    "events": set(),
    "printable": set(),
    "containers": set(),
    "_events": {"events"},
    "formats": {"events", "containers"},
    "capture": {"events", "printable", "containers", "_events"},
    "streams": {"events"},
    "decoders": {"events", "streams"},
    "outputs": {
        "events",
        "printable",
        "containers",
        "_events",
        "formats",
        "streams",
        "decoders",
        "usniff",
    },  # fmt: skip
    "cli": {
        "events",
        "printable",
        "containers",
        "_events",
        "formats",
        "capture",
        "streams",
        "decoders",
        "outputs",
        "usniff",
    },  # fmt: skip
    "usniff": set(),
}
PACKAGES = sorted(p.parent.name for p in SRC.glob("*/__init__.py"))


def _stage(module: str) -> str:
    """usniff.capture.records -> "capture"; usniff -> "usniff"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "usniff"


def _module(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module) of every usniff import in ``source``, the text of ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "usniff"]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                parts = package.split(".")
                target = ".".join(
                    parts[: len(parts) - node.level + 1] + ([target] if target else [])
                )
            if target.split(".")[0] != "usniff":
                continue
            for alias in node.names:  # `from usniff import events` names a module
                sub = SRC.parent / f"{target}.{alias.name}".replace(".", "/")
                is_module = sub.with_suffix(".py").exists() or (sub / "__init__.py").exists()
                found.append((node.lineno, f"{target}.{alias.name}" if is_module else target))
    return found


def _upward(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of ``module`` that its stage may not make."""
    stage = _stage(module)
    assert stage in ALLOWED, f"{module}: a new stage: add it to ALLOWED (and the README)"
    return [
        f"line {line}: {target}"
        for line, target in _imports(source, module, is_package)
        if _stage(target) not in ALLOWED[stage] | {stage}
    ]


MODULES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_import_runs_back_up_the_chain(path: Path) -> None:
    module = _module(path)
    upward = _upward(path.read_text(), module, path.name == "__init__.py")
    assert not upward, f"{module} ({_stage(module)}) imports upward: {upward}"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_says_what_it_may_import(package: str) -> None:
    doc = ast.get_docstring(ast.parse((SRC / package / "__init__.py").read_text()))
    assert doc and "May import:" in doc, f"usniff/{package}/__init__.py: no 'May import:'"


def test_the_check_sees_upward_imports() -> None:
    """Relative, absolute and from-package imports are all resolved to their stage."""
    assert _upward("from ..outputs import raw\n", "usniff.decoders.bad") == [
        "line 1: usniff.outputs.raw"
    ]
    assert _upward("import usniff.cli.main\n", "usniff.capture.bad") == ["line 1: usniff.cli.main"]
    assert _upward("from usniff import capture\n", "usniff.formats.bad") == [
        "line 1: usniff.capture"
    ]
    assert _upward("from ..streams import Direction\n", "usniff.decoders.ok") == []
    assert _upward("from . import base\n", "usniff.outputs", is_package=True) == []
