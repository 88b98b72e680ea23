"""Resolvable by construction: prove a profile's pip and npm sets install where the image runs.

``./inv packages --resolve`` asks the real resolvers, against the real indexes:

- pip: for each target (CPython 3.10 on manylinux x86_64 and aarch64: jammy's
  Python on both architectures), ``pip install --dry-run --report`` with wheels
  only, the profile's pins and its constraints file. Every package the
  resolution picks must be pinned in the list or the constraints (so the image
  rebuilds the same), at the pinned version. A line marked ``# sdist: why`` is
  left out of the wheels-only run (pip cannot resolve an sdist for another
  platform) and checked on its own: it must exist as that version, and what it
  requires must be in the resolved set.
- npm: ``npm install --dry-run --engine-strict`` of every pin, run by the Node.js 22
  the image installs (the NodeSource stand-in's binary), so every package in the
  whole tree must accept Node 22's version in its ``engines``.

Nothing is installed: pip writes a report, npm a lock file in a temporary folder.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image import run
from image.build import packages
from image.errors import ImageError

# glibc versions of the manylinux tags a jammy guest (glibc 2.35) accepts; pip
# does not widen a --platform on its own (kiwisolver has only manylinux_2_12).
MANYLINUX = (5, 12, 17, 24, 26, 27, 28, 31, 34, 35)


@dataclass(frozen=True)
class PipTarget:
    python: str  # "3.10"
    machine: str  # x86_64 | aarch64

    @property
    def label(self) -> str:
        return f"CPython {self.python} manylinux {self.machine}"

    def platform_args(self) -> list[str]:
        abi = "cp" + self.python.replace(".", "")
        args = ["--python-version", self.python, "--implementation", "cp", "--abi", abi]
        for minor in MANYLINUX:
            args += ["--platform", f"manylinux_2_{minor}_{self.machine}"]
        return args


JAMMY_TARGETS = (PipTarget("3.10", "x86_64"), PipTarget("3.10", "aarch64"))


@dataclass
class Outcome:
    what: str
    ok: bool
    detail: str
    resolved: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "ok": self.ok, "detail": self.detail,
                "resolved": len(self.resolved)}  # fmt: skip


def normalized(name: str) -> str:
    """PEP 503: the name pip compares."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_argv(target: PipTarget, requirements: Path, constraints: Path, report: Path,
             scratch: Path) -> list[str]:  # fmt: skip
    # --isolated: this host's pip configuration (extra indexes, caps) is not the guest's.
    return [
        sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check",
        "install", "--dry-run", "--ignore-installed", "--quiet", "--only-binary=:all:",
        "--target", str(scratch), "--report", str(report), *target.platform_args(),
        "--requirement", str(requirements), "--constraint", str(constraints),
    ]  # fmt: skip


def check_pins(resolved: dict[str, str], pins: dict[str, str]) -> list[str]:
    """Problems with a resolution: a package pinned nowhere, or at another version."""
    problems = []
    for name, version in sorted(resolved.items()):
        pinned = pins.get(normalized(name))
        if pinned is None:
            problems.append(f"{name}=={version} is pinned nowhere (add it to the constraints)")
        elif pinned != version:
            problems.append(f"{name}: resolved {version}, pinned {pinned}")
    return problems


def _pins(profile: packages.Profile) -> dict[str, str]:
    entries = [e for g in profile.groups_of("pip") for e in (*g.entries, *g.constraints)]
    return {e.key: e.version or "" for e in entries}


