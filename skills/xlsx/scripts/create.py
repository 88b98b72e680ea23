#!/usr/bin/env python3
"""Create an .xlsx workbook with values and formulas from a JSON description or a CSV file."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from sheetdata import BookError, check_output_path, one_line

_INT = re.compile(r"^[-+]?(0|[1-9][0-9]*)$")
_FLOAT = re.compile(r"^[-+]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][-+]?[0-9]+)?$")
_REF = re.compile(r"^\$?([A-Za-z]{1,3})\$?([0-9]+)$")
_BAD_TITLE = re.compile(r"[\\*?:/\[\]]")
_SHEET_KEYS = {"rows", "start", "cells", "widths"}
_CELL_KEYS = {"value", "date", "number_format", "bold"}
MAX_ROW, MAX_COL = 1_048_576, 16_384
# Functions newer than Excel 2007: the file format stores them as _xlfn.NAME, and both
# Excel and LibreOffice read the bare name as an unknown function (#NAME?).
_NEW_FUNCTION_NAMES = (
    "AGGREGATE BITAND BITLSHIFT BITOR BITRSHIFT BITXOR CEILING.MATH CEILING.PRECISE CONCAT "
    "COVARIANCE.P COVARIANCE.S DAYS FILTER FLOOR.MATH FLOOR.PRECISE FORMULATEXT IFNA IFS "
    "ISFORMULA ISOWEEKNUM LET MAXIFS MINIFS MODE.MULT MODE.SNGL NORM.DIST NORM.INV "
    "NORM.S.DIST NORM.S.INV NUMBERVALUE PERCENTILE.EXC PERCENTILE.INC QUARTILE.EXC "
    "QUARTILE.INC RANDARRAY RANK.AVG RANK.EQ SEQUENCE SHEET SHEETS SORT SORTBY STDEV.P "
    "STDEV.S SWITCH TEXTJOIN UNICHAR UNICODE UNIQUE VAR.P VAR.S XLOOKUP XMATCH XOR"
)
NEW_FUNCTIONS = _NEW_FUNCTION_NAMES.split()
_NEW_CALL = re.compile(
    r"(?<![A-Za-z0-9_.])(" + "|".join(re.escape(n) for n in NEW_FUNCTIONS) + r")(?=\s*\()",
    re.IGNORECASE,
)

EXAMPLE = """\
JSON description:
  {"sheets": {
     "Data": {"A1": "Item", "B1": "Qty", "A2": "pens", "B2": 3, "B3": "=SUM(B2:B2)"},
     "Report": {"rows": [["Name", "Total"], ["all", "=Data!B3"]],
                "cells": {"C2": {"value": 0.25, "number_format": "0%", "bold": true}},
                "widths": {"A": 20}}}}
