#!/usr/bin/env python3
"""Render an SVG to PNG (at a DPI or a pixel width) and/or PDF with rsvg-convert."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from fontlist import RenderError, check_dpi, check_outputs, fail

TIMEOUT = 300


def check_svg(path: Path) -> None:
    if not path.is_file():
        raise RenderError(f"{path}: no such file")
    from defusedxml import ElementTree
    from defusedxml.common import DefusedXmlException

    try:
        root = ElementTree.parse(path).getroot()
    except DefusedXmlException:
        return  # entity declarations (some editors write them): rsvg-convert judges the file
    except (ElementTree.ParseError, UnicodeDecodeError) as exc:
        raise RenderError(f"{path}: not an SVG file ({type(exc).__name__}: {exc})") from None
    if root.tag.rsplit("}", 1)[-1] != "svg":
        raise RenderError(f"{path}: not an SVG file (the root element is <{root.tag}>)")


def rsvg(source: Path, target: Path, options: list[str]) -> None:
    tool = shutil.which("rsvg-convert")
    if tool is None:
        raise RenderError("rsvg-convert (librsvg2-bin) is not installed")
    try:
        proc = subprocess.run(
            [tool, *options, "-o", str(target), str(source)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise RenderError(f"rsvg-convert did not finish within {TIMEOUT} s") from None
    if proc.returncode != 0 or not target.is_file() or target.stat().st_size == 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit code {proc.returncode}"
        raise RenderError(f"rsvg-convert could not render {source.name}: {reason}")


def png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    return int(width), int(height)


def pdf_size(path: Path) -> tuple[float, float]:
    from pypdf import PdfReader

    box = PdfReader(path).pages[0].mediabox
    return round(float(box.width), 2), round(float(box.height), 2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    source = Path(args.svg)
    if not args.png and not args.pdf:
        raise RenderError("nothing to write: give --png OUT.png and/or --pdf OUT.pdf")
    check_outputs((args.png, ".png"), (args.pdf, ".pdf"))
    if args.dpi is not None:
        check_dpi(args.dpi)
    if args.width is not None and not 1 <= args.width <= 20000:
        raise RenderError(f"bad --width {args.width}: use 1 to 20000 pixels")
    check_svg(source)
    common = ["-b", args.background] if args.background else []
    result: dict[str, Any] = {"svg": str(source), "png": None, "pdf": None}
    with tempfile.TemporaryDirectory(prefix="design-svg-") as tmp:
        if args.png:
            staged = Path(tmp) / "out.png"
            if args.width is not None:
                sizing = ["-w", str(args.width), "-a"]
            else:  # 1 SVG px = 1/96 in, and mm/in lengths map through 96 dpi: zoom scales both
                sizing = ["-z", f"{(args.dpi or 96) / 96:.6f}"]
            rsvg(source, staged, ["-f", "png", *sizing, *common])
            width, height = png_size(staged)
            shutil.copyfile(staged, args.png)
            result["png"] = {"path": args.png, "width": width, "height": height}
        if args.pdf:
            staged = Path(tmp) / "out.pdf"
            rsvg(source, staged, ["-f", "pdf", *common])
            width_pt, height_pt = pdf_size(staged)
            shutil.copyfile(staged, args.pdf)
            result["pdf"] = {"path": args.pdf, "width_pt": width_pt, "height_pt": height_pt}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Render an SVG to PNG and/or PDF with rsvg-convert. PNG size: the SVG's "
        "size in inches (1 px = 1/96 in) x --dpi, or --width pixels keeping the aspect "
        "ratio. The PDF keeps the SVG's size (1 px = 0.75 pt).",
    )
    parser.add_argument("svg", help="the SVG file")
    parser.add_argument("--png", metavar="OUT.png", help="write a PNG here")
    parser.add_argument("--pdf", metavar="OUT.pdf", help="write a PDF here")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--dpi", type=float, help="PNG resolution (default 96: 1 SVG px = 1 pixel)")
    size.add_argument("--width", type=int, help="PNG width in pixels (height keeps the ratio)")
    parser.add_argument(
        "--background",
        metavar="COLOR",
        help="CSS colour behind the drawing, e.g. white (default: transparent)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object as last line")
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except RenderError as exc:
        return fail(exc)
    if result["png"]:
        png = result["png"]
        print(f"wrote {png['path']}: {png['width']} x {png['height']} px")
    if result["pdf"]:
        pdf = result["pdf"]
        print(f"wrote {pdf['path']}: {pdf['width_pt']:g} x {pdf['height_pt']:g} pt")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
