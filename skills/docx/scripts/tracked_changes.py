#!/usr/bin/env python3
"""Accept or reject every tracked change in a .docx, or count them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from docxparts import DocxError, fail, open_docx, save_docx, stories, w
from lxml import etree

KINDS = {"ins": "insertions", "del": "deletions", "moveFrom": "moves_from", "moveTo": "moves_to"}
RANGE_MARKERS = ("moveFromRangeStart", "moveFromRangeEnd", "moveToRangeStart", "moveToRangeEnd")
FORMAT_CHANGES = ("rPrChange", "pPrChange", "sectPrChange", "tblPrChange", "trPrChange",
                  "tcPrChange", "tblPrExChange", "tblGridChange", "numberingChange")  # fmt: skip
# Children of a properties element that are not formatting: a rejected formatting
# change swaps everything else for the old properties and leaves these alone.
NOT_FORMATTING = {
    w(t)
    for t in (
        "rPr",
        "sectPr",
        "ins",
        "del",
        "moveFrom",
        "moveTo",
        "cellIns",
        "cellDel",
        "cellMerge",
        "headerReference",
        "footerReference",
    )
}
NOT_FORMATTING |= {w(t) for t in FORMAT_CHANGES}


def count(root: etree._Element) -> dict[str, int]:
    counts = {name: sum(1 for _ in root.iter(w(tag))) for tag, name in KINDS.items()}
    counts["formatting"] = sum(1 for _ in root.iter(*(w(t) for t in FORMAT_CHANGES)))
    return counts


def unwrap(element: etree._Element) -> None:
    """Put the element's children where it is, and drop it."""
    parent = element.getparent()
    if parent is None:
        return
    index = parent.index(element)
    for offset, child in enumerate(list(element)):
        parent.insert(index + offset, child)
    parent.remove(element)


def drop(element: etree._Element) -> None:
    parent = element.getparent()
    if parent is not None:
        parent.remove(element)


def drop_if_empty(properties: etree._Element) -> None:
    """Drop a properties element left empty, then its w:pPr if that is empty too."""
    owner = properties.getparent()
    if len(properties) == 0 and not properties.attrib:
        drop(properties)
        if owner is not None and owner.tag == w("pPr"):
            drop_if_empty(owner)


def attached(element: etree._Element, root: etree._Element) -> bool:
    return element is root or any(a is root for a in element.iterancestors())


def remove_paragraph_mark(paragraph: etree._Element) -> None:
    """Join a paragraph whose mark goes away with the next one (which keeps its own style)."""
    following = paragraph.getnext()
    content = [child for child in paragraph if child.tag != w("pPr")]
    if following is not None and following.tag == w("p"):
        at = 1 if len(following) and following[0].tag == w("pPr") else 0
        for offset, child in enumerate(content):
            following.insert(at + offset, child)
        drop(paragraph)
        return
    parent = paragraph.getparent()
    others = parent is not None and any(p is not paragraph for p in parent.iterchildren(w("p")))
    if not content and (others or (parent is not None and parent.tag == w("body"))):
        drop(paragraph)


def restore_formatting(change: etree._Element) -> None:
    """Reject a formatting change: the properties become the old ones it recorded."""
    properties = change.getparent()
    old = change.find("*")
    drop(change)
    if properties is None or old is None:
        return
    lead = 0
    for child in properties:
        if child.tag not in NOT_FORMATTING:
            break
        lead += 1
    for child in [c for c in properties if c.tag not in NOT_FORMATTING]:
        properties.remove(child)
    for offset, child in enumerate(list(old)):
        properties.insert(lead + offset, child)


def resolve(root: etree._Element, accept: bool) -> None:
    """Accept (keep insertions, drop deletions) or reject (the opposite) every change."""
    for marker in list(root.iter(*(w(t) for t in RANGE_MARKERS))):
        drop(marker)
    kept, gone = ("ins", "moveTo"), ("del", "moveFrom")
    if not accept:
        kept, gone = gone, kept
    joins: list[etree._Element] = []
    rows: list[etree._Element] = []
    # Removed content first: an insertion later deleted sits in both, and goes.
    for element in list(root.iter(*(w(t) for t in gone))):
        parent = element.getparent()
        if parent is None or not attached(element, root):
            continue
        owner = parent.getparent()
        if parent.tag == w("rPr") and owner is not None:  # a paragraph mark
            if owner.tag == w("pPr") and owner.getparent() is not None:
                joins.append(owner.getparent())
            drop(element)
            drop_if_empty(parent)
        elif parent.tag == w("trPr") and owner is not None:  # a whole table row
            rows.append(owner)
            drop(element)
        else:
            drop(element)
    for element in list(root.iter(*(w(t) for t in kept))):
        if not attached(element, root):
            continue
        parent = element.getparent()
        if parent is not None and parent.tag in (w("rPr"), w("trPr")):
            drop(element)
            drop_if_empty(parent)
            continue
        if not accept:  # deleted text becomes text again
            for text in element.iter(w("delText"), w("delInstrText")):
                text.tag = w("t") if text.tag == w("delText") else w("instrText")
        unwrap(element)
    for change in list(root.iter(*(w(t) for t in FORMAT_CHANGES))):
        if accept:
            drop(change)
        elif attached(change, root):
            restore_formatting(change)
    for paragraph in joins:
        if paragraph is not None and attached(paragraph, root):
            remove_paragraph_mark(paragraph)
    for row in rows:
        table = row.getparent()
        drop(row)
        if table is not None and table.find(w("tr")) is None:
            drop(table)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Accept or reject all tracked changes (insertions, deletions, moves, "
        "formatting changes) in a .docx, or just count them. Accept keeps insertions and "
        "drops deletions; reject does the opposite and restores the old formatting.",
    )
    parser.add_argument("action", choices=("accept", "reject", "count"))
    parser.add_argument("input", type=Path, help="the .docx to read")
    parser.add_argument(
        "output",
        type=Path,
        nargs="?",
        help="the .docx to write (required for accept and reject; may be the input)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.action != "count" and args.output is None:
        return fail(f"{args.action} needs an output file: tracked_changes.py {args.action} "
                    "IN.docx OUT.docx")  # fmt: skip
    totals = dict.fromkeys([*KINDS.values(), "formatting"], 0)
    try:
        document = open_docx(args.input)
        for story in stories(document):
            counts = count(story.root)
            for key, value in counts.items():
                totals[key] += value
            if args.action != "count" and any(counts.values()):
                resolve(story.root, accept=args.action == "accept")
                story.commit()
        if args.action != "count":
            save_docx(document, args.output)
    except DocxError as exc:
        return fail(exc)
    summary = ", ".join(f"{n} {key.replace('_', ' ')}" for key, n in totals.items())
    if args.action == "count":
        print(f"{args.input}: {summary}")
    else:
        verb = "accepted" if args.action == "accept" else "rejected"
        print(f"{verb} {summary}; wrote {args.output}")
    if args.json:
        result: dict[str, object] = {"action": args.action, **totals}
        if args.output is not None and args.action != "count":
            result["output"] = str(args.output)
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
