#!/usr/bin/env python3
"""Find and replace text in a .docx, keeping the formatting, even where a match spans runs."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from docxparts import DocxError, fail, in_fallback, open_docx, save_docx, stories, w
from lxml import etree

XML_SPACE = "{http://www.w3.org/XML/1998/namespace}space"
# Elements inside a run that sit between pieces of text: a match never crosses them.
BREAKS = {w(t) for t in ("tab", "br", "cr", "ptab", "noBreakHyphen", "softHyphen", "sym",
                         "drawing", "pict", "object", "fldChar", "footnoteReference",
                         "endnoteReference")}  # fmt: skip


def text_spans(paragraph: etree._Element) -> list[list[etree._Element]]:
    """The paragraph's w:t elements in order, cut where a tab, break or field sits between.

    Text of nested paragraphs (a text box inside this one) is left to their own turn;
    deleted text (w:delText) and field codes (w:instrText) are never matched.
    """
    spans: list[list[etree._Element]] = [[]]
    for element in paragraph.iter(w("t"), *BREAKS):
        owner = next(element.iterancestors(w("p")), None)
        if owner is not paragraph:
            continue
        if element.tag == w("t"):
            spans[-1].append(element)
        elif spans[-1]:
            spans.append([])
    return [span for span in spans if span]


def replace_in_span(span: list[etree._Element], pattern: re.Pattern[str],
                    replacement: Callable[[re.Match[str]], str]) -> int:  # fmt: skip
    """Rewrite the w:t texts of one span; the replacement goes where each match starts."""
    texts = [t.text or "" for t in span]
    full = "".join(texts)
    matches = [(m.start(), m.end(), replacement(m)) for m in pattern.finditer(full)
               if m.end() > m.start()]  # fmt: skip
    if not matches:
        return 0
    start = 0
    for element, text in zip(span, texts, strict=True):
        end = start + len(text)
        pieces: list[str] = []
        pos = start
        for m_start, m_end, new in matches:
            if m_end <= start or m_start >= end:
                continue
            if m_start > pos:
                pieces.append(full[pos:m_start])
            if m_start >= start:
                pieces.append(new)
            pos = max(pos, min(m_end, end))
        if pos == start and not pieces:
            start = end
            continue
        pieces.append(full[pos:end])
        element.text = "".join(pieces)
        element.set(XML_SPACE, "preserve")
        start = end
    return len(matches)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Replace text everywhere in a .docx (body, tables, headers, footers, "
        "footnotes, comments, text boxes) keeping formatting. A match may span several runs; "
        "the replacement takes the formatting of the run where the match starts.",
    )
    parser.add_argument("input", type=Path, help="the .docx to read")
    parser.add_argument("output", type=Path, help="the .docx to write (may be the input)")
    parser.add_argument("find", help="the text to find (a Python regex with --regex)")
    parser.add_argument(
        "replace", help="the new text (with --regex, \\1 or \\g<name> refer to groups)"
    )
    parser.add_argument("--regex", action="store_true", help="FIND is a regular expression")
    parser.add_argument("--ignore-case", action="store_true", help="match regardless of case")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.find == "":
        return fail("the text to find is empty")
    flags = re.IGNORECASE if args.ignore_case else 0
    try:
        pattern = re.compile(args.find if args.regex else re.escape(args.find), flags)
    except re.error as exc:
        return fail(f"bad regular expression {args.find!r}: {exc}")
    if args.regex:
        try:  # a bad group reference shows before any work
            pattern.sub(args.replace, "")
        except (re.error, IndexError) as exc:
            return fail(f"bad replacement {args.replace!r}: {exc}")

    def replacement(match: re.Match[str]) -> str:
        return match.expand(args.replace) if args.regex else str(args.replace)

    try:
        document = open_docx(args.input)
        counts: dict[str, int] = {}
        for story in stories(document):
            found = changed = 0
            for paragraph in story.root.iter(w("p")):
                n = sum(replace_in_span(span, pattern, replacement)
                        for span in text_spans(paragraph))  # fmt: skip
                changed += n
                if not in_fallback(paragraph):  # not the legacy copy of a text box
                    found += n
            if changed:
                story.commit()
            if found:
                counts[story.kind] = counts.get(story.kind, 0) + found
        save_docx(document, args.output)
    except DocxError as exc:
        return fail(exc)
    total = sum(counts.values())
    where = ", ".join(f"{kind} {n}" for kind, n in counts.items())
    print(f"replaced {total} occurrence{'s' if total != 1 else ''}"
          f"{f' ({where})' if where else ''}; wrote {args.output}")  # fmt: skip
    if args.json:
        print(json.dumps({"replacements": total, "by_part": counts, "output": str(args.output)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
