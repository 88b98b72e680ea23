#!/usr/bin/env python3
"""Create a .docx from Markdown with pandoc: headings, emphasis, lists, tables, code, images."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from docxparts import DocxError, check_docx, fail

# GitHub-flavoured Markdown (a list may follow a paragraph line directly, pipe tables,
# fenced code, task lists, YAML front matter for the title) plus raw OpenXML blocks.
DEFAULT_FROM = "gfm+raw_attribute"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert a Markdown file to a Word .docx with pandoc. Headings, bold/italic, "
        "bullet and numbered lists, tables, code blocks, links and images (paths relative to "
        "the Markdown file) become native Word formatting.",
    )
    parser.add_argument("input", type=Path, help="the Markdown file")
    parser.add_argument("output", type=Path, help="the .docx to write (replaced if it exists)")
    parser.add_argument(
        "--reference-doc",
        type=Path,
        metavar="DOCX",
        help="take styles (fonts, heading looks, page size) from this .docx",
    )
    parser.add_argument(
        "--from",
        dest="from_format",
        default=DEFAULT_FROM,
        metavar="FORMAT",
        help=f"pandoc input format (default {DEFAULT_FROM}; 'markdown' for pandoc's own dialect)",
    )
    parser.add_argument("--toc", action="store_true", help="insert a table of contents")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    source: Path = args.input
    target: Path = args.output
    try:
        if not source.is_file():
            raise DocxError(f"{source}: no such file")
        if target.suffix.lower() != ".docx":
            raise DocxError(f"{target}: the output must end in .docx")
        if not target.resolve().parent.is_dir():
            raise DocxError(f"{target.parent}: no such folder for the output")
        pandoc = shutil.which("pandoc")
        if pandoc is None:
            raise DocxError("pandoc is not installed")
        argv_ = [
            pandoc,
            "--from",
            args.from_format,
            "--to",
            "docx",
            "--standalone",
            "--resource-path",
            str(source.resolve().parent),
            "--output",
            str(target),
        ]
        if args.reference_doc is not None:
            check_docx(args.reference_doc)
            argv_ += ["--reference-doc", str(args.reference_doc)]
        if args.toc:
            argv_.append("--toc")
        argv_.append(str(source))  # fmt: skip
        proc = subprocess.run(argv_, capture_output=True, text=True, timeout=300, check=False)
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            raise DocxError(f"pandoc failed: {lines[-1] if lines else proc.returncode}")
    except DocxError as exc:
        return fail(exc)
    except subprocess.TimeoutExpired:
        return fail("pandoc did not finish within 300 s")
    for line in proc.stderr.strip().splitlines():  # pandoc's warnings (e.g. a missing image)
        print(f"warning: {line}", file=sys.stderr)
    print(f"wrote {target} ({target.stat().st_size} bytes)")
    if args.json:
        print(json.dumps({"output": str(target), "bytes": target.stat().st_size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
