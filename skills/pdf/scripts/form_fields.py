#!/usr/bin/env python3
"""List the form fields (AcroForm) of a PDF: name, type, current value, options, pages."""

from __future__ import annotations

import argparse
import json
import sys

from pdfcli import guarded, open_pdf
from pdfforms import read_fields


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="List the fillable form fields of a PDF: full name (what fill_form.py "
        "takes), type (text, checkbox, radio, combobox, listbox, button, signature), current "
        "value, options of checkboxes, radios and lists, and the pages the field is on."
    )
    parser.add_argument("pdf", help="the PDF form")
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"file", "fields": [{"name", "type", "value", "options", '
        '"pages", "read_only", "required"}]} as one line',
    )
    args = parser.parse_args(argv)

    def body() -> int:
        reader = open_pdf(args.pdf)
        fields = read_fields(reader.root_object, list(reader.pages))
        acroform = reader.root_object.get("/AcroForm")
        xfa = acroform is not None and "/XFA" in acroform.get_object()
        if args.json:
            found = [item.public() for item in fields]
            print(json.dumps({"file": args.pdf, "fields": found, "xfa": xfa}, ensure_ascii=False))
            return 0
        if not fields:
            print(
                "no form fields"
                + (" (an XFA form: its fields are not AcroForm fields)" if xfa else "")
            )
            return 0
        print(f"{len(fields)} form field(s):")
        for item in fields:
            line = f"- {item.name} [{item.type}] value={json.dumps(item.value, ensure_ascii=False)}"
            if item.options:
                line += f" options={json.dumps(item.options, ensure_ascii=False)}"
            if item.pages:
                line += f" page(s) {','.join(map(str, item.pages))}"
            flags = [
                flag
                for flag, on in (("read-only", item.read_only), ("required", item.required))
                if on
            ]
            if flags:
                line += f" ({', '.join(flags)})"
            print(line)
        return 0

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
