"""Tiers by directory: tests/unit -> unit, tests/integration -> integration, tests/vm -> vm."""

from __future__ import annotations

from pathlib import Path

import pytest

TIERS = ("unit", "integration", "vm")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))
