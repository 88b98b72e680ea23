"""Tell a PowerPoint file from anything else, open it, and report bad input in one line.

Shared by the pptx skill's scripts.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path
from typing import Any

_CT = "application/vnd.openxmlformats-officedocument.presentationml."
MAIN_TYPES = (_CT + "presentation.main+xml", _CT + "template.main+xml",
              _CT + "slideshow.main+xml",
              "application/vnd.ms-powerpoint.presentation.macroEnabled.main+xml")  # fmt: skip


class DeckError(Exception):
    """Bad input: the message is the whole reason, one line."""


def fail(message: object) -> int:
    """Print one ``error:`` line to stderr; return the exit status 1."""
    text = " ".join(str(message).split()) or "unknown error"
    print(f"error: {text}", file=sys.stderr)
    return 1


def check_pptx(path: Path) -> None:
    """Raise DeckError unless ``path`` is a PowerPoint (.pptx/.pptm/.potx) package."""
    if not path.exists():
        raise DeckError(f"{path}: no such file")
    if not path.is_file():
        raise DeckError(f"{path}: not a file")
    try:
        with zipfile.ZipFile(path) as archive:
            types = archive.read("[Content_Types].xml")
    except KeyError:
        raise DeckError(f"{path}: not a .pptx file (a ZIP without [Content_Types].xml)") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise DeckError(f"{path}: not a .pptx file ({exc})") from None
    if not any(main.encode() in types for main in MAIN_TYPES):
        raise DeckError(f"{path}: not a .pptx file (no presentation part)")


def open_pptx(path: Path) -> Any:
    """python-pptx's Presentation for ``path``; DeckError for anything that is not one."""
    check_pptx(path)
    import pptx

    try:
        return pptx.Presentation(str(path))
    except Exception as exc:  # python-pptx raises many kinds for a damaged package
        raise DeckError(f"{path}: cannot read the presentation: {exc}") from None


def check_output(path: Path, suffix: str) -> None:
    """Raise DeckError unless ``path`` ends in ``suffix`` and its folder exists."""
    if path.suffix.lower() != suffix:
        raise DeckError(f"{path}: the output must end in {suffix}")
    if not path.resolve().parent.is_dir():
        raise DeckError(f"{path.parent}: no such folder for the output")


def is_hidden(slide: Any) -> bool:
    """A slide hidden from the slide show (LibreOffice leaves it out of a PDF too)."""
    return str(slide.element.get("show", "1")).lower() in ("0", "false")
