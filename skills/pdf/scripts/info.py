#!/usr/bin/env python3
"""Summarise a PDF: pages, page sizes and rotation, metadata, form fields, text per page."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import pypdfium2 as pdfium
from pdfcli import PdfError, guarded, open_pdf
from pdfforms import read_fields

PAGES_LISTED = 50


def text_chars(name: str) -> list[int]:
    """Characters in each page's text layer (0 for a scanned page without one)."""
    try:
        document = pdfium.PdfDocument(name)
    except pdfium.PdfiumError as exc:
        raise PdfError(f"{name}: PDFium cannot open it ({exc})") from None
    counts: list[int] = []
    try:
        for index in range(len(document)):
            page = document[index]
            textpage = page.get_textpage()
            counts.append(len("".join(textpage.get_text_range().split())))
            textpage.close()
            page.close()
    finally:
        document.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Summarise a PDF: page count, each page's size (points) and rotation, "
        "metadata, encryption, number of form fields, and the characters of text on each "
        "page (a page with 0 is probably a scan: OCR it with ocr.py)."
    )
    parser.add_argument("pdf", help="the PDF to inspect")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    def body() -> int:
        reader = open_pdf(args.pdf)
        chars = text_chars(args.pdf)
        pages: list[dict[str, Any]] = []
        for number, page in enumerate(reader.pages, start=1):
            box = page.mediabox
            pages.append(
                {
                    "page": number,
                    "width": round(float(box.width), 2),
                    "height": round(float(box.height), 2),
                    "rotation": page.rotation % 360,
                    "text_chars": chars[number - 1] if number <= len(chars) else 0,
                }
            )
        meta = {
            key.lstrip("/"): str(value)
            for key, value in (reader.metadata or {}).items()
            if str(value).strip()
        }
        fields = read_fields(reader.root_object, list(reader.pages))
        info = {
            "file": args.pdf,
            "page_count": len(pages),
            "encrypted": reader.is_encrypted,
            "pdf_version": reader.pdf_header.removeprefix("%PDF-"),
            "metadata": meta,
            "form_fields": len(fields),
            "pages": pages,
            "pages_without_text": [p["page"] for p in pages if p["text_chars"] == 0],
        }
        if args.json:
            print(json.dumps(info, ensure_ascii=False))
            return 0
        print(
            f"{args.pdf}: {len(pages)} page(s), PDF {info['pdf_version']}"
            + (", encrypted" if reader.is_encrypted else "")
        )
        for key, value in meta.items():
            print(f"{key}: {value}")
        print(f"form fields: {len(fields)}")
        for item in pages[:PAGES_LISTED]:
            print(
                f"page {item['page']}: {item['width']:g} x {item['height']:g} pt, "
                f"rotation {item['rotation']}, {item['text_chars']} text characters"
            )
        if len(pages) > PAGES_LISTED:
            print(f"... {len(pages) - PAGES_LISTED} more page(s); --json lists all")
        if info["pages_without_text"]:
            print(
                "no text layer on page(s) "
                f"{', '.join(map(str, info['pages_without_text']))}: OCR with ocr.py"
            )
        return 0

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
