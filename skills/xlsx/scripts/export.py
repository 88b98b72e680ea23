#!/usr/bin/env python3
"""Export the sheets of an .xlsx to CSV files or Markdown tables (values, not formulas)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from recalculation import DEFAULT_TIMEOUT, OfficeError, recalculate
from sheetdata import (
    BookError,
    cell_text,
    check_workbook_file,
    is_formula_cell,
    load_book,
    one_line,
    pick_sheets,
    used_grid,
)


def to_csv(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow([cell_text(v) for v in row])
    return buffer.getvalue()


def md_cell(value: Any) -> str:
    text = cell_text(value).replace("\\", "\\\\").replace("|", "\\|")
    return "<br>".join(text.splitlines())


def to_markdown(title: str, rows: list[list[Any]]) -> str:
    lines = [f"## {title}", ""]
    if not rows:
        lines.append("_(empty sheet)_")
    else:
        lines.append("| " + " | ".join(md_cell(v) for v in rows[0]) + " |")
        lines.append("|" + "|".join("---" for _ in rows[0]) + "|")
        lines.extend("| " + " | ".join(md_cell(v) for v in row) + " |" for row in rows[1:])
    return "\n".join(lines) + "\n"


def file_name(title: str) -> str:
    return re.sub(r'[\\/:*?"<>|\x00-\x1f]', "_", title).lstrip(".") or "sheet"


def uncomputed_formulas(book_path: Path, values: Any, titles: list[str]) -> int:
    formulas = load_book(book_path, data_only=False)
    missing = 0
    for title in titles:
        sheet, cached = formulas[title], values[title]
        for row in sheet.iter_rows():
            for cell in row:
                if is_formula_cell(cell) and cached[cell.coordinate].value is None:
                    missing += 1
    return missing


def read_values(book_path: Path, recalc: bool, timeout: float) -> Any:
    """The workbook of stored values, recalculated by LibreOffice first when asked."""
    if not recalc:
        return load_book(book_path, data_only=True)
    with tempfile.TemporaryDirectory(prefix="xlsx-export-") as tmp:
        return load_book(recalculate(book_path, Path(tmp), timeout=timeout), data_only=True)


def export(args: argparse.Namespace) -> dict[str, Any]:
    book_path = Path(args.book)
    check_workbook_file(book_path)
    out = Path(args.out) if args.out else None
    fmt = args.format
    if out is not None and out.suffix.lower() in (".csv", ".md") and out.suffix[1:] != fmt:
        raise BookError(f"{out}: the suffix does not match --format {fmt}")
    values = read_values(book_path, args.recalc, args.timeout)
    sheets = pick_sheets(values, args.sheet)
    titles = [s.title for s in sheets]
    missing = 0 if args.recalc else uncomputed_formulas(book_path, values, titles)
    grids = [(s.title, list(used_grid(s))) for s in sheets]
    result: dict[str, Any] = {
        "file": str(book_path),
        "format": fmt,
        "files": [],
        "uncomputed_formulas": missing,
        "sheets": [{"name": t, "rows": len(g), "columns": len(g[0]) if g else 0} for t, g in grids],
    }
    texts = [to_csv(g) if fmt == "csv" else to_markdown(t, g) for t, g in grids]
    if fmt == "md":
        document = "\n".join(texts)
        if out is None:
            result["text"] = document
        else:
            write(out, document)
            result["files"].append(str(out))
        return result
    if out is None or out.suffix.lower() == ".csv":
        if len(grids) != 1:
            names = ", ".join(t for t, _ in grids)
            raise BookError(
                f"the workbook has {len(grids)} sheets ({names}): name one with "
                "--sheet, or give --out DIR for one CSV per sheet"
            )
        if out is None:
            result["text"] = texts[0]
        else:
            write(out, texts[0])
            result["files"].append(str(out))
        return result
    if out.exists() and not out.is_dir():
        raise BookError(f"{out}: exists and is not a directory")
    if not out.parent.is_dir():
        raise BookError(f"{out.parent}: no such directory")
    out.mkdir(exist_ok=True)
    used: set[str] = set()
    for (title, _), text in zip(grids, texts, strict=True):
        name = file_name(title)
        while name.lower() in used:
            name += "_"
        used.add(name.lower())
        write(out / f"{name}.csv", text)
        result["files"].append(str(out / f"{name}.csv"))
    return result


def write(path: Path, text: str) -> None:
    if not path.parent.is_dir():
        raise BookError(f"{path.parent}: no such directory")
    try:
        path.write_text(text, encoding="utf-8", newline="")
    except OSError as exc:
        raise BookError(f"{path}: cannot write ({exc.strerror or exc})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Export sheets of an .xlsx to CSV or Markdown tables. Cells give their "
        "stored values (openpyxl does not compute formulas): use --recalc to compute them "
        "with LibreOffice first.",
    )
    parser.add_argument("book", help="the workbook (.xlsx)")
    parser.add_argument(
        "--format",
        choices=("csv", "md"),
        default="csv",
        help="csv (default) or md (Markdown tables, one '## Sheet' each)",
    )
    parser.add_argument("--sheet", help="only this sheet (default: all)")
    parser.add_argument(
        "--out",
        help="file to write (.csv/.md), or for CSV of several sheets "
        "a directory (one SHEET.csv each); default: stdout",
    )
    parser.add_argument(
        "--recalc",
        action="store_true",
        help="recalculate with LibreOffice first (fresh formula results)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object as last line")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds LibreOffice may take with --recalc",
    )
    args = parser.parse_args(argv)
    try:
        result = export(args)
    except (BookError, OfficeError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1
    if result["uncomputed_formulas"]:
        print(
            f"warning: {result['uncomputed_formulas']} formula cell(s) have no stored result "
            "and export empty; rerun with --recalc",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(result))
        return 0
    if "text" in result:
        sys.stdout.write(result["text"])
    for path in result["files"]:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
