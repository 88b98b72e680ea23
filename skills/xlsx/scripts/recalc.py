#!/usr/bin/env python3
"""Recalculate an .xlsx with LibreOffice headless and report every formula error by cell.

Exit status: 0 no formula errors, 3 formula errors found (listed), 1 bad input or
LibreOffice failure (one ``error:`` line on stderr).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from recalculation import DEFAULT_TIMEOUT, OfficeError, recalculate
from sheetdata import (
    BookError,
    cell_text,
    check_output_path,
    check_workbook_file,
    formula_text,
    load_book,
    one_line,
    qualified,
)

EXIT_FORMULA_ERRORS = 3


def formulas_of(book: Any) -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for sheet in book.worksheets:
        for row in sheet.iter_rows():
            for cell in row:
                text = formula_text(cell.value)
                if text is not None:
                    found[(sheet.title, cell.coordinate)] = text
    return found


def check(book_path: Path, out: Path | None, timeout: float) -> dict[str, Any]:
    check_workbook_file(book_path)
    if out is not None:
        check_output_path(out, ".xlsx")
    formulas = formulas_of(load_book(book_path, data_only=False))
    with tempfile.TemporaryDirectory(prefix="xlsx-recalc-") as tmp:
        recalculated = recalculate(book_path, Path(tmp), timeout=timeout)
        values = load_book(recalculated, data_only=True)
        errors: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for sheet in values.worksheets:
            for row in sheet.iter_rows():
                for cell in row:
                    key = (sheet.title, cell.coordinate)
                    formula = formulas.get(key)
                    entry = {
                        "sheet": sheet.title,
                        "cell": cell.coordinate,
                        "ref": qualified(*key),
                        "formula": formula,
                    }
                    if cell.data_type == "e":
                        errors.append({**entry, "error": str(cell.value)})
                    if formula is not None:
                        results.append({**entry, "value": cell.value})
        if out is not None:
            shutil.copyfile(recalculated, out)
    return {
        "file": str(book_path),
        "out": str(out) if out else None,
        "formulas": len(formulas),
        "error_count": len(errors),
        "errors": errors,
        "values": results,
    }


def describe_error(error: dict[str, Any]) -> str:
    suffix = f" (formula {error['formula']})" if error["formula"] else " (a constant, no formula)"
    return f"{error['ref']}: {error['error']}{suffix}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Recalculate every formula of an .xlsx with LibreOffice headless and list "
        "each cell whose result is an error (#REF!, #DIV/0!, #NAME?, #VALUE!, #N/A, #NUM!, "
        "#NULL!). Exit 0: no errors; 3: errors found; 1: bad input or LibreOffice failed.",
    )
    parser.add_argument("book", help="the workbook (.xlsx)")
    parser.add_argument("--out", help="write the recalculated workbook (with stored results) here")
    parser.add_argument(
        "--values", action="store_true", help="also list every formula cell with its computed value"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object as last line")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds LibreOffice may take (default {DEFAULT_TIMEOUT:.0f})",
    )
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        print("error: --timeout must be positive", file=sys.stderr)
        return 1
    try:
        report = check(Path(args.book), Path(args.out) if args.out else None, args.timeout)
    except (BookError, OfficeError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1
    count = report["error_count"]
    summary = f"{count} formula error(s)" if count else "no formula errors"
    print(f"recalculated {report['file']}: {report['formulas']} formula(s), {summary}")
    for error in report["errors"]:
        print(describe_error(error))
    if args.values:
        for item in report["values"]:
            print(f"{item['ref']} = {cell_text(item['value'])}  ({item['formula']})")
    if report["out"]:
        print(f"wrote {report['out']}")
    if args.json:
        if not args.values:
            del report["values"]
        print(json.dumps(report, default=cell_text))
    return EXIT_FORMULA_ERRORS if count else 0


if __name__ == "__main__":
    sys.exit(main())
