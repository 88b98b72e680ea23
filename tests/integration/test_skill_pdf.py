"""The pdf skill's scripts on PDFs made here: text, tables, pages, forms, PNGs and OCR."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.skillcheck import (
    SKILLS,
    error_line,
    last_json,
    page_count,
    pdftotext,
    png_size,
    quiet,
)
from tests.integration.conftest import RunSkill

SKILL = SKILLS / "pdf"
SCRIPTS = sorted(p.name for p in (SKILL / "scripts").glob("*.py") if p.stat().st_mode & 0o111)

# Run by the skills' Python (reportlab, pypdf): the inputs every test copies.
MAKE_INPUTS = r"""
from reportlab.lib import colors
from reportlab.lib.pagesizes import letter
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.pdfgen import canvas
from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Table, TableStyle
from pypdf import PdfReader, PdfWriter

style = getSampleStyleSheet()
grid = TableStyle([("GRID", (0, 0), (-1, -1), 0.5, colors.black)])
prices = Table([["Item", "Qty", "Price"], ["Apple", "3", "1.50"], ["Pear", "7", "0.25"]])
prices.setStyle(grid)
codes = Table([["Code", "Name"], ["X1", "Widget"]])
codes.setStyle(grid)
SimpleDocTemplate("doc.pdf", pagesize=letter).build([
    Paragraph("Alpha page one", style["Title"]), PageBreak(),
    Paragraph("Bravo second page", style["Normal"]), prices,
    Paragraph("between the tables", style["Normal"]), codes, PageBreak(),
    Paragraph("Charlie third page", style["Normal"]),
])

c = canvas.Canvas("form.pdf", pagesize=letter)
c.drawString(72, 720, "Application form")
form = c.acroForm
form.textfield(name="name", x=72, y=650, width=200, height=20)
form.textfield(name="city", value="Paris", x=72, y=600, width=200, height=20)
form.checkbox(name="agree", x=72, y=550, buttonStyle="check", checked=False)
form.choice(name="color", value="Red", options=["Red", "Green", "Blue"], x=72, y=500,
            width=100, height=20)
form.radio(name="size", value="S", selected=True, x=72, y=450)
form.radio(name="size", value="L", selected=False, x=120, y=450)
c.showPage()
c.drawString(72, 720, "Page two of the form")
c.acroForm.textfield(name="notes", x=72, y=650, width=300, height=20)
c.save()

c = canvas.Canvas("clean.pdf", pagesize=letter)
c.setFont("Helvetica-Bold", 28)
c.drawString(72, 650, "INVOICE NUMBER 4711")
c.drawString(72, 560, "Quantum Giraffe Bakery")
c.showPage()
c.setFont("Helvetica-Bold", 28)
c.drawString(72, 650, "Second scanned page")
c.save()

writer = PdfWriter(clone_from=PdfReader("doc.pdf"))
writer.encrypt(user_password="secret", owner_password="owner")
writer.write("locked.pdf")

# A form whose fields are kids of a parent field "person": full names person.first, ...
import pikepdf
from pikepdf import Array, Dictionary, Name

pdf = pikepdf.Pdf.new()
pdf.add_blank_page(page_size=(612, 792))
person = pdf.make_indirect(Dictionary(T="person", FT=Name.Tx, Kids=Array()))
for i, part in enumerate(["first", "last"]):
    y = 700 - 40 * i
    person.Kids.append(pdf.make_indirect(Dictionary(
        Type=Name.Annot, Subtype=Name.Widget, T=part, Parent=person, DA="/Helv 12 Tf 0 g",
        Rect=Array([72, y, 272, y + 20]))))
pdf.pages[0].Annots = Array(list(person.Kids))
helv = Dictionary(Type=Name.Font, Subtype=Name.Type1, BaseFont=Name.Helvetica)
pdf.Root.AcroForm = Dictionary(Fields=Array([person]), DA="/Helv 12 Tf 0 g",
                               DR=Dictionary(Font=Dictionary(Helv=helv)))
