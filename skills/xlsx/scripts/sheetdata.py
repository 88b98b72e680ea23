"""Open .xlsx workbooks safely and turn their cells into text (shared by the xlsx scripts)."""

from __future__ import annotations

import datetime as dt
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

WORKBOOK_SUFFIXES = (".xlsx", ".xlsm")
ERROR_CODES = ("#NULL!", "#DIV/0!", "#VALUE!", "#REF!", "#NAME?", "#NUM!", "#N/A")
_PLAIN_SHEET = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_CELL_LIKE = re.compile(r"^[A-Za-z]{1,3}[0-9]+$")
_FUTURE_PREFIX = re.compile(r"_xl(?:fn|ws)\.", re.IGNORECASE)


class BookError(Exception):
    """Bad input: the message is the reason, printed as one ``error:`` line."""


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def check_workbook_file(path: Path) -> None:
    """Raise BookError unless ``path`` is an existing .xlsx/.xlsm (a zip holding a workbook)."""
    if not path.exists():
        raise BookError(f"{path}: no such file")
    if not path.is_file():
        raise BookError(f"{path}: not a file")
    if path.suffix.lower() not in WORKBOOK_SUFFIXES:
        raise BookError(f"{path}: expected an .xlsx workbook (got '{path.suffix or 'no suffix'}')")
    if not zipfile.is_zipfile(path):
        raise BookError(f"{path}: not an xlsx workbook (not a zip file; encrypted or .xls?)")
    with zipfile.ZipFile(path) as archive:
        if "xl/workbook.xml" not in archive.namelist():
            raise BookError(f"{path}: not an xlsx workbook (no xl/workbook.xml inside)")


def load_book(path: Path, *, data_only: bool) -> Any:
    """openpyxl's workbook for ``path``; data_only=True gives the cached values of formulas."""
    check_workbook_file(path)
    import openpyxl

    try:
        return openpyxl.load_workbook(path, data_only=data_only)
    except Exception as exc:  # openpyxl raises many kinds on a damaged file
        raise BookError(f"{path}: cannot read the workbook ({type(exc).__name__}: {exc})") from None


def check_output_path(path: Path, suffix: str) -> None:
    if path.suffix.lower() != suffix:
        raise BookError(f"{path}: the output must end in {suffix}")
    if not path.parent.is_dir():
        raise BookError(f"{path.parent}: no such directory for the output")
    if path.is_dir():
        raise BookError(f"{path}: is a directory")


def qualified(sheet: str, coordinate: str) -> str:
    """``Data!A1``, or ``'My Sheet'!A1`` when the sheet name needs quotes in a formula."""
    if _PLAIN_SHEET.match(sheet) and not _CELL_LIKE.match(sheet):
        return f"{sheet}!{coordinate}"
    return "'{}'!{}".format(sheet.replace("'", "''"), coordinate)


def formula_text(value: Any) -> str | None:
    """The formula of a cell as Excel shows it (``=SUM(A1:A2)``), or None when it holds none.

    The file's ``_xlfn.``/``_xlws.`` prefixes of newer functions are left out, as Excel does.
    """
    text = getattr(value, "text", value)  # openpyxl's ArrayFormula keeps it in .text
    if isinstance(text, str) and (text.startswith("=") or text is not value):
        shown = _FUTURE_PREFIX.sub("", text)
        return shown if shown.startswith("=") else f"={shown}"
    if type(value).__name__ == "DataTableFormula":
        return "{=TABLE()}"
    return None


def is_formula_cell(cell: Any) -> bool:
    return bool(cell.data_type == "f" or formula_text(cell.value) is not None)


def cell_text(value: Any) -> str:
    """A cell value as CSV/Markdown text: numbers without a spurious .0, ISO dates, TRUE/FALSE."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    if isinstance(value, dt.datetime):
        if value.time() == dt.time(0, 0):
            return value.date().isoformat()
        return value.isoformat(sep=" ")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(value)
    return str(value)


def pick_sheets(book: Any, name: str | None) -> list[Any]:
    """All worksheets of ``book``, or the one called ``name`` (BookError if there is none)."""
    sheets = list(book.worksheets)
    if name is None:
        return sheets
    for sheet in sheets:
        if sheet.title == name:
            return [sheet]
    for sheet in sheets:
        if sheet.title.lower() == name.lower():
            return [sheet]
    names = ", ".join(s.title for s in sheets)
    raise BookError(f"no sheet named '{name}' (sheets: {names})")


def used_grid(sheet: Any) -> Iterator[list[Any]]:
    """Rows of values from A1 to the last row and column that hold a value."""
    last_row = last_col = 0
    for row in sheet.iter_rows():
        for cell in row:
            if cell.value is not None and cell.value != "":
                last_row = max(last_row, cell.row)
                last_col = max(last_col, cell.column)
    if last_row == 0:
        return
    yield from (
        list(row)
        for row in sheet.iter_rows(
            min_row=1, max_row=last_row, min_col=1, max_col=last_col, values_only=True
        )
    )
