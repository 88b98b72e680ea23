"""Tell a PowerPoint file from anything else, open it, and report bad input in one line.

Shared by the pptx skill's scripts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_lib"))
from cli import fail as fail  # the scripts' one ``error:`` line, re-exported
from officefile import check_package

_CT = "application/vnd.openxmlformats-officedocument.presentationml."
MAIN_TYPES = (_CT + "presentation.main+xml", _CT + "template.main+xml",
              _CT + "slideshow.main+xml",
              "application/vnd.ms-powerpoint.presentation.macroEnabled.main+xml")  # fmt: skip


class DeckError(Exception):
    """Bad input: the message is the whole reason, one line."""


def check_pptx(path: Path) -> None:
    """Raise DeckError unless ``path`` is a PowerPoint (.pptx/.pptm/.potx) package."""
    check_package(path, suffix=".pptx", main_types=MAIN_TYPES, missing="no presentation part",
                  error=DeckError)  # fmt: skip


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
