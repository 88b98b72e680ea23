#!/usr/bin/env python3
"""Print the number of pages of each PDF named on the command line."""

import sys

from pypdf import PdfReader


def main(paths: list[str]) -> int:
    for path in paths:
        print(f"{path}: {len(PdfReader(path).pages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