def resolve_pip(profile: packages.Profile, targets: Sequence[PipTarget] = JAMMY_TARGETS
                ) -> list[Outcome]:  # fmt: skip
    entries = [e for g in profile.groups_of("pip") for e in g.entries]
    if not entries:
        return []
    wheels = [e.spec for e in entries if e.sdist is None]
    pins = _pins(profile)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="sandbox-image-resolve-") as tmp:
        work = Path(tmp)
        (work / "requirements.txt").write_text("".join(f"{s}\n" for s in wheels))
        (work / "constraints.txt").write_text("".join(f"{s}\n" for s in profile.pip_constraints))
        for target in targets:
            report = work / f"report-{target.machine}-{target.python}.json"
            proc = run.run(
                pip_argv(target, work / "requirements.txt", work / "constraints.txt", report,
                         work / "target"), check=False, timeout=900,
            )  # fmt: skip
            if proc.returncode != 0:
                errors = [line for line in proc.stderr.decode(errors="replace").splitlines()
                          if "ERROR" in line]  # fmt: skip
                outcomes.append(Outcome(f"pip, {target.label}", False,
                                        "\n".join(errors[-4:]) or "pip failed"))  # fmt: skip
                continue
            installs = json.loads(report.read_text())["install"]
            resolved = {i["metadata"]["name"]: i["metadata"]["version"] for i in installs}
            problems = check_pins(resolved, pins)
            detail = "; ".join(problems) if problems else f"{len(resolved)} packages, wheels only"
            outcomes.append(Outcome(f"pip, {target.label}", not problems, detail, resolved))
        resolved_names = {normalized(n) for o in outcomes for n in o.resolved}
        for entry in (e for e in entries if e.sdist is not None):
            outcomes.append(_check_sdist(entry, resolved_names, work))
    return outcomes


def _check_sdist(entry: packages.Entry, resolved: set[str], work: Path) -> Outcome:
    """An allowed sdist: that version exists, and what it requires is in the set."""
    report = work / f"sdist-{entry.key}.json"
    proc = run.run(
        [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", "install",
         "--dry-run", "--ignore-installed", "--quiet", "--no-deps", "--no-binary", entry.name,
         "--target", str(work / "sdist"), "--report", str(report), entry.spec],
        check=False, timeout=600,
    )  # fmt: skip
    what = f"pip, {entry.spec} from its sdist ({entry.sdist})"
    if proc.returncode != 0:
        return Outcome(what, False, proc.stderr.decode(errors="replace").strip()[-300:])
    install = json.loads(report.read_text())["install"][0]
    requires = [re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0]
                for r in install["metadata"].get("requires_dist") or []
                if "extra ==" not in r]  # fmt: skip
    missing = sorted(r for r in requires if normalized(r) not in resolved)
    if missing:
        return Outcome(what, False, f"requires {', '.join(missing)}, resolved nowhere")
    return Outcome(what, True, f"exists; requires {', '.join(requires) or 'nothing'}")


def npm_argv(node: Path, npm_cli: Path, prefix: Path, specs: Sequence[str]) -> list[str]:
    return [
        str(node), str(npm_cli), "install", "--dry-run", "--engine-strict", "--ignore-scripts",
        "--no-audit", "--no-fund", "--no-update-notifier", "--prefix", str(prefix), *specs,
    ]  # fmt: skip


def resolve_npm(profile: packages.Profile, node: Path, npm_cli: Path) -> list[Outcome]:
    """Every npm pin and its whole dependency tree, under the image's Node.js."""
    specs = list(profile.npm_packages)
    if not specs:
        return []
    version = run.run([str(node), "--version"]).stdout.decode().strip()
    with tempfile.TemporaryDirectory(prefix="sandbox-image-npm-") as tmp:
        prefix = Path(tmp)
        proc = run.run(npm_argv(node, npm_cli, prefix, specs), check=False, timeout=900,
                       env={"HOME": tmp, "npm_config_cache": f"{tmp}/cache"})  # fmt: skip
        what = f"npm, {len(specs)} pins on Node.js {version}"
        if proc.returncode != 0:
            text = (proc.stdout + proc.stderr).decode(errors="replace")
            lines = [ln for ln in text.splitlines() if "ERR" in ln or "EBADENGINE" in ln]
            return [Outcome(what, False, "\n".join(lines[-6:]) or text[-500:])]
        out = proc.stdout.decode(errors="replace")
        m = re.search(r"added (\d+) packages?", out)
        added = m.group(1) if m else "?"
        return [Outcome(what, True, f"{added} packages in the tree, engines satisfied")]


def summary(outcomes: Sequence[Outcome]) -> str:
    return "\n".join(f"{'ok  ' if o.ok else 'FAIL'} {o.what}: {o.detail}" for o in outcomes)


def require_all(outcomes: Sequence[Outcome]) -> None:
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise ImageError(
            f"{len(failed)} resolution(s) failed:\n{summary(failed)}",
            hint="change the pins in package-lists/pip or npm (docs/packages.md: "
            "how to re-pin), then run ./inv packages --resolve again",
        )
