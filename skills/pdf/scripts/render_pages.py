#!/usr/bin/env python3
"""Render pages of a PDF to PNG images at a chosen DPI, one file per page."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pdfcli import guarded, output_dir, parse_pages
from pdfrender import check_dpi, open_document, render_png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Render pages of a PDF to PNG with PDFium (form fields drawn, page "
        "rotation applied). Files are named <prefix>-p<page>.png, page numbers zero-padded "
        "(report-p001.png); a page W x H points becomes W*DPI/72 x H*DPI/72 pixels."
    )
    parser.add_argument("pdf", help="the PDF to render")
    parser.add_argument("--out-dir", required=True, help="folder for the PNGs (made if missing)")
    parser.add_argument("--dpi", default="150", help="resolution, 10-1200 (default 150)")
    parser.add_argument("--pages", help="pages to render, e.g. 1-3,5 (default: all)")
    parser.add_argument("--prefix", help="file name start (default: the input's name)")
    parser.add_argument("--gray", action="store_true", help="render in grayscale")
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"files": [{"page", "path", "width", "height"}], "dpi"}',
    )
    args = parser.parse_args(argv)

    def body() -> int:
        dpi = check_dpi(args.dpi)
        document = open_document(args.pdf)
        try:
            count = len(document)
            pages = parse_pages(args.pages, count)
            folder = output_dir(args.out_dir)
            prefix = args.prefix or Path(args.pdf).stem
            width = max(3, len(str(count)))
            files: list[dict[str, object]] = []
            for number in pages:
                path = folder / f"{prefix}-p{number:0{width}d}.png"
                size = render_png(document, number, dpi, path, grayscale=args.gray)
                files.append(
                    {"page": number, "path": str(path), "width": size[0], "height": size[1]}
                )
        finally:
            document.close()
        if args.json:
            print(json.dumps({"file": args.pdf, "dpi": dpi, "files": files}))
        else:
            for item in files:
                print(f"page {item['page']}: {item['path']} ({item['width']}x{item['height']})")
        return 0

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
