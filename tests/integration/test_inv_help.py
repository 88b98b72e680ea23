"""`./inv TASK --help` shows the task's help, also for tasks with a positional argument."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _shim() -> object:
    loader = importlib.machinery.SourceFileLoader("inv_shim", str(ROOT / "inv"))
    spec = importlib.util.spec_from_loader("inv_shim", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["lock", "--help"], ["--help", "lock"]),
        (["publish", "out", "--to", "x", "--help"], ["--help", "publish"]),
        (["--help", "lock"], ["--help", "lock"]),
        (["launch", "--snapshot", "s", "--", "python3", "--help"],  # the sandboxed command's
         ["launch", "--snapshot", "s", "--", "python3", "--help"]),
        (["lock", "out"], ["lock", "out"]),
    ],
)  # fmt: skip
def test_help_after_the_task_name_moves_first(args: list[str], expected: list[str]) -> None:
    assert _shim()._help_first(args) == expected  # type: ignore[attr-defined]


def test_task_help_of_a_task_with_a_positional_argument() -> None:
    result = subprocess.run([str(ROOT / "inv"), "lock", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Usage: inv" in result.stdout and "lock" in result.stdout
    assert "--snapshot-timestamp" in result.stdout