pdf.save("nested.pdf")
"""

# A scan: clean.pdf drawn to grayscale PNGs and wrapped back into a PDF, no text layer.
MAKE_SCAN = r"""
import glob, img2pdf
with open("scan.pdf", "wb") as out:
    out.write(img2pdf.convert(sorted(glob.glob("scanimg-*.png"))))
"""

READ_FORM = r"""
import json, sys
from pypdf import PdfReader
reader = PdfReader(sys.argv[1])
values = {name: str(field.get("/V")) for name, field in reader.get_fields().items()}
states = [str(a.get_object().get("/AS")) for a in reader.pages[0]["/Annots"]
          if "/AS" in a.get_object()]
print(json.dumps({"values": values, "states": states}))
"""


@pytest.fixture(scope="module")
def inputs(skills_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pdf-inputs")
    subprocess.run([str(skills_python), "-c", MAKE_INPUTS], cwd=folder, check=True)
    subprocess.run(
        ["pdftoppm", "-r", "100", "-gray", "-png", "clean.pdf", "scanimg"], cwd=folder, check=True
    )
    subprocess.run([str(skills_python), "-c", MAKE_SCAN], cwd=folder, check=True)
    (folder / "notpdf.pdf").write_text("just some text, not a PDF\n")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Cat")
    return folder


@pytest.fixture
def work(inputs: Path, tmp_path: Path) -> Path:
    """The test's folder (run_skill's cwd) with a copy of every input."""
    for path in inputs.iterdir():
        if path.suffix == ".pdf":
            shutil.copy(path, tmp_path / path.name)
    return tmp_path


def rotations(path: Path) -> list[int]:
    n = page_count(path)
    out = subprocess.run(
        ["pdfinfo", "-f", "1", "-l", str(n), str(path)], capture_output=True, text=True, check=True
    ).stdout
    return [int(r) for r in re.findall(r"^Page\s+\d+ rot:\s+(\d+)", out, re.M)]


# --- SKILL.md ---------------------------------------------------------------------


def test_skill_md_front_matter_and_commands() -> None:
    text = (SKILL / "SKILL.md").read_text()
    front = re.match(r"---\nname: pdf\ndescription: (.+)\n---\n", text)
    assert front and len(front.group(1)) > 40
    named = set(re.findall(r"/opt/skills/pdf/scripts/([\w-]+\.py)", text))
    assert named == set(SCRIPTS)  # every command exists, every script is documented


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_help(run_skill: RunSkill, script: str) -> None:
    path = SKILL / "scripts" / script
    assert path.read_text().startswith("#!/usr/bin/env python3\n")
    assert "usage:" in quiet(run_skill("pdf", script, "--help"))


# --- text -------------------------------------------------------------------------


def test_text_marks_every_page(run_skill: RunSkill, work: Path) -> None:
    out = quiet(run_skill("pdf", "extract_text.py", "doc.pdf"))
    one, two, three = (out.index(f"=== page {n} of 3 ===") for n in (1, 2, 3))
    assert one < out.index("Alpha page one") < two < out.index("Bravo second page") < three
    assert three < out.index("Charlie third page")
    assert "note:" not in out


def test_text_pages_and_json(run_skill: RunSkill, work: Path) -> None:
    result = last_json(
        run_skill("pdf", "extract_text.py", "doc.pdf", "--pages", "3,2", "--json"), quiet=True
    )
    assert result["page_count"] == 3
    assert [p["page"] for p in result["pages"]] == [3, 2]
    assert "Charlie third page" in result["pages"][0]["text"]
    assert "Bravo second page" in result["pages"][1]["text"]
    assert "Apple" in result["pages"][1]["text"]
    assert "Alpha" not in json.dumps(result)
    assert result["pages_without_text"] == []


def test_text_layout_and_output_file(run_skill: RunSkill, work: Path) -> None:
    out = quiet(
        run_skill(
            "pdf", "extract_text.py", "doc.pdf", "--pages", "2", "--layout", "-o", "page2.txt"
        )
    )
    assert "wrote page2.txt" in out
    text = (work / "page2.txt").read_text()
    assert text.startswith("=== page 2 of 3 ===")
    assert re.search(r"Apple\s+3\s+1\.50", text)  # the row stays on one line


def test_text_names_pages_without_text(run_skill: RunSkill, work: Path) -> None:
    result = last_json(run_skill("pdf", "extract_text.py", "scan.pdf", "--json"), quiet=True)
    assert result["pages_without_text"] == [1, 2]
    out = quiet(run_skill("pdf", "extract_text.py", "scan.pdf"))
    assert "note: no text on page(s) 1, 2" in out and "ocr.py" in out


# --- tables -----------------------------------------------------------------------


def test_tables_markdown(run_skill: RunSkill, work: Path) -> None:
    out = quiet(run_skill("pdf", "extract_tables.py", "doc.pdf"))
    first = out.index("=== page 2, table 1 (3 rows x 3 columns) ===")
    second = out.index("=== page 2, table 2 (2 rows x 2 columns) ===")
    assert first < out.index("| Item | Qty | Price |\n|---|---|---|\n| Apple | 3 | 1.50 |") < second
    assert "| Pear | 7 | 0.25 |" in out
    assert out.index("| Code | Name |") > second and "| X1 | Widget |" in out
    assert "page 1," not in out and "page 3," not in out


def test_tables_csv_files_and_json(run_skill: RunSkill, work: Path) -> None:
    result = last_json(
        run_skill(
            "pdf",
            "extract_tables.py",
            "doc.pdf",
            "--format",
            "csv",
            "--out-dir",
            "tables",
            "--json",
        ),
        quiet=True,
    )
    found = [(t["page"], t["index"], t["rows"], t["columns"]) for t in result["tables"]]
    assert found == [(2, 1, 3, 3), (2, 2, 2, 2)]
    assert result["tables"][1]["cells"] == [["Code", "Name"], ["X1", "Widget"]]
    assert (work / "tables" / "page2-table1.csv").read_text() == (
        "Item,Qty,Price\nApple,3,1.50\nPear,7,0.25\n"
    )
    assert (work / "tables" / "page2-table2.csv").read_text() == "Code,Name\nX1,Widget\n"
    assert result["tables"][0]["path"] == "tables/page2-table1.csv"


def test_tables_none_found(run_skill: RunSkill, work: Path) -> None:
    out = quiet(run_skill("pdf", "extract_tables.py", "doc.pdf", "--pages", "1,3"))
    assert out.startswith("no tables found on page(s) 1,3")
    assert (
        last_json(run_skill("pdf", "extract_tables.py", "scan.pdf", "--json"), quiet=True)["tables"]
        == []
    )


# --- merge, split, rotate ----------------------------------------------------------


def test_merge_whole_files_and_page_selections(run_skill: RunSkill, work: Path) -> None:
    result = last_json(
        run_skill(
            "pdf", "merge.py", "doc.pdf", "form.pdf:2", "clean.pdf:1", "-o", "merged.pdf", "--json"
        ),
        quiet=True,
    )
    assert result["page_count"] == 5
    assert result["sources"] == [
        {"file": "doc.pdf", "pages": [1, 2, 3]},
        {"file": "form.pdf", "pages": [2]},
        {"file": "clean.pdf", "pages": [1]},
    ]
    merged = work / "merged.pdf"
    assert page_count(merged) == 5
    assert "Alpha page one" in pdftotext(merged, 1)
    assert "Page two of the form" in pdftotext(merged, 4)
    assert "INVOICE NUMBER 4711" in pdftotext(merged, 5)


def test_split_each_page(run_skill: RunSkill, work: Path) -> None:
    out = quiet(run_skill("pdf", "split.py", "doc.pdf", "--out-dir", "parts"))
    names = sorted(p.name for p in (work / "parts").iterdir())
    assert names == ["doc-p001.pdf", "doc-p002.pdf", "doc-p003.pdf"]
    assert "parts/doc-p002.pdf: page 2" in out
    for number, word in ((1, "Alpha"), (2, "Bravo"), (3, "Charlie")):
        part = work / "parts" / f"doc-p{number:03d}.pdf"
        assert page_count(part) == 1
        assert word in pdftotext(part)


def test_split_ranges(run_skill: RunSkill, work: Path) -> None:
    result = last_json(
        run_skill(
            "pdf",
            "split.py",
            "doc.pdf",
            "--out-dir",
            "parts",
            "--ranges",
            "1-2,3-",
            "--prefix",
            "part",
            "--json",
        ),
        quiet=True,
    )
    assert [(f["path"], f["pages"]) for f in result["files"]] == [
        ("parts/part-p001-002.pdf", 2),
        ("parts/part-p003.pdf", 1),
    ]
    assert page_count(work / "parts" / "part-p001-002.pdf") == 2
    assert "Bravo" in pdftotext(work / "parts" / "part-p001-002.pdf", 2)
    assert "Charlie" in pdftotext(work / "parts" / "part-p003.pdf")


def test_rotate_adds_and_sets(run_skill: RunSkill, work: Path) -> None:
    out = quiet(
        run_skill("pdf", "rotate.py", "doc.pdf", "-o", "r1.pdf", "--angle", "90", "--pages", "1,3")
    )
    assert "page 1: 0 -> 90 degrees" in out and "page 2:" not in out
    assert rotations(work / "r1.pdf") == [90, 0, 90]
    result = last_json(
        run_skill(
            "pdf",
            "rotate.py",
            "r1.pdf",
            "-o",
            "r2.pdf",
            "--angle",
            "-90",
            "--pages",
            "1-2",
            "--json",
        ),
        quiet=True,
    )
    assert result["pages"] == [
        {"page": 1, "before": 90, "after": 0},
        {"page": 2, "before": 0, "after": 270},
    ]
    assert rotations(work / "r2.pdf") == [0, 270, 90]
    quiet(run_skill("pdf", "rotate.py", "r2.pdf", "-o", "r3.pdf", "--angle", "180", "--absolute"))
    assert rotations(work / "r3.pdf") == [180, 180, 180]
    assert "Charlie third page" in pdftotext(work / "r3.pdf", 3)
    assert rotations(work / "doc.pdf") == [0, 0, 0]  # the input is left alone


# --- forms ------------------------------------------------------------------------


def test_form_fields_listed(run_skill: RunSkill, work: Path) -> None:
    result = last_json(run_skill("pdf", "form_fields.py", "form.pdf", "--json"), quiet=True)
    fields = {f["name"]: f for f in result["fields"]}
    assert list(fields) == ["name", "city", "agree", "color", "size", "notes"]
    summary = {n: (f["type"], f["value"], f["options"], f["pages"]) for n, f in fields.items()}
    assert summary == {
        "name": ("text", "", [], [1]),
        "city": ("text", "Paris", [], [1]),
        "agree": ("checkbox", False, ["Yes"], [1]),
        "color": ("combobox", "Red", ["Red", "Green", "Blue"], [1]),
        "size": ("radio", "S", ["S", "L"], [1]),
        "notes": ("text", "", [], [2]),
    }
    out = quiet(run_skill("pdf", "form_fields.py", "form.pdf"))
    assert '- city [text] value="Paris" page(s) 1' in out
    assert "no form fields" in quiet(run_skill("pdf", "form_fields.py", "doc.pdf"))


def test_fill_form(run_skill: RunSkill, work: Path, skills_python: Path) -> None:
    values = {"name": "Ada Lovelace", "agree": True, "color": "Green", "size": "L", "notes": 42}
    (work / "values.json").write_text(json.dumps(values))
    result = last_json(
        run_skill("pdf", "fill_form.py", "form.pdf", "values.json", "-o", "filled.pdf", "--json"),
        quiet=True,
    )
    assert result["filled"] == {
        "name": "Ada Lovelace",
        "agree": True,
        "color": "Green",
        "size": "L",
        "notes": "42",
    }
    listed = last_json(run_skill("pdf", "form_fields.py", "filled.pdf", "--json"), quiet=True)
    now = {f["name"]: f["value"] for f in listed["fields"]}
    assert now == {**result["filled"], "city": "Paris"}
    # pypdf's own reading of the file: values and the widgets' shown states
    raw = json.loads(
        subprocess.run(
            [str(skills_python), "-c", READ_FORM, "filled.pdf"],
            cwd=work,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert raw["values"] == {
        "name": "Ada Lovelace",
        "city": "Paris",
        "agree": "/Yes",
        "color": "Green",
        "size": "/L",
        "notes": "42",
    }
    assert raw["states"] == ["/Yes", "/Off", "/L"]  # checkbox on; radio S off, L on
    before = last_json(run_skill("pdf", "form_fields.py", "form.pdf", "--json"), quiet=True)
    assert {f["name"]: f["value"] for f in before["fields"]}["name"] == ""  # input unchanged


def test_fill_form_nested_field_names(run_skill: RunSkill, work: Path, skills_python: Path) -> None:
    listed = last_json(run_skill("pdf", "form_fields.py", "nested.pdf", "--json"), quiet=True)
    assert [(f["name"], f["type"]) for f in listed["fields"]] == [
        ("person.first", "text"),
        ("person.last", "text"),
    ]
    (work / "values.json").write_text('{"person.first": "Ada", "person.last": "Lovelace"}')
    quiet(run_skill("pdf", "fill_form.py", "nested.pdf", "values.json", "-o", "filled.pdf"))
    raw = json.loads(
        subprocess.run(
            [str(skills_python), "-c", READ_FORM, "filled.pdf"],
            cwd=work, capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    assert raw["values"] == {"person": "None", "person.first": "Ada", "person.last": "Lovelace"}
    (work / "values.json").write_text('{"first": "Ada"}')  # the short name is not the name
    line = error_line(run_skill("pdf", "fill_form.py", "nested.pdf", "values.json", "-o", "x.pdf"))
    assert line == "error: unknown field(s): first (the form has: person.first, person.last)"


def test_fill_form_fills_every_field_of_a_name(run_skill: RunSkill, work: Path) -> None:
    quiet(run_skill("pdf", "merge.py", "form.pdf", "form.pdf", "-o", "twice.pdf"))
    (work / "values.json").write_text('{"name": "Bo", "agree": true, "size": "L"}')
    quiet(run_skill("pdf", "fill_form.py", "twice.pdf", "values.json", "-o", "filled.pdf"))
    listed = last_json(run_skill("pdf", "form_fields.py", "filled.pdf", "--json"), quiet=True)[
        "fields"
    ]
    for name, value in (("name", "Bo"), ("agree", True), ("size", "L")):
        found = [(f["value"], f["pages"]) for f in listed if f["name"] == name]
        assert found == [(value, [1]), (value, [3])]


def test_fill_form_unchecks_and_clears(run_skill: RunSkill, work: Path) -> None:
    (work / "on.json").write_text('{"agree": "Yes", "city": "Rome"}')
    quiet(run_skill("pdf", "fill_form.py", "form.pdf", "on.json", "-o", "on.pdf"))
    (work / "off.json").write_text('{"agree": false, "size": "Off", "city": ""}')
    out = quiet(run_skill("pdf", "fill_form.py", "on.pdf", "off.json", "-o", "off.pdf"))
    assert "wrote off.pdf (3 field(s) filled)" in out
    listed = last_json(run_skill("pdf", "form_fields.py", "off.pdf", "--json"), quiet=True)
    now = {f["name"]: f["value"] for f in listed["fields"]}
    assert (now["agree"], now["size"], now["city"]) == (False, "Off", "")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            '{"nam": "x", "name": "y", "zip": 1}',
            "unknown field(s): nam, zip (the form has: name, city, agree, color, size, notes)",
        ),
        ('{"color": "Pink"}', "field 'color': 'Pink' is not one of its options"),
        ('{"agree": "maybe"}', "field 'agree' is a checkbox: give true, false, 'Yes' or 'Off'"),
        ('{"size": "M"}', "field 'size' is a radio group: give one of ['S', 'L', 'Off']"),
        ('{"name": true}', "field 'name' is a text field: give a text, not true"),
        ('{"name": ["a", "b"]}', "field 'name' is a text field: give one text, not a list"),
        ('["name"]', "values.json: must hold one JSON object"),
        ('{"name": ', "values.json: not valid JSON"),
    ],
)
def test_fill_form_refuses_bad_values(
    run_skill: RunSkill, work: Path, values: str, message: str
) -> None:
    (work / "values.json").write_text(values)
    line = error_line(run_skill("pdf", "fill_form.py", "form.pdf", "values.json", "-o", "out.pdf"))
    assert message in line
    assert not (work / "out.pdf").exists()


def test_fill_form_needs_a_form_and_values(run_skill: RunSkill, work: Path) -> None:
    (work / "values.json").write_text('{"name": "x"}')
    line = error_line(run_skill("pdf", "fill_form.py", "doc.pdf", "values.json", "-o", "o.pdf"))
    assert line == "error: doc.pdf: the PDF has no form fields"
    line = error_line(run_skill("pdf", "fill_form.py", "form.pdf", "nothere.json", "-o", "o.pdf"))
    assert line == "error: nothere.json: no such file"


# --- render -----------------------------------------------------------------------


def test_render_sizes_follow_dpi(run_skill: RunSkill, work: Path) -> None:
    out = quiet(run_skill("pdf", "render_pages.py", "doc.pdf", "--out-dir", "png", "--dpi", "100"))
    names = sorted(p.name for p in (work / "png").iterdir())
    assert names == ["doc-p001.png", "doc-p002.png", "doc-p003.png"]
    assert "page 2: png/doc-p002.png (850x1100)" in out
    for name in names:  # US Letter, 8.5 x 11 in
        assert png_size(work / "png" / name) == (850, 1100)
    result = last_json(
        run_skill(
            "pdf",
            "render_pages.py",
            "doc.pdf",
            "--out-dir",
            "small",
            "--dpi",
            "36",
            "--pages",
            "3",
            "--prefix",
            "pg",
            "--json",
        ),
        quiet=True,
    )
    assert result["files"] == [
        {"page": 3, "path": "small/pg-p003.png", "width": 306, "height": 396}
    ]
    assert png_size(work / "small" / "pg-p003.png") == (306, 396)


def test_render_applies_rotation(run_skill: RunSkill, work: Path) -> None:
    quiet(
        run_skill(
            "pdf", "rotate.py", "doc.pdf", "-o", "turned.pdf", "--angle", "90", "--pages", "2"
        )
    )
    quiet(
        run_skill(
            "pdf", "render_pages.py", "turned.pdf", "--out-dir", "png", "--dpi", "72", "--gray"
        )
    )
    sizes = [png_size(work / "png" / f"turned-p00{n}.png") for n in (1, 2, 3)]
    assert sizes == [(612, 792), (792, 612), (612, 792)]
    assert (work / "png" / "turned-p001.png").read_bytes()[25] == 0  # grayscale colour type


# --- OCR --------------------------------------------------------------------------


def test_ocr_makes_a_searchable_pdf(run_skill: RunSkill, work: Path) -> None:
    assert pdftotext(work / "scan.pdf").strip() == ""  # no text layer to start with
    result = last_json(
        run_skill(
            "pdf",
            "ocr.py",
            "scan.pdf",
            "-o",
            "searchable.pdf",
            "--dpi",
            "200",
            "--lang",
            "eng",
            "--json",
        ),
        quiet=True,
    )
    assert [p["page"] for p in result["pages"]] == [1, 2]
    assert all(p["chars"] > 10 for p in result["pages"]) and result["pages_without_text"] == []
    out = work / "searchable.pdf"
    assert page_count(out) == 2
    first = pdftotext(out, 1)
    for word in ("INVOICE", "NUMBER", "4711", "Quantum", "Giraffe", "Bakery"):
        assert word in first
    assert "Second scanned page" in pdftotext(out, 2)
    info = subprocess.run(["pdfinfo", str(out)], capture_output=True, text=True).stdout
    size = re.search(r"Page size:\s+([\d.]+) x ([\d.]+) pts", info)
    assert size and abs(float(size.group(1)) - 612) < 2 and abs(float(size.group(2)) - 792) < 2
    text = last_json(run_skill("pdf", "extract_text.py", "searchable.pdf", "--json"), quiet=True)
    assert text["pages_without_text"] == [] and "Giraffe" in text["pages"][0]["text"]


def test_ocr_selected_pages_only(run_skill: RunSkill, work: Path) -> None:
    out = quiet(
        run_skill(
            "pdf", "ocr.py", "scan.pdf", "-o", "p2.pdf", "--pages", "2", "--dpi", "150", "--gray"
        )
    )
    assert "page 2:" in out and "page 1:" not in out
    assert page_count(work / "p2.pdf") == 1
    assert "Second scanned page" in pdftotext(work / "p2.pdf")


# --- info ---------------------------------------------------------------------------


def test_info(run_skill: RunSkill, work: Path) -> None:
    doc = last_json(run_skill("pdf", "info.py", "doc.pdf", "--json"), quiet=True)
    assert doc["page_count"] == 3 and doc["form_fields"] == 0 and not doc["encrypted"]
    assert doc["pages"][0]["width"] == 612 and doc["pages"][0]["height"] == 792
    assert all(p["text_chars"] > 0 for p in doc["pages"])
    assert (
        last_json(run_skill("pdf", "info.py", "form.pdf", "--json"), quiet=True)["form_fields"] == 6
    )
    scan = quiet(run_skill("pdf", "info.py", "scan.pdf"))
    assert "scan.pdf: 2 page(s)" in scan and "no text layer on page(s) 1, 2" in scan


# --- bad input ------------------------------------------------------------------------

ALL_ON_ONE_PDF: list[tuple[str, list[str]]] = [
    ("extract_text.py", []),
    ("extract_tables.py", []),
    ("split.py", ["--out-dir", "parts"]),
    ("rotate.py", ["-o", "out.pdf", "--angle", "90"]),
    ("form_fields.py", []),
    ("fill_form.py", ["values.json", "-o", "out.pdf"]),
    ("render_pages.py", ["--out-dir", "png"]),
    ("ocr.py", ["-o", "out.pdf"]),
    ("info.py", []),
]

BAD_FILES = [
    ("missing.pdf", "error: missing.pdf: no such file"),
    ("notpdf.pdf", "error: notpdf.pdf: not a PDF (no %PDF- header)"),
    ("broken.pdf", "error: broken.pdf: not a readable PDF ("),
    ("locked.pdf", "error: locked.pdf: the PDF is encrypted and needs a password"),
]


@pytest.mark.parametrize(("script", "rest"), ALL_ON_ONE_PDF)
@pytest.mark.parametrize(("name", "message"), BAD_FILES)
def test_bad_input_files(
    run_skill: RunSkill, work: Path, script: str, rest: list[str], name: str, message: str
) -> None:
    (work / "values.json").write_text('{"name": "x"}')
    line = error_line(run_skill("pdf", script, name, *rest))
    assert line.startswith(message)
    assert not (work / "out.pdf").exists()


@pytest.mark.parametrize(("name", "message"), BAD_FILES)
def test_merge_bad_input_files(run_skill: RunSkill, work: Path, name: str, message: str) -> None:
    assert error_line(run_skill("pdf", "merge.py", "doc.pdf", name, "-o", "m.pdf")).startswith(
        message
    )
    assert not (work / "m.pdf").exists()


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        (
            "extract_text.py",
            ["doc.pdf", "--pages", "4"],
            "page 4 is out of range: the PDF has 3 pages",
        ),
        ("extract_text.py", ["doc.pdf", "--pages", "2-9"], "page 9 is out of range"),
        ("extract_text.py", ["doc.pdf", "--pages", "abc"], "bad page range 'abc'"),
        ("extract_text.py", ["doc.pdf", "--pages", "5-"], "page 5 is out of range"),
        ("extract_tables.py", ["doc.pdf", "--pages", "0"], "bad page range '0'"),
        ("extract_tables.py", ["doc.pdf", "--pages", "3-1"], "bad page range '3-1'"),
        ("split.py", ["doc.pdf", "--out-dir", "p", "--ranges", "1,5-6"], "page 5 is out of range"),
        (
            "rotate.py",
            ["doc.pdf", "-o", "o.pdf", "--angle", "90", "--pages", "4"],
            "page 4 is out of range",
        ),
        (
            "render_pages.py",
            ["doc.pdf", "--out-dir", "p", "--pages", "7"],
            "page 7 is out of range",
        ),
        (
            "ocr.py",
            ["scan.pdf", "-o", "o.pdf", "--pages", "3"],
            "page 3 is out of range: the PDF has 2 pages",
        ),
        (
            "merge.py",
            ["doc.pdf", "form.pdf:3", "-o", "o.pdf"],
            "form.pdf: page 3 is out of range: the PDF has 2 pages",
        ),
        ("merge.py", ["doc.pdf", "-o", "o.pdf"], "name at least two PDFs to merge"),
        (
            "merge.py",
            ["doc.pdf", "form.pdf", "-o", "nodir/o.pdf"],
            "nodir/o.pdf: the folder nodir does not exist",
        ),
        (
            "rotate.py",
            ["doc.pdf", "-o", "doc.pdf", "--angle", "90"],
            "doc.pdf: the output would overwrite an input",
        ),
        ("rotate.py", ["doc.pdf", "-o", "o.pdf", "--angle", "45"], "bad angle '45'"),
        ("rotate.py", ["doc.pdf", "-o", "o.pdf", "--angle", "0"], "bad angle '0'"),
        ("rotate.py", ["doc.pdf", "-o", "o.pdf", "--angle", "right"], "bad angle 'right'"),
        ("render_pages.py", ["doc.pdf", "--out-dir", "p", "--dpi", "0"], "bad DPI '0'"),
        ("render_pages.py", ["doc.pdf", "--out-dir", "p", "--dpi", "5000"], "bad DPI '5000'"),
        ("render_pages.py", ["doc.pdf", "--out-dir", "p", "--dpi", "high"], "bad DPI 'high'"),
        ("ocr.py", ["scan.pdf", "-o", "o.pdf", "--dpi", "9"], "bad DPI '9'"),
        (
            "ocr.py",
            ["scan.pdf", "-o", "o.pdf", "--lang", "xyz"],
            "tesseract language 'xyz' is not installed (installed: eng",
        ),
        ("split.py", ["doc.pdf", "--out-dir", "doc.pdf"], "doc.pdf: exists and is not a folder"),
        ("extract_text.py", ["doc.pdf", "-o", "doc.pdf"], "the output would overwrite an input"),
    ],
)
def test_bad_arguments(
    run_skill: RunSkill, work: Path, script: str, args: list[str], message: str
) -> None:
    line = error_line(run_skill("pdf", script, *args))
    assert message in line
    assert not (work / "o.pdf").exists() and not (work / "p").exists()
    assert page_count(work / "doc.pdf") == 3
