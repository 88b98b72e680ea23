from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest
from spdx_tools.spdx.model.document import Document
from spdx_tools.spdx.model.relationship import RelationshipType
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

import image
from image.build.manifest import (
    Manifest,
    Package,
    parse_dpkg,
    parse_npm,
    parse_pip,
    sbom,
    spdx,
)
from image.errors import ImageError

DPKG = (
    "ii \tjq\t1.6-2.1\tamd64\n"
    "rc \told-thing\t1.0\tamd64\n"  # removed, config left: not installed
    "ii \tlibc6:amd64\t2.36-9\tamd64\n"
    "garbage line\n"
)


def test_parse_dpkg_keeps_installed_only() -> None:
    assert parse_dpkg(DPKG) == (
        Package("jq", "1.6-2.1", "amd64"),
        Package("libc6", "2.36-9", "amd64"),
    )


def test_parse_pip_and_npm() -> None:
    assert parse_pip('[["pypdf", "4.0.1"]]') == (Package("pypdf", "4.0.1"),)
    npm = '{"dependencies": {"docx": {"version": "8.5.0"}, "@scope/x": {"version": "1.0.0"}}}'
    assert parse_npm(npm) == (Package("@scope/x", "1.0.0"), Package("docx", "8.5.0"))
    assert parse_npm("{}") == ()
    with pytest.raises(ImageError):
        parse_pip("not json")


def test_sbom_is_valid_cyclonedx_with_purls() -> None:
    manifest = Manifest(
        "debian", "amd64", parse_dpkg(DPKG), (Package("pypdf", "4.0.1"),),
        (Package("@scope/x", "1.0.0"),),
    )  # fmt: skip
    doc = json.loads(sbom(manifest, "sandbox-image", "test"))
    purls = {c["purl"] for c in doc["components"]}
    assert "pkg:deb/debian/jq@1.6-2.1?arch=amd64" in purls
    assert "pkg:pypi/pypdf@4.0.1" in purls
    assert "pkg:npm/%40scope/x@1.0.0" in purls
    assert doc["specVersion"] == "1.6"
    assert manifest.to_json()["counts"] == {"dpkg": 2, "pip": 1, "npm": 1}


# Names that need care in an SPDXID: '+', '@', '/', '_' must be replaced, and what they
# are replaced with must not make two packages collide.
ODD = Manifest(
    "debian",
    "amd64",
    (
        Package("libstdc++6", "1:2.3~rc1-4", "amd64"),
        Package("libstdc++6", "1:2.3~rc1-4", "i386"),
        Package("libstdc--6", "1.0-1", "amd64"),
    ),
    (Package("zope.interface", "6.0"), Package("Foo_Bar", "1.0"), Package("Foo-Bar", "1.0")),
    (Package("@scope/name", "1.0.0"), Package("name", "1.0.0")),
)
CREATED = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)


def parse_spdx(text: str, tmp_path: Path) -> Document:
    path = tmp_path / "sbom.spdx.json"
    path.write_text(text)
    return parse_file(str(path))


def test_spdx_parses_back_and_is_valid(tmp_path: Path) -> None:
    doc = parse_spdx(spdx(ODD, "sandbox-image", "test", created=CREATED), tmp_path)
    assert validate_full_spdx_document(doc, "SPDX-2.3") == []
    info = doc.creation_info
    assert info.spdx_version == "SPDX-2.3"
    assert [str(c) for c in info.creators] == [f"Tool: sandbox-image-{image.__version__}"]
    assert info.created == datetime(2024, 5, 6, 7, 8, 9)  # the parser gives naive UTC
    root = next(p for p in doc.packages if p.name == "sandbox-image")
    assert root.version == "test"
    assert next(p for p in doc.packages if p.name == "libstdc++6").version == "1:2.3~rc1-4"


def test_spdx_has_every_component_with_the_cyclonedx_purl(tmp_path: Path) -> None:
    doc = parse_spdx(spdx(ODD, "sandbox-image", "test", created=CREATED), tmp_path)
    spdx_components = Counter(
        (p.name, p.version, ref.locator)
        for p in doc.packages
        for ref in p.external_references
        if ref.reference_type == "purl" and ref.category.name == "PACKAGE_MANAGER"
    )
    cdx = json.loads(sbom(ODD, "sandbox-image", "test"))
    cdx_components = Counter((c["name"], c["version"], c["purl"]) for c in cdx["components"])
    assert spdx_components == cdx_components
    assert sum(spdx_components.values()) == len(ODD.dpkg + ODD.pip + ODD.npm)
    assert ("@scope/name", "1.0.0", "pkg:npm/%40scope/name@1.0.0") in spdx_components
    # One package per component: only the image itself has no purl.
    assert len(doc.packages) == len(spdx_components) + 1


def test_spdx_image_describes_and_contains_everything(tmp_path: Path) -> None:
    doc = parse_spdx(spdx(ODD, "sandbox-image", "test", created=CREATED), tmp_path)
    (root,) = [p.spdx_id for p in doc.packages if p.name == "sandbox-image"]
    others = {p.spdx_id for p in doc.packages} - {root}
    found = [
        (r.spdx_element_id, r.relationship_type, str(r.related_spdx_element_id))
        for r in doc.relationships
    ]
    expected = [("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, root)]
    expected += [(root, RelationshipType.CONTAINS, other) for other in others]
    assert sorted(found, key=str) == sorted(expected, key=str)


def test_spdx_ids_are_valid_and_unique_for_odd_names() -> None:
    doc = json.loads(spdx(ODD, "sandbox-image", "test", created=CREATED))
    ids = [p["SPDXID"] for p in doc["packages"]]
    assert all(re.fullmatch(r"SPDXRef-[A-Za-z0-9.-]+", i) for i in ids), ids
    assert len(set(ids)) == len(ids) == 1 + len(ODD.dpkg + ODD.pip + ODD.npm)
    # Deterministic: the same package gets the same SPDXID in another image.
    other = replace(ODD, dpkg=ODD.dpkg[:1], pip=(), npm=())
    again = json.loads(spdx(other, "other-image", "1", created=CREATED))
    assert {p["SPDXID"] for p in again["packages"]} <= {*ids, "SPDXRef-image"}


def test_spdx_is_reproducible_and_namespace_follows_content() -> None:
    def namespace(text: str) -> str:
        value: str = json.loads(text)["documentNamespace"]
        return value

    first = spdx(ODD, "sandbox-image", "test", created=CREATED)
    assert spdx(ODD, "sandbox-image", "test", created=CREATED) == first
    later = spdx(ODD, "sandbox-image", "test", created=CREATED.replace(year=2025))
    assert later != first and namespace(later) == namespace(first)
    bumped = replace(ODD, pip=(Package("zope.interface", "6.1"), *ODD.pip[1:]))
    assert namespace(spdx(bumped, "sandbox-image", "test", created=CREATED)) != namespace(first)
    assert namespace(spdx(ODD, "sandbox-image", "test2", created=CREATED)) != namespace(first)


def test_spdx_defaults_created_to_now() -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    created = json.loads(spdx(ODD, "sandbox-image", "test"))["creationInfo"]["created"]
    when = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert before <= when <= datetime.now(timezone.utc)


def test_spdx_refuses_an_invalid_document(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("image.build.manifest.spdx_id", lambda package, purl: "SPDXRef-not_valid")
    with pytest.raises(ImageError, match=r"not valid SPDX 2\.3: spdx_id must only contain"):
        spdx(ODD, "sandbox-image", "test", created=CREATED)
