"""The pptx skill's scripts on decks the tests make: outlines in YAML, JSON and Markdown,
text extraction, the thumbnail grid, and every bad-input path."""

from __future__ import annotations

import json
import struct
import subprocess
import zipfile
import zlib
from pathlib import Path

import pytest

from tests.fixtures.skillcheck import (
    PNG_SIGNATURE,
    assert_error,
    last_json,
    ok,
    page_count,
    pdftotext,
    png_size,
    run_script,
)
from tests.integration.conftest import RunSkill

pytestmark = pytest.mark.integration

YAML_OUTLINE = """\
title: Quarterly Review
subtitle: Q3 2026
slides:
  - title: Results
    bullets:
      - Revenue **up** 12%
      - [EMEA, APAC]
      - text: Deep point
        level: 2
    notes: Mention the EMEA deal.
  - title: Chart
    image: red.png
    bullets: [Left of the picture]
  - title: Only a picture
    image: pics/red.png
    notes: |
      First line.
      Second line.
"""

MARKDOWN_OUTLINE = """\
# Quarterly Review

Q3 2026

## Results

- Revenue **up** 12%
  - EMEA
  - APAC
    - Deep point

> Mention the EMEA deal.

---

## Chart

![a red box](red.png)

* Left of the picture

## Only a picture

![](pics/red.png)

Notes: First line.
Second line.
"""

EXPECTED = [
    {"number": 1, "title": "Quarterly Review", "body": [{"text": "Q3 2026", "level": 0}],
     "notes": "", "pictures": 0, "hidden": False},
    {"number": 2, "title": "Results",
     "body": [{"text": "Revenue up 12%", "level": 0}, {"text": "EMEA", "level": 1},
              {"text": "APAC", "level": 1}, {"text": "Deep point", "level": 2}],
     "notes": "Mention the EMEA deal.", "pictures": 0, "hidden": False},
    {"number": 3, "title": "Chart", "body": [{"text": "Left of the picture", "level": 0}],
     "notes": "", "pictures": 1, "hidden": False},
    {"number": 4, "title": "Only a picture", "body": [], "notes": "First line.\nSecond line.",
     "pictures": 1, "hidden": False},
]  # fmt: skip

MARGIN, LABEL = 10, 24  # the grid's cell: thumbnail + margin all round + number band


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour PNG, stdlib only."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))  # fmt: skip


def inspect(python: Path, deck: Path) -> dict[str, object]:
    """Slide size and, per slide, the picture shapes and their sizes, read with python-pptx."""
    code = (
        "import json, sys\nfrom pptx import Presentation\nfrom pptx.enum.shapes import "
        "MSO_SHAPE_TYPE\nprs = Presentation(sys.argv[1])\nprint(json.dumps({'width': "
        "prs.slide_width, 'height': prs.slide_height, 'pictures': [[(s.width, s.height) for s "
        "in slide.shapes if s.shape_type == MSO_SHAPE_TYPE.PICTURE] for slide in prs.slides], "
        "'layouts': [slide.slide_layout.name for slide in prs.slides]}))\n"
    )
    proc = subprocess.run([str(python), "-c", code, str(deck)], capture_output=True, text=True,
                          check=True, timeout=120)  # fmt: skip
    data = json.loads(proc.stdout)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def outlines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pptx-outlines")
    (folder / "pics").mkdir()
    (folder / "red.png").write_bytes(png(200, 100, (220, 20, 20)))
    (folder / "pics" / "red.png").write_bytes(png(200, 100, (220, 20, 20)))
    (folder / "deck.yaml").write_text(YAML_OUTLINE)
    (folder / "deck.md").write_text(MARKDOWN_OUTLINE)
    return folder


@pytest.fixture(scope="module")
def deck(skills_python: Path, outlines: Path) -> Path:
    proc = run_script(
        skills_python, outlines, "pptx", "outline_to_pptx.py", "deck.yaml", "deck.pptx", "--json"
    )
    summary = last_json(proc)
    assert summary["slides"] == 4
    assert summary["titles"] == ["Quarterly Review", "Results", "Chart", "Only a picture"]
    return outlines / "deck.pptx"


def test_yaml_outline_makes_the_deck(run_skill: RunSkill, skills_python: Path, deck: Path) -> None:
    slides = last_json(run_skill("pptx", "extract_text.py", deck, "--json"))["slides"]
    assert slides == EXPECTED
    shapes = inspect(skills_python, deck)
    assert (shapes["width"], shapes["height"]) == (12192000, 6858000)  # 16:9
    assert shapes["layouts"] == ["Title Slide", "Title and Content", "Title and Content",
                                 "Title and Content"]  # fmt: skip
    pictures = shapes["pictures"]
    assert isinstance(pictures, list) and [len(p) for p in pictures] == [0, 0, 1, 1]
    for width, height in (pictures[2][0], pictures[3][0]):
        assert abs(width / height - 2.0) < 0.01  # the 200 x 100 image's shape is kept
    assert pictures[3][0][0] > pictures[2][0][0]  # alone on its slide, it is bigger


def test_markdown_outline_makes_the_same_deck(
    run_skill: RunSkill, skills_python: Path, outlines: Path, tmp_path: Path
) -> None:
    ok(run_skill("pptx", "outline_to_pptx.py", outlines / "deck.md", "md.pptx"))
    slides = last_json(run_skill("pptx", "extract_text.py", "md.pptx", "--json"))["slides"]
    assert slides == EXPECTED


def test_json_outline_and_4_3(run_skill: RunSkill, skills_python: Path, tmp_path: Path) -> None:
    outline = [{"title": "Agenda", "bullets": ["One", {"text": "Two", "bullets": ["Two-a"]}]},
               {"title": "Part two", "layout": "title", "subtitle": "Later"}]  # fmt: skip
    (tmp_path / "deck.json").write_text(json.dumps(outline))
    proc = ok(run_skill("pptx", "outline_to_pptx.py", "deck.json", "d.pptx", "--aspect", "4:3"))
    assert proc.stdout.strip() == "wrote d.pptx: 2 slides, 0 with a picture"
    shapes = inspect(skills_python, tmp_path / "d.pptx")
    assert (shapes["width"], shapes["height"]) == (9144000, 6858000)
    assert shapes["layouts"] == ["Title and Content", "Title Slide"]
    text = ok(run_skill("pptx", "extract_text.py", "d.pptx")).stdout
    assert text == (
        "## Slide 1: Agenda\n- One\n- Two\n  - Two-a\n\n## Slide 2: Part two\n- Later\n"
    )


def test_template_keeps_its_size_and_drops_its_slides(
    run_skill: RunSkill, skills_python: Path, deck: Path, tmp_path: Path
) -> None:
    (tmp_path / "one.yaml").write_text("slides:\n  - title: Only slide\n    bullets: [x]\n")
    ok(run_skill("pptx", "outline_to_pptx.py", "one.yaml", "t.pptx", "--template", deck))
    slides = last_json(run_skill("pptx", "extract_text.py", "t.pptx", "--json"))["slides"]
    assert slides == [{"number": 1, "title": "Only slide", "body": [{"text": "x", "level": 0}],
                       "notes": "", "pictures": 0, "hidden": False}]  # fmt: skip
    assert inspect(skills_python, tmp_path / "t.pptx")["width"] == 12192000


def test_extract_text_as_text(run_skill: RunSkill, deck: Path) -> None:
    text = ok(run_skill("pptx", "extract_text.py", deck)).stdout
    blocks = text.strip().split("\n\n")
    assert blocks[1] == (
        "## Slide 2: Results\n- Revenue up 12%\n  - EMEA\n  - APAC\n    - Deep point\n"
        "Notes: Mention the EMEA deal."
    )
    assert blocks[2] == "## Slide 3: Chart\n- Left of the picture\n[1 picture]"
    assert blocks[3] == (
        "## Slide 4: Only a picture\n[1 picture]\nNotes: First line.\n       Second line."
    )


# --- thumbnails --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grid(skills_python: Path, deck: Path) -> tuple[Path, dict[str, object]]:
    proc = run_script(skills_python, deck.parent, "pptx", "thumbnails.py", deck.name,
                      "grid.png", "--columns", "3", "--width", "240", "--pdf", "deck.pdf",
                      "--json")  # fmt: skip
    return deck.parent / "grid.png", last_json(proc)


def cell_ink(python: Path, image: Path, columns: int, rows: int, thumb: tuple[int, int]) -> object:
    """Per cell: dark pixels in the thumbnail, red pixels in it, dark pixels in the label."""
    code = f"""
import json, sys
from PIL import Image
img = Image.open(sys.argv[1]).convert("RGB")
tw, th, m, lab = {thumb[0]}, {thumb[1]}, {MARGIN}, {LABEL}
out = []
for r in range({rows}):
    for c in range({columns}):
        x, y = c * (tw + 2 * m) + m, r * (th + lab + 2 * m) + m
        px = list(img.crop((x, y, x + tw, y + th)).getdata())
        band = list(img.crop((x, y + th + 2, x + tw, y + th + lab)).getdata())
        out.append([sum(max(p) < 100 for p in px), sum(p[0] > 180 and p[1] < 80 for p in px),
                    sum(max(p) < 100 for p in band)])
print(json.dumps(out))
"""
    proc = subprocess.run([str(python), "-c", code, str(image)], capture_output=True, text=True,
                          check=True, timeout=120)  # fmt: skip
    return json.loads(proc.stdout)


def test_thumbnail_grid_size_and_content(
    skills_python: Path, grid: tuple[Path, dict[str, object]]
) -> None:
    image, summary = grid
    width, height = 240, 135  # 16:9 slides
    assert summary == {"output": "grid.png", "slides": 4, "numbers": [1, 2, 3, 4], "hidden": [],
                       "columns": 3, "rows": 2,
                       "thumb_width": width, "thumb_height": height,
                       "width": 3 * (width + 2 * MARGIN),
                       "height": 2 * (height + LABEL + 2 * MARGIN)}  # fmt: skip
    assert png_size(image) == (3 * (width + 2 * MARGIN), 2 * (height + LABEL + 2 * MARGIN))
    ink = cell_ink(skills_python, image, 3, 2, (width, height))
    assert isinstance(ink, list)
    dark, red, label = zip(*ink, strict=True)
    assert all(n > 20 for n in dark[:4]) and dark[4:] == (0, 0)  # titles drawn; 2 empty cells
    assert red[0] == red[1] == 0 and red[2] > 1000 and red[3] > red[2]  # the pictures
    assert all(n > 5 for n in label[:4]) and label[4:] == (0, 0)  # numbers under slides only


def test_thumbnails_keep_the_pdf(grid: tuple[Path, dict[str, object]]) -> None:
    pdf = grid[0].parent / "deck.pdf"
    assert page_count(pdf) == 4
    text = pdftotext(pdf)
    assert "Quarterly Review" in text and "Deep point" in text


def test_hidden_slides_and_columns_beyond_the_slide_count(
    run_skill: RunSkill, skills_python: Path, tmp_path: Path
) -> None:
    (tmp_path / "three.md").write_text("## One\n- a\n## Two\n- b\n## Three\n- c\n")
    ok(run_skill("pptx", "outline_to_pptx.py", "three.md", "three.pptx"))
    hide = "from pptx import Presentation\np = Presentation('three.pptx')\n"
    hide += "p.slides[1]._element.set('show', '0')\np.save('three.pptx')\n"
    subprocess.run([str(skills_python), "-c", hide], cwd=tmp_path, check=True, timeout=120)
    text = ok(run_skill("pptx", "extract_text.py", "three.pptx")).stdout
    assert "## Slide 2: Two (hidden)\n- b" in text and "## Slide 3: Three\n- c" in text
    proc = run_skill("pptx", "thumbnails.py", "three.pptx", "g.png", "--columns", "10",
                     "--width", "64", "--json")  # fmt: skip
    summary = last_json(proc)
    assert proc.stdout.startswith("wrote g.png: 2 slides in 2 x 1, 168 x 80 px (hidden, not "
                                  "shown: 2)")  # fmt: skip
    assert (summary["numbers"], summary["hidden"]) == ([1, 3], [2])
    assert (summary["columns"], summary["rows"]) == (2, 1)
    assert png_size(tmp_path / "g.png") == (2 * (64 + 2 * MARGIN), 36 + LABEL + 2 * MARGIN)


