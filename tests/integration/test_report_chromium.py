"""The report as a browser sees it: headless Chromium renders it, and the chart is in the DOM."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from image import run
from image.release import report
from tests.fixtures.buildoutput import TIMINGS, make_output
from tests.hosttools import need


def rendered_dom(page: Path) -> str:
    """Chromium's DOM after parsing and layout (--dump-dom), with a throwaway profile."""
    need("chromium")
    with tempfile.TemporaryDirectory(prefix="sandbox-image-chromium-") as profile:
        proc = run.run(
            [
                "chromium", "--headless", "--no-sandbox", "--disable-gpu",
                "--no-first-run", f"--user-data-dir={profile}", "--dump-dom",
                page.resolve().as_uri(),
            ],
            env={"HOME": profile},
            timeout=120,
        )  # fmt: skip
    return proc.stdout.decode()


def test_chromium_renders_the_timeline(tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    dom = rendered_dom(out / report.REPORT)
    svg = re.search(r'<svg id="timeline".*?</svg>', dom, re.S)
    assert svg is not None, dom[:2000]
    rects = re.findall(r'<rect class="step"[^>]*>', svg.group(0))
    assert len(rects) == len(TIMINGS)
    steps = re.findall(r'<g class="bar" data-step="([^"]+)"', svg.group(0))
    assert steps == list(TIMINGS)  # the order the build ran them
    assert "<h2>Verification</h2>" in dom


def test_chromium_sees_escaped_text_as_text(tmp_path: Path) -> None:
    verify = {"jq": {"ok": False, "output": "<img src=x onerror=alert(1)>"}}
    dom = rendered_dom(make_output(tmp_path / "out", verify=verify) / report.REPORT)
    assert "<img" not in dom
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom
