#!/usr/bin/env python3
"""Print every slide's title, body text and speaker notes, numbered, as text or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deckfile import DeckError, fail, is_hidden, open_pptx


def shapes_in(shapes: Any) -> Iterator[Any]:
    """Shapes in slide order, group members in place of their group."""
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    for shape in shapes:
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            yield from shapes_in(shape.shapes)
        else:
            yield shape


def read_slide(number: int, slide: Any) -> dict[str, Any]:
    title_shape = slide.shapes.title
    title = title_shape.text_frame.text.strip() if title_shape is not None else ""
    body: list[dict[str, Any]] = []
    pictures = 0
    for shape in shapes_in(slide.shapes):
        if title_shape is not None and shape.shape_id == title_shape.shape_id:
            continue
        if shape.element.tag.endswith("}pic"):  # pictures, placeholders filled with one too
            pictures += 1
        if getattr(shape, "has_text_frame", False) and shape.has_text_frame:
            for paragraph in shape.text_frame.paragraphs:
                text = "".join(run.text for run in paragraph.runs).strip()
                if text:
                    body.append({"text": text, "level": paragraph.level})
        elif getattr(shape, "has_table", False) and shape.has_table:
            for row in shape.table.rows:
                cells = [cell.text.replace("\n", " ").strip() for cell in row.cells]
                if any(cells):
                    body.append({"text": " | ".join(cells), "level": 0})
    notes = ""
    if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
        notes = slide.notes_slide.notes_text_frame.text.strip()
    return {"number": number, "title": title, "body": body, "notes": notes,
            "pictures": pictures, "hidden": is_hidden(slide)}  # fmt: skip


def as_text(slide: dict[str, Any]) -> str:
    hidden = " (hidden)" if slide["hidden"] else ""
    lines = [f"## Slide {slide['number']}: {slide['title'] or '(no title)'}{hidden}"]
    lines += [f"{'  ' * item['level']}- {item['text']}" for item in slide["body"]]
    if slide["pictures"]:
        lines.append(f"[{slide['pictures']} picture{'s' if slide['pictures'] != 1 else ''}]")
    if slide["notes"]:
        lines.append("Notes: " + slide["notes"].replace("\n", "\n       "))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Extract the text of a .pptx: for each slide its number, title, body text "
        "(bullets with their levels, text boxes, tables, grouped shapes) and speaker notes.",
    )
    parser.add_argument("input", type=Path, help="the .pptx to read")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object {slides: [...]} instead of text"
    )
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        prs = open_pptx(args.input)
        slides = [read_slide(number, slide) for number, slide in enumerate(prs.slides, 1)]
    except DeckError as exc:
        return fail(exc)
    except Exception as exc:  # a damaged slide part python-pptx cannot walk
        return fail(f"{args.input}: cannot read the slides: {exc}")
    if args.json:
        print(json.dumps({"file": str(args.input), "slides": slides}, ensure_ascii=False))
    else:
        print("\n\n".join(as_text(slide) for slide in slides) or "(no slides)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
