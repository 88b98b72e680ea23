"""Office Open XML packages (.docx, .pptx...) for the skills' scripts: tell one from
anything else before a tool spends time on it.

Standard library only; imported by the skills' scripts from ``../_lib``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from pathlib import Path


def check_package(
    path: Path,
    *,
    suffix: str,
    main_types: Iterable[str],
    missing: str,
    error: type[Exception],
) -> None:
    """Raise ``error`` unless ``path`` is an Office package with one of ``main_types``.

    ``suffix`` names the kind in the messages (``.docx``); ``missing`` says what is
    absent when the package holds none of ``main_types`` (``no Word document part``).
    """
    if not path.exists():
        raise error(f"{path}: no such file")
    if not path.is_file():
        raise error(f"{path}: not a file")
    try:
        with zipfile.ZipFile(path) as archive:
            types = archive.read("[Content_Types].xml")
    except KeyError:
        raise error(f"{path}: not a {suffix} file (a ZIP without [Content_Types].xml)") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise error(f"{path}: not a {suffix} file ({exc})") from None
    if not any(main.encode() in types for main in main_types):
        raise error(f"{path}: not a {suffix} file ({missing})")
