"""Build provenance: an in-toto Statement (v1) with a SLSA v1 provenance predicate.

Every build writes ``provenance.intoto.json``. Its subjects are the files its
``SHA256SUMS`` lists (name and sha256); its predicate says who built them
(``runDetails.builder``), how (``buildType``, ``externalParameters``: profile,
arch, release, serial, what the build was asked for), from what
(``resolvedDependencies``: the base image, the SHA256SUMS it was verified by and
that file's signature, the rendered seed, the package lists, the lock, the
egress policy, the skills, extra CA certificates, the toolkit's git revision)
and what else came out (``byproducts``: build-info.json and the logs).

The Statement and the predicate are built and read back through the in-toto
attestation library's protobuf types, so a field that is not in the schema, or
has the wrong type, fails here and not in a consumer's verifier.
"""

from __future__ import annotations

import datetime
import json
import re
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import STATEMENT_TYPE_URI, Statement

from image.errors import ImageError

FILE = "provenance.intoto.json"
MEDIA_TYPE = "application/vnd.in-toto+json"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
# What externalParameters and internalParameters mean: docs/release.md "Provenance".
BUILD_TYPE = "urn:sandbox-image:build-type:build-image:v1"
TOOLKIT = "sandbox-image"  # the resolvedDependencies entry of the toolkit's own source
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Source:
    """The toolkit's own source: where it came from and which commit, as git says."""

    url: str  # credentials removed
    commit: str
    dirty: bool  # local changes on top of the commit

    def dependency(self) -> dict[str, Any]:
        found: dict[str, Any] = {"name": TOOLKIT, "digest": {"gitCommit": self.commit}}
        if self.url:
            found["uri"] = f"git+{self.url}"
        if self.dirty:
            found["annotations"] = {"dirty": True}
        return found


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20, check=True
    ).stdout.strip()


def default_builder_id() -> str:
    """Who built it when --builder-id does not say: this host, by name."""
    return f"urn:sandbox-image:host:{socket.gethostname()}"


def without_credentials(url: str) -> str:
    """https://user:token@host/x -> https://host/x: a provenance is public."""
    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def toolkit_source(root: Path, url: str | None = None) -> Source | None:
    """The git revision of the checkout at ``root`` (None outside a git checkout).

    ``url`` overrides the ``origin`` remote's (a CI clone may have none, or a
    mirror's); with neither, the commit is recorded without a URL.
    """
    try:
        commit = _git(root, "rev-parse", "HEAD")
        dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        if url is None:
            return None
        raise ImageError(
            f"--source {url} given, but {root} is not a git checkout with a commit",
            hint="run the build from a git clone of the toolkit",
        ) from None
    if url is None:
        try:
            url = _git(root, "remote", "get-url", "origin")
        except (OSError, subprocess.SubprocessError):
            url = ""
    return Source(without_credentials(url), commit, dirty)


def same_source(a: str, b: str) -> bool:
    """Two spellings of one repository URL: case of the host, a trailing / or .git."""

    def norm(url: str) -> str:
        url = without_credentials(url.removeprefix("git+")).rstrip("/").removesuffix(".git")
        parts = urlsplit(url)
        return urlunsplit(parts._replace(netloc=parts.netloc.lower()))

    return norm(a) == norm(b)


# --- writing ---


def _descriptor(entry: Mapping[str, Any]) -> Any:
    rd = ResourceDescriptor(
        name=str(entry.get("name", "")), uri=str(entry.get("uri", "")),
        digest=dict(entry.get("digest") or {}), annotations=entry.get("annotations"),
    )  # fmt: skip
    rd.validate()
    return rd.pb


