#!/usr/bin/env python3
"""Merge PDFs (whole files or chosen pages of each) into one new PDF, in the order given."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from pdfcli import PdfError, guarded, open_pdf, output_file, parse_pages
from pypdf import PdfWriter


def split_source(arg: str) -> tuple[str, str | None]:
    """ "a.pdf" -> ("a.pdf", None); "a.pdf:2-4" -> ("a.pdf", "2-4") unless that file exists."""
    match = re.fullmatch(r"(.+):([0-9][0-9,\- ]*)", arg)
    if match and not Path(arg).exists():
        return match.group(1), match.group(2)
    return arg, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Merge PDFs into one new PDF, in the order given. Take only some pages "
        "of an input by appending :PAGES to its name, e.g. report.pdf:1-3,7."
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="PDF[:PAGES]",
        help="two or more PDFs, each optionally with a page selection",
    )
    parser.add_argument("-o", "--output", required=True, help="the merged PDF to write")
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"output", "page_count", "sources": [{"file", "pages"}]}',
    )
    args = parser.parse_args(argv)

    def body() -> int:
        if len(args.inputs) < 2:
            raise PdfError("name at least two PDFs to merge")
        sources = [split_source(arg) for arg in args.inputs]
        readers = [open_pdf(name) for name, _ in sources]
        out = output_file(args.output, [Path(name) for name, _ in sources])
        writer = PdfWriter()
        used: list[dict[str, object]] = []
        for (name, spec), reader in zip(sources, readers, strict=True):
            try:
                pages = parse_pages(spec, len(reader.pages))
            except PdfError as exc:
                raise PdfError(f"{name}: {exc}") from None
            writer.append(reader, pages=[page - 1 for page in pages], import_outline=spec is None)
            used.append({"file": name, "pages": pages})
        with out.open("wb") as handle:
            writer.write(handle)
        total = len(writer.pages)
        if args.json:
            print(json.dumps({"output": str(out), "page_count": total, "sources": used}))
        else:
            print(f"wrote {out}: {total} pages from {len(sources)} files")
        return 0

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
