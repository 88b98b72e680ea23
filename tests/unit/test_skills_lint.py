"""The project's skills, as an agent meets them: each SKILL.md complete and true."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from image.build import skills

SKILLS = skills.PROJECT_SKILLS
NAMES = sorted(p.name for p in SKILLS.iterdir() if p.is_dir() and not p.name.startswith("_"))
# The document skills the image exists for (docs/skills.md).
REQUIRED = {"pdf", "docx", "xlsx", "pptx", "design"}
_COMMAND = re.compile(r"/opt/skills/([a-z0-9_-]+)/(\S+?\.py)\b")


def test_the_document_skills_are_all_there() -> None:
    assert set(NAMES) >= REQUIRED
    assert [s.name for s in skills.describe([SKILLS])] == NAMES  # each one valid


@pytest.mark.parametrize("name", NAMES)
def test_skill_md_commands_exist_and_scripts_are_runnable(name: str) -> None:
    folder = SKILLS / name
    text = (folder / "SKILL.md").read_text(encoding="utf-8")
    named = _COMMAND.findall(text)
    assert named, f"{name}/SKILL.md shows no command"
    for skill, rel in named:
        assert (SKILLS / skill / rel).is_file(), f"{name}/SKILL.md names {skill}/{rel}"
    for script in sorted((folder / "scripts").glob("*.py")):
        source = script.read_text(encoding="utf-8")
        ast.parse(source, feature_version=(3, 10))  # jammy's Python reads it
        if "__main__" in source:  # an entry point, not a shared module
            assert source.startswith("#!/usr/bin/env python3\n"), script
            assert script.stat().st_mode & 0o111, f"{script} is not executable"
            assert f"/opt/skills/{name}/scripts/{script.name}" in text, (
                f"{script.name} is not documented in {name}/SKILL.md"
            )


def test_skills_share_only_through_lib() -> None:
    """A script reaches outside its skill only for _lib (LibreOffice's runner)."""
    for script in SKILLS.glob("*/scripts/*.py"):
        source = script.read_text(encoding="utf-8")
        for line in source.splitlines():
            if "parents[2]" in line:
                assert '"_lib"' in line, (script, line)


def test_soffice_is_only_run_through_the_shared_runner() -> None:
    for script in SKILLS.glob("*/scripts/*.py"):
        source = script.read_text(encoding="utf-8")
        assert not re.search(r"""["'](soffice|libreoffice)["']""", source), script
    assert Path(SKILLS / "_lib" / "soffice.py").is_file()
