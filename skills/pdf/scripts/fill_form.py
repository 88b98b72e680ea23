#!/usr/bin/env python3
"""Fill the form fields of a PDF from a JSON object (field name -> value) into a new PDF."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pdfcli import PdfError, guarded, open_pdf, output_file
from pdfforms import EDIT, FormField, read_fields, set_button
from pypdf import PdfWriter
from pypdf.generic import ArrayObject, NameObject, TextStringObject


def load_values(name: str) -> dict[str, Any]:
    path = Path(name)
    if not path.is_file():
        raise PdfError(f"{name}: no such file")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PdfError(f"{name}: not valid JSON ({exc})") from None
    if not isinstance(values, dict):
        raise PdfError(f"{name}: must hold one JSON object, field name -> value")
    return values


def checked(form_field: FormField, value: Any) -> str | list[str]:
    """The value to store for ``form_field``: a state for buttons, text otherwise."""
    name, kind, options = form_field.name, form_field.type, form_field.options
    if form_field.read_only:
        raise PdfError(f"field {name!r} is read-only")
    if kind in ("button", "signature"):
        raise PdfError(f"field {name!r} is a {kind}; it holds no value to fill")
    if kind == "checkbox":
        on = options[0] if options else "Yes"
        if isinstance(value, bool):
            return on if value else "Off"
        state = str(value).lstrip("/")
        if state in (on, "Off"):
            return state
        raise PdfError(f"field {name!r} is a checkbox: give true, false, {on!r} or 'Off'")
    if kind == "radio":
        state = str(value).lstrip("/") if value is not None else "Off"
        if state in [*options, "Off"]:
            return state
        raise PdfError(f"field {name!r} is a radio group: give one of {[*options, 'Off']}")
    if value is None:
        value = ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float, list)):
        raise PdfError(f"field {name!r} is a {kind} field: give a text, not {json.dumps(value)}")
    if isinstance(value, list):
        if kind != "listbox":
            raise PdfError(f"field {name!r} is a {kind} field: give one text, not a list")
        texts = [str(item) for item in value]
    else:
        texts = [str(value)]
    editable = kind == "combobox" and bool(form_field.flags & EDIT)
    if kind in ("combobox", "listbox") and options and not editable:
        wrong = [text for text in texts if text not in options and text != ""]
        if wrong:
            raise PdfError(f"field {name!r}: {wrong[0]!r} is not one of its options {options}")
    return texts if isinstance(value, list) else texts[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Fill the form fields of a PDF from a JSON file holding one object, "
        "field name -> value (names as form_fields.py lists them): text for text and list "
        "fields, true/false for checkboxes, an option name for radio groups. Names the form "
        "does not have are an error. Writes a new PDF."
    )
    parser.add_argument("pdf", help="the PDF form")
    parser.add_argument("values", help='JSON file, e.g. {"name": "Ada", "agree": true}')
    parser.add_argument("-o", "--output", required=True, help="the filled PDF to write")
    parser.add_argument(
        "--json", action="store_true", help='print {"output", "filled": {name: value}} as one line'
    )
    args = parser.parse_args(argv)

    def body() -> int:
        reader = open_pdf(args.pdf)
        values = load_values(args.values)
        out = output_file(args.output, [Path(args.pdf), Path(args.values)])
        writer = PdfWriter(clone_from=reader)
        # one name may stand for several fields (e.g. two copies of a form merged)
        fields: dict[str, list[FormField]] = {}
        for item in read_fields(writer.root_object, list(writer.pages)):
            fields.setdefault(item.name, []).append(item)
        if not fields:
            raise PdfError(f"{args.pdf}: the PDF has no form fields")
        unknown = [name for name in values if name not in fields]
        if unknown:
            known = ", ".join(fields)
            raise PdfError(f"unknown field(s): {', '.join(unknown)} (the form has: {known})")
        wanted = {name: checked(fields[name][0], value) for name, value in values.items()}
        texts: dict[str, Any] = {}
        for name, value in wanted.items():
            if fields[name][0].type in ("checkbox", "radio"):
                for item in fields[name]:
                    set_button(item, str(value))
            else:
                texts[name] = value
        if texts:
            # pypdf sets /V and draws the new text into each widget's appearance
            writer.update_page_form_field_values(None, texts, auto_regenerate=False)
            for name, value in texts.items():  # a widget pypdf did not match: set /V here
                for item in fields[name]:
                    if item.obj.get("/V") != value:
                        item.obj[NameObject("/V")] = (
                            ArrayObject(TextStringObject(v) for v in value)
                            if isinstance(value, list)
                            else TextStringObject(value)
                        )
                        writer.set_need_appearances_writer(True)
        with out.open("wb") as handle:
            writer.write(handle)
        after = {
            item.name: item.value for item in read_fields(writer.root_object, list(writer.pages))
        }
        filled = {name: after[name] for name in wanted}
        if args.json:
            print(json.dumps({"output": str(out), "filled": filled}, ensure_ascii=False))
        else:
            for name, value in filled.items():
                print(f"{name} = {json.dumps(value, ensure_ascii=False)}")
            print(f"wrote {out} ({len(filled)} field(s) filled)")
        return 0

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
