"""The package layout holds: stages in folders, a small core, imports that flow one way."""

from __future__ import annotations

import ast
from pathlib import Path

IMAGE = Path(__file__).resolve().parents[2] / "image"
CORE = {"__init__.py", "config.py", "console.py", "errors.py", "files.py", "hosttools.py",
        "run.py"}  # fmt: skip
STAGES = {"source", "build", "vm", "sandbox", "egress", "runtime", "release", "contract",
          "guest"}  # fmt: skip


def _imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (IMAGE / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
    return found


def test_the_top_level_is_the_core_and_the_stages() -> None:
    modules = {p.name for p in IMAGE.iterdir() if p.suffix == ".py"}
    folders = {p.name for p in IMAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert modules <= CORE
    assert folders <= STAGES


def test_the_build_does_not_import_the_runtime() -> None:
    assert not {m for m in _imports("build") if m.startswith("image.runtime")}


def test_the_runtime_does_not_import_cloud_init() -> None:
    assert not {m for m in _imports("runtime") if m.startswith("image.build.cloudinit")}


def test_the_contracts_import_no_stage_that_uses_them() -> None:
    used_by = ("image.build", "image.runtime", "image.sandbox")
    assert not {m for m in _imports("contract") if m.startswith(used_by)}
