#!/usr/bin/env python3
"""Render an HTML/CSS layout to PDF (weasyprint) and/or PNG (pypdfium2) at a page size and DPI."""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from fontlist import (
    Family,
    FontError,
    RenderError,
    check_dpi,
    check_outputs,
    fail,
    family_of_pdf_font,
    installed_families,
    key,
    require,
)

MM_PER = {"mm": 1.0, "cm": 10.0, "in": 25.4, "pt": 25.4 / 72, "px": 25.4 / 96}
NAMED_SIZES_MM = {
    "a0": (841, 1189),
    "a1": (594, 841),
    "a2": (420, 594),
    "a3": (297, 420),
    "a4": (210, 297),
    "a5": (148, 210),
    "a6": (105, 148),
    "b4": (250, 353),
    "b5": (176, 250),
    "letter": (215.9, 279.4),
    "legal": (215.9, 355.6),
    "tabloid": (279.4, 431.8),
    "ledger": (431.8, 279.4),
}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*[x×]\s*(\d+(?:\.\d+)?)\s*(mm|cm|in|pt|px)$")
_LENGTH = r"(?:0|\d+(?:\.\d+)?(?:mm|cm|in|pt|px))"
_MARGIN = re.compile(rf"^{_LENGTH}(?:\s+{_LENGTH}){{0,3}}$")
MAX_PIXELS = 80_000_000


def page_size_css(size: str, landscape: bool) -> str:
    """CSS ``size`` value for --size: A4, Letter, 1200x630px, 210x297mm, 8.5x11in..."""
    text = size.strip().lower()
    if text in NAMED_SIZES_MM:
        width, height = NAMED_SIZES_MM[text]
        unit = "mm"
    else:
        match = _SIZE.match(text)
        if not match:
            names = ", ".join(n.upper() if n[0] in "ab" else n.title() for n in NAMED_SIZES_MM)
            raise RenderError(
                f"bad --size '{size}': use WxH with a unit (1200x630px, "
                f"210x297mm, 8.5x11in) or a name ({names})"
            )
        width, height, unit = float(match.group(1)), float(match.group(2)), match.group(3)
        if width <= 0 or height <= 0 or width * MM_PER[unit] > 5000 or height * MM_PER[unit] > 5000:
            raise RenderError(f"bad --size '{size}': each side must be > 0 and at most 5 m")
    if landscape and width < height:
        width, height = height, width
    return f"{width:g}{unit} {height:g}{unit}"


def user_css(args: argparse.Namespace) -> str:
    rules = []
    if args.size:
        rules.append(f"size: {page_size_css(args.size, args.landscape)} !important;")
    elif args.landscape:
        rules.append("size: landscape !important;")
    if args.margin is not None:
        if not _MARGIN.match(args.margin.strip()):
            raise RenderError(
                f"bad --margin '{args.margin}': CSS lengths like 0, 10mm or '1in 2cm'"
            )
        rules.append(f"margin: {args.margin.strip()} !important;")
    return "@page { " + " ".join(rules) + " }" if rules else ""


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = " ".join(record.getMessage().split())
        if text and text not in self.messages:
            self.messages.append(text)


