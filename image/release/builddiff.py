"""diff: what changed from one build output to another.

Packages added, removed and changed version (dpkg, pip, npm, from each
manifest.json), the image's size, and each build step's seconds. Loading reads
files; comparing is pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image.build import output
from image.files import format_size

ECOSYSTEMS = ("dpkg", "pip", "npm")


@dataclass(frozen=True)
class BuildSummary:
    path: str
    build_id: str
    packages: dict[str, dict[str, str]]  # ecosystem -> {package: version}
    image: str | None  # file name of the qcow2
    image_size: int | None
    steps: list[tuple[str, float]]  # build order


def package_index(manifest: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """{ecosystem: {name: version}}; a dpkg name installed for two architectures gets ':arch'.

    Plain names otherwise, so an amd64 build compares with an arm64 one by package.
    """
    index: dict[str, dict[str, str]] = {}
    for eco in ECOSYSTEMS:
        rows = [r for r in manifest.get(eco) or [] if isinstance(r, dict) and "name" in r]
        twice = {n for n, k in Counter(str(r["name"]) for r in rows).items() if k > 1}
        index[eco] = {
            f"{r['name']}:{r.get('arch', '')}" if r["name"] in twice else str(r["name"]): str(
                r.get("version", "")
            )
            for r in rows
        }
    return index


def load(out: Path) -> BuildSummary:
    built = output.BuildOutput.read(out)
    info, manifest = built.info.raw, built.manifest
    images = sorted(n for n in info.get("outputs") or {} if n.endswith(".qcow2"))
    image = images[0] if images else None
    size = (out / image).stat().st_size if image and (out / image).is_file() else None
    return BuildSummary(
        path=str(out), build_id=str(info.get("build_id", "")), packages=package_index(manifest),
        image=image, image_size=size, steps=built.info.steps,
    )  # fmt: skip


@dataclass(frozen=True)
class BuildDiff:
    a: BuildSummary
    b: BuildSummary
    added: list[tuple[str, str, str]]  # ecosystem, name, version
    removed: list[tuple[str, str, str]]
    changed: list[tuple[str, str, str, str]]  # ecosystem, name, old, new
    steps: list[tuple[str, float | None, float | None]]  # step, a seconds, b seconds

    @property
    def differs(self) -> bool:
        """The images contain different packages (what `diff --exit-code` reports)."""
        return bool(self.added or self.removed or self.changed)

    @property
    def size_change(self) -> int | None:
        if self.a.image_size is None or self.b.image_size is None:
            return None
        return self.b.image_size - self.a.image_size

    def to_json(self) -> dict[str, Any]:
        return {
            "a": {"path": self.a.path, "build_id": self.a.build_id},
            "b": {"path": self.b.path, "build_id": self.b.build_id},
            "packages": {
                "added": [{"type": e, "name": n, "version": v} for e, n, v in self.added],
                "removed": [{"type": e, "name": n, "version": v} for e, n, v in self.removed],
                "changed": [
                    {"type": e, "name": n, "old": o, "new": v} for e, n, o, v in self.changed
                ],
            },
            "image": {
                "a": {"name": self.a.image, "bytes": self.a.image_size},
                "b": {"name": self.b.image, "bytes": self.b.image_size},
                "change_bytes": self.size_change,
            },
            "steps": [
                {
                    "step": s,
                    "a": x,
                    "b": y,
                    "change": round(y - x, 2) if x is not None and y is not None else None,
                }
                for s, x, y in self.steps
            ],
        }


def compare(a: BuildSummary, b: BuildSummary) -> BuildDiff:
    added, removed, changed = [], [], []
    for eco in ECOSYSTEMS:
        old, new = a.packages.get(eco, {}), b.packages.get(eco, {})
        added += [(eco, n, new[n]) for n in sorted(new.keys() - old.keys())]
        removed += [(eco, n, old[n]) for n in sorted(old.keys() - new.keys())]
        changed += [(eco, n, old[n], new[n]) for n in sorted(old.keys() & new.keys())
                    if old[n] != new[n]]  # fmt: skip
    a_steps, b_steps = dict(a.steps), dict(b.steps)
    order = [s for s, _ in a.steps] + [s for s, _ in b.steps if s not in a_steps]
    steps = [(s, a_steps.get(s), b_steps.get(s)) for s in order]
    return BuildDiff(a, b, added, removed, changed, steps)


def _size(n: int | None) -> str:
    return "?" if n is None else format_size(n, "MiB")


def format_text(diff: BuildDiff) -> str:
    lines = [f"a: {diff.a.path} ({diff.a.build_id})", f"b: {diff.b.path} ({diff.b.build_id})", ""]
    counts = f"{len(diff.added)} added, {len(diff.removed)} removed, {len(diff.changed)} changed"
    lines.append(f"packages: {counts}")
    lines += [f"  + {e:<4} {n} {v}" for e, n, v in diff.added]
    lines += [f"  - {e:<4} {n} {v}" for e, n, v in diff.removed]
    lines += [f"  ~ {e:<4} {n} {o} -> {v}" for e, n, o, v in diff.changed]
    change = diff.size_change
    shown = "" if change is None else f" ({format_size(change, 'MiB', signed=True)})"
    lines += ["", f"image: {_size(diff.a.image_size)} -> {_size(diff.b.image_size)}{shown}", ""]
    lines.append("steps (seconds): a -> b")
    lines += [_step_line(s, x, y) for s, x, y in diff.steps]
    return "\n".join(lines)


def _step_line(step: str, a: float | None, b: float | None) -> str:
    fa = "-" if a is None else f"{a:.1f}"
    fb = "-" if b is None else f"{b:.1f}"
    change = "" if a is None or b is None else f"  ({b - a:+.1f} s)"
    return f"  {step:<12} {fa:>8} -> {fb:>8}{change}"


def diff_outputs(a: Path, b: Path) -> BuildDiff:
    return compare(load(a), load(b))
