"""report: one self-contained HTML page per build output.

Inputs and their hashes, the verification results, package counts, the
outputs, and a timeline of the build's steps as inline SVG. No external URL,
no script: it opens from a CI artifact, a mail attachment or a file:// path.

Rendering depends only on the output's files (no clock), so ``./inv report``
on a build output reproduces the report.html that build-image wrote and listed
in SHA256SUMS.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from image import config
from image.build import output
from image.errors import ImageError
from image.files import atomic_write_bytes, format_size
from image.source.checksums import parse_sha256sums

TEMPLATES = Path(__file__).resolve().parent / "templates"
REPORT = output.REPORT


@dataclass(frozen=True)
class Bar:
    step: str
    seconds: float
    start: float
    x: float
    y: float
    width: float


@dataclass(frozen=True)
class Timeline:
    bars: list[Bar]
    total: float
    width: int
    height: int
    label_width: int
    row: int
    ticks: list[tuple[float, float]]  # (x, seconds)


def timeline(
    steps: list[tuple[str, float]], *, width: int = 760, label_width: int = 110, row: int = 24
) -> Timeline:
    """Steps one after another (a Gantt row each), scaled to the chart width."""
    total = sum(s for _, s in steps)
    plot = width - label_width - 70  # room for the seconds after the longest bar
    scale = plot / total if total > 0 else 0.0
    bars, start = [], 0.0
    for i, (name, seconds) in enumerate(steps):
        bars.append(Bar(name, seconds, start, round(label_width + start * scale, 1),
                        i * row + 4, max(round(seconds * scale, 1), 1.0)))  # fmt: skip
        start += seconds
    step = _tick_step(total)
    ticks = [
        (round(label_width + t * scale, 1), t)
        for t in (i * step for i in range(int(total // step) + 1 if step else 0))
    ]
    return Timeline(bars, round(total, 2), width, len(steps) * row + 28, label_width, row, ticks)


def _tick_step(total: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600):
        if total / step <= 8:
            return float(step)
    return float(int(total / 8) or 1)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["size"] = lambda n: "?" if n is None else format_size(n)
    env.filters["config_size"] = lambda n: config.format_size(int(n)) if isinstance(n, int) else n
    return env


def _checks(verify: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The profile's checks and the sandbox self-test, flattened to rows."""
    rows: list[dict[str, Any]] = []
    for name, result in sorted(verify.items()):
        if not isinstance(result, dict):
            continue
        if name == "installed_count":
            low, high = (result.get("expected") or [None, None])[:2]
            count = result.get("count")
            ok = isinstance(count, int) and low is not None and low <= count <= (high or count)
            rows.append({"name": "installed packages", "ok": ok,
                         "detail": f"{count} (expected {low}..{high})"})  # fmt: skip
        elif name == "sandbox_self_test":
            for check, got in sorted((result.get("checks") or {}).items()):
                rows.append({"name": f"sandbox: {check}", "ok": bool(got.get("ok")),
                             "detail": str(got.get("got", ""))})  # fmt: skip
            rows.append({"name": "sandbox self-test", "ok": bool(result.get("ok")),
                         "detail": str(result.get("arch", ""))})  # fmt: skip
        else:
            rows.append({"name": name, "ok": bool(result.get("ok")),
                         "detail": str(result.get("output", ""))})  # fmt: skip
    return rows


def render_html(
    info: Mapping[str, Any], manifest: Mapping[str, Any] | None, sums: Mapping[str, str],
    sizes: Mapping[str, int | None],
) -> str:  # fmt: skip
    """The page, from build-info.json, manifest.json, SHA256SUMS and the files' sizes."""
    info = json.loads(json.dumps(info, sort_keys=True, default=str))
    counts = dict((manifest or {}).get("counts") or {})
    outputs = [
        {"name": n, "sha256": h, "bytes": sizes.get(n)} for n, h in sorted(sums.items())
        if n != REPORT  # a report does not list itself: re-rendering gives the same bytes
    ]  # fmt: skip
    typed = output.BuildInfo(info)
    steps = typed.steps
    checks = _checks(info.get("verify") or {})
    cfg = info.get("config") or {}
    name = typed.name
    return _environment().get_template("report.html.j2").render(
        name=name, info=info, cfg=cfg, base=info.get("base") or {}, outputs=outputs,
        checks=checks, all_ok=all(c["ok"] for c in checks), counts=counts,
        distro=(manifest or {}).get("distro", "?"), chart=timeline(steps),
    )  # fmt: skip


def render_output(out: Path, info: Mapping[str, Any] | None = None) -> str:
    """The report of the build output in ``out`` (``info``: build-info.json not yet written)."""
    built = output.BuildOutput.read(out, info)
    sums = built.sums()
    sizes = {n: (out / n).stat().st_size if (out / n).is_file() else None for n in sums}
    return render_html(built.info.raw, built.manifest, sums, sizes)


def write_report(out: Path, dest: Path | None = None) -> Path:
    """Write the report atomically (default: ``out/report.html``).

    Never silently breaks the output's SHA256SUMS: if it lists report.html and
    the page would come out different (another toolkit version), write elsewhere.
    """
    html = render_output(out).encode()
    dest = dest or out / REPORT
    if dest.resolve() == (out / REPORT).resolve() and (out / "SHA256SUMS").is_file():
        listed = parse_sha256sums((out / "SHA256SUMS").read_text()).get(REPORT)
        if listed and listed != hashlib.sha256(html).hexdigest():
            raise ImageError(
                f"{out}/SHA256SUMS lists a different report.html than this toolkit renders",
                hint="keep the build's own report; write a new one elsewhere with --out PATH",
            )
    atomic_write_bytes(dest, html)
    return dest
