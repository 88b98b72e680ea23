#!/usr/bin/env python3
"""Read a .docx as GitHub-flavoured Markdown with pandoc (to stdout or a file)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from docxparts import DocxError, check_docx, fail


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert a Word .docx to GitHub-flavoured Markdown with pandoc: headings, "
        "lists, tables, emphasis, links. Prints to stdout unless -o is given.",
    )
    parser.add_argument("input", type=Path, help="the .docx to read")
    parser.add_argument("-o", "--output", type=Path, help="write the Markdown here instead")
    parser.add_argument(
        "--media-dir",
        type=Path,
        metavar="DIR",
        help="extract the document's images into DIR and link them from the "
        "Markdown (without it, image links point nowhere)",
    )
    parser.add_argument(
        "--track-changes",
        choices=("accept", "reject", "all"),
        default="accept",
        help="how to show tracked changes (default: accept them; 'all' marks "
        "insertions and deletions)",
    )
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_docx(args.input)
        pandoc = shutil.which("pandoc")
        if pandoc is None:
            raise DocxError("pandoc is not installed")
        argv_ = [pandoc, "--from", "docx", "--to", "gfm", "--wrap", "none", "--standalone",
                 f"--track-changes={args.track_changes}", str(args.input)]  # fmt: skip
        if args.media_dir is not None:
            argv_ += ["--extract-media", str(args.media_dir)]
        if args.output is not None:
            if not args.output.resolve().parent.is_dir():
                raise DocxError(f"{args.output.parent}: no such folder for the output")
            argv_ += ["--output", str(args.output)]
        proc = subprocess.run(argv_, capture_output=True, text=True, timeout=300, check=False)
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            raise DocxError(f"pandoc could not read {args.input}: "
                            f"{lines[-1] if lines else proc.returncode}")  # fmt: skip
    except DocxError as exc:
        return fail(exc)
    except subprocess.TimeoutExpired:
        return fail("pandoc did not finish within 300 s")
    if args.output is None:
        sys.stdout.write(proc.stdout)
    else:
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
