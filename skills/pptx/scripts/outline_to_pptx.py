#!/usr/bin/env python3
"""Create a .pptx from an outline (YAML, JSON or Markdown): titles, bullets, images, notes."""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deckfile import DeckError, check_output, fail, open_pptx

MAX_LEVEL = 8
EMU_PER_INCH = 914400
ASPECTS = {"16:9": (12192000, 6858000), "4:3": (9144000, 6858000)}


@dataclass
class Slide:
    title: str
    kind: str = "content"  # or "title": the title layout, with a subtitle
    subtitle: str = ""
    bullets: list[tuple[str, int]] = field(default_factory=list)
    image: str | None = None
    notes: str = ""


# --- reading the outline ------------------------------------------------------------


def _text(value: Any, where: str, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise DeckError(f"outline: {where}: '{what}' must be text, not {type(value).__name__}")


def _bullets(items: Any, level: int, where: str, out: list[tuple[str, int]]) -> None:
    """Bullets: text (level 0), {text, level}, or a nested list (one level deeper)."""
    if not isinstance(items, list):
        raise DeckError(f"outline: {where}: 'bullets' must be a list")
    for item in items:
        if isinstance(item, list):
            _bullets(item, level + 1, where, out)
        elif isinstance(item, dict):
            unknown = set(item) - {"text", "level", "bullets"}
            if unknown or "text" not in item:
                raise DeckError(f"outline: {where}: a bullet given as a mapping needs 'text' "
                                "(and optional 'level', 'bullets')")  # fmt: skip
            own = item.get("level", level)
            if not isinstance(own, int) or isinstance(own, bool) or not 0 <= own <= MAX_LEVEL:
                raise DeckError(f"outline: {where}: bullet level must be 0 to {MAX_LEVEL}")
            out.append((_text(item["text"], where, "text"), own))
            if "bullets" in item:
                _bullets(item["bullets"], own + 1, where, out)
        else:
            out.append((_text(item, where, "bullets"), level))
    if any(lvl > MAX_LEVEL for _, lvl in out):
        raise DeckError(f"outline: {where}: bullets nest deeper than {MAX_LEVEL} levels")


SLIDE_KEYS = {"title", "subtitle", "bullets", "image", "notes", "layout"}


def from_data(data: Any) -> list[Slide]:
    """The slides of a parsed YAML/JSON outline."""
    slides: list[Slide] = []
    if isinstance(data, dict):
        unknown = set(data) - {"title", "subtitle", "slides"}
        if unknown:
            raise DeckError(f"outline: unknown top-level key(s): {', '.join(sorted(unknown))}")
        if data.get("title") is not None:
            slides.append(
                Slide(
                    _text(data["title"], "title slide", "title"),
                    "title",
                    _text(data.get("subtitle"), "title slide", "subtitle"),
                )
            )
        entries = data.get("slides")
        if entries is None:
            raise DeckError("outline: no 'slides' list")
    else:
        entries = data
    if not isinstance(entries, list):
        raise DeckError("outline: 'slides' must be a list of slides")
    for entry in entries:
        where = f"slide {len(slides) + 1}"
        if not isinstance(entry, dict):
            raise DeckError(f"outline: {where}: each slide must be a mapping with a 'title'")
        unknown = set(entry) - SLIDE_KEYS
        if unknown:
            raise DeckError(f"outline: {where}: unknown key(s): {', '.join(sorted(unknown))} "
                            f"(known: {', '.join(sorted(SLIDE_KEYS))})")  # fmt: skip
        layout = entry.get("layout", "content")
        if layout not in ("content", "title"):
            raise DeckError(f"outline: {where}: layout must be 'content' or 'title'")
        slide = Slide(_text(entry.get("title"), where, "title"), layout,
                      _text(entry.get("subtitle"), where, "subtitle"))  # fmt: skip
        if "bullets" in entry and entry["bullets"] is not None:
            _bullets(entry["bullets"], 0, where, slide.bullets)
        if entry.get("image") is not None:
            slide.image = _text(entry["image"], where, "image")
        slide.notes = _text(entry.get("notes"), where, "notes")
        slides.append(slide)
    return slides


BULLET = re.compile(r"^(\s*)(?:[-*+]|\d+[.)])\s+(.*)$")
IMAGE = re.compile(r"^!\[[^\]]*\]\(\s*<?([^)>]+?)>?(?:\s+\"[^\"]*\")?\s*\)$")
NOTES = re.compile(r"^notes?:\s*(.*)$", re.IGNORECASE)


def from_markdown(text: str) -> list[Slide]:
    """'# ' starts a title slide, '## ' a content slide; '-' bullets (indent = level),
    '![](image)', '> ' or 'Notes:' for speaker notes."""
    slides: list[Slide] = []
    indents: list[int] = []
    in_notes = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        stripped = line.strip()
        heading = re.match(r"^(#{1,2})\s+(.*?)\s*#*$", stripped)
        if heading:
            kind = "title" if heading.group(1) == "#" else "content"
            slides.append(Slide(heading.group(2), kind))
            indents, in_notes = [], False
            continue
        if not stripped or re.fullmatch(r"-{3,}|\*{3,}|_{3,}", stripped):
            continue
        if not slides:
            raise DeckError(f"outline: line {number}: text before the first '#' or '##' heading")
        slide = slides[-1]
        notes = NOTES.match(stripped)
        if in_notes or notes or stripped.startswith(">"):
            if notes:
                in_notes, stripped = True, notes.group(1)
            elif stripped.startswith(">"):
                stripped = stripped[1:].strip()
            slide.notes = f"{slide.notes}\n{stripped}" if slide.notes else stripped
            continue
        image = IMAGE.match(stripped)
        if image:
            if slide.image is not None:
                raise DeckError(f"outline: line {number}: slide {len(slides)} has a second image")
            slide.image = image.group(1).strip()
            continue
        bullet = BULLET.match(line.expandtabs(4))
        if slide.kind == "title":  # a title slide's lines are its subtitle
            line_text = bullet.group(2) if bullet else stripped
            slide.subtitle = f"{slide.subtitle}\n{line_text}" if slide.subtitle else line_text
            continue
        if bullet:
            indent = len(bullet.group(1))
            while indents and indent < indents[-1]:
                indents.pop()
            if not indents or indent > indents[-1]:
                indents.append(indent)
            level, content = len(indents) - 1, bullet.group(2)
        else:
            level, content = 0, stripped.lstrip("#").strip()
        if level > MAX_LEVEL:
            raise DeckError(f"outline: line {number}: bullets nest deeper than {MAX_LEVEL} levels")
        slide.bullets.append((content, level))
    return slides


def read_outline(path: Path) -> list[Slide]:
    if not path.is_file():
        raise DeckError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DeckError(f"{path}: cannot read the outline as UTF-8 text: {exc}") from None
    suffix = path.suffix.lower()
    if suffix in (".md", ".markdown", ".txt"):
        slides = from_markdown(text)
    elif suffix == ".json":
        try:
            slides = from_data(json.loads(text))
        except json.JSONDecodeError as exc:
            raise DeckError(f"outline: {path.name} is not valid JSON: {exc}") from None
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" (line {mark.line + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise DeckError(f"outline: {path.name} is not valid YAML{at}: {problem}") from None
        slides = from_data(data)
    else:
        raise DeckError(f"{path}: unknown outline type {suffix or '(none)'}; "
                        "use .yaml, .yml, .json or .md")  # fmt: skip
    if not slides:
        raise DeckError(f"outline: {path.name} has no slides")
    return slides


# --- making the deck ----------------------------------------------------------------

INLINE = re.compile(r"(\*\*[^*]+\*\*|__[^_]+__|\*[^*\s][^*]*\*|`[^`]+`)")


def add_runs(paragraph: Any, text: str) -> None:
    """The text as runs: **bold**, *italic* and `code` become formatting."""
    for piece in INLINE.split(text):
        if not piece:
            continue
        run = paragraph.add_run()
        if piece[:2] in ("**", "__") and len(piece) > 4:
            run.text, run.font.bold = piece[2:-2], True
        elif piece.startswith("*") and len(piece) > 2:
            run.text, run.font.italic = piece[1:-1], True
        elif piece.startswith("`") and len(piece) > 2:
            run.text, run.font.name = piece[1:-1], "Liberation Mono"
        else:
            run.text = piece


def fill(frame: Any, lines: list[tuple[str, int]]) -> None:
    frame.clear()
    for index, (text, level) in enumerate(lines):
        paragraph = frame.paragraphs[0] if index == 0 else frame.add_paragraph()
        paragraph.level = level
        add_runs(paragraph, text)


def layout_named(prs: Any, name: str, fallback: int) -> Any:
    for layout in prs.slide_layouts:
        if layout.name.strip().lower() == name.lower():
            return layout
    layouts = list(prs.slide_layouts)
    if not layouts:
        raise DeckError("the template has no slide layouts")
    return layouts[min(fallback, len(layouts) - 1)]


def widen(prs: Any, width: int) -> None:
    """Stretch the default template's masters and layouts to a new slide width."""
    factor = width / prs.slide_width
    parts = [*prs.slide_masters, *(lay for m in prs.slide_masters for lay in m.slide_layouts)]
    for part in parts:
        for element in part.element.iter():
            tag = element.tag.rsplit("}", 1)[-1]
            if tag in ("off", "chOff") and element.get("x") is not None:
                element.set("x", str(round(int(element.get("x")) * factor)))
            elif tag in ("ext", "chExt") and element.get("cx") is not None:
                element.set("cx", str(round(int(element.get("cx")) * factor)))
    prs.slide_width = width


def drop_existing_slides(prs: Any) -> None:
    """A template's own slides are not kept: only its masters and layouts."""
    id_list = prs.slides._sldIdLst
    for slide_id in list(id_list):
        prs.part.drop_rel(slide_id.rId)
        id_list.remove(slide_id)


def body_placeholder(slide: Any) -> Any:
    for shape in slide.placeholders:
        if shape.placeholder_format.idx != 0 and shape.has_text_frame:
            return shape
    return None


PICTURE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF")  # what python-pptx can embed


def picture_size(image: Path, shown: str, where: str) -> tuple[int, int]:
    """The image's size in pixels; DeckError when it is not a picture a slide can hold."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image) as picture:
            size, kind = picture.size, picture.format
    except (UnidentifiedImageError, OSError):
        raise DeckError(
            f"{where}: {shown} is not an image (use PNG, JPEG, GIF, BMP or TIFF)"
        ) from None
    if kind not in PICTURE_FORMATS:
        raise DeckError(f"{where}: {shown} is {kind}; use PNG, JPEG, GIF, BMP or TIFF")
    return size


def place_image(slide: Any, image: Path, size: tuple[int, int],
                box: tuple[int, int, int, int]) -> None:  # fmt: skip
    """The picture as large as fits in the box, centred, its aspect ratio kept."""
    left, top, width, height = box
    scale = min(width / size[0], height / size[1])
    w_emu, h_emu = int(size[0] * scale), int(size[1] * scale)
    slide.shapes.add_picture(str(image), left + (width - w_emu) // 2,
                             top + (height - h_emu) // 2, w_emu, h_emu)  # fmt: skip


def build(slides: list[Slide], base: Path, template: Path | None, aspect: str | None) -> Any:
    import pptx

    # Every image first: a missing one should fail before any work.
    images: dict[int, tuple[Path, tuple[int, int]]] = {}
    for number, slide in enumerate(slides, 1):
        if slide.image:
            where = f"slide {number} ({slide.title!r})"
            path = Path(slide.image).expanduser()
            path = path if path.is_absolute() else base / path
            if not path.is_file():
                raise DeckError(f"{where}: image not found: {slide.image}")
            images[number] = (path, picture_size(path, slide.image, where))
    if template is not None:
        prs = open_pptx(template)
        drop_existing_slides(prs)
    else:
        prs = pptx.Presentation()
        widen(prs, ASPECTS[aspect or "16:9"][0])
    title_layout = layout_named(prs, "Title Slide", 0)
    content_layout = layout_named(prs, "Title and Content", 1)
    for number, spec in enumerate(slides, 1):
        slide = prs.slides.add_slide(title_layout if spec.kind == "title" else content_layout)
        title = slide.shapes.title
        if title is not None and spec.title:
            title.text = spec.title
        elif title is not None:  # no empty "Click to add title" box
            title.element.getparent().remove(title.element)
        body = body_placeholder(slide)
        lines = spec.bullets
        if spec.kind == "title":  # the subtitle box takes everything, unindented
            lines = [(line, 0) for line in spec.subtitle.splitlines()]
            lines += [(text, 0) for text, _ in spec.bullets]
        box = None
        if body is not None:
            box = (body.left, body.top, body.width, body.height)
            if lines:
                fill(body.text_frame, lines)
            else:
                body.element.getparent().remove(body.element)
        if box is None:  # a layout without a body: the space under the title
            margin = prs.slide_width // 16
            box = (margin, prs.slide_height // 4, prs.slide_width - 2 * margin,
                   prs.slide_height * 2 // 3)  # fmt: skip
        if number in images:
            left, top, width, height = box
            if lines and body is not None:  # text on the left, the picture on the right
                gap, text_width = width // 20, width * 11 // 20
                body.left, body.top, body.width, body.height = left, top, text_width, height
                box = (left + text_width + gap, top, width - text_width - gap, height)
            place_image(slide, *images[number], box)
        if spec.notes:
            slide.notes_slide.notes_text_frame.text = spec.notes
    return prs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Make a PowerPoint deck from an outline in YAML, JSON or Markdown: slide "
        "titles, bullets with levels, an optional image and speaker notes per slide.",
    )
    parser.add_argument("outline", type=Path, help="the outline (.yaml/.yml, .json or .md)")
    parser.add_argument("output", type=Path, help="the .pptx to write")
    parser.add_argument(
        "--template",
        type=Path,
        metavar="PPTX",
        help="use this deck's masters, layouts and size (its slides are dropped)",
    )
    parser.add_argument(
        "--aspect",
        choices=sorted(ASPECTS),
        help="slide shape for the built-in template (default 16:9)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.template is not None and args.aspect is not None:
        return fail("--aspect is for the built-in template; a --template has its own size")
    try:
        check_output(args.output, ".pptx")
        slides = read_outline(args.outline)
        prs = build(slides, args.outline.resolve().parent, args.template, args.aspect)
        prs.save(str(args.output))
    except DeckError as exc:
        return fail(exc)
    except OSError as exc:
        return fail(f"cannot write {args.output}: {exc.strerror or exc}")
    pictures = sum(1 for s in slides if s.image)
    print(f"wrote {args.output}: {len(slides)} slide{'s' if len(slides) != 1 else ''}, "
          f"{pictures} with a picture")  # fmt: skip
    if args.json:
        print(json.dumps({"output": str(args.output), "slides": len(slides),
                          "titles": [s.title for s in slides]}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
