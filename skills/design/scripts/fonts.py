#!/usr/bin/env python3
"""List the installed font families (fontconfig), to name them in CSS font-family or SVG."""

from __future__ import annotations

import argparse
import json
import sys

from fontlist import FontError, fail, installed_families, key, require


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="List the font families installed (fc-list) with their styles, so a "
        "layout can name them; --check NAME fails (exit 1) when a family is not installed.",
    )
    parser.add_argument(
        "--family", metavar="TEXT", help="only families whose name contains TEXT (case-insensitive)"
    )
    parser.add_argument(
        "--check",
        metavar="NAME",
        action="append",
        default=[],
        help="exit 1 with an error unless this exact family is installed (repeatable)",
    )
    parser.add_argument("--files", action="store_true", help="also print the font files")
    parser.add_argument("--json", action="store_true", help="print one JSON object as last line")
    args = parser.parse_args(argv)
    try:
        families = installed_families()
        checked = [require(name, families) for name in args.check]
    except FontError as exc:
        return fail(exc)
    if checked:
        shown = checked
    else:
        wanted = key(args.family or "")
        shown = [f for k, f in families.items() if wanted in k]
    shown.sort(key=lambda f: f.name.lower())
    rows = [{"family": f.name, "styles": sorted(f.styles), "files": sorted(f.files)} for f in shown]
    if args.json:
        print(json.dumps({"count": len(rows), "families": rows}))
        return 0
    if not rows:
        print(f"no installed family matches '{args.family}'")
    for row in rows:
        print(f"{row['family']}: {', '.join(row['styles'])}")
        if args.files:
            for path in row["files"]:
                print(f"    {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
