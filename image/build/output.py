"""A build output's one owner: the names build-image writes, and one typed reader.

``build-image`` writes ``build-info.json`` last (its presence marks a complete
output); ``report``, ``diff``, ``lock``, ``publish``/``pull`` and the benches read an
output only through ``BuildOutput.read``. Step timings are stored twice: ``steps``,
a list in the order the build ran them (what the report's timeline and ``diff``
show), and ``timings``, the same as an object (older outputs have only this; its
stored order is then the order shown).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image.errors import ImageError
from image.source.checksums import parse_sha256sums

BUILD_INFO = "build-info.json"
MANIFEST = "manifest.json"
SHA256SUMS = "SHA256SUMS"
REPORT = "report.html"


def output_name(release: str, arch: str, profile: str) -> str:
    """The stem of a build's image file and its artifact title."""
    return f"sandbox-image-{release}-{arch}-{profile}"


@dataclass(frozen=True)
class BuildInfo:
    """build-info.json, parsed: typed access to what readers use, ``raw`` for the rest."""

    raw: Mapping[str, Any]

    @property
    def build_id(self) -> str:
        return str(self.raw.get("build_id", ""))

    @property
    def config(self) -> Mapping[str, Any]:
        return dict(self.raw.get("config") or {})

    @property
    def base(self) -> Mapping[str, Any]:
        return dict(self.raw.get("base") or {})

    @property
    def outputs(self) -> dict[str, str]:
        """File name -> sha256 of the artifacts (the report is listed in SHA256SUMS)."""
        return {str(k): str(v) for k, v in (self.raw.get("outputs") or {}).items()}

    @property
    def name(self) -> str:
        cfg = self.config
        return output_name(
            str(cfg.get("release", "?")), str(cfg.get("arch", "?")), str(cfg.get("profile", "?"))
        )

    @property
    def steps(self) -> list[tuple[str, float]]:
        """(step, seconds) in the order the build ran them."""
        ordered = self.raw.get("steps")
        if isinstance(ordered, list):
            return [(str(name), float(seconds)) for name, seconds in ordered]
        return [(str(k), float(v)) for k, v in (self.raw.get("timings") or {}).items()]


def steps_record(timings: Mapping[str, float]) -> list[list[Any]]:
    """What build-image stores as ``steps``: its timings in run order (JSON keeps lists)."""
    return [[name, seconds] for name, seconds in timings.items()]


@dataclass(frozen=True)
class BuildOutput:
    dir: Path
    info: BuildInfo
    manifest: Mapping[str, Any]

    @classmethod
    def read(cls, out: Path, info: Mapping[str, Any] | None = None) -> BuildOutput:
        """Read ``out``; ``info`` stands in for build-info.json while a build writes it."""
        try:
            raw = info if info is not None else json.loads((out / BUILD_INFO).read_text())
            manifest = json.loads((out / MANIFEST).read_text())
        except FileNotFoundError as exc:
            raise ImageError(
                f"{out} is not a build output: {Path(str(exc.filename)).name} is missing",
                hint="pass a directory written by ./inv build-image (or ./inv pull)",
            ) from None
        except (OSError, ValueError) as exc:
            raise ImageError(f"{out}: unreadable build output: {exc}") from None
        if not isinstance(raw, dict) or not isinstance(manifest, dict):
            raise ImageError(f"{out}: {BUILD_INFO} and {MANIFEST} must hold JSON objects")
        return cls(out, BuildInfo(raw), manifest)

    def sums(self) -> dict[str, str]:
        """SHA256SUMS as {name: sha256}, or build-info's outputs before it is written."""
        path = self.dir / SHA256SUMS
        if not path.is_file():
            return self.info.outputs
        try:
            return parse_sha256sums(path.read_text())
        except ValueError as exc:
            raise ImageError(f"{self.dir}: unreadable {SHA256SUMS}: {exc}") from None
