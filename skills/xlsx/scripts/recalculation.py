"""Recalculate every formula of an .xlsx with LibreOffice headless (shared by the xlsx scripts).

LibreOffice's default for Excel 2007+ files is "never recalculate on load": a formula
cell that carries a cached value keeps it, even a stale one, and ``fullCalcOnLoad``
is ignored. A formula cell without a cached value, however, is always computed.
So a copy of the workbook is made with the cached results of all formula cells
removed, and that copy is converted xlsx -> xlsx: LibreOffice computes every
formula and stores the fresh results, which openpyxl reads with ``data_only=True``.
"""

from __future__ import annotations

import posixpath
import sys
import zipfile
from pathlib import Path

from lxml import etree
from sheetdata import BookError, check_workbook_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_lib"))
from soffice import DEFAULT_TIMEOUT, OfficeError, convert

_RELS = "xl/_rels/workbook.xml.rels"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)

__all__ = ["DEFAULT_TIMEOUT", "OfficeError", "recalculate", "strip_cached_values"]


def _worksheet_parts(archive: zipfile.ZipFile) -> set[str]:
    names = set(archive.namelist())
    parts = {n for n in names if n.startswith("xl/worksheets/") and n.endswith(".xml")}
    if _RELS in names:
        rels = etree.fromstring(archive.read(_RELS), _PARSER)
        for rel in rels.iter("{*}Relationship"):
            if not rel.get("Type", "").endswith("/worksheet"):
                continue
            target = rel.get("Target", "")
            part = target.lstrip("/") if target.startswith("/") else posixpath.join("xl", target)
            part = posixpath.normpath(part)
            if part in names:
                parts.add(part)
    return parts


def _strip_sheet(data: bytes) -> tuple[bytes, int]:
    root = etree.fromstring(data, _PARSER)
    formulas = 0
    for cell in root.iter("{*}c"):
        if cell.find("{*}f") is None:
            continue
        formulas += 1
        for value in cell.findall("{*}v"):
            cell.remove(value)
        cell.attrib.pop("t", None)  # the result type comes back with the result
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", standalone=True), formulas


def strip_cached_values(source: Path, target: Path) -> int:
    """Copy ``source`` to ``target`` without the cached results of formula cells.

    Returns the number of formula cells found.
    """
    formulas = 0
    try:
        with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
            sheets = _worksheet_parts(zin)
            for item in zin.infolist():
                data = zin.read(item.filename)
                if item.filename in sheets:
                    data, count = _strip_sheet(data)
                    formulas += count
                zout.writestr(item, data, compress_type=zipfile.ZIP_DEFLATED)
    except (zipfile.BadZipFile, etree.XMLSyntaxError, KeyError, OSError) as exc:
        raise BookError(f"{source}: damaged workbook ({type(exc).__name__}: {exc})") from None
    return formulas


def recalculate(source: Path, workdir: Path, *, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Recalculate ``source`` in ``workdir``; return the recalculated .xlsx LibreOffice wrote.

    Raises BookError for a bad workbook and OfficeError when LibreOffice fails.
    """
    check_workbook_file(source)
    staged_dir = workdir / "staged"
    staged_dir.mkdir(parents=True, exist_ok=True)
    staged = staged_dir / f"book{source.suffix.lower()}"
    strip_cached_values(source, staged)
    return convert(staged, "xlsx", workdir / "recalculated", timeout=timeout)
