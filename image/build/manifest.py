"""What is in a built image: dpkg, pip and npm packages -> manifest.json and a CycloneDX SBOM.

The guest is asked with commands that exist on every profile (dpkg-query, and
python3's importlib.metadata rather than pip, which the smaller profiles lack);
parsing is pure and unit-tested.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

from image.errors import ImageError

DPKG_QUERY = (
    "dpkg-query -W -f='${db:Status-Abbrev}\\t${binary:Package}\\t${Version}\\t${Architecture}\\n'"
)
# Only what pip put on the system (/usr/local, /opt): Debian's python3-* are in dpkg already.
PIP_QUERY = (
    "python3 -c 'import importlib.metadata as m, json; print(json.dumps(sorted("
    '{(d.metadata["Name"], d.version) for d in m.distributions() '
    'if str(d.locate_file("")).startswith(("/usr/local/", "/opt/"))})))\''
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


def sbom(manifest: Manifest, image_name: str, image_version: str) -> str:
    """A CycloneDX 1.6 JSON SBOM, validated against the schema before it is returned."""
    bom = Bom()
    root = Component(
        name=image_name, version=image_version, type=ComponentType.OPERATING_SYSTEM,
        bom_ref=f"image:{image_name}",
    )  # fmt: skip
    bom.metadata.component = root

    def add(purl: PackageURL, package: Package, ref: str) -> None:
        bom.components.add(Component(name=package.name, version=package.version, purl=purl,
                                     type=ComponentType.LIBRARY, bom_ref=ref))  # fmt: skip

    for p in manifest.dpkg:
        qualifiers = {"arch": p.arch} if p.arch else None
        add(PackageURL("deb", manifest.distro, p.name, p.version, qualifiers), p,
            f"deb:{p.name}:{p.arch}")  # fmt: skip
    for p in manifest.pip:
        add(PackageURL("pypi", None, p.name.lower(), p.version), p, f"pypi:{p.name}")
    for p in manifest.npm:
        namespace, _, name = p.name.rpartition("/")
        add(PackageURL("npm", namespace or None, name, p.version), p, f"npm:{p.name}")
    # Everything is installed in the image: the image depends on each directly.
    bom.register_dependency(root, list(bom.components))
    text: str = JsonV1Dot6(bom).output_as_string(indent=2)
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        raise ImageError(f"the generated SBOM is not valid CycloneDX 1.6: {error}")
    return text
