"""AcroForm fields of a PDF: the terminal fields with their type, value, options and pages.

Shared by form_fields.py (lists them) and fill_form.py (checks values against
them and sets buttons). Works on the objects of a pypdf reader or writer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject, NameObject

# Field flags (PDF 32000-1, 12.7.4)
READ_ONLY = 1 << 0
REQUIRED = 1 << 1
RADIO = 1 << 15
PUSHBUTTON = 1 << 16
COMBO = 1 << 17
EDIT = 1 << 18
MULTI_SELECT = 1 << 21


@dataclass
class FormField:
    name: str  # fully qualified, parts joined with "."
    type: str  # text, checkbox, radio, combobox, listbox, button, signature
    value: Any  # str; bool for a checkbox; list[str] for a multi-select list
    options: list[str]  # states of a checkbox or radio, choices of a list or combo
    pages: list[int]
    read_only: bool
    required: bool
    flags: int = field(repr=False)
    obj: DictionaryObject = field(repr=False)
    widgets: list[DictionaryObject] = field(repr=False, default_factory=list)

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "value": self.value,
            "options": self.options,
            "pages": self.pages,
            "read_only": self.read_only,
            "required": self.required,
        }


def read_fields(root: DictionaryObject, pages: list[Any]) -> list[FormField]:
    """The terminal fields of the document whose catalog is ``root``, in form order."""
    acroform = root.get("/AcroForm")
    if acroform is None:
        return []
    page_of: dict[int, int] = {}
    for number, page in enumerate(pages, start=1):
        for annot in _array(page.get("/Annots")):
            if isinstance(annot, IndirectObject):
                page_of[annot.idnum] = number
    found: list[FormField] = []
    for ref in _array(acroform.get_object().get("/Fields")):
        _walk(ref, "", {}, page_of, found, depth=0)
    return found


def _walk(
    ref: Any,
    prefix: str,
    inherited: dict[str, Any],
    page_of: dict[int, int],
    found: list[FormField],
    depth: int,
) -> None:
    node = ref.get_object()
    if not isinstance(node, DictionaryObject) or depth > 32:
        return
    part = node.get("/T")
    name = f"{prefix}.{part}" if prefix and part is not None else str(part or prefix)
    here = dict(inherited)
    for key in ("/FT", "/Ff", "/V", "/Opt"):
        if key in node:
            here[key] = node[key]
    kids = _array(node.get("/Kids"))
    if any("/T" in kid.get_object() for kid in kids):
        for kid in kids:
            _walk(kid, name, here, page_of, found, depth + 1)
        return
    widgets = [kid.get_object() for kid in kids] or [node]
    refs = [r for r in kids or [ref] if isinstance(r, IndirectObject)]
    pages = sorted({page_of[r.idnum] for r in refs if r.idnum in page_of})
    found.append(_describe(name, node, here, widgets, pages))


def _describe(
    name: str,
    node: DictionaryObject,
    attrs: dict[str, Any],
    widgets: list[DictionaryObject],
    pages: list[int],
) -> FormField:
    kind = str(attrs.get("/FT", ""))
    flags = int(attrs.get("/Ff", 0))
    value = attrs.get("/V")
    options: list[str] = []
    if kind == "/Btn":
        states = _button_states(widgets)
        if flags & PUSHBUTTON:
            ftype, value = "button", None
        elif flags & RADIO:
            ftype, options = "radio", states
            value = _name(value) if value is not None else "Off"
        else:
            ftype, options = "checkbox", states
            value = value is not None and _name(value) != "Off"
    elif kind == "/Ch":
        ftype = "combobox" if flags & COMBO else "listbox"
        options = [_option(opt) for opt in _array(attrs.get("/Opt"))]
        if isinstance(value, ArrayObject):
            value = [str(item) for item in value]
        else:
            value = "" if value is None else str(value)
    elif kind == "/Sig":
        ftype, value = "signature", None if value is None else "signed"
    else:
        ftype = "text"
        value = "" if value is None else str(value)
    return FormField(
        name,
        ftype,
        value,
        options,
        pages,
        bool(flags & READ_ONLY),
        bool(flags & REQUIRED),
        flags,
        node,
        widgets,
    )


def set_button(form_field: FormField, state: str) -> None:
    """Turn a checkbox or radio field to ``state`` ("Off" or one of its options)."""
    chosen = NameObject(f"/{state}")
    form_field.obj[NameObject("/V")] = chosen
    for widget in form_field.widgets:
        on = chosen in _appearance_states(widget)
        widget[NameObject("/AS")] = chosen if on else NameObject("/Off")


def _appearance_states(widget: DictionaryObject) -> list[str]:
    """The names of a button widget's normal appearances: "/Off" and its on-state."""
    appearances = widget.get("/AP")
    normal = appearances.get_object().get("/N") if appearances is not None else None
    normal = normal.get_object() if normal is not None else None
    return [str(key) for key in normal] if isinstance(normal, DictionaryObject) else []


def _button_states(widgets: list[DictionaryObject]) -> list[str]:
    states: list[str] = []
    for widget in widgets:
        for key in _appearance_states(widget):
            state = _name(key)
            if state != "Off" and state not in states:
                states.append(state)
    return states


def _option(opt: Any) -> str:
    """An /Opt entry: a text, or an [export value, display text] pair."""
    opt = opt.get_object()
    if isinstance(opt, ArrayObject) and opt:
        return str(opt[0].get_object())
    return str(opt)


def _name(value: Any) -> str:
    text = str(value.get_object() if hasattr(value, "get_object") else value)
    return text[1:] if text.startswith("/") else text


def _array(value: Any) -> list[Any]:
    if value is None:
        return []
    value = value.get_object()
    return list(value) if isinstance(value, ArrayObject) else []
