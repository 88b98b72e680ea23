"""The docx skill's scripts on documents the tests make: Markdown in and out, PDF,
replacement across runs, tracked changes, and every bad-input path."""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from tests.fixtures.skillcheck import assert_error, last_json, ok, page_count, pdftotext, run_script
from tests.integration.conftest import RunSkill

pytestmark = pytest.mark.integration

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"

MARKDOWN = """\
---
title: Field Report
---

# Overview

The **survey** covered *three* valleys.
Findings:
- granite outcrops
- alpine meadows
  - nested moss

1. first step
2. second step

| Valley | Altitude |
|--------|----------|
| Aster  | 1200     |
| Birch  | 1450     |

```python
print("hello quartz")
```

```{=openxml}
<w:p><w:r><w:br w:type="page"/></w:r></w:p>
```

# Appendix

Closing words about basalt.
"""


def part(path: Path, name: str = "word/document.xml") -> ET.Element:
    with zipfile.ZipFile(path) as archive:
        return ET.fromstring(archive.read(name))


def para_text(p: ET.Element) -> str:
    return "".join(t.text or "" for t in p.iter(f"{W}t"))


def paragraphs(path: Path, name: str = "word/document.xml") -> list[str]:
    """Each paragraph's visible text (w:t only), in document order, tables included."""
    return [para_text(p) for p in part(path, name).iter(f"{W}p")]


def style_of(p: ET.Element) -> str | None:
    style = p.find(f"{W}pPr/{W}pStyle")
    return None if style is None else style.get(f"{W}val")


def formatting(run: ET.Element) -> set[str]:
    """A run's formatting: the names of its rPr's children."""
    rpr = run.find(f"{W}rPr")
    return set() if rpr is None else {child.tag.removeprefix(W) for child in rpr}


def run_with(path: Path, text: str, name: str = "word/document.xml") -> set[str]:
    """The formatting of the one run whose text is ``text``."""
    found = [r for r in part(path, name).iter(f"{W}r") if para_text(r) == text]
    assert len(found) == 1, f"{len(found)} runs read {text!r}"
    return formatting(found[0])


def make_docx(python: Path, cwd: Path, code: str) -> None:
    """Run python-docx code (``doc`` is a new Document, saved afterwards) in the skills venv."""
    prelude = "import docx\nfrom docx.oxml import parse_xml\ndoc = docx.Document()\n"
    subprocess.run([str(python), "-c", prelude + code], cwd=cwd, check=True, timeout=120)


# --- Markdown -> docx -> Markdown / PDF --------------------------------------------------


