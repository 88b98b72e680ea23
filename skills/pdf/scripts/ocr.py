#!/usr/bin/env python3
"""OCR a scanned PDF into a searchable one: each page rendered, read by tesseract, merged."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from pdfcli import PdfError, guarded, need_tool, output_file, parse_pages, run_tool
from pdfrender import check_dpi, open_document, render_png
from pypdf import PdfWriter


def check_languages(tesseract: str, lang: str) -> str:
    """``lang`` ("eng", "eng+deu") when tesseract has every language in it, else PdfError."""
    listed = run_tool([tesseract, "--list-langs"], timeout=60).splitlines()
    installed = sorted(line.strip() for line in listed[1:] if line.strip())
    wanted = [part for part in lang.split("+") if part]
    missing = [part for part in wanted if part not in installed]
    if not wanted or missing:
        raise PdfError(
            f"tesseract language {lang!r} is not installed "
            f"(installed: {', '.join(installed) or 'none'})"
        )
    return lang


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Make a scanned PDF searchable: every page is rendered at --dpi, read by "
        "tesseract into a one-page PDF with an invisible text layer over the page image, and "
        "the pages are merged into the output. The output's pages are images (vector text "
        "and graphics become pixels), with text that can be searched, selected and extracted."
    )
    parser.add_argument("pdf", help="the scanned PDF")
    parser.add_argument("-o", "--output", required=True, help="the searchable PDF to write")
    parser.add_argument(
        "--lang", default="eng", help="tesseract language(s), e.g. eng or eng+deu (default eng)"
    )
    parser.add_argument("--dpi", default="300", help="render resolution, 10-1200 (default 300)")
    parser.add_argument("--pages", help="pages to OCR and keep, e.g. 1-3 (default: all)")
    parser.add_argument("--gray", action="store_true", help="grayscale page images (smaller)")
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"output", "pages": [{"page", "chars"}], "pages_without_text"} as one line',
    )
    args = parser.parse_args(argv)

    def body() -> int:
        dpi = check_dpi(args.dpi)
        document = open_document(args.pdf)
        # tesseract's OpenMP threads fight each other on a small machine
        env = {**os.environ, "OMP_THREAD_LIMIT": os.environ.get("OMP_THREAD_LIMIT", "1")}
        found: list[dict[str, int]] = []
        with tempfile.TemporaryDirectory(prefix="pdf-ocr-") as temp:
            try:
                pages = parse_pages(args.pages, len(document))
                out = output_file(args.output, [Path(args.pdf)])
                tesseract = need_tool("tesseract")
                lang = check_languages(tesseract, args.lang)
                writer = PdfWriter()
                for number in pages:
                    image = Path(temp) / f"page-{number}.png"
                    base = Path(temp) / f"page-{number}"
                    render_png(document, number, dpi, image, grayscale=args.gray)
                    run_tool(
                        [
                            tesseract,
                            str(image),
                            str(base),
                            "-l",
                            lang,
                            "--dpi",
                            str(dpi),
                            "pdf",
                            "txt",
                        ],
                        env=env,
                    )
                    text = base.with_suffix(".txt").read_text(encoding="utf-8", errors="replace")
                    found.append({"page": number, "chars": len("".join(text.split()))})
                    writer.append(str(base.with_suffix(".pdf")))
            finally:
                document.close()
            with out.open("wb") as handle:
                writer.write(handle)
        empty = [item["page"] for item in found if item["chars"] == 0]
        if args.json:
            print(
                json.dumps(
                    {
                        "output": str(out),
                        "lang": lang,
                        "dpi": dpi,
                        "pages": found,
                        "pages_without_text": empty,
                    }
                )
            )
        else:
            for item in found:
                print(f"page {item['page']}: {item['chars']} characters recognised")
            if empty:
                print(f"note: no text found on page(s) {', '.join(map(str, empty))}")
            print(f"wrote {out} ({len(found)} page(s), {lang}, {dpi} DPI)")
        return 0

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
