#!/usr/bin/env python3
"""Extract the text of a PDF page by page, each page marked with its number."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pdfcli import guarded, need_tool, open_pdf, output_file, parse_pages, run_tool


def page_texts(pdf: Path, pages: list[int], layout: bool) -> dict[int, str]:
    """pdftotext over each run of consecutive pages; pages end with a form feed."""
    tool = need_tool("pdftotext")
    texts: dict[int, str] = {}
    runs: list[list[int]] = []
    for page in pages:
        if runs and runs[-1][-1] + 1 == page:
            runs[-1].append(page)
        else:
            runs.append([page])
    for run in runs:
        argv = [tool, "-q", "-enc", "UTF-8", "-f", str(run[0]), "-l", str(run[-1])]
        if layout:
            argv.append("-layout")
        chunks = run_tool([*argv, str(pdf), "-"]).split("\f")
        for offset, page in enumerate(run):
            text = chunks[offset] if offset < len(chunks) else ""
            texts[page] = "\n".join(line.rstrip() for line in text.strip("\n").splitlines())
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Extract the text of a PDF page by page (poppler's pdftotext). "
        "Each page is printed under a '=== page N of M ===' line; --json prints one "
        "JSON object instead. Pages without text (scans) are named at the end: OCR them "
        "with ocr.py first."
    )
    parser.add_argument("pdf", help="the PDF to read")
    parser.add_argument("--pages", help="pages to read, e.g. 1-3,5,8- (default: all)")
    parser.add_argument(
        "--layout", action="store_true", help="keep the physical layout (columns, table alignment)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"file", "page_count", "pages": [{"page", "text"}], '
        '"pages_without_text"} as one line',
    )
    parser.add_argument("-o", "--output", help="write the text (or JSON) to this file instead")
    args = parser.parse_args(argv)

    def body() -> int:
        reader = open_pdf(args.pdf)
        count = len(reader.pages)
        pages = parse_pages(args.pages, count)
        out = output_file(args.output, [Path(args.pdf)]) if args.output else None
        texts = page_texts(Path(args.pdf), pages, args.layout)
        empty = [page for page in pages if not texts[page].strip()]
        if args.json:
            result = {
                "file": args.pdf,
                "page_count": count,
                "pages": [{"page": page, "text": texts[page]} for page in pages],
                "pages_without_text": empty,
            }
            report = json.dumps(result, ensure_ascii=False)
        else:
            blocks = [f"=== page {page} of {count} ===\n{texts[page]}" for page in pages]
            report = "\n\n".join(blocks)
            if empty:
                report += (
                    f"\n\nnote: no text on page(s) {', '.join(map(str, empty))}: "
                    "a scan? run ocr.py to add a text layer"
                )
        if out is None:
            print(report)
        else:
            out.write_text(report + "\n", encoding="utf-8")
            print(f"wrote {out} ({len(pages)} page(s), {len(empty)} without text)")
        return 0

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