Strings starting with '=' are formulas. CSV input: one sheet, numbers become numbers,
fields starting with '=' become formulas; add cells with --cell 'D2==B2*C2'."""


def check_title(title: Any) -> str:
    if not isinstance(title, str) or not title.strip():
        raise BookError(f"bad sheet name {title!r}: it must be a non-empty string")
    if len(title) > 31:
        raise BookError(f"bad sheet name '{title}': longer than 31 characters")
    if _BAD_TITLE.search(title) or title.startswith("'") or title.endswith("'"):
        raise BookError(
            f"bad sheet name '{title}': it may not contain \\ / * ? : [ ] or edge quotes"
        )
    return title


def parse_ref(ref: Any) -> tuple[int, int]:
    """(row, column) of a cell reference like ``B7``; BookError when malformed."""
    match = _REF.match(ref) if isinstance(ref, str) else None
    if not match:
        raise BookError(f"bad cell reference {ref!r} (expected e.g. A1 or BC12)")
    from openpyxl.utils.cell import column_index_from_string

    column = column_index_from_string(match.group(1).upper())
    row = int(match.group(2))
    if not (1 <= row <= MAX_ROW and 1 <= column <= MAX_COL):
        raise BookError(f"cell reference {ref!r} is outside the sheet (A1:XFD1048576)")
    return row, column


def with_xlfn(formula: str) -> str:
    """``=IFS(...)`` -> ``=_xlfn.IFS(...)`` for post-2007 functions, outside string literals."""
    parts = re.split(r'("(?:[^"]|"")*")', formula)
    return "".join(
        part if part.startswith('"') else _NEW_CALL.sub(lambda m: "_xlfn." + m[1].upper(), part)
        for part in parts
    )


def text_value(text: str) -> Any:
    """A CSV field or --cell value: number, formula (=...) or text; empty means no value."""
    stripped = text.strip()
    if stripped == "":
        return None
    if stripped.startswith("="):
        return stripped
    if re.match(r"^[-+]?0[0-9]", stripped):
        return text  # leading zeros (codes, ZIPs) stay text
    if _INT.match(stripped):
        return int(stripped)
    if _FLOAT.match(stripped):
        return float(stripped)
    return text


def json_value(value: Any, where: str) -> tuple[Any, dict[str, Any]]:
    """A JSON cell value -> (value, style options)."""
    if isinstance(value, dict):
        unknown = set(value) - _CELL_KEYS
        if unknown:
            raise BookError(
                f"{where}: unknown cell keys {sorted(unknown)} (allowed: {sorted(_CELL_KEYS)})"
            )
        style = {k: value[k] for k in ("number_format", "bold") if k in value}
        if "date" in value:
            try:
                parsed = dt.datetime.fromisoformat(str(value["date"]))
            except ValueError:
                raise BookError(f"{where}: bad date {value['date']!r} (use YYYY-MM-DD)") from None
            style.setdefault(
                "number_format", "yyyy-mm-dd" if parsed.time() == dt.time() else "yyyy-mm-dd hh:mm"
            )
            return parsed, style
        inner, _ = json_value(value.get("value"), where)
        return inner, style
    if isinstance(value, float) and not math.isfinite(value):
        raise BookError(f"{where}: {value} is not a number a spreadsheet can hold")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value, {}
    raise BookError(f"{where}: unsupported value {value!r} (use a number, string, bool or null)")


class Builder:
    """Collects cells per sheet, then writes them with openpyxl."""

    def __init__(self) -> None:
        self.sheets: dict[str, dict[tuple[int, int], tuple[Any, dict[str, Any]]]] = {}
        self.widths: dict[str, dict[str, float]] = {}

    def sheet(self, title: str) -> dict[tuple[int, int], tuple[Any, dict[str, Any]]]:
        for existing in self.sheets:
            if existing.lower() == title.lower():
                return self.sheets[existing]
        check_title(title)
        self.widths[title] = {}
        return self.sheets.setdefault(title, {})

    def add_json_sheet(self, title: str, spec: Any) -> None:
        if any(t.lower() == title.lower() for t in self.sheets):
            raise BookError(f"sheet name '{title}' is used twice")
        cells = self.sheet(title)
        if not isinstance(spec, dict):
            raise BookError(f"sheet '{title}': expected an object of cells, or rows/cells")
        structured = bool(spec) and set(spec) <= _SHEET_KEYS
        if not structured:
            self._put_cells(title, cells, spec)
            return
        start_row, start_col = parse_ref(spec.get("start", "A1"))
        rows = spec.get("rows", [])
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise BookError(f"sheet '{title}': 'rows' must be a list of lists")
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                where = f"sheet '{title}' rows[{r}][{c}]"
                if start_row + r > MAX_ROW or start_col + c > MAX_COL:
                    raise BookError(f"{where}: outside the sheet")
                cells[(start_row + r, start_col + c)] = json_value(value, where)
        self._put_cells(title, cells, spec.get("cells", {}))
        widths = spec.get("widths", {})
        if not isinstance(widths, dict):
            raise BookError(f"sheet '{title}': 'widths' must map column letters to widths")
        for column, width in widths.items():
            if not re.match(r"^[A-Za-z]{1,3}$", str(column)):
                raise BookError(f"sheet '{title}': bad column {column!r} in 'widths'")
            if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
                raise BookError(f"sheet '{title}': bad width {width!r} for column {column}")
            self.widths[title][str(column).upper()] = float(width)

    def _put_cells(self, title: str, cells: dict[tuple[int, int], Any], spec: Any) -> None:
        if not isinstance(spec, dict):
            raise BookError(f"sheet '{title}': 'cells' must be an object of cell: value")
        for ref, value in spec.items():
            where = f"sheet '{title}' cell {ref}"
            if ref in _SHEET_KEYS:
                raise BookError(
                    f"sheet '{title}': '{ref}' mixed with cell references; put "
                    "single cells under 'cells'"
                )
            cells[parse_ref(ref)] = json_value(value, where)

    def add_rows(self, title: str, rows: list[list[str]]) -> None:
        cells = self.sheet(title)
        for r, row in enumerate(rows, start=1):
            if r > MAX_ROW or len(row) > MAX_COL:
                raise BookError(f"row {r}: outside the sheet (A1:XFD1048576)")
            for c, field in enumerate(row, start=1):
                cells[(r, c)] = (text_value(field), {})

    def set_cell(self, spec: str, default_sheet: str) -> None:
        target, sep, text = spec.partition("=")
        if not sep:
            raise BookError(f"--cell {spec!r}: expected [SHEET!]REF=VALUE, e.g. D2==B2*C2")
        sheet, bang, ref = target.rpartition("!")
        title = sheet.strip() if bang else default_sheet
        if len(title) >= 2 and title[0] == title[-1] == "'":
            title = title[1:-1].replace("''", "'")
        self.sheet(title)[parse_ref(ref.strip())] = (text_value(text), {})

    def save(self, out: Path) -> list[dict[str, Any]]:
        from openpyxl import Workbook
        from openpyxl.styles import Font

        if not self.sheets:
            raise BookError("the description has no sheets")
        book = Workbook()
        book.remove(book.active)
        summary = []
        for title, cells in self.sheets.items():
            sheet = book.create_sheet(title)
            formulas = 0
            for (row, column), (value, style) in sorted(cells.items()):
                if value is None and not style:
                    continue
                cell = sheet.cell(row=row, column=column)
                if isinstance(value, str) and value.startswith("="):
                    value = with_xlfn(value)
                cell.value = value
                formulas += cell.data_type == "f"
                if "number_format" in style:
                    cell.number_format = str(style["number_format"])
                if style.get("bold"):
                    cell.font = Font(bold=True)
            for column, width in self.widths.get(title, {}).items():
                sheet.column_dimensions[column].width = width
            used = sum(1 for v, s in cells.values() if v is not None or s)
            dims = sheet.dimensions if used else ""
            summary.append({"name": title, "cells": used, "formulas": formulas, "range": dims})
        try:
            book.save(out)
        except OSError as exc:
            raise BookError(f"{out}: cannot write ({exc.strerror or exc})") from None
        return summary


def load_json(path: str) -> Any:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise BookError(f"{path}: not UTF-8 text") from None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BookError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("sheets"), dict):
        raise BookError(f'{path}: expected an object {{"sheets": {{"Name": {{"A1": ...}}}}}}')
    unknown = set(spec) - {"sheets"}
    if unknown:
        raise BookError(f"{path}: unknown top-level keys {sorted(unknown)}")
    if not spec["sheets"]:
        raise BookError(f"{path}: 'sheets' is empty")
    return spec


def load_csv(path: Path, delimiter: str) -> list[list[str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return list(csv.reader(handle, delimiter=delimiter))
    except UnicodeDecodeError:
        raise BookError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise BookError(f"{path}: malformed CSV ({exc})") from None


def csv_sheet_name(path: Path) -> str:
    name = _BAD_TITLE.sub("_", path.stem).strip("'")[:31]
    return name or "Sheet1"


def build(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    check_output_path(out, ".xlsx")
    builder = Builder()
    source = args.source
    if source != "-":
        path = Path(source)
        if not path.is_file():
            raise BookError(f"{path}: no such file")
    suffix = "" if source == "-" else Path(source).suffix.lower()
    if source == "-" or suffix == ".json":
        if args.sheet:
            raise BookError("--sheet names the sheet of a CSV input; a JSON input names its own")
        for title, sheet_spec in load_json(source)["sheets"].items():
            builder.add_json_sheet(check_title(title), sheet_spec)
    elif suffix in (".csv", ".tsv", ".txt"):
        delimiter = "\t" if suffix == ".tsv" and args.delimiter == "," else args.delimiter
        title = check_title(args.sheet) if args.sheet else csv_sheet_name(Path(source))
        builder.add_rows(title, load_csv(Path(source), delimiter))
    else:
        raise BookError(f"{source}: expected a .json description or a .csv file")
    first = next(iter(builder.sheets))
    for spec in args.cell:
        builder.set_cell(spec, first)
    sheets = builder.save(out)
    return {"out": str(out), "sheets": sheets}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Create an .xlsx workbook (values and formulas) from a JSON description "
        "or a CSV file. Formulas are stored without results: run recalc.py next.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="description.json ('-' reads JSON from stdin) or data.csv")
    parser.add_argument("out", help="the workbook to write (.xlsx)")
    parser.add_argument("--sheet", help="sheet name for a CSV input (default: the CSV's name)")
    parser.add_argument(
        "--cell",
        action="append",
        default=[],
        metavar="[SHEET!]REF=VALUE",
        help="set one cell after loading, e.g. 'D2==B2*C2' or 'Sum!A1=Total' "
        "(repeatable; default sheet: the first)",
    )
    parser.add_argument("--delimiter", default=",", help="CSV field delimiter (default ',')")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as last line")
    args = parser.parse_args(argv)
    if len(args.delimiter) != 1:
        print("error: --delimiter must be one character", file=sys.stderr)
        return 1
    try:
        result = build(args)
    except BookError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1
    formulas = sum(s["formulas"] for s in result["sheets"])
    print(f"wrote {result['out']}: {len(result['sheets'])} sheet(s), {formulas} formula(s)")
    for sheet in result["sheets"]:
        print(
            f"  {sheet['name']}: {sheet['cells']} cell(s), {sheet['formulas']} formula(s)"
            + (f", {sheet['range']}" if sheet["range"] else "")
        )
    if formulas:
        print("formulas have no computed values yet: run recalc.py on the workbook")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
