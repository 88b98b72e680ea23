"""ruff and mypy (strict) are part of the suite: a style or type error fails CI."""

from __future__ import annotations

import sys
from pathlib import Path

from image import run

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_ruff_check() -> None:
    run.run([BIN / "ruff", "check", "."], cwd=ROOT)


def test_ruff_format() -> None:
    run.run([BIN / "ruff", "format", "--check", "."], cwd=ROOT)


def test_mypy_strict() -> None:
    run.run([BIN / "mypy"], cwd=ROOT, timeout=600)
