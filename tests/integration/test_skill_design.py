"""The design skill's scripts on layouts the tests write: HTML/CSS to PDF and PNG at exact
page sizes and DPIs with the installed fonts, SVG to PNG and PDF, the font list, and
every bad-input path."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.skillcheck import assert_error, last_json, ok, pdftotext, png_size, run_script
from tests.integration.conftest import RunSkill

pytestmark = pytest.mark.integration

CARD = """<!doctype html>
<html><head><meta charset="utf-8"><style>
@page { size: A5; margin: 2cm }
body { margin: 0; font-family: "Liberation Sans"; font-size: 28px }
h1 { font-family: "DejaVu Serif"; margin: 0; font-size: 60px }
.band { position: absolute; left: 0; top: 400px; width: 1200px; height: 230px;
        background: #ff0000 }
</style></head><body>
<h1>Quarterly Harvest</h1>
<p>Orchard yields rose by twelve percent.</p>
<div class="band"></div>
</body></html>
"""

REPORT = """<!doctype html>
<html><head><style>
body { font-family: "DejaVu Sans"; }
.next { break-before: page; font-family: "Liberation Serif"; }
</style></head><body>
<p>First page about granite.</p>
<p class="next">Second page about basalt.</p>
<img src="http://127.0.0.1:9/remote.png">
</body></html>
"""

SVG = """<svg xmlns="http://www.w3.org/2000/svg" width="100" height="50" viewBox="0 0 100 50">
<rect x="0" y="0" width="50" height="50" fill="#ff0000"/>
<circle cx="75" cy="25" r="20" fill="#0000ff"/>
</svg>
"""


def pixels(python: Path, path: Path, points: list[tuple[int, int]]) -> list[tuple[int, ...]]:
    """RGBA of the PNG at each (x, y), read with Pillow in the skills' Python."""
    code = (
        "import json, sys; from PIL import Image\n"
        "im = Image.open(sys.argv[1]).convert('RGBA')\n"
        "print(json.dumps([im.getpixel(tuple(p)) for p in json.loads(sys.argv[2])]))\n"
    )
    proc = subprocess.run(
        [str(python), "-c", code, str(path), json.dumps(points)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [tuple(p) for p in json.loads(proc.stdout)]


def pdfinfo(path: Path, *args: str) -> str:
    return subprocess.run(
        ["pdfinfo", *args, str(path)], capture_output=True, text=True, check=True
    ).stdout


def page_size(path: Path, page: int = 1) -> str:
    info = pdfinfo(path, "-f", str(page), "-l", str(page))
    match = re.search(rf"Page\s+{page} size:\s+(.+?) pts", info)
    assert match, info
    return match.group(1)


def pdffonts(path: Path) -> list[str]:
    out = subprocess.run(["pdffonts", str(path)], capture_output=True, text=True, check=True)
    return [line.split()[0].split("+", 1)[-1] for line in out.stdout.splitlines()[2:] if line]


@pytest.fixture(scope="module")
def card(skills_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """card.html rendered once: 1200x630px, no margin, PDF and PNG at 48 dpi."""
    folder = tmp_path_factory.mktemp("design")
    (folder / "card.html").write_text(CARD)
    proc = run_script(
        skills_python,
        folder,
        "design",
        "render_html.py",
        "card.html",
        "--size",
        "1200x630px",
        "--margin",
        "0",
        "--pdf",
        "card.pdf",
        "--png",
        "card.png",
        "--dpi",
        "48",
        "--require-font",
        "Liberation Sans",
        "--require-font",
        "dejavu serif",
        "--json",
    )
    return {"dir": folder, "proc": proc, "report": last_json(proc)}


def test_html_to_pdf_at_a_pixel_size(card: dict[str, Any]) -> None:
    pdf = card["dir"] / "card.pdf"
    assert page_size(pdf) == "900 x 472.5"  # 1200x630 CSS px at 0.75 pt each
    assert "Pages:           1" in pdfinfo(pdf)
    text = pdftotext(pdf)
    assert "Quarterly Harvest" in text and "Orchard yields rose by twelve percent." in text
    fonts = pdffonts(pdf)
    assert any(f.startswith("DejaVu-Serif") for f in fonts), fonts
    assert any(f.startswith("Liberation-Sans") for f in fonts), fonts
    report = card["report"]
    assert report["fonts"] == ["DejaVu Serif", "Liberation Sans"]
    assert report["page_size_pt"] == [900.0, 472.5] and report["pages"] == 1
    assert "fonts used: DejaVu Serif, Liberation Sans" in card["proc"].stdout
    assert card["proc"].stderr == ""


def test_html_png_is_page_inches_times_dpi(card: dict[str, Any], skills_python: Path) -> None:
    png = card["dir"] / "card.png"
    assert png_size(png) == (600, 315)  # 12.5 x 6.5625 in at 48 dpi
    assert card["report"]["png"] == [{"path": "card.png", "page": 1, "width": 600, "height": 315}]
    assert "wrote card.png: 600 x 315 px at 48 dpi" in card["proc"].stdout
    band, top = pixels(skills_python, png, [(300, 280), (590, 5)])
    assert band == (255, 0, 0, 255)  # the red band starts at 400 CSS px = 200 pixels
    assert top == (255, 255, 255, 255)


def test_html_pages_at_a4_and_page_selection(run_skill: RunSkill, tmp_path: Path) -> None:
    (tmp_path / "report.html").write_text(REPORT)
    proc = run_skill(
        "design",
        "render_html.py",
        "report.html",
        "--size",
        "a4",
        "--pdf",
        "report.pdf",
        "--png",
        "page.png",
        "--dpi",
        "72",
        "--json",
    )
    report = last_json(proc)
    pdf = tmp_path / "report.pdf"
    assert "Pages:           2" in pdfinfo(pdf)
    assert page_size(pdf, 1) == "595.276 x 841.89" == page_size(pdf, 2)
    assert "First page about granite." in pdftotext(pdf, 1)
    assert "Second page about basalt." in pdftotext(pdf, 2)
    assert "basalt" not in pdftotext(pdf, 1)
    assert [p["path"] for p in report["png"]] == ["page-1.png", "page-2.png"]
    assert png_size(tmp_path / "page-1.png") == png_size(tmp_path / "page-2.png") == (595, 842)
    assert not (tmp_path / "page.png").exists()
    assert report["fonts"] == ["DejaVu Sans", "Liberation Serif"]
    # no network: the remote image is refused, a warning says so, the rest renders
    warnings = proc.stderr.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: "), proc.stderr
    assert "http://127.0.0.1:9/remote.png" in warnings[0]
    ok(
        run_skill(
            "design",
            "render_html.py",
            "report.html",
            "--size",
            "A4",
            "--landscape",
            "--png",
            "second.png",
            "--page",
            "2",
            "--dpi",
            "36",
        )
    )
    assert png_size(tmp_path / "second.png") == (421, 298)  # 297x210 mm at 36 dpi
    assert not (tmp_path / "second-2.png").exists()


def test_html_metric_size_and_the_layouts_own_page(run_skill: RunSkill, tmp_path: Path) -> None:
    (tmp_path / "card.html").write_text(CARD)
    ok(
        run_skill(
            "design",
            "render_html.py",
            "card.html",
            "--size",
            "100x50mm",
            "--pdf",
            "a.pdf",
            "--png",
            "a.png",
            "--dpi",
            "254",
            "--page",
            "1",
        )
    )
    assert page_size(tmp_path / "a.pdf") == "283.465 x 141.732"
    assert png_size(tmp_path / "a.png") == (1000, 500)  # 3.937 x 1.969 in at 254 dpi
    ok(run_skill("design", "render_html.py", "card.html", "--pdf", "own.pdf"))
    assert page_size(tmp_path / "own.pdf") == "419.528 x 595.276"  # the layout's @page: A5


def test_required_font_missing_or_unused_fails(run_skill: RunSkill, tmp_path: Path) -> None:
    (tmp_path / "card.html").write_text(CARD)
    proc = run_skill(
        "design",
        "render_html.py",
        "card.html",
        "--pdf",
        "x.pdf",
        "--require-font",
        "Liberaton Sans",
    )
    assert_error(
        proc, "font family 'Liberaton Sans' is not installed; did you mean Liberation Sans"
    )
    proc = run_skill(
        "design",
        "render_html.py",
        "card.html",
        "--pdf",
        "x.pdf",
        "--require-font",
        "Liberation Mono",
    )
    assert_error(proc, "'Liberation Mono' is installed but the rendered document does not use it")
    assert "fonts used: DejaVu Serif, Liberation Sans" in proc.stderr
    assert not (tmp_path / "x.pdf").exists()


def test_misspelt_font_falls_back_and_the_report_shows_it(
    run_skill: RunSkill, tmp_path: Path
) -> None:
    (tmp_path / "typo.html").write_text(CARD.replace('"Liberation Sans"', '"Liberaton Sans"'))
    report = last_json(
        run_skill("design", "render_html.py", "typo.html", "--pdf", "t.pdf", "--json")
    )
    assert "Liberation Sans" not in report["fonts"]
    assert not any(f.startswith("Liberation") for f in pdffonts(tmp_path / "t.pdf"))


def test_svg_to_png_at_dpi_and_width(
    run_skill: RunSkill, tmp_path: Path, skills_python: Path
) -> None:
    (tmp_path / "logo.svg").write_text(SVG)
    report = last_json(
        run_skill(
            "design", "render_svg.py", "logo.svg", "--png", "logo.png", "--dpi", "192", "--json"
        )
    )
    assert report["png"] == {"path": "logo.png", "width": 200, "height": 100}
    png = tmp_path / "logo.png"
    assert png_size(png) == (200, 100)
    red, blue, corner = pixels(skills_python, png, [(40, 50), (150, 50), (199, 0)])
    assert red == (255, 0, 0, 255)
    assert blue == (0, 0, 255, 255)
    assert corner[3] == 0  # transparent outside the drawing
    proc = ok(
        run_skill(
            "design",
            "render_svg.py",
            "logo.svg",
            "--png",
            "wide.png",
            "--width",
            "300",
            "--background",
            "white",
        )
    )
    assert proc.stdout.strip() == "wrote wide.png: 300 x 150 px"
    assert png_size(tmp_path / "wide.png") == (300, 150)
    assert pixels(skills_python, tmp_path / "wide.png", [(299, 0)]) == [(255, 255, 255, 255)]
    ok(run_skill("design", "render_svg.py", "logo.svg", "--png", "plain.png"))
    assert png_size(tmp_path / "plain.png") == (100, 50)


def test_svg_in_millimetres_and_to_pdf(run_skill: RunSkill, tmp_path: Path) -> None:
    metric = SVG.replace('width="100" height="50"', 'width="50mm" height="25mm"')
    (tmp_path / "metric.svg").write_text(metric)
    ok(run_skill("design", "render_svg.py", "metric.svg", "--png", "m.png", "--dpi", "254"))
    assert png_size(tmp_path / "m.png") == (500, 250)  # 50 mm = 1.9685 in at 254 dpi
    (tmp_path / "logo.svg").write_text(SVG)
    report = last_json(
        run_skill("design", "render_svg.py", "logo.svg", "--pdf", "logo.pdf", "--json")
    )
    assert report["pdf"] == {"path": "logo.pdf", "width_pt": 75.0, "height_pt": 37.5}
    assert page_size(tmp_path / "logo.pdf") == "75 x 37.5"


def test_fonts_lists_and_checks_families(run_skill: RunSkill) -> None:
    listing = last_json(run_skill("design", "fonts.py", "--family", "liberation", "--json"))
    names = [f["family"] for f in listing["families"]]
    assert {"Liberation Sans", "Liberation Serif", "Liberation Mono"} <= set(names)
    assert all("liberation" in n.lower() for n in names)
    sans = next(f for f in listing["families"] if f["family"] == "Liberation Sans")
    assert {"Regular", "Bold", "Italic", "Bold Italic"} <= set(sans["styles"])
    assert all(path.startswith("/") for path in sans["files"])
    text = ok(run_skill("design", "fonts.py", "--family", "DejaVu Serif")).stdout
    assert text.splitlines()[0].startswith("DejaVu Serif: ")
    checked = ok(
        run_skill("design", "fonts.py", "--check", "dejavu  sans", "--check", "DejaVuSerif")
    )
    assert [line.split(":")[0] for line in checked.stdout.splitlines()] == [
        "DejaVu Sans",
        "DejaVu Serif",
    ]
    assert_error(
        run_skill("design", "fonts.py", "--check", "No Such Typeface"),
        "font family 'No Such Typeface' is not installed",
    )


BAD_INPUTS = [
    ("render_html.py", ["missing.html", "--pdf", "o.pdf"], "no such file"),
    ("render_html.py", ["notes.txt", "--pdf", "o.pdf"], "expected an .html file"),
    ("render_html.py", ["card.html"], "nothing to write"),
    ("render_html.py", ["card.html", "--pdf", "o.png"], "must end in .pdf"),
    ("render_html.py", ["card.html", "--pdf", "nodir/o.pdf"], "no such directory"),
    ("render_html.py", ["card.html", "--pdf", "o.pdf", "--size", "12x"], "bad --size '12x'"),
    ("render_html.py", ["card.html", "--pdf", "o.pdf", "--size", "0x5mm"], "must be > 0"),
    ("render_html.py", ["card.html", "--pdf", "o.pdf", "--size", "A9"], "bad --size 'A9'"),
    ("render_html.py", ["card.html", "--png", "o.png", "--dpi", "0"], "bad --dpi 0"),
    ("render_html.py", ["card.html", "--pdf", "o.pdf", "--margin", "wide"], "bad --margin"),
    (
        "render_html.py",
        ["card.html", "--png", "o.png", "--page", "3"],
        "--page 3 is out of range: the document has 1 page(s)",
    ),
    ("render_html.py", ["card.html", "--pdf", "o.pdf", "--page", "1"], "--page selects"),
    (
        "render_html.py",
        ["card.html", "--pdf", "o.pdf", "--stylesheet", "none.css"],
        "no such stylesheet",
    ),
    (
        "render_html.py",
        ["card.html", "--pdf", "o.pdf", "--require-font", "Zapfino Pro"],
        "'Zapfino Pro' is not installed",
    ),
    ("render_svg.py", ["missing.svg", "--png", "o.png"], "no such file"),
    ("render_svg.py", ["garbage.svg", "--png", "o.png"], "not an SVG file (ParseError"),
    ("render_svg.py", ["page.xml", "--png", "o.png"], "not an SVG file (the root element"),
    ("render_svg.py", ["logo.svg"], "nothing to write"),
    ("render_svg.py", ["logo.svg", "--png", "o.jpg"], "must end in .png"),
    ("render_svg.py", ["logo.svg", "--png", "o.png", "--dpi", "-3"], "bad --dpi -3"),
    ("render_svg.py", ["logo.svg", "--png", "o.png", "--width", "0"], "bad --width 0"),
    (
        "render_svg.py",
        ["logo.svg", "--png", "o.png", "--background", "notacolour"],
        "rsvg-convert could not render logo.svg",
    ),
]


@pytest.mark.parametrize(("script", "args", "fragment"), BAD_INPUTS)
def test_bad_input_is_one_error_line(
    run_skill: RunSkill, tmp_path: Path, script: str, args: list[str], fragment: str
) -> None:
    (tmp_path / "card.html").write_text(CARD)
    (tmp_path / "notes.txt").write_text("plain text\n")
    (tmp_path / "logo.svg").write_text(SVG)
    (tmp_path / "garbage.svg").write_text("this is not xml\n")
    (tmp_path / "page.xml").write_text("<html><body>hello</body></html>\n")
    assert_error(run_skill("design", script, *args), fragment)
    assert not (tmp_path / "o.pdf").exists() and not (tmp_path / "o.png").exists()
