#!/usr/bin/env python3
"""Render all slides of a deck into one PNG grid of numbered thumbnails (LibreOffice)."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from deckfile import DeckError, check_output, fail, is_hidden, open_pptx

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_lib"))
from soffice import OfficeError, convert

MARGIN = 10  # pixels around each thumbnail
LABEL = 24  # pixels of the band under each thumbnail that holds its slide number
OTHER_TYPES = {".ppt", ".odp"}


def whole_number(text: str, name: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise DeckError(f"{name} must be a whole number, not {text!r}") from None
    if not low <= value <= high:
        raise DeckError(f"{name} must be from {low} to {high}, not {value}")
    return value


def label_font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size)


def render(pdf: Path, width: int) -> list[Any]:
    """Each page of the PDF as a Pillow image ``width`` pixels wide."""
    import pypdfium2 as pdfium

    images = []
    document = pdfium.PdfDocument(str(pdf))
    try:
        for index in range(len(document)):
            page = document[index]
            page_w, page_h = page.get_size()
            image = page.render(scale=width / page_w).to_pil().convert("RGB")
            height = max(1, round(width * page_h / page_w))
            if image.size != (width, height):
                image = image.resize((width, height))
            images.append(image)
            page.close()
    finally:
        document.close()
    return images


def grid(images: list[Any], numbers: list[int], columns: int) -> tuple[Any, dict[str, int]]:
    """The thumbnails in rows of ``columns``, each with its slide number underneath."""
    from PIL import Image, ImageDraw

    width = images[0].width
    height = max(image.height for image in images)
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    cell_w, cell_h = width + 2 * MARGIN, height + LABEL + 2 * MARGIN
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    font = label_font(14)
    for index, image in enumerate(images):
        x = (index % columns) * cell_w + MARGIN
        y = (index // columns) * cell_h + MARGIN
        sheet.paste(image, (x, y))
        draw.rectangle((x - 1, y - 1, x + image.width, y + image.height), outline=(160, 160, 160))
        draw.text((x + width / 2, y + height + LABEL / 2), str(numbers[index]), fill="black",
                  font=font, anchor="mm")  # fmt: skip
    layout = {"columns": columns, "rows": rows, "thumb_width": width, "thumb_height": height,
              "width": sheet.width, "height": sheet.height}  # fmt: skip
    return sheet, layout


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Render every slide of a .pptx (LibreOffice to PDF, then pypdfium2) and "
        "lay the thumbnails out in one PNG grid, each with its slide number underneath.",
    )
    parser.add_argument("input", type=Path, help="the .pptx (also .ppt, .odp)")
    parser.add_argument("output", type=Path, help="the grid image to write (.png)")
    parser.add_argument(
        "--columns",
        default="4",
        metavar="N",
        help="thumbnails per row, 1-20 (default 4; fewer if the deck is shorter)",
    )
    parser.add_argument(
        "--width",
        default="320",
        metavar="PX",
        help="width of each thumbnail in pixels, 32-2000 (default 320)",
    )
    parser.add_argument(
        "--pdf",
        type=Path,
        metavar="FILE",
        help="also keep the PDF LibreOffice made of the deck here",
    )
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds LibreOffice may take (default 300)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    source: Path = args.input
    try:
        columns = whole_number(args.columns, "--columns", 1, 20)
        width = whole_number(args.width, "--width", 32, 2000)
        hidden: list[int] = []
        if source.suffix.lower() in OTHER_TYPES:
            if not source.is_file():
                raise DeckError(f"{source}: no such file")
            shown = None
        else:
            slides = list(open_pptx(source).slides)
            hidden = [n for n, slide in enumerate(slides, 1) if is_hidden(slide)]
            shown = [n for n in range(1, len(slides) + 1) if n not in hidden]
            if not shown:
                raise DeckError(f"{source}: the deck has no slides to show"
                                f"{' (all hidden)' if hidden else ''}")  # fmt: skip
        check_output(args.output, ".png")
        if args.pdf is not None:
            check_output(args.pdf, ".pdf")
        with tempfile.TemporaryDirectory(prefix="pptx-thumbnails-") as work:
            staged = Path(work) / f"deck{source.suffix.lower()}"
            shutil.copyfile(source, staged)
            pdf = convert(staged, "pdf", Path(work) / "out", timeout=args.timeout)
            images = render(pdf, width)
            if not images:
                raise DeckError(f"{source}: the deck has no slides")
            if args.pdf is not None:
                shutil.copyfile(pdf, args.pdf)
        if shown is None or len(shown) != len(images):
            shown = list(range(1, len(images) + 1))
        sheet, layout = grid(images, shown, columns)
        sheet.save(args.output, format="PNG")
    except (DeckError, OfficeError) as exc:
        return fail(exc)
    except OSError as exc:
        return fail(f"cannot write the output: {exc.strerror or exc}")
    skipped = f" (hidden, not shown: {', '.join(map(str, hidden))})" if hidden else ""
    print(f"wrote {args.output}: {len(images)} slides in {layout['columns']} x {layout['rows']}, "
          f"{layout['width']} x {layout['height']} px{skipped}")  # fmt: skip
    if args.json:
        print(json.dumps({"output": str(args.output), "slides": len(images), "numbers": shown,
                          "hidden": hidden, **layout}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
