"""The xlsx skill's scripts on workbooks the tests describe: formulas written by openpyxl,
recalculated by LibreOffice, every formula error reported by cell, values exported to CSV
and Markdown, and every bad-input path."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.skillcheck import assert_error, last_json, ok, run_script
from tests.integration.conftest import RunSkill

pytestmark = pytest.mark.integration

BOOK = {
    "sheets": {
        "Data": {
            "A1": 1,
            "A2": 2.5,
            "A3": "=SUM(A1:A2)",
            "A4": '=IFS(A3>3,"big",TRUE,"small")',
            "B1": "=1/0",
            "B2": "=Gone!A1",
            "B3": "=#REF!",
            "B4": "=NOSUCHFUNC()",
            "C1": "a|b",
        },
        "My Report": {
            "rows": [["Name", "Total", "Broken"], ["all", "=Data!A3*2", "=Data!B1+1"]],
            "cells": {"D2": {"date": "2024-02-29"}, "E2": {"value": 0.25, "number_format": "0%"}},
            "widths": {"A": 20},
        },
    }
}
EXPECTED_ERRORS = [
    ("Data", "B1", "#DIV/0!", "=1/0"),
    ("Data", "B2", "#NAME?", "=Gone!A1"),
    ("Data", "B3", "#REF!", "=#REF!"),
    ("Data", "B4", "#NAME?", "=NOSUCHFUNC()"),
    ("My Report", "C2", "#DIV/0!", "=Data!B1+1"),
]
EXPECTED_LINES = [
    "Data!B1: #DIV/0! (formula =1/0)",
    "Data!B2: #NAME? (formula =Gone!A1)",
    "Data!B3: #REF! (formula =#REF!)",
    "Data!B4: #NAME? (formula =NOSUCHFUNC())",
    "'My Report'!C2: #DIV/0! (formula =Data!B1+1)",
]


def openpyxl_dump(python: Path, book: Path, data_only: bool = False) -> dict[str, Any]:
    """{sheet: {cell: value}} (values via repr for dates), widths and formats, read by openpyxl."""
    code = f"""
import json, openpyxl
wb = openpyxl.load_workbook({str(book)!r}, data_only={data_only})
out = {{}}
for ws in wb.worksheets:
    cells = {{c.coordinate: (c.value if isinstance(c.value, (int, float, str, type(None)))
              else repr(c.value)) for row in ws.iter_rows() for c in row if c.value is not None}}
    formats = {{c.coordinate: c.number_format for row in ws.iter_rows() for c in row
               if c.number_format != "General"}}
    widths = {{k: d.width for k, d in ws.column_dimensions.items() if d.customWidth}}
    out[ws.title] = {{"cells": cells, "formats": formats, "widths": widths}}
