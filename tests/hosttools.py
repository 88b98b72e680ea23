"""Test helper: a tier that needs a host tool fails with the install hint, never skips."""

from __future__ import annotations

import pytest

from image import hosttools


def need(*names: str) -> None:
    absent = hosttools.missing(names)
    if absent:
        cmd = " ".join(hosttools.install_command(absent))
        pytest.fail(
            f"missing host tools {[t.name for t in absent]}; install: {cmd} "
            "(or ./inv doctor --install)",
            pytrace=False,
        )
