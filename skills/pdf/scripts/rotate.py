#!/usr/bin/env python3
"""Rotate pages of a PDF by a multiple of 90 degrees, writing a new PDF."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pdfcli import PdfError, guarded, open_pdf, output_file, parse_pages
from pypdf import PdfWriter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Rotate pages of a PDF clockwise by 90, 180 or 270 degrees (negative "
        "turns counter-clockwise) and write a new PDF. The turn adds to a page's current "
        "rotation unless --absolute sets it."
    )
    parser.add_argument("pdf", help="the PDF to rotate")
    parser.add_argument("-o", "--output", required=True, help="the rotated PDF to write")
    parser.add_argument(
        "--angle", required=True, help="90, 180, 270 (or -90...); with --absolute also 0"
    )
    parser.add_argument("--pages", help="pages to rotate, e.g. 1,3-4 (default: all)")
    parser.add_argument(
        "--absolute",
        action="store_true",
        help="set the pages' rotation to ANGLE instead of adding to it",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"output", "pages": [{"page", "before", "after"}]}',
    )
    args = parser.parse_args(argv)

    def body() -> int:
        try:
            angle = int(args.angle)
        except ValueError:
            raise PdfError(f"bad angle {args.angle!r}: use 90, 180 or 270") from None
        if angle % 90 != 0 or (angle % 360 == 0 and not args.absolute):
            raise PdfError(f"bad angle {args.angle!r}: use 90, 180 or 270")
        reader = open_pdf(args.pdf)
        pages = parse_pages(args.pages, len(reader.pages))
        out = output_file(args.output, [Path(args.pdf)])
        writer = PdfWriter(clone_from=reader)
        changes: list[dict[str, int]] = []
        for number in pages:
            page = writer.pages[number - 1]
            before = page.rotation % 360
            after = angle % 360 if args.absolute else (before + angle) % 360
            page.rotation = after
            changes.append({"page": number, "before": before, "after": after})
        with out.open("wb") as handle:
            writer.write(handle)
        if args.json:
            print(json.dumps({"output": str(out), "pages": changes}))
        else:
            for change in changes:
                print(f"page {change['page']}: {change['before']} -> {change['after']} degrees")
            print(f"wrote {out}")
        return 0

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
