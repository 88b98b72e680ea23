"""The provenance Statement: written through in-toto's schema, read back strictly, checked."""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from image.errors import ImageError
from image.release import provenance

WHEN = datetime.datetime(2026, 12, 5, 8, 0, tzinfo=datetime.timezone.utc)
SUMS = {"image.qcow2": "a" * 64, "sbom.json": "b" * 64}
DEPS = [
    {"name": "base-image", "uri": "https://cloud-images.ubuntu.com/x.img",
     "digest": {"sha256": "c" * 64}},
    {"name": "base-image/SHA256SUMS", "digest": {"sha256": "d" * 64}},
    {"name": "seed/user-data", "digest": {"sha256": "e" * 64}},
    {"name": "egress-policy", "digest": {"sha256": "f" * 64}},
    provenance.Source("https://example.org/si.git", "1" * 40, dirty=False).dependency(),
]  # fmt: skip


def _statement(**changes: Any) -> str:
    args: dict[str, Any] = {
        "subjects": SUMS, "external": {"profile": "full"}, "internal": {"accel": "tcg"},
        "dependencies": DEPS, "builder_id": "https://ci.example.org/runner",
        "builder_version": {"sandbox-image": "0.1.0"}, "invocation_id": "20261205T080000-abc",
        "started": WHEN, "finished": WHEN, "byproducts": {"build-info.json": "9" * 64},
    }  # fmt: skip
    return provenance.statement(**{**args, **changes})


def test_a_statement_is_in_toto_v1_with_a_slsa_v1_predicate() -> None:
    doc = json.loads(_statement())
    assert doc["_type"] == "https://in-toto.io/Statement/v1"
    assert doc["predicateType"] == "https://slsa.dev/provenance/v1"
    assert doc["subject"] == [{"name": n, "digest": {"sha256": s}} for n, s in SUMS.items()]
    run = doc["predicate"]["runDetails"]
    assert run["metadata"]["startedOn"] == "2026-12-05T08:00:00Z"
    assert run["builder"]["id"] == "https://ci.example.org/runner"
    parsed = provenance.parse(_statement())
    assert parsed.subjects == SUMS and parsed.invocation_id == "20261205T080000-abc"
    assert parsed.source() == provenance.Source("https://example.org/si.git", "1" * 40, False)
    assert _statement() == _statement()  # deterministic: the same inputs, the same bytes


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["predicate"]["runDetails"].update(bogus=1), "not a SLSA v1 provenance"),
        (lambda d: d.update(predicateType="https://slsa.dev/provenance/v0.2"), "predicate"),
        (lambda d: d["subject"][0].pop("digest"), "digest"),
        (lambda d: d["subject"].append(dict(d["subject"][0])), "listed twice"),
        (lambda d: d["predicate"]["buildDefinition"].update(buildType="https://x"), "build type"),
        (lambda d: d.update(extra=1), "not an in-toto v1 Statement"),
    ],
)
def test_a_statement_that_is_not_ours_is_refused(edit: Any, message: str) -> None:
    doc = json.loads(_statement())
    edit(doc)
    with pytest.raises(ImageError, match=message):
        provenance.parse(json.dumps(doc))


def test_check_compares_subjects_byproducts_inputs_and_the_source() -> None:
    prov = provenance.parse(_statement())
    present = {"build-info.json": "9" * 64}
    provenance.check(prov, SUMS, present, base_sha256="c" * 64,
                     expect_source="HTTPS://EXAMPLE.ORG/si/", expect_revision="1" * 7)  # fmt: skip
    with pytest.raises(ImageError, match=r"subject sbom\.json has sha256 b+, this build's"):
        provenance.check(prov, {**SUMS, "sbom.json": "0" * 64}, present)
    with pytest.raises(ImageError, match=r"subject extra has sha256 \(none\)"):
        provenance.check(prov, {**SUMS, "extra": "0" * 64}, present)
    with pytest.raises(ImageError, match=r"build-info\.json .* is missing"):
        provenance.check(prov, SUMS, {})
    with pytest.raises(ImageError, match=r"base image was sha256 c+, the build records 0+"):
        provenance.check(prov, SUMS, present, base_sha256="0" * 64)
    with pytest.raises(ImageError, match="too short"):
        provenance.check(prov, SUMS, present, expect_revision="111")
    nowhere = [*DEPS[:-1], provenance.Source("", "1" * 40, dirty=False).dependency()]
    with pytest.raises(ImageError, match="built from a checkout with no remote, not https://x"):
        provenance.check(provenance.parse(_statement(dependencies=nowhere)), SUMS, present,
                         expect_source="https://x")  # fmt: skip
    missing = provenance.parse(_statement(dependencies=DEPS[1:]))
    with pytest.raises(ImageError, match="no base-image among the resolved dependencies"):
        provenance.check(missing, SUMS, present)


def test_urls_lose_credentials_and_compare_as_one_repository() -> None:
    assert provenance.without_credentials("https://ci:s3cret@git.example.org/a.git") == (
        "https://git.example.org/a.git"
    )
    assert provenance.without_credentials("git@github.com:org/repo.git") == (
        "git@github.com:org/repo.git"
    )  # scp-like syntax: nothing to strip
    assert provenance.same_source("git+https://Git.Example.org/a.git", "https://git.example.org/a/")
    assert not provenance.same_source("https://git.example.org/a", "https://git.example.org/b")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


@pytest.mark.allow_subprocess  # git itself: what the build asks
def test_toolkit_source_is_the_checkouts_commit_and_says_when_it_was_modified(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "f").write_text("1\n")
    _git(repo, "add", "f")
    _git(repo, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "one")
    head = _git(repo, "rev-parse", "HEAD")
    # No remote: the commit is still recorded, without a URL (and an expected source fails).
    lone = provenance.toolkit_source(repo)
    assert lone == provenance.Source("", head, False) and "uri" not in lone.dependency()
    _git(repo, "remote", "add", "origin", "https://bot:token@git.example.org/si.git")
    found = provenance.toolkit_source(repo)
    assert found == provenance.Source("https://git.example.org/si.git",
                                      _git(repo, "rev-parse", "HEAD"), False)  # fmt: skip
    (repo / "untracked").write_text("ignored: not part of the toolkit")
    assert provenance.toolkit_source(repo, "https://mirror.example/si") == provenance.Source(
        "https://mirror.example/si", found.commit if found else "", False
    )
    (repo / "f").write_text("2\n")
    modified = provenance.toolkit_source(repo)
    assert modified is not None and modified.dirty
    plain = tmp_path / "plain"
    plain.mkdir()
    assert provenance.toolkit_source(plain) is None
    with pytest.raises(ImageError, match="not a git checkout"):
        provenance.toolkit_source(plain, "https://git.example.org/si.git")
