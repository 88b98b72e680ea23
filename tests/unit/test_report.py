from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from image.build import output
from image.errors import ImageError
from image.release import report
from image.source.checksums import parse_sha256sums
from tests.fixtures.buildoutput import TIMINGS, VERIFY, make_output


def test_steps_keep_the_order_the_build_ran_them() -> None:
    ran = {"fetch": 0.5, "boot": 1.5, "verify": 2.0, "alpha": 3.0, "zeta": 1.0}
    info = output.BuildInfo(
        {"steps": output.steps_record(ran), "timings": dict(sorted(ran.items()))}
    )
    assert info.steps == list(ran.items())
    # An output older than "steps": the stored order of timings is what there is.
    assert output.BuildInfo({"timings": ran}).steps == list(ran.items())


def test_timeline_geometry() -> None:
    chart = report.timeline([("a", 10.0), ("b", 30.0)], width=500, label_width=100, row=20)
    # 500 - 100 - 70 = 330 px for 40 s.
    assert [(b.step, b.start, b.x, b.y, b.width) for b in chart.bars] == [
        ("a", 0.0, 100.0, 4, 82.5), ("b", 10.0, 182.5, 24, 247.5),
    ]  # fmt: skip
    assert chart.total == 40.0
    assert chart.height == 2 * 20 + 28
    # At most 8 intervals of a round step: 5 s here.
    assert chart.ticks == [(round(100 + t * 8.25, 1), float(t)) for t in range(0, 41, 5)]


def test_timeline_of_nothing() -> None:
    chart = report.timeline([])
    assert (chart.bars, chart.total) == ([], 0.0)
    tiny = report.timeline([("disk", 0.0)])
    assert tiny.bars[0].width == 1.0  # every step stays visible


def test_render_has_one_rect_per_step_and_the_facts(tmp_path: Path) -> None:
    out = make_output(tmp_path / "out", pip=[("pypdf", "4.0.1")])
    html = (out / "report.html").read_text()
    assert len(re.findall(r'<rect class="step"', html)) == len(TIMINGS)
    shown = re.findall(r'data-step="([^"]+)"', html)
    assert shown == list(TIMINGS)  # the order the build ran them
    assert "ab" * 32 in html  # base image sha256
    assert "cd" * 32 in html  # seed
    assert "reused: provisioned by build <code>20261129T000000-c0ffee</code>" in html
    assert "ef" * 32 in html  # the layer's key
    assert hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest() in html
    assert "239 (expected 187..313)" in html
    assert re.search(r"<td>2</td><td>1</td><td>0</td>", html)  # dpkg, pip, npm counts
    assert 'class="ok">passed' in html
    # What the build VM reached through the egress proxy, and what it was refused.
    assert "allow 18 · deny 1" in html
    assert "<code>deb.debian.org:80</code>" in html
    assert 'class="fail"><code>evil.test:443 (not-allowed)</code>' in html


def test_render_is_self_contained(tmp_path: Path) -> None:
    html = (make_output(tmp_path / "out") / "report.html").read_text()
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "url(" not in html and "@import" not in html and "<script" not in html
    assert "<link" not in html


def test_render_escapes_text(tmp_path: Path) -> None:
    verify = {**VERIFY, "jq": {"ok": False, "output": "<script>alert(1)</script>"}}
    html = (make_output(tmp_path / "out", verify=verify) / "report.html").read_text()
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'class="fail">FAILED</span>' in html


def test_report_is_listed_and_reproducible(tmp_path: Path) -> None:
    """./inv report on a build output gives the bytes its SHA256SUMS lists."""
    out = make_output(tmp_path / "out")
    listed = parse_sha256sums((out / "SHA256SUMS").read_text())["report.html"]
    assert hashlib.sha256((out / "report.html").read_bytes()).hexdigest() == listed
    assert report.write_report(out) == out / "report.html"
    assert hashlib.sha256((out / "report.html").read_bytes()).hexdigest() == listed
    assert "report.html" not in report.render_output(out).split("<h2>Outputs</h2>")[1]


def test_report_refuses_to_break_sha256sums(tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    sums = (out / "SHA256SUMS").read_text()
    listed = parse_sha256sums(sums)["report.html"]
    (out / "SHA256SUMS").write_text(sums.replace(listed, "0" * 64))
    before = (out / "report.html").read_bytes()
    with pytest.raises(ImageError, match=r"lists a different report\.html"):
        report.write_report(out)
    assert (out / "report.html").read_bytes() == before
    elsewhere = report.write_report(out, tmp_path / "new" / "r.html")
    assert elsewhere.read_bytes() == before
    assert [p.name for p in elsewhere.parent.iterdir()] == ["r.html"]  # no temp file left


def test_report_of_a_non_output(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"build-info\.json is missing"):
        report.write_report(tmp_path)
    assert list(tmp_path.iterdir()) == []
