#!/usr/bin/env python3
"""Split a PDF into one file per page, or one file per page range."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pdfcli import guarded, open_pdf, output_dir, parse_ranges
from pypdf import PdfWriter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Split a PDF into one file per page (default) or one file per range "
        "given with --ranges. Files are named <prefix>-p<first>[-<last>].pdf, page numbers "
        "zero-padded (report-p007.pdf, report-p001-003.pdf)."
    )
    parser.add_argument("pdf", help="the PDF to split")
    parser.add_argument("--out-dir", required=True, help="folder for the parts (made if missing)")
    parser.add_argument("--ranges", help="one part per range, e.g. 1-3,4-6,7- (default: each page)")
    parser.add_argument("--prefix", help="file name start (default: the input's name)")
    parser.add_argument(
        "--json", action="store_true", help='print {"files": [{"path", "first", "last", "pages"}]}'
    )
    args = parser.parse_args(argv)

    def body() -> int:
        reader = open_pdf(args.pdf)
        count = len(reader.pages)
        ranges = (
            parse_ranges(args.ranges, count)
            if args.ranges
            else [(page, page) for page in range(1, count + 1)]
        )
        folder = output_dir(args.out_dir)
        prefix = args.prefix or Path(args.pdf).stem
        width = max(3, len(str(count)))
        written: list[dict[str, object]] = []
        for first, last in ranges:
            span = f"{first:0{width}d}" if first == last else f"{first:0{width}d}-{last:0{width}d}"
            path = folder / f"{prefix}-p{span}.pdf"
            writer = PdfWriter()
            writer.append(reader, pages=list(range(first - 1, last)), import_outline=False)
            with path.open("wb") as handle:
                writer.write(handle)
            written.append(
                {"path": str(path), "first": first, "last": last, "pages": last - first + 1}
            )
        if args.json:
            print(json.dumps({"file": args.pdf, "files": written}))
        else:
            for item in written:
                first, last = item["first"], item["last"]
                print(
                    f"{item['path']}: "
                    + (f"page {first}" if first == last else f"pages {first}-{last}")
                )
            print(f"wrote {len(written)} files to {folder}")
        return 0

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
