"""What is in a built image: dpkg, pip and npm packages -> manifest.json, CycloneDX and SPDX SBOMs.

The guest is asked with commands that exist on every profile (dpkg-query, and
python3's importlib.metadata rather than pip, which the smaller profiles lack);
parsing is pure and unit-tested.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

# From the defining modules: spdx_tools.spdx.model re-exports them implicitly, which mypy rejects.
from spdx_tools.spdx.model.actor import Actor, ActorType
from spdx_tools.spdx.model.document import CreationInfo, Document
from spdx_tools.spdx.model.package import (
    ExternalPackageRef,
    ExternalPackageRefCategory,
    PackagePurpose,
)
from spdx_tools.spdx.model.package import Package as SpdxPackage
from spdx_tools.spdx.model.relationship import Relationship, RelationshipType
from spdx_tools.spdx.model.spdx_no_assertion import SpdxNoAssertion
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document
from spdx_tools.spdx.writer.json.json_writer import write_document_to_stream

from image import __version__
from image.errors import ImageError

DPKG_QUERY = (
    "dpkg-query -W -f='${db:Status-Abbrev}\\t${binary:Package}\\t${Version}\\t${Architecture}\\n'"
)
# Only what pip put on the system (/usr/local, /opt): Debian's python3-* are in dpkg already.
# The libraries stage's re-run counts the same (cloud-init/stage-libraries.sh.j2).
PIP_PREFIXES = ("/usr/local/", "/opt/")
PIP_PREFIXES_PY = "(" + ", ".join(f'"{p}"' for p in PIP_PREFIXES) + ")"  # no single quote
PIP_QUERY = (
    "python3 -c 'import importlib.metadata as m, json; print(json.dumps(sorted("
    '{(d.metadata["Name"], d.version) for d in m.distributions() '
    f'if str(d.locate_file("")).startswith({PIP_PREFIXES_PY})}})))\''
)
NPM_QUERY = "if command -v npm >/dev/null; then npm ls -g --json --depth=0; else echo '{}'; fi"


@dataclass(frozen=True, order=True)
class Package:
    name: str
    version: str
    arch: str = ""


@dataclass(frozen=True)
class Manifest:
    distro: str
    arch: str
    dpkg: tuple[Package, ...]
    pip: tuple[Package, ...]
    npm: tuple[Package, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "distro": self.distro,
            "arch": self.arch,
            "counts": {"dpkg": len(self.dpkg), "pip": len(self.pip), "npm": len(self.npm)},
            "dpkg": [asdict(p) for p in self.dpkg],
            "pip": [{"name": p.name, "version": p.version} for p in self.pip],
            "npm": [{"name": p.name, "version": p.version} for p in self.npm],
        }


def parse_dpkg(text: str) -> tuple[Package, ...]:
    """Installed packages only ('ii'); names without the :arch suffix dpkg adds for multi-arch."""
    packages = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) != 4:
            continue
        status, name, version, arch = fields
        if status.strip() != "ii":
            continue
        packages.append(Package(name.split(":")[0], version, arch))
    return tuple(sorted(packages, key=lambda p: (p.name, p.arch)))


def parse_pip(text: str) -> tuple[Package, ...]:
    try:
        rows = json.loads(text or "[]")
    except json.JSONDecodeError as exc:
        raise ImageError(f"could not read the guest's Python package list: {exc}") from None
    return tuple(Package(str(name), str(version)) for name, version in rows)


def parse_npm(text: str) -> tuple[Package, ...]:
    try:
        data = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ImageError(f"could not read the guest's npm package list: {exc}") from None
    deps = data.get("dependencies", {}) or {}
    return tuple(sorted(Package(name, str(info.get("version", ""))) for name, info in deps.items()))


def purls(manifest: Manifest) -> list[tuple[Package, PackageURL]]:
    """Every dpkg, pip and npm package with its purl: the one source for both SBOMs."""
    found = []
    for p in manifest.dpkg:
        qualifiers = {"arch": p.arch} if p.arch else None
        found.append((p, PackageURL("deb", manifest.distro, p.name, p.version, qualifiers)))
    for p in manifest.pip:
        found.append((p, PackageURL("pypi", None, p.name.lower(), p.version)))
    for p in manifest.npm:
        namespace, _, name = p.name.rpartition("/")
        found.append((p, PackageURL("npm", namespace or None, name, p.version)))
    return found


def sbom(manifest: Manifest, image_name: str, image_version: str) -> str:
    """A CycloneDX 1.6 JSON SBOM, validated against the schema before it is returned."""
    bom = Bom()
    root = Component(
        name=image_name, version=image_version, type=ComponentType.OPERATING_SYSTEM,
        bom_ref=f"image:{image_name}",
    )  # fmt: skip
    bom.metadata.component = root
    for p, purl in purls(manifest):
        ref = f"deb:{p.name}:{p.arch}" if purl.type == "deb" else f"{purl.type}:{p.name}"
        bom.components.add(Component(name=p.name, version=p.version, purl=purl,
                                     type=ComponentType.LIBRARY, bom_ref=ref))  # fmt: skip
    # Everything is installed in the image: the image depends on each directly.
    bom.register_dependency(root, list(bom.components))
    text: str = JsonV1Dot6(bom).output_as_string(indent=2)
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        raise ImageError(f"the generated SBOM is not valid CycloneDX 1.6: {error}")
    return text


def spdx_id(package: Package, purl: PackageURL) -> str:
    """SPDXRef-<type>-<name>-<hash>: the name made safe, the hash keeps it unique.

    The raw name is hashed too because two names can share a purl (pip's Foo_Bar and
    foo-bar both become pkg:pypi/foo-bar).
    """
    safe = re.sub(r"[^A-Za-z0-9.]", "-", package.name)
    digest = hashlib.sha256(f"{purl.to_string()} {package.name}".encode()).hexdigest()[:10]
    return f"SPDXRef-{purl.type}-{safe}-{digest}"


def spdx(
    manifest: Manifest, image_name: str, image_version: str, created: datetime | None = None
) -> str:
    """An SPDX 2.3 JSON SBOM of the same packages as sbom(), validated before it is returned.

    The namespace depends only on the image and its packages, not on `created`: the same
    inputs with the same `created` give the same bytes. `created` defaults to now.
    """
    found = purls(manifest)

    def package(
        spdxid: str, name: str, version: str, purpose: PackagePurpose, purl: str | None = None
    ) -> SpdxPackage:
        unknown = SpdxNoAssertion()
        category = ExternalPackageRefCategory.PACKAGE_MANAGER
        refs = [ExternalPackageRef(category, "purl", purl)] if purl else []
        # files_analyzed=False: the SBOM lists packages, not their files.
        return SpdxPackage(
            spdxid, name, unknown, version=version, files_analyzed=False,
            license_concluded=unknown, license_declared=unknown, copyright_text=unknown,
            primary_package_purpose=purpose, external_references=refs,
        )  # fmt: skip

    root = package("SPDXRef-image", image_name, image_version, PackagePurpose.OPERATING_SYSTEM)
    # Keyed by SPDXID: a package listed twice in the manifest is one package, as in CycloneDX.
    components = {
        spdx_id(p, purl): package(
            spdx_id(p, purl), p.name, p.version, PackagePurpose.LIBRARY, purl.to_string()
        )
        for p, purl in found
    }
    content = json.dumps(
        [image_name, image_version, sorted(f"{p.name} {u.to_string()}" for p, u in found)]
    )
    name = f"{image_name}-{image_version}"
    namespace = f"https://spdx.org/spdxdocs/{quote(name, safe='')}-"
    namespace += str(uuid.uuid5(uuid.NAMESPACE_URL, namespace + content))
    creation = CreationInfo(
        "SPDX-2.3", "SPDXRef-DOCUMENT", name, namespace,
        [Actor(ActorType.TOOL, f"sandbox-image-{__version__}")],
        created or datetime.now(timezone.utc).replace(microsecond=0),
    )  # fmt: skip
    relationships = [Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, root.spdx_id)]
    relationships += [Relationship(root.spdx_id, RelationshipType.CONTAINS, i) for i in components]
    document = Document(creation, [root, *components.values()], relationships=relationships)
    messages = validate_full_spdx_document(document, "SPDX-2.3")
    if messages:
        shown = "; ".join(m.validation_message for m in messages[:3])
        more = f" (and {len(messages) - 3} more)" if len(messages) > 3 else ""
        raise ImageError(f"the generated SBOM is not valid SPDX 2.3: {shown}{more}")
    out = io.StringIO()
    # Validated just above; its own validation and deduplication (a deep copy) would repeat work.
    write_document_to_stream(document, out, validate=False, drop_duplicates=False)
    return out.getvalue()
