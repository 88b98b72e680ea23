"""Pages of a PDF drawn to PNG with pypdfium2 (PDFium); shared by render_pages.py and ocr.py."""

from __future__ import annotations

from pathlib import Path

import pypdfium2 as pdfium
from pdfcli import PdfError, require_pdf

MIN_DPI = 10
MAX_DPI = 1200
MAX_PIXELS = 150_000_000  # one page's image; ~450 MB of RGB


def check_dpi(text: str) -> int:
    """A --dpi argument as a whole number in range, else PdfError."""
    try:
        dpi = int(text)
    except ValueError:
        dpi = 0
    if not MIN_DPI <= dpi <= MAX_DPI:
        raise PdfError(f"bad DPI {text!r}: use a whole number from {MIN_DPI} to {MAX_DPI}")
    return dpi


def open_document(name: str | Path) -> pdfium.PdfDocument:
    path = require_pdf(name)
    try:
        return pdfium.PdfDocument(path)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise PdfError(f"{name}: the PDF is encrypted and needs a password") from None
        raise PdfError(f"{name}: not a readable PDF ({exc})") from None


def render_png(
    document: pdfium.PdfDocument, number: int, dpi: int, path: Path, grayscale: bool = False
) -> tuple[int, int]:
    """Draw page ``number`` (from 1) with its form fields at ``dpi`` into ``path``; its size."""
    page = document[number - 1]
    try:
        width, height = page.get_size()  # points, /Rotate applied
        pixels = round(width * dpi / 72) * round(height * dpi / 72)
        if pixels > MAX_PIXELS:
            raise PdfError(
                f"page {number} at {dpi} DPI would be {pixels:,} pixels; use a lower --dpi"
            )
        bitmap = page.render(scale=dpi / 72, may_draw_forms=True, grayscale=grayscale)
        image = bitmap.to_pil()
        image.save(path, format="PNG", dpi=(dpi, dpi))
        return image.size
    finally:
        page.close()
