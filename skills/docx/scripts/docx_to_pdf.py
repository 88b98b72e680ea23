#!/usr/bin/env python3
"""Convert a .docx (or .doc/.odt/.rtf) to PDF with LibreOffice headless."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from docxparts import DocxError, check_docx, fail

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_lib"))
from soffice import OfficeError, convert

OTHER_TYPES = {".doc", ".odt", ".rtf"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert a Word document to PDF with LibreOffice (headless, private profile, "
        "timeout). Prints the page count.",
    )
    parser.add_argument("input", type=Path, help="the .docx (also .doc, .odt, .rtf)")
    parser.add_argument(
        "output",
        type=Path,
        nargs="?",
        help="the PDF to write (default: the input's name with .pdf)",
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds (default 300)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    source: Path = args.input
    target: Path = args.output or source.with_suffix(".pdf")
    try:
        if source.suffix.lower() in OTHER_TYPES:
            if not source.is_file():
                raise DocxError(f"{source}: no such file")
        else:
            check_docx(source)
        if not target.resolve().parent.is_dir():
            raise DocxError(f"{target.parent}: no such folder for the output")
        with tempfile.TemporaryDirectory(prefix="docx-to-pdf-") as work:
            # A copy under a plain name: soffice names its output after the input.
            staged = Path(work) / f"document{source.suffix.lower()}"
            shutil.copyfile(source, staged)
            written = convert(staged, "pdf", Path(work) / "out", timeout=args.timeout)
            shutil.move(str(written), target)
    except (DocxError, OfficeError) as exc:
        return fail(exc)
    except OSError as exc:
        return fail(f"cannot write {target}: {exc.strerror or exc}")
    from pypdf import PdfReader

    pages = len(PdfReader(target).pages)
    print(f"wrote {target} ({pages} page{'s' if pages != 1 else ''})")
    if args.json:
        print(json.dumps({"output": str(target), "pages": pages}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
