#!/usr/bin/env python3
"""Extract the tables of a PDF (pdfplumber) as CSV or Markdown, named by page and index."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pdfplumber
from pdfcli import PdfError, guarded, open_pdf, output_dir, parse_pages

STRATEGIES = {
    # ruled tables: cell borders drawn as lines
    "lines": {"vertical_strategy": "lines", "horizontal_strategy": "lines"},
    # tables without rules: columns guessed from how words line up
    "text": {"vertical_strategy": "text", "horizontal_strategy": "text"},
}


@dataclass
class Table:
    page: int
    index: int  # on its page, from 1
    rows: int
    columns: int
    cells: list[list[str]]
    path: str | None = None


def to_csv(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def to_markdown(rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        text = (" ".join(cell.split()).replace("|", "\\|") for cell in cells)
        return "| " + " | ".join(text) + " |"

    header, *body = rows
    rule = "|" + "|".join("---" for _ in header) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in body)]) + "\n"


def find_tables(pdf: Path, pages: list[int], strategy: str) -> list[Table]:
    """Every non-empty table on ``pages``, in page order."""
    found: list[Table] = []
    try:
        document = pdfplumber.open(pdf)
    except Exception as exc:
        raise PdfError(f"{pdf}: pdfplumber cannot open it ({type(exc).__name__})") from None
    with document:
        for number in pages:
            page = document.pages[number - 1]
            index = 0
            for table in page.extract_tables(STRATEGIES[strategy]):
                rows = [["" if cell is None else str(cell) for cell in row] for row in table]
                if strategy == "text":  # gaps between text lines come out as empty rows
                    rows = [row for row in rows if any(cell.strip() for cell in row)]
                if not any(cell.strip() for row in rows for cell in row):
                    continue
                width = max(len(row) for row in rows)
                rows = [row + [""] * (width - len(row)) for row in rows]
                index += 1
                found.append(Table(number, index, len(rows), width, rows))
            page.close()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Extract the tables of a PDF with pdfplumber. Each table is named by "
        "its page and its index on that page (from 1) and printed as Markdown or CSV, or "
        "written to DIR/page<P>-table<T>.md|.csv with --out-dir."
    )
    parser.add_argument("pdf", help="the PDF to read")
    parser.add_argument("--pages", help="pages to search, e.g. 1-3,5,8- (default: all)")
    parser.add_argument(
        "--format",
        choices=("markdown", "csv"),
        default="markdown",
        help="how to write each table (default: markdown)",
    )
    parser.add_argument(
        "--strategy",
        choices=tuple(STRATEGIES),
        default="lines",
        help="lines: tables with ruled cells (default); text: columns aligned by whitespace only",
    )
    parser.add_argument("--out-dir", help="write one file per table into this folder")
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"file", "tables": [{"page", "index", "rows", "columns", '
        '"cells", "path"}]} as one line',
    )
    args = parser.parse_args(argv)

    def body() -> int:
        count = len(open_pdf(args.pdf).pages)
        pages = parse_pages(args.pages, count)
        folder = output_dir(args.out_dir) if args.out_dir else None
        tables = find_tables(Path(args.pdf), pages, args.strategy)
        render = to_csv if args.format == "csv" else to_markdown
        suffix = "csv" if args.format == "csv" else "md"
        lines: list[str] = []
        for table in tables:
            title = (
                f"page {table.page}, table {table.index} "
                f"({table.rows} rows x {table.columns} columns)"
            )
            if folder is not None:
                path = folder / f"page{table.page}-table{table.index}.{suffix}"
                path.write_text(render(table.cells), encoding="utf-8")
                table.path = str(path)
                lines.append(f"{title}: {path}")
            else:
                lines.append(f"=== {title} ===\n{render(table.cells)}")
        if args.json:
            found = [asdict(table) for table in tables]
            print(json.dumps({"file": args.pdf, "tables": found}, ensure_ascii=False))
        elif tables:
            print("\n".join(lines).rstrip("\n"))
        else:
            hint = " (try --strategy text)" if args.strategy == "lines" else ""
            print(f"no tables found on page(s) {args.pages or f'1-{count}'}{hint}")
        return 0

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
