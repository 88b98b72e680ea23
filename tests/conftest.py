"""Tiers by directory (tests/unit -> unit, tests/integration -> integration, tests/vm -> vm),
and what several tiers share: the local OCI registry and the release keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.registry import LocalRegistry, serve_registry
from tests.fixtures.releasekeys import ReleaseKey, make_release_key
from tests.hosttools import need

TIERS = ("unit", "integration", "vm")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def release_key(tmp_path_factory: pytest.TempPathFactory) -> ReleaseKey:
    """The publisher's key: signs builds in the tests that check signatures."""
    return make_release_key(tmp_path_factory.mktemp("release-key"), "publisher")


@pytest.fixture(scope="session")
def stranger_key(tmp_path_factory: pytest.TempPathFactory) -> ReleaseKey:
    """Someone else's key: what a re-signed artifact is signed with."""
    return make_release_key(tmp_path_factory.mktemp("stranger-key"), "stranger")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A real OCI registry (Debian's docker-registry) on 127.0.0.1, one per test module."""
    need("docker-registry")
    with serve_registry(tmp_path_factory.mktemp("registry")) as served:
        yield served