def statement(
    *,
    subjects: Mapping[str, str],
    external: Mapping[str, Any],
    internal: Mapping[str, Any],
    dependencies: Sequence[Mapping[str, Any]],
    builder_id: str,
    builder_version: Mapping[str, str],
    invocation_id: str,
    started: datetime.datetime,
    finished: datetime.datetime,
    byproducts: Mapping[str, str],
) -> str:
    """The Statement as JSON text. ``subjects`` and ``byproducts``: file name -> sha256;
    ``dependencies``: resource descriptors as dicts (name, uri, digest, annotations)."""
    predicate = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": dict(external),
            "internalParameters": dict(internal),
            "resolvedDependencies": [dict(d) for d in dependencies],
        },
        "runDetails": {
            "builder": {"id": builder_id, "version": dict(builder_version)},
            "metadata": {
                "invocationId": invocation_id,
                "startedOn": _rfc3339(started),
                "finishedOn": _rfc3339(finished),
            },
            "byproducts": [
                {"name": name, "digest": {"sha256": sha}}
                for name, sha in sorted(byproducts.items())
            ],
        },
    }
    for entry in predicate["buildDefinition"]["resolvedDependencies"]:  # type: ignore[index]
        _descriptor(entry)
    # The schema's own check: unknown fields or wrong types raise here.
    json_format.ParseDict(predicate, provenance_pb2.Provenance())
    stmt = Statement(
        [_descriptor({"name": n, "digest": {"sha256": s}}) for n, s in sorted(subjects.items())],
        PREDICATE_TYPE,
        predicate,
    )
    stmt.validate()
    doc = json_format.MessageToDict(stmt.pb)
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def _rfc3339(when: datetime.datetime) -> str:
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- reading and checking ---


@dataclass(frozen=True)
class Provenance:
    """A parsed, schema-checked Statement: what ``verify`` compares and prints."""

    subjects: dict[str, str]  # name -> sha256
    byproducts: dict[str, str]
    dependencies: list[dict[str, Any]]
    external: dict[str, Any]
    builder_id: str
    invocation_id: str

    def dependency(self, name: str) -> dict[str, Any] | None:
        return next((d for d in self.dependencies if d.get("name") == name), None)

    def source(self) -> Source | None:
        dep = self.dependency(TOOLKIT)
        if dep is None:
            return None
        commit = str((dep.get("digest") or {}).get("gitCommit", ""))
        dirty = bool((dep.get("annotations") or {}).get("dirty"))
        return Source(str(dep.get("uri", "")).removeprefix("git+"), commit, dirty)

    def to_json(self) -> dict[str, Any]:
        src = self.source()
        return {
            "builder": self.builder_id,
            "build_id": self.invocation_id,
            "source": src.url if src else None,
            "revision": src.commit if src else None,
            "modified_checkout": src.dirty if src else None,
            "subjects": len(self.subjects),
        }


def _refuse(what: str) -> ImageError:
    return ImageError(
        f"{FILE}: {what}",
        hint="the provenance is damaged or not one a sandbox-image build wrote; do not use it",
    )