@pytest.fixture(scope="module")
def report(skills_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("docx-report")
    (folder / "report.md").write_text(MARKDOWN)
    proc = run_script(
        skills_python, folder, "docx", "md_to_docx.py", "report.md", "report.docx", "--json"
    )
    assert last_json(proc)["output"] == "report.docx"
    return folder / "report.docx"


@pytest.fixture(scope="module")
def report_pdf(skills_python: Path, report: Path) -> tuple[Path, dict[str, object]]:
    proc = run_script(
        skills_python, report.parent, "docx", "docx_to_pdf.py", report.name, "out.pdf", "--json"
    )
    return report.parent / "out.pdf", last_json(proc)


def test_markdown_becomes_native_word_structure(report: Path) -> None:
    body = list(part(report).iter(f"{W}p"))
    styled = {para_text(p): style_of(p) for p in body}
    assert styled["Field Report"] == "Title"
    assert styled["Overview"] == styled["Appendix"] == "Heading1"
    assert run_with(report, "survey") >= {"b"} and "i" not in run_with(report, "survey")
    assert run_with(report, "three") >= {"i"}
    # Lists are Word numbering, the nested item one level deeper.
    levels = {}
    for p in body:
        ilvl = p.find(f"{W}pPr/{W}numPr/{W}ilvl")
        levels[para_text(p)] = None if ilvl is None else ilvl.get(f"{W}val")
    assert levels["granite outcrops"] == levels["alpine meadows"] == "0"
    assert levels["first step"] == levels["second step"] == "0"
    assert levels["nested moss"] == "1"
    assert levels["Closing words about basalt."] is None
    tables = list(part(report).iter(f"{W}tbl"))
    assert len(tables) == 1
    cells = [para_text(tc) for tc in tables[0].iter(f"{W}tc")]
    assert cells == ["Valley", "Altitude", "Aster", "1200", "Birch", "1450"]
    code = [p for p in body if "quartz" in para_text(p)]
    assert [style_of(p) for p in code] == ["SourceCode"]


def test_docx_reads_back_as_markdown(run_skill: RunSkill, report: Path, tmp_path: Path) -> None:
    proc = ok(run_skill("docx", "docx_to_md.py", report))
    text = proc.stdout
    assert "title: Field Report" in text
    assert re.search(r"^# Overview$", text, re.M) and re.search(r"^# Appendix$", text, re.M)
    assert "The **survey** covered *three* valleys." in text
    assert re.search(r"^-\s+granite outcrops$", text, re.M)
    assert re.search(r"^\s+-\s+nested moss$", text, re.M)
    assert re.search(r"^1\.\s+first step$", text, re.M)
    assert re.search(r"^\|\s*Aster\s*\|\s*1200\s*\|$", text, re.M)
    assert 'print("hello quartz")' in text
    assert "Closing words about basalt." in text
    ok(run_skill("docx", "docx_to_md.py", report, "-o", "back.md"))
    assert (tmp_path / "back.md").read_text() == text


def test_pdf_has_the_words_and_the_page_break(report_pdf: tuple[Path, dict[str, object]]) -> None:
    pdf, summary = report_pdf
    assert summary["pages"] == 2
    assert page_count(pdf) == 2
    pages = [pdftotext(pdf, n) for n in (1, 2)]
    for word in ("Field Report", "Overview", "granite outcrops", "Aster", "1450", "quartz"):
        assert word in pages[0], word
    assert "Closing words about basalt." in pages[1] and "granite" not in pages[1]


# --- replace_text ------------------------------------------------------------------------

REPLACE_DOC = """
p = doc.add_paragraph("Contact ")
p.add_run("Acme").bold = True
p.add_run(" Corp").italic = True
p.add_run("oration today")
q = doc.add_paragraph()
q.add_run("Acme").italic = True
q.add_run(" Corporation rocks")
doc.add_paragraph("Release v12 and v7 of ACME CORPORATION")
doc.add_table(rows=1, cols=1).cell(0, 0).text = "Acme Corporation cell"
section = doc.sections[0]
section.header.paragraphs[0].text = "Acme Corporation header"
section.footer.paragraphs[0].text = "footer of Acme Corporation"
doc.save("acme.docx")
"""


@pytest.fixture
def acme(skills_python: Path, tmp_path: Path) -> Path:
    make_docx(skills_python, tmp_path, REPLACE_DOC)
    return tmp_path / "acme.docx"


def test_replace_spans_runs_and_keeps_the_first_runs_formatting(
    run_skill: RunSkill, acme: Path, tmp_path: Path
) -> None:
    summary = last_json(run_skill("docx", "replace_text.py", acme, "out.docx",
                                  "Acme Corporation", "Globex Inc", "--json"))  # fmt: skip
    assert summary["replacements"] == 5
    assert summary["by_part"] == {"body": 3, "header": 1, "footer": 1}
    out = tmp_path / "out.docx"
    assert paragraphs(out)[:3] == ["Contact Globex Inc today", "Globex Inc rocks",
                                   "Release v12 and v7 of ACME CORPORATION"]  # fmt: skip
    assert "Globex Inc cell" in paragraphs(out)
    # The match began in the bold run in one paragraph, in the italic run in the other.
    runs = [r for r in part(out).iter(f"{W}r") if para_text(r) == "Globex Inc"]
    assert [formatting(r) for r in runs] == [{"b"}, {"i"}]
    assert run_with(out, " today") == set()
    headers = [n for n in zipfile.ZipFile(out).namelist() if re.match(r"word/header\d*\.xml", n)]
    footers = [n for n in zipfile.ZipFile(out).namelist() if re.match(r"word/footer\d*\.xml", n)]
    assert [paragraphs(out, n) for n in headers] == [["Globex Inc header"]]
    assert [paragraphs(out, n) for n in footers] == [["footer of Globex Inc"]]
    # The input is left alone.
    assert paragraphs(acme)[0] == "Contact Acme Corporation today"


def test_replace_with_regex_and_ignore_case(
    run_skill: RunSkill, acme: Path, tmp_path: Path
) -> None:
    proc = ok(run_skill("docx", "replace_text.py", acme, "v.docx", r"v(\d+)", r"version \1",
                        "--regex"))  # fmt: skip
    assert proc.stdout.startswith("replaced 2 occurrences (body 2)")
    assert (
        paragraphs(tmp_path / "v.docx")[2] == "Release version 12 and version 7 of ACME CORPORATION"
    )
    summary = last_json(run_skill("docx", "replace_text.py", acme, "c.docx", "acme corporation",
                                  "X", "--ignore-case", "--json"))  # fmt: skip
    assert summary["replacements"] == 6
    assert paragraphs(tmp_path / "c.docx")[2] == "Release v12 and v7 of X"


def test_replace_without_a_match_is_not_an_error(run_skill: RunSkill, acme: Path) -> None:
    summary = last_json(run_skill("docx", "replace_text.py", acme, "same.docx", "Initech", "Y",
                                  "--json"))  # fmt: skip
    assert summary["replacements"] == 0 and summary["by_part"] == {}


# --- tracked changes ---------------------------------------------------------------------

TRACKED_DOC = """
W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
A = 'w:author="Reviewer" w:date="2026-01-01T00:00:00Z"'

def p(inner, ppr=""):
    return parse_xml(f"<w:p {W}>{ppr}{inner}</w:p>")

def r(text, rpr=""):
    return f'<w:r>{rpr}<w:t xml:space="preserve">{text}</w:t></w:r>'

def gone(text):
    return f'<w:r><w:delText xml:space="preserve">{text}</w:delText></w:r>'

end = doc.element.body[-1]
for element in [
    p(r("The ") + f'<w:ins w:id="1" {A}>' + r("quick ") + "</w:ins>" + r("brown ")
      + f'<w:del w:id="2" {A}>' + gone("lazy ") + "</w:del>" + r("fox")),
    p(f'<w:moveFromRangeStart w:id="9" w:name="m1" {A}/><w:moveFrom w:id="3" {A}>'
      + r("Moved") + '</w:moveFrom><w:moveFromRangeEnd w:id="9"/>' + r(" here")),
    p(r("Stay") + f'<w:moveTo w:id="4" {A}>' + r(" put") + "</w:moveTo>"),
    p(r("Bold now", f'<w:rPr><w:b/><w:rPrChange w:id="5" {A}><w:rPr><w:i/></w:rPr>'
                    "</w:rPrChange></w:rPr>")),
    p(f'<w:del w:id="6" {A}>' + gone("Whole paragraph deleted") + "</w:del>",
      f'<w:pPr><w:rPr><w:del w:id="7" {A}/></w:rPr></w:pPr>'),
    p(r("Centred"), f'<w:pPr><w:jc w:val="center"/><w:pPrChange w:id="8" {A}><w:pPr>'
                    '<w:jc w:val="right"/></w:pPr></w:pPrChange></w:pPr>'),
]:
    end.addprevious(element)
table = doc.add_table(rows=2, cols=1)
table.cell(0, 0).text = "Row one"
table.cell(1, 0).text = "Row two"
table.rows[1]._tr.get_or_add_trPr().append(
    parse_xml(f'<w:ins {W} w:id="10" w:author="Reviewer" w:date="2026-01-01T00:00:00Z"/>'))
header = doc.sections[0].header.paragraphs[0]
header.text = "Head "
header._p.append(parse_xml(f'<w:ins {W} w:id="11" {A}>' + r("added") + "</w:ins>"))
doc.save("tracked.docx")
plain = docx.Document()
plain.add_paragraph("Nothing tracked here")
plain.save("plain.docx")
"""

COUNTS = {"insertions": 3, "deletions": 3, "moves_from": 1, "moves_to": 1, "formatting": 2}


@pytest.fixture(scope="module")
def tracked(skills_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("docx-tracked")
    make_docx(skills_python, folder, TRACKED_DOC)
    return folder / "tracked.docx"


def no_revisions_left(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith(".xml"):
                text = archive.read(name).decode()
                assert not re.search(r"<w:(ins|del|moveFrom|moveTo|delText)\b", text), name
                assert "PrChange" not in text and "RangeStart" not in text, name


def paragraph_with(path: Path, text: str) -> ET.Element:
    found = [p for p in part(path).iter(f"{W}p") if para_text(p) == text]
    assert len(found) == 1, text
    return found[0]


def test_count_tracked_changes(run_skill: RunSkill, tracked: Path) -> None:
    proc = run_skill("docx", "tracked_changes.py", "count", tracked, "--json")
    assert last_json(proc) == {"action": "count", **COUNTS}
    assert proc.stdout.startswith(f"{tracked}: 3 insertions, 3 deletions, 1 moves from")


def test_accept_all(run_skill: RunSkill, tracked: Path, tmp_path: Path) -> None:
    proc = run_skill("docx", "tracked_changes.py", "accept", tracked, "a.docx", "--json")
    assert last_json(proc) == {"action": "accept", **COUNTS, "output": "a.docx"}
    out = tmp_path / "a.docx"
    assert paragraphs(out) == ["The quick brown fox", " here", "Stay put", "Bold now", "Centred",
                               "Row one", "Row two"]  # fmt: skip
    assert run_with(out, "Bold now") == {"b"}
    jc = paragraph_with(out, "Centred").find(f"{W}pPr/{W}jc")
    assert jc is not None and jc.get(f"{W}val") == "center"
    assert paragraphs(out, "word/header1.xml") == ["Head added"]
    no_revisions_left(out)


def test_reject_all(run_skill: RunSkill, tracked: Path, tmp_path: Path) -> None:
    proc = ok(run_skill("docx", "tracked_changes.py", "reject", tracked, "r.docx"))
    assert proc.stdout.startswith("rejected 3 insertions, 3 deletions")
    out = tmp_path / "r.docx"
    assert paragraphs(out) == ["The brown lazy fox", "Moved here", "Stay", "Bold now",
                               "Whole paragraph deleted", "Centred", "Row one"]  # fmt: skip
    assert run_with(out, "Bold now") == {"i"}
    jc = paragraph_with(out, "Centred").find(f"{W}pPr/{W}jc")
    assert jc is not None and jc.get(f"{W}val") == "right"
    assert paragraphs(out, "word/header1.xml") == ["Head "]
    no_revisions_left(out)


def test_a_document_without_changes_reports_zero(
    run_skill: RunSkill, tracked: Path, tmp_path: Path
) -> None:
    plain = tracked.parent / "plain.docx"
    proc = run_skill("docx", "tracked_changes.py", "accept", plain, "p.docx", "--json")
    zero = dict.fromkeys(COUNTS, 0)
    assert last_json(proc) == {"action": "accept", **zero, "output": "p.docx"}
    assert paragraphs(tmp_path / "p.docx") == ["Nothing tracked here"]


# --- bad input ---------------------------------------------------------------------------


@pytest.fixture
def junk(tmp_path: Path) -> Path:
    """Files that are not Word documents, and a Markdown file."""
    (tmp_path / "text.docx").write_text("just text, not a package\n")
    with zipfile.ZipFile(tmp_path / "bare.docx", "w") as archive:
        archive.writestr("hello.txt", "no content types")
    with zipfile.ZipFile(tmp_path / "slides.docx", "w") as archive:
        archive.writestr("[Content_Types].xml", '<Types><Override ContentType="application/vnd.'
                         'openxmlformats-officedocument.presentationml.presentation.main+xml"/>'
                         "</Types>")  # fmt: skip
    (tmp_path / "in.md").write_text("# Hi\n")
    return tmp_path


@pytest.mark.parametrize(
    ("script", "args", "fragment"),
    [
        ("md_to_docx.py", ["absent.md", "o.docx"], "absent.md: no such file"),
        ("md_to_docx.py", ["in.md", "o.txt"], "the output must end in .docx"),
        ("md_to_docx.py", ["in.md", "nodir/o.docx"], "no such folder"),
        ("md_to_docx.py", ["in.md", "o.docx", "--reference-doc", "text.docx"], "not a .docx"),
        ("docx_to_md.py", ["absent.docx"], "absent.docx: no such file"),
        ("docx_to_md.py", ["text.docx"], "text.docx: not a .docx file"),
        ("docx_to_md.py", ["bare.docx"], "without [Content_Types].xml"),
        ("docx_to_md.py", ["slides.docx"], "no Word document part"),
        ("docx_to_md.py", ["in.md"], "not a .docx file"),
        ("docx_to_pdf.py", ["absent.docx"], "no such file"),
        ("docx_to_pdf.py", ["text.docx", "o.pdf"], "not a .docx file"),
        ("replace_text.py", ["absent.docx", "o.docx", "a", "b"], "no such file"),
        ("replace_text.py", ["slides.docx", "o.docx", "a", "b"], "no Word document part"),
        ("replace_text.py", ["text.docx", "o.docx", "(", "b", "--regex"], "bad regular expr"),
        ("replace_text.py", ["text.docx", "o.docx", "(a)", r"\2", "--regex"], "bad replacement"),
        ("replace_text.py", ["text.docx", "o.docx", "", "b"], "the text to find is empty"),
        ("tracked_changes.py", ["accept", "text.docx"], "accept needs an output file"),
        ("tracked_changes.py", ["reject", "absent.docx", "o.docx"], "no such file"),
        ("tracked_changes.py", ["count", "bare.docx"], "not a .docx file"),
    ],
)
def test_bad_input_is_one_error_line(
    run_skill: RunSkill, junk: Path, script: str, args: list[str], fragment: str
) -> None:
    assert_error(run_skill("docx", script, *args), fragment)
    assert not (junk / "o.docx").exists() and not (junk / "o.pdf").exists()


def test_saving_into_a_missing_folder_fails_cleanly(
    run_skill: RunSkill, tracked: Path, tmp_path: Path
) -> None:
    proc = run_skill("docx", "tracked_changes.py", "accept", tracked, "nodir/x.docx")
    assert_error(proc, "no such folder")


@pytest.mark.parametrize(
    "script",
    ["md_to_docx.py", "docx_to_md.py", "docx_to_pdf.py", "replace_text.py", "tracked_changes.py"],
)
def test_help(run_skill: RunSkill, script: str) -> None:
    proc = ok(run_skill("docx", script, "--help"))
    assert proc.stdout.startswith("usage: ")
