"""Open a .docx safely and reach the XML of every part that holds document text.

Shared by the docx skill's scripts: ``check_docx`` tells a Word file from anything
else before a tool spends time on it, ``open_docx`` loads it with python-docx, and
``stories`` yields the XML root of the body, each header and footer, the footnotes,
endnotes and comments, with a way to write the changes back for the parts
python-docx keeps only as bytes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lxml import etree

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_lib"))
from cli import fail as fail  # the scripts' one ``error:`` line, re-exported
from officefile import check_package

W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
MC_NS = "http://schemas.openxmlformats.org/markup-compatibility/2006"

_CT = "application/vnd.openxmlformats-officedocument.wordprocessingml."
STORY_TYPES = {
    _CT + "document.main+xml": "body",
    _CT + "document.macroEnabled.main+xml": "body",
    _CT + "template.main+xml": "body",
    _CT + "header+xml": "header",
    _CT + "footer+xml": "footer",
    _CT + "footnotes+xml": "footnotes",
    _CT + "endnotes+xml": "endnotes",
    _CT + "comments+xml": "comments",
}


def w(tag: str) -> str:
    """``w:tag`` in Clark notation."""
    return f"{{{W_NS}}}{tag}"


class DocxError(Exception):
    """Bad input: the message is the whole reason, one line."""


def check_docx(path: Path) -> None:
    """Raise DocxError unless ``path`` is a Word (.docx/.docm/.dotx) package."""
    body_types = [main for main, kind in STORY_TYPES.items() if kind == "body"]
    check_package(path, suffix=".docx", main_types=body_types, missing="no Word document part",
                  error=DocxError)  # fmt: skip


def open_docx(path: Path) -> Any:
    """python-docx's Document for ``path``; DocxError for anything that is not one."""
    check_docx(path)
    import docx  # imported here so --help works even where python-docx is broken

    try:
        return docx.Document(str(path))
    except Exception as exc:  # python-docx raises many kinds for a damaged package
        raise DocxError(f"{path}: cannot read the document: {exc}") from None


def save_docx(document: Any, path: Path) -> None:
    if not path.parent.is_dir():
        raise DocxError(f"{path.parent}: no such folder for the output")
    try:
        document.save(str(path))
    except OSError as exc:
        raise DocxError(f"cannot write {path}: {exc.strerror or exc}") from None


@dataclass
class Story:
    """One part's XML: ``kind`` is body, header, footer, footnotes, endnotes or comments."""

    kind: str
    partname: str
    root: etree._Element
    commit: Callable[[], None]


_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)


def stories(document: Any) -> Iterator[Story]:
    """Every text-bearing part of the package, each once, the main document first."""
    parts = sorted(document.part.package.iter_parts(),
                   key=lambda part: (STORY_TYPES.get(part.content_type) != "body",
                                     str(part.partname)))  # fmt: skip
    for part in parts:
        kind = STORY_TYPES.get(part.content_type)
        if kind is None:
            continue
        element = getattr(part, "element", None)
        if element is not None:
            yield Story(kind, str(part.partname), element, lambda: None)
            continue
        # python-docx keeps footnotes and endnotes as bytes: parse, and put back.
        try:
            root = etree.fromstring(part.blob, _PARSER)
        except etree.XMLSyntaxError as exc:
            raise DocxError(f"{part.partname}: damaged XML: {exc}") from None

        def commit(part: Any = part, root: etree._Element = root) -> None:
            part._blob = etree.tostring(root, xml_declaration=True, encoding="UTF-8",
                                        standalone=True)  # fmt: skip

        yield Story(kind, str(part.partname), root, commit)


def in_fallback(element: etree._Element) -> bool:
    """True inside mc:Fallback: the copy of a text box older readers show instead."""
    return any(a.tag == f"{{{MC_NS}}}Fallback" for a in element.iterancestors())
