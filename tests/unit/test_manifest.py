from __future__ import annotations

import json

import pytest

from image.build.manifest import Manifest, Package, parse_dpkg, parse_npm, parse_pip, sbom
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