def _digests(entries: Sequence[Mapping[str, Any]], what: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for entry in entries:
        name, sha = entry.get("name", ""), (entry.get("digest") or {}).get("sha256", "")
        if not name or not _SHA256.match(str(sha)):
            raise _refuse(f"a {what} without a name or a sha256 digest")
        if name in found:
            raise _refuse(f"{what} {name} is listed twice")
        found[str(name)] = str(sha)
    return found


def parse(text: str) -> Provenance:
    """Parse and schema-check a Statement; ImageError naming what does not hold."""
    try:
        doc = json.loads(text)
        pb = json_format.ParseDict(doc, statement_pb2.Statement())
        Statement.copy_from_pb(pb).validate()
    except (ValueError, json_format.ParseError) as exc:
        raise _refuse(f"not an in-toto v1 Statement ({exc})") from None
    if pb.type != STATEMENT_TYPE_URI or pb.predicate_type != PREDICATE_TYPE:
        raise _refuse(f"type {pb.type!r} / predicate {pb.predicate_type!r}, "
                      f"not {STATEMENT_TYPE_URI} / {PREDICATE_TYPE}")  # fmt: skip
    predicate = doc.get("predicate") or {}
    try:
        json_format.ParseDict(predicate, provenance_pb2.Provenance())
    except json_format.ParseError as exc:
        raise _refuse(f"not a SLSA v1 provenance ({exc})") from None
    definition = predicate.get("buildDefinition") or {}
    if definition.get("buildType") != BUILD_TYPE:
        raise _refuse(f"build type {definition.get('buildType')!r}, not {BUILD_TYPE}")
    run = predicate.get("runDetails") or {}
    return Provenance(
        subjects=_digests(doc.get("subject") or [], "subject"),
        byproducts=_digests(run.get("byproducts") or [], "byproduct"),
        dependencies=list(definition.get("resolvedDependencies") or []),
        external=dict(definition.get("externalParameters") or {}),
        builder_id=str((run.get("builder") or {}).get("id", "")),
        invocation_id=str((run.get("metadata") or {}).get("invocationId", "")),
    )


# Inputs every build has: a provenance without one of them is not ours.
REQUIRED = ("base-image", "base-image/SHA256SUMS", "seed/user-data", "egress-policy")


def check(
    prov: Provenance,
    sums: Mapping[str, str],
    present: Mapping[str, str],
    *,
    base_sha256: str | None = None,
    expect_source: str | None = None,
    expect_revision: str | None = None,
) -> None:
    """The provenance against the build it came with.

    ``sums``: SHA256SUMS (already checked against the files); ``present``: sha256
    of the other files a build output holds (build-info.json, logs/...).
    """
    if prov.subjects != dict(sums):
        for name in sorted(set(prov.subjects) | set(sums)):
            mine, theirs = sums.get(name), prov.subjects.get(name)
            if mine != theirs:
                raise ImageError(
                    f"{FILE} is for other files: subject {name} has sha256 {theirs or '(none)'}, "
                    f"this build's SHA256SUMS says {mine or '(not listed)'}",
                    hint="the provenance belongs to another build (swapped or replaced); "
                    "do not trust this build's origin",
                )
    for name, want in sorted(prov.byproducts.items()):
        got = present.get(name)
        if got is None:
            raise ImageError(f"{name} (a byproduct the provenance records) is missing",
                             hint="the build output is incomplete")  # fmt: skip
        if got != want:
            raise ImageError(
                f"{name}: sha256 {got} does not match the provenance ({want})",
                hint="the file was altered after the build; do not use it",
            )
    for name in REQUIRED:
        if prov.dependency(name) is None:
            raise _refuse(f"no {name} among the resolved dependencies")
    base = prov.dependency("base-image") or {}
    claimed = (base.get("digest") or {}).get("sha256")
    if base_sha256 is not None and claimed != base_sha256:
        raise ImageError(
            f"the provenance says the base image was sha256 {claimed}, "
            f"the build records {base_sha256}",
            hint="the build's own record and its provenance disagree; do not use it",
        )
    if expect_source is None and expect_revision is None:
        return
    src = prov.source()
    if src is None:
        raise ImageError(f"{FILE} names no toolkit source",
                         hint="the build was not made from a git checkout")  # fmt: skip
    if expect_source is not None and not (src.url and same_source(src.url, expect_source)):
        where = src.url or "a checkout with no remote"
        raise ImageError(f"built from {where}, not {expect_source}",
                         hint="this build does not come from the source you expect")  # fmt: skip
    if expect_revision is not None:
        want = expect_revision.lower()
        if len(want) < 7:
            raise ImageError(f"--expect-revision {expect_revision!r} is too short",
                             hint="pass the full commit id (at least 7 hex digits)")  # fmt: skip
        if not src.commit.startswith(want):
            raise ImageError(f"built from revision {src.commit}, not {expect_revision}",
                             hint="this build was made from another commit")  # fmt: skip
        if src.dirty:
            raise ImageError(
                f"built from a modified checkout of {src.commit} (local changes on top)",
                hint="a release should be built from a clean checkout of the revision",
            )
