"""The font families fontconfig knows (fc-list), and lookups by name (shared by design scripts).

fontconfig compares family names ignoring case and spaces; so do these lookups. The
renderers' output and DPI checks live here too, and the one ``error:`` line (from
../../_lib/cli.py).
"""

from __future__ import annotations

import difflib
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_lib"))
from cli import fail as fail  # the scripts' one ``error:`` line, re-exported

_FORMAT = "%{family}\t%{style}\t%{file}\n"


class FontError(Exception):
    """fc-list missing or failing, or a font family that is not installed."""


class RenderError(Exception):
    """Bad input or a failed rendering; the message is printed as one ``error:`` line."""


def check_outputs(*outputs: tuple[str | None, str]) -> None:
    """RenderError unless each given output (OPTION, SUFFIX) ends in SUFFIX and its folder exists.

    Checked in the order given; an option left out (None or empty) is skipped.
    """
    for option, suffix in outputs:
        if option:
            out = Path(option)
            if out.suffix.lower() != suffix:
                raise RenderError(f"{out}: must end in {suffix}")
            if not out.parent.is_dir():
                raise RenderError(f"{out.parent}: no such directory")


def check_dpi(dpi: float) -> None:
    """RenderError unless ``dpi`` is 1 to 2400."""
    if not 1 <= dpi <= 2400:
        raise RenderError(f"bad --dpi {dpi:g}: use 1 to 2400")


@dataclass
class Family:
    name: str
    styles: set[str] = field(default_factory=set)
    files: set[str] = field(default_factory=set)


def key(name: str) -> str:
    return "".join(name.split()).lower()


def _split(text: str) -> list[str]:
    parts = text.replace("\\,", "\0").split(",")  # fontconfig escapes a comma in a name
    return [p.replace("\0", ",").strip() for p in parts if p.strip()]


def installed_families() -> dict[str, Family]:
    """Every family name fontconfig answers to (a font may carry several), by key()."""
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        raise FontError("fc-list (fontconfig) is not installed")
    try:
        proc = subprocess.run(
            [fc_list, "--format", _FORMAT], capture_output=True, text=True, timeout=60, check=False
        )
    except subprocess.TimeoutExpired:
        raise FontError("fc-list did not answer within 60 s") from None
    if proc.returncode != 0:
        raise FontError(f"fc-list failed: {proc.stderr.strip() or proc.returncode}")
    families: dict[str, Family] = {}
    for line in proc.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        names, styles = _split(parts[0]), _split(parts[1])
        for index, name in enumerate(names):
            family = families.setdefault(key(name), Family(name))
            style = styles[index] if index < len(styles) else (styles[0] if styles else "")
            if style:
                family.styles.add(style)
            family.files.add(parts[2])
    return families


def require(name: str, families: dict[str, Family] | None = None) -> Family:
    """The installed family called ``name``; FontError naming close matches otherwise."""
    known = installed_families() if families is None else families
    found = known.get(key(name))
    if found is not None:
        return found
    names = sorted(f.name for f in known.values())
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise FontError(f"font family '{name}' is not installed{hint} (fonts.py lists them)")


def family_of_pdf_font(base_font: str, families: dict[str, Family]) -> str:
    """The installed family a PDF font name (``ABCDEF+DejaVu-Sans-Bold``) comes from.

    The longest installed family name that starts the PDF name wins (so DejaVu Sans
    Mono is not taken for DejaVu Sans); the name itself when none does.
    """
    bare = base_font.split("+", 1)[-1]
    wanted = key(bare.replace("-", " "))
    best = ""
    for family_key, family in families.items():
        if wanted.startswith(family_key) and len(family_key) > len(key(best)):
            best = family.name
    return best or bare
