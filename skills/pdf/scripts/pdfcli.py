"""Command-line plumbing shared by the pdf skill's scripts.

Input checks (the file exists and is a PDF pypdf can open), page selections
("1-3,5,8-"), output paths that never overwrite an input, external tools run
with a timeout, and the one-line ``error: <reason>`` every script reports bad
input with (exit status 1, no traceback).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pypdf import PdfReader

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_lib"))
from cli import fail as fail  # the scripts' one ``error:`` line, re-exported

# pypdf and pdfminer log recoverable oddities of a file as warnings, which Python
# prints to stderr; the scripts' stderr is kept for the one error line.
for _name in ("pypdf", "pdfminer", "pdfplumber"):
    logging.getLogger(_name).setLevel(logging.ERROR)

TOOL_TIMEOUT = 600.0


class PdfError(Exception):
    """Bad input or a failed step; the message is the reason shown to the user."""


def require_pdf(name: str | Path) -> Path:
    """The path of an existing file that starts like a PDF, else PdfError."""
    path = Path(name)
    if not path.exists():
        raise PdfError(f"{name}: no such file")
    if not path.is_file():
        raise PdfError(f"{name}: not a file")
    with path.open("rb") as handle:
        head = handle.read(1024)
    if b"%PDF-" not in head:
        raise PdfError(f"{name}: not a PDF (no %PDF- header)")
    return path


def open_pdf(name: str | Path) -> PdfReader:
    """A pypdf reader for ``name``; an encrypted file opens only with an empty password."""
    path = require_pdf(name)
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise PdfError(f"{name}: the PDF is encrypted and needs a password")
        len(reader.pages)
    except PdfError:
        raise
    except Exception as exc:
        raise PdfError(f"{name}: not a readable PDF ({_reason(exc)})") from None
    return reader


def parse_ranges(spec: str, count: int) -> list[tuple[int, int]]:
    """Page ranges, 1-based and inclusive: "1-3,5,8-" -> [(1, 3), (5, 5), (8, count)]."""
    ranges: list[tuple[int, int]] = []
    for raw in spec.split(","):
        part = raw.strip()
        first_text, dash, last_text = part.partition("-")
        try:
            first = int(first_text) if first_text.strip() else 1
            last = (int(last_text) if last_text.strip() else count) if dash else first
        except ValueError:
            raise PdfError(f"bad page range {part!r} (use e.g. 1-3,5,8-)") from None
        if not part or first < 1:
            raise PdfError(f"bad page range {part!r} (use e.g. 1-3,5,8-)")
        if first > count or last > count:
            page = first if first > count else last
            plural = "s" if count != 1 else ""
            raise PdfError(f"page {page} is out of range: the PDF has {count} page{plural}")
        if last < first:
            raise PdfError(f"bad page range {part!r} (use e.g. 1-3,5,8-)")
        ranges.append((first, last))
    return ranges


def parse_pages(spec: str | None, count: int) -> list[int]:
    """Page numbers (1-based) in the order given, each once; every page when spec is None."""
    if spec is None:
        return list(range(1, count + 1))
    pages: dict[int, None] = {}  # ordered, without repeats
    for first, last in parse_ranges(spec, count):
        pages.update(dict.fromkeys(range(first, last + 1)))
    return list(pages)


def output_file(name: str | Path, inputs: Sequence[Path] = ()) -> Path:
    """A path to write a file to: its folder exists and it is none of ``inputs``."""
    path = Path(name)
    if path.is_dir():
        raise PdfError(f"{name}: is a folder; name an output file")
    if not path.resolve().parent.is_dir():
        raise PdfError(f"{name}: the folder {path.parent} does not exist")
    for source in inputs:
        if path.resolve() == source.resolve():
            raise PdfError(f"{name}: the output would overwrite an input; name another file")
    return path


def output_dir(name: str | Path) -> Path:
    """A folder to write files into, made when missing."""
    path = Path(name)
    if path.exists() and not path.is_dir():
        raise PdfError(f"{name}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PdfError(f"{name}: cannot make the folder ({exc.strerror})") from None
    return path


def need_tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise PdfError(f"{name} is not installed")
    return found


def run_tool(
    argv: Sequence[str], timeout: float = TOOL_TIMEOUT, env: dict[str, str] | None = None
) -> str:
    """Run an external tool; its stdout, or PdfError naming its last line of stderr."""
    tool = Path(argv[0]).name
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise PdfError(f"{tool} did not finish within {timeout:.0f} s") from None
    except OSError as exc:
        raise PdfError(f"{tool} could not run ({exc.strerror})") from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        detail = lines[-1].strip() if lines else f"exit code {proc.returncode}"
        raise PdfError(f"{tool} failed: {detail}")
    return proc.stdout


def guarded(body: Callable[[], int]) -> int:
    """Run a script's body; bad input becomes one ``error:`` line on stderr and exit 1."""
    try:
        return body()
    except PdfError as exc:
        return fail(str(exc))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return fail(f"{where}{exc.strerror or exc}")
    except Exception as exc:  # a library choking on a damaged file
        return fail(f"could not process the PDF ({_reason(exc)})")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