def render_pdf(source: Path, extra_css: str, stylesheets: list[Path]) -> tuple[bytes, list[str]]:
    """The PDF bytes of ``source`` and weasyprint's warnings; no network, file: and data: only."""
    from weasyprint import CSS, HTML, URLFetcher

    collect = _Collect()
    logger = logging.getLogger("weasyprint")
    logger.addHandler(collect)
    logger.propagate = False
    try:
        fetcher = URLFetcher(allowed_protocols=("file", "data"))
        sheets = [CSS(filename=str(p), url_fetcher=fetcher) for p in stylesheets]
        if extra_css:
            sheets.append(CSS(string=extra_css))
        html = HTML(
            filename=str(source), base_url=str(source.parent.resolve()) + "/", url_fetcher=fetcher
        )
        pdf = html.write_pdf(stylesheets=sheets)
    except RenderError:
        raise
    except Exception as exc:
        raise RenderError(
            f"weasyprint could not render {source.name}: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        logger.removeHandler(collect)
    if not pdf:
        raise RenderError(f"weasyprint wrote nothing for {source.name}")
    return pdf, collect.messages


def pdf_fonts(pdf_path: Path) -> list[str]:
    """Base font names in the PDF (pdffonts), without subset prefixes."""
    tool = shutil.which("pdffonts")
    if tool is None:
        raise RenderError("pdffonts (poppler-utils) is not installed")
    proc = subprocess.run(
        [tool, str(pdf_path)], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise RenderError(f"pdffonts failed: {proc.stderr.strip()}")
    names = []
    for line in proc.stdout.splitlines()[2:]:
        if line.strip():
            name = line.split()[0].split("+", 1)[-1]
            if name not in names:
                names.append(name)
    return names


def pixel_size(points: float, dpi: float) -> int:
    """Pixels for a length in PDF points at ``dpi``: inches x DPI, rounded half up."""
    return max(1, int(points / 72 * dpi + 0.5 - 1e-9))


def render_pngs(pdf: bytes, target: Path, dpi: float, page: int | None) -> list[dict[str, Any]]:
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(pdf)
    try:
        count = len(document)
        if page is not None and not 1 <= page <= count:
            raise RenderError(f"--page {page} is out of range: the document has {count} page(s)")
        numbers = [page] if page is not None else list(range(1, count + 1))
        digits = len(str(count))
        written = []
        for number in numbers:
            pdf_page = document[number - 1]
            width_pt, height_pt = pdf_page.get_size()
            width, height = pixel_size(width_pt, dpi), pixel_size(height_pt, dpi)
            if width * height > MAX_PIXELS:
                raise RenderError(
                    f"page {number} would be {width}x{height} px at {dpi:g} dpi: "
                    "too large, lower --dpi"
                )
            image = pdf_page.render(scale=dpi / 72).to_pil()
            # pdfium rounds the bitmap up; the part past width x height is under one pixel
            image = image.crop((0, 0, width, height))
            path = target
            if len(numbers) > 1:
                path = target.with_name(f"{target.stem}-{number:0{digits}d}{target.suffix}")
            image.save(path, format="PNG", dpi=(dpi, dpi))
            written.append({"path": str(path), "page": number, "width": width, "height": height})
        return written
    finally:
        document.close()


def check_args(args: argparse.Namespace) -> tuple[Path, list[Path]]:
    source = Path(args.html)
    if not source.is_file():
        raise RenderError(f"{source}: no such file")
    if source.suffix.lower() not in (".html", ".htm", ".xhtml"):
        raise RenderError(f"{source}: expected an .html file")
    if not args.pdf and not args.png:
        raise RenderError("nothing to write: give --pdf OUT.pdf and/or --png OUT.png")
    check_outputs((args.pdf, ".pdf"), (args.png, ".png"))
    check_dpi(args.dpi)
    if args.page is not None and not args.png:
        raise RenderError("--page selects the page for --png")
    stylesheets = [Path(s) for s in args.stylesheet]
    for sheet in stylesheets:
        if not sheet.is_file():
            raise RenderError(f"{sheet}: no such stylesheet")
    return source, stylesheets


def run(args: argparse.Namespace) -> dict[str, Any]:
    source, stylesheets = check_args(args)
    extra_css = user_css(args)
    families: dict[str, Family] = {}
    required = []
    if args.require_font:
        families = installed_families()
        required = [require(name, families) for name in args.require_font]
    pdf, warnings = render_pdf(source, extra_css, stylesheets)
    with tempfile.TemporaryDirectory(prefix="design-render-") as tmp:
        staged = Path(tmp) / "layout.pdf"
        staged.write_bytes(pdf)
        fonts = pdf_fonts(staged)
        families = families or installed_families()
        used = []
        for name in fonts:
            family = family_of_pdf_font(name, families)
            if family not in used:
                used.append(family)
        used.sort(key=str.lower)
        for family in required:
            if key(family.name) not in {key(u) for u in used}:
                raise RenderError(
                    f"font family '{family.name}' is installed but the rendered "
                    f"document does not use it (fonts used: "
                    f"{', '.join(used) or 'none'}); check the CSS font-family "
                    "names"
                )
        result: dict[str, Any] = {
            "html": str(source),
            "pdf": None,
            "png": [],
            "dpi": args.dpi,
            "fonts": used,
            "warnings": warnings,
        }
        from pypdf import PdfReader

        reader = PdfReader(staged)
        result["pages"] = len(reader.pages)
        box = reader.pages[0].mediabox
        result["page_size_pt"] = [round(float(box.width), 2), round(float(box.height), 2)]
        if args.png:
            result["png"] = render_pngs(pdf, Path(args.png), args.dpi, args.page)
        if args.pdf:
            shutil.copyfile(staged, args.pdf)
            result["pdf"] = args.pdf
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Render an HTML/CSS layout to PDF with weasyprint (the installed fonts via "
        "fontconfig) and/or to PNG, one image per page, at --dpi. --size overrides the "
        "layout's @page size. No network: only local files and data: URLs load.",
    )
    parser.add_argument("html", help="the layout (.html); relative links resolve from its folder")
    parser.add_argument("--pdf", metavar="OUT.pdf", help="write the PDF here")
    parser.add_argument(
        "--png",
        metavar="OUT.png",
        help="write PNG(s) here; several pages give OUT-1.png, OUT-2.png...",
    )
    parser.add_argument(
        "--size",
        help="page size: A4, A3, A5, Letter, Legal, Tabloid, or WxH "
        "with a unit: 1200x630px, 210x297mm, 8.5x11in (default: the "
        "layout's @page size, else A4)",
    )
    parser.add_argument("--landscape", action="store_true", help="turn the page to landscape")
    parser.add_argument("--margin", help="page margin overriding the layout's, e.g. 0 or 15mm")
    parser.add_argument(
        "--dpi", type=float, default=96, help="PNG resolution (default 96: 1 CSS px = 1 pixel)"
    )
    parser.add_argument("--page", type=int, help="only this page (1-based) to --png")
    parser.add_argument(
        "--stylesheet",
        action="append",
        default=[],
        metavar="CSS",
        help="extra CSS file applied after the layout's (repeatable)",
    )
    parser.add_argument(
        "--require-font",
        action="append",
        default=[],
        metavar="FAMILY",
        help="fail unless FAMILY is installed and the output uses it "
        "(repeatable); weasyprint otherwise falls back silently",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object as last line")
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except (RenderError, FontError) as exc:
        return fail(exc)
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    width, height = result["page_size_pt"]
    size = f"{width:g} x {height:g} pt ({width / 72 * 25.4:.1f} x {height / 72 * 25.4:.1f} mm)"
    if result["pdf"]:
        print(f"wrote {result['pdf']}: {result['pages']} page(s), {size}")
    else:
        print(f"rendered {result['pages']} page(s), {size}")
    for image in result["png"]:
        print(
            f"wrote {image['path']}: {image['width']} x {image['height']} px at "
            f"{result['dpi']:g} dpi"
        )
    print(f"fonts used: {', '.join(result['fonts']) or 'none (no text)'}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
