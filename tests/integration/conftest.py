"""Integration-tier fixtures: the skills' scripts, run as an agent runs them."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures import skillsenv
from tests.fixtures.skillcheck import run_script
from tests.hosttools import need

SKILL_TOOLS = ("swriter", "scalc", "simpress", "pdftoppm", "qpdf", "tesseract", "tesseract eng",
               "gs", "convert", "pandoc", "rsvg-convert", "DejaVu fonts")  # fmt: skip

RunSkill = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="session")
def skills_python() -> Path:
    """The host's stand-in for the image's Python: the full profile's pip set in a venv."""
    need(*SKILL_TOOLS)
    found = skillsenv.python()
    if found is None:
        pytest.fail(f"the skills venv is missing; {skillsenv.HINT}", pytrace=False)
    return found


@pytest.fixture
def run_skill(skills_python: Path, tmp_path: Path) -> RunSkill:
    """run_skill("pdf", "extract.py", ARG..., timeout=S): the script's completed process.

    Runs in ``tmp_path`` (the test's files), text output, never raises on exit status.
    """

    def run(skill: str, script: str, *args: str | Path, timeout: float = 600,
            input: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return run_script(skills_python, tmp_path, skill, script, *args, timeout=timeout,
                          input=input)  # fmt: skip

    return run
