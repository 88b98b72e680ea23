"""Unit tests never start a process by accident (cloud-init's disable_subp_usage idea).

A test that really needs one says so with @pytest.mark.allow_subprocess.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _no_subprocess(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("allow_subprocess"):
        return

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(
            f"unit test started a subprocess: {args[:2]!r}; "
            "mark it @pytest.mark.allow_subprocess if it must"
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", forbidden)
    for name in (
        "system",
        "execv",
        "execve",
        "execvp",
        "execvpe",
        "posix_spawn",
        "posix_spawnp",
        "fork",
    ):
        monkeypatch.setattr(os, name, forbidden)