# --- bad input ---------------------------------------------------------------------------


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    (tmp_path / "red.png").write_bytes(png(4, 4, (255, 0, 0)))
    (tmp_path / "fake.png").write_text("not an image")
    (tmp_path / "text.pptx").write_text("plain text\n")
    (tmp_path / "outline.csv").write_text("a,b\n")
    (tmp_path / "broken.yaml").write_text("slides:\n  - title: [unclosed\n")
    (tmp_path / "notlist.yaml").write_text("slides: just text\n")
    (tmp_path / "badbullets.yaml").write_text("slides:\n  - title: A\n    bullets: 3\n")
    (tmp_path / "badkey.yaml").write_text("slides:\n  - title: A\n    bulets: [x]\n")
    (tmp_path / "badlevel.json").write_text('[{"title": "A", "bullets": [{"text": "x", '
                                            '"level": 12}]}]')  # fmt: skip
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "badjson.json").write_text("[{")
    (tmp_path / "early.md").write_text("stray line\n## Slide\n")
    (tmp_path / "noimage.yaml").write_text(
        "slides:\n  - title: Fine\n    image: red.png\n  - title: Chart\n    image: nothere.png\n"
    )
    (tmp_path / "fakeimage.md").write_text("## Pic\n![](fake.png)\n")
    (tmp_path / "ok.md").write_text("## Fine\n- x\n")
    with zipfile.ZipFile(tmp_path / "word.pptx", "w") as archive:
        archive.writestr("[Content_Types].xml", '<Types><Override ContentType="application/vnd.'
                         'openxmlformats-officedocument.wordprocessingml.document.main+xml"/>'
                         "</Types>")  # fmt: skip
    return tmp_path


@pytest.mark.parametrize(
    ("script", "args", "fragment"),
    [
        ("outline_to_pptx.py", ["absent.yaml", "o.pptx"], "absent.yaml: no such file"),
        ("outline_to_pptx.py", ["outline.csv", "o.pptx"], "unknown outline type .csv"),
        ("outline_to_pptx.py", ["broken.yaml", "o.pptx"], "not valid YAML (line"),
        ("outline_to_pptx.py", ["notlist.yaml", "o.pptx"], "'slides' must be a list"),
        ("outline_to_pptx.py", ["badbullets.yaml", "o.pptx"], "slide 1: 'bullets' must be a list"),
        ("outline_to_pptx.py", ["badkey.yaml", "o.pptx"], "slide 1: unknown key(s): bulets"),
        ("outline_to_pptx.py", ["badlevel.json", "o.pptx"], "bullet level must be 0 to 8"),
        ("outline_to_pptx.py", ["empty.json", "o.pptx"], "has no slides"),
        ("outline_to_pptx.py", ["badjson.json", "o.pptx"], "is not valid JSON"),
        ("outline_to_pptx.py", ["early.md", "o.pptx"], "line 1: text before the first"),
        ("outline_to_pptx.py", ["noimage.yaml", "o.pptx"],
         "slide 2 ('Chart'): image not found: nothere.png"),
        ("outline_to_pptx.py", ["fakeimage.md", "o.pptx"],
         "slide 1 ('Pic'): fake.png is not an image"),
        ("outline_to_pptx.py", ["ok.md", "o.ppt"], "the output must end in .pptx"),
        ("outline_to_pptx.py", ["ok.md", "o.pptx", "--template", "text.pptx"], "not a .pptx"),
        ("outline_to_pptx.py", ["ok.md", "o.pptx", "--template", "word.pptx", "--aspect", "4:3"],
         "--aspect is for the built-in template"),
        ("extract_text.py", ["absent.pptx"], "absent.pptx: no such file"),
        ("extract_text.py", ["text.pptx"], "text.pptx: not a .pptx file"),
        ("extract_text.py", ["word.pptx"], "no presentation part"),
        ("thumbnails.py", ["word.pptx", "o.png", "--columns", "0"], "--columns must be from 1"),
        ("thumbnails.py", ["word.pptx", "o.png", "--columns", "two"], "--columns must be a whole"),
        ("thumbnails.py", ["word.pptx", "o.png", "--width", "8"], "--width must be from 32"),
        ("thumbnails.py", ["absent.pptx", "o.png"], "absent.pptx: no such file"),
        ("thumbnails.py", ["word.pptx", "o.png"], "no presentation part"),
        ("thumbnails.py", ["text.pptx", "o.png"], "not a .pptx file"),
    ],
)  # fmt: skip
def test_bad_input_is_one_error_line(
    run_skill: RunSkill, inputs: Path, script: str, args: list[str], fragment: str
) -> None:
    assert_error(run_skill("pptx", script, *args), fragment)
    assert not (inputs / "o.pptx").exists() and not (inputs / "o.png").exists()


def test_thumbnails_output_must_be_png(run_skill: RunSkill, deck: Path) -> None:
    assert_error(run_skill("pptx", "thumbnails.py", deck, "grid.jpg"), "must end in .png")


@pytest.mark.parametrize("script", ["outline_to_pptx.py", "extract_text.py", "thumbnails.py"])
def test_help(run_skill: RunSkill, script: str) -> None:
    assert ok(run_skill("pptx", script, "--help")).stdout.startswith("usage: ")