print(json.dumps(out))
"""
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    data = json.loads(proc.stdout)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def made(skills_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """book.json -> book.xlsx (create.py) -> rec.xlsx (recalc.py, once for the module)."""
    folder = tmp_path_factory.mktemp("xlsx")
    (folder / "book.json").write_text(json.dumps(BOOK))
    created = run_script(
        skills_python, folder, "xlsx", "create.py", "book.json", "book.xlsx", "--json"
    )
    checked = run_script(
        skills_python,
        folder,
        "xlsx",
        "recalc.py",
        "book.xlsx",
        "--out",
        "rec.xlsx",
        "--values",
        "--json",
    )
    return {"dir": folder, "created": created, "checked": checked}


def test_create_writes_values_formulas_and_formats(
    made: dict[str, Any], skills_python: Path
) -> None:
    summary = last_json(ok(made["created"]))
    assert summary["sheets"] == [
        {"name": "Data", "cells": 9, "formulas": 6, "range": "A1:C4"},
        {"name": "My Report", "cells": 8, "formulas": 2, "range": "A1:E2"},
    ]
    assert "run recalc.py" in made["created"].stdout
    dump = openpyxl_dump(skills_python, made["dir"] / "book.xlsx")
    data, report = dump["Data"], dump["My Report"]
    assert data["cells"] == {
        "A1": 1,
        "A2": 2.5,
        "A3": "=SUM(A1:A2)",
        "A4": '=_xlfn.IFS(A3>3,"big",TRUE,"small")',
        "B1": "=1/0",
        "B2": "=Gone!A1",
        "B3": "=#REF!",
        "B4": "=NOSUCHFUNC()",
        "C1": "a|b",
    }
    assert report["cells"]["B2"] == "=Data!A3*2"
    assert report["cells"]["D2"] == "datetime.datetime(2024, 2, 29, 0, 0)"
    assert report["formats"] == {"D2": "yyyy-mm-dd", "E2": "0%"}
    assert report["widths"] == {"A": 20.0}


def test_recalc_lists_every_formula_error_by_cell(made: dict[str, Any]) -> None:
    proc = made["checked"]
    report = last_json(proc, returncode=3, quiet=True)
    found = [(e["sheet"], e["cell"], e["error"], e["formula"]) for e in report["errors"]]
    assert found == EXPECTED_ERRORS
    assert report["error_count"] == 5 and report["formulas"] == 8
    lines = proc.stdout.splitlines()
    assert lines[0] == "recalculated book.xlsx: 8 formula(s), 5 formula error(s)"
    assert lines[1:6] == EXPECTED_LINES


def test_recalc_computes_values_and_stores_them(made: dict[str, Any], skills_python: Path) -> None:
    values = {v["ref"]: v["value"] for v in last_json(made["checked"], returncode=3)["values"]}
    assert values["Data!A3"] == 3.5
    assert values["Data!A4"] == "big"
    assert values["'My Report'!B2"] == 7
    assert "Data!A3 = 3.5  (=SUM(A1:A2))" in made["checked"].stdout
    # rec.xlsx carries the results: openpyxl reads them without any recalculation
    cached = openpyxl_dump(skills_python, made["dir"] / "rec.xlsx", data_only=True)
    assert cached["Data"]["cells"]["A3"] == 3.5
    assert cached["Data"]["cells"]["B1"] == "#DIV/0!"
    assert cached["My Report"]["cells"]["B2"] == 7


def test_export_of_the_recalculated_book(made: dict[str, Any], skills_python: Path) -> None:
    folder = made["dir"]
    csv = ok(run_script(skills_python, folder, "xlsx", "export.py", "rec.xlsx", "--sheet", "Data"))
    assert csv.stdout == "1,#DIV/0!,a|b\n2.5,#NAME?,\n3.5,#REF!,\nbig,#NAME?,\n"
    assert csv.stderr == ""
    md = ok(run_script(skills_python, folder, "xlsx", "export.py", "rec.xlsx", "--format", "md"))
    assert md.stdout == (
        "## Data\n\n"
        "| 1 | #DIV/0! | a\\|b |\n|---|---|---|\n"
        "| 2.5 | #NAME? |  |\n| 3.5 | #REF! |  |\n| big | #NAME? |  |\n"
        "\n## My Report\n\n"
        "| Name | Total | Broken |  |  |\n|---|---|---|---|---|\n"
        "| all | 7 | #DIV/0! | 2024-02-29 | 0.25 |\n"
    )


def test_export_without_results_warns_and_leaves_formulas_empty(
    made: dict[str, Any], skills_python: Path
) -> None:
    proc = ok(
        run_script(skills_python, made["dir"], "xlsx", "export.py", "book.xlsx", "--sheet", "data")
    )
    assert proc.stdout == "1,,a|b\n2.5,,\n"
    assert proc.stderr.strip() == (
        "warning: 6 formula cell(s) have no stored result and export empty; rerun with --recalc"
    )


def test_stale_cached_results_are_recomputed(
    made: dict[str, Any], skills_python: Path, tmp_path: Path, run_skill: RunSkill
) -> None:
    """LibreOffice keeps cached results on load; recalc must not trust them."""
    stale = tmp_path / "stale.xlsx"
    with zipfile.ZipFile(made["dir"] / "rec.xlsx") as zin, zipfile.ZipFile(stale, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                data, count = re.subn(
                    rb'(<c r="A3"[^>]*>\s*<f[^>]*>[^<]*</f>\s*<v>)3.5(</v>)',
                    rb"\g<1>999\g<2>",
                    data,
                )
                assert count == 1
            zout.writestr(item, data)
    before = ok(run_skill("xlsx", "export.py", stale, "--sheet", "Data"))
    assert before.stdout.splitlines()[2] == "999,#REF!,"
    after = ok(run_skill("xlsx", "export.py", stale, "--sheet", "Data", "--recalc"))
    assert after.stdout.splitlines()[2] == "3.5,#REF!,"


def test_clean_workbook_exits_zero(run_skill: RunSkill, tmp_path: Path) -> None:
    book = {"sheets": {"S": {"A1": 2, "A2": 3, "A3": "=A1*A2", "A4": "=A3/A1"}}}
    (tmp_path / "clean.json").write_text(json.dumps(book))
    ok(run_skill("xlsx", "create.py", "clean.json", "clean.xlsx"))
    proc = ok(run_skill("xlsx", "recalc.py", "clean.xlsx", "--json"))
    assert proc.stdout.splitlines()[0] == "recalculated clean.xlsx: 2 formula(s), no formula errors"
    report = last_json(proc)
    assert report["errors"] == [] and report["error_count"] == 0 and report["out"] is None
    assert "values" not in report


def test_csv_with_formulas_to_csv_and_markdown(run_skill: RunSkill, tmp_path: Path) -> None:
    (tmp_path / "sales.csv").write_text("Item,Qty,Price\npens,3,1.5\npaper,10,0.25\nzip,007,x\n")
    created = ok(
        run_skill(
            "xlsx",
            "create.py",
            "sales.csv",
            "sales.xlsx",
            "--cell",
            "D1=Total",
            "--cell",
            "D2==B2*C2",
            "--cell",
            "D3==B3*C3",
            "--cell",
            "Sum!A1==SUM(sales!D2:D3)",
            "--json",
        )
    )
    assert last_json(created)["sheets"][1] == {
        "name": "Sum",
        "cells": 1,
        "formulas": 1,
        "range": "A1:A1",
    }
    ok(run_skill("xlsx", "recalc.py", "sales.xlsx", "--out", "done.xlsx"))
    md = ok(run_skill("xlsx", "export.py", "done.xlsx", "--format", "md", "--out", "done.md"))
    assert md.stdout.strip() == "wrote done.md"
    assert (tmp_path / "done.md").read_text() == (
        "## sales\n\n| Item | Qty | Price | Total |\n|---|---|---|---|\n"
        "| pens | 3 | 1.5 | 4.5 |\n| paper | 10 | 0.25 | 2.5 |\n| zip | 007 | x |  |\n"
        "\n## Sum\n\n| 7 |\n|---|\n"
    )
    proc = ok(run_skill("xlsx", "export.py", "done.xlsx", "--out", "csv", "--json"))
    assert last_json(proc)["files"] == ["csv/sales.csv", "csv/Sum.csv"]
    assert (tmp_path / "csv" / "sales.csv").read_text() == (
        "Item,Qty,Price,Total\npens,3,1.5,4.5\npaper,10,0.25,2.5\nzip,007,x,\n"
    )
    assert (tmp_path / "csv" / "Sum.csv").read_text() == "7\n"


def _bad_files(folder: Path, made_dir: Path) -> None:
    (folder / "bad.json").write_text('{"sheets": ')
    (folder / "nosheets.json").write_text('{"tabs": {}}')
    (folder / "good.json").write_text('{"sheets": {"D": {"A1": 1}}}')
    for name, sheets in {
        "a0.json": {"D": {"A0": 1}},
        "ref.json": {"D": {"1A": 1}},
        "title.json": {"a/b": {"A1": 1}},
        "list.json": {"D": {"A1": [1, 2]}},
        "twice.json": {"Data": {"A1": 1}, "data": {"A1": 2}},
    }.items():
        (folder / name).write_text(json.dumps({"sheets": sheets}))
    (folder / "notes.pdf").write_text("%PDF-1.4\n")
    (folder / "text.xlsx").write_text("not a workbook\n")
    with zipfile.ZipFile(folder / "empty.xlsx", "w") as archive:
        archive.writestr("hello.txt", "hi")
    shutil.copyfile(made_dir / "book.xlsx", folder / "book.xlsx")
    shutil.copyfile(made_dir / "book.xlsx", folder / "book.csv")


BAD_INPUTS = [
    ("create.py", ["missing.json", "o.xlsx"], "no such file"),
    ("create.py", ["bad.json", "o.xlsx"], "invalid JSON"),
    ("create.py", ["nosheets.json", "o.xlsx"], "expected an object"),
    ("create.py", ["a0.json", "o.xlsx"], "outside the sheet"),
    ("create.py", ["ref.json", "o.xlsx"], "bad cell reference '1A'"),
    ("create.py", ["title.json", "o.xlsx"], "bad sheet name 'a/b'"),
    ("create.py", ["list.json", "o.xlsx"], "unsupported value"),
    ("create.py", ["twice.json", "o.xlsx"], "used twice"),
    ("create.py", ["notes.pdf", "o.xlsx"], "expected a .json description or a .csv"),
    ("create.py", ["a0.json", "o.ods"], "must end in .xlsx"),
    ("create.py", ["nosheets.json", "nodir/o.xlsx"], "no such directory"),
    ("create.py", ["good.json", "o.xlsx", "--cell", "A1"], "expected [SHEET!]REF=VALUE"),
    ("create.py", ["good.json", "o.xlsx", "--cell", "ZZZZ1=3"], "bad cell reference 'ZZZZ1'"),
    ("recalc.py", ["missing.xlsx"], "no such file"),
    ("recalc.py", ["text.xlsx"], "not a zip file"),
    ("recalc.py", ["empty.xlsx"], "no xl/workbook.xml"),
    ("recalc.py", ["book.csv"], "expected an .xlsx workbook"),
    ("recalc.py", ["book.xlsx", "--out", "r.pdf"], "must end in .xlsx"),
    ("recalc.py", ["book.xlsx", "--out", "nodir/r.xlsx"], "no such directory"),
    ("recalc.py", ["book.xlsx", "--timeout", "0"], "--timeout must be positive"),
    ("export.py", ["missing.xlsx"], "no such file"),
    ("export.py", ["text.xlsx", "--format", "md"], "not a zip file"),
    ("export.py", ["book.xlsx", "--sheet", "Nope"], "no sheet named 'Nope'"),
    ("export.py", ["book.xlsx"], "has 2 sheets (Data, My Report)"),
    ("export.py", ["book.xlsx", "--format", "md", "--out", "x.csv"], "does not match"),
    ("export.py", ["book.xlsx", "--out", "book.xlsx"], "is not a directory"),
]


@pytest.mark.parametrize(("script", "args", "fragment"), BAD_INPUTS)
def test_bad_input_is_one_error_line(
    made: dict[str, Any],
    run_skill: RunSkill,
    tmp_path: Path,
    script: str,
    args: list[str],
    fragment: str,
) -> None:
    _bad_files(tmp_path, made["dir"])
    assert_error(run_skill("xlsx", script, *args), fragment)
    assert not (tmp_path / "o.xlsx").exists()


def test_csv_sheet_name_and_absolute_reference(run_skill: RunSkill, tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("1\n2\n")
    proc = ok(
        run_skill(
            "xlsx",
            "create.py",
            "a.csv",
            "o.xlsx",
            "--sheet",
            "Nums",
            "--cell",
            "$B$1==A1+A2",
            "--json",
        )
    )
    assert last_json(proc)["sheets"] == [
        {"name": "Nums", "cells": 3, "formulas": 1, "range": "A1:B2"}
    ]
