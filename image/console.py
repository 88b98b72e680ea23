"""How the toolkit talks to people: step logs with timings, progress, results for CI.

Text that came from a guest (a command's output, the serial console, cloud-init's
log, file names in a share) can hold terminal control sequences: a guest could
retitle the window, redraw or hide lines, or on some terminals make the
terminal answer as if typed. On a terminal every control character but newline
and tab is therefore shown, not obeyed (``visible``: ESC as ``\x1b``); into a
pipe or a file bytes pass unchanged, so output stays exact for programs.
``guest_output`` writes a guest's bytes, ``for_terminal`` makes a message safe
for a stream, and log records are made safe by the handler ``setup_logging`` sets.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Any, BinaryIO, TextIO

from rich.console import Console
from rich.logging import RichHandler

# Shown, never obeyed, on a terminal: C0 controls but tab and newline (a CR only
# where it ends a line: a lone CR would let later text overwrite earlier), DEL,
# the C1 controls (U+0080-U+009F, e.g. the one-character CSI), and the Unicode
# bidi controls that reorder what a line shows.
_CONTROL = re.compile(
    "\r(?!\n)|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with every control character written out (ESC as ``\\x1b``)."""
    return _CONTROL.sub(_shown, text)


def _is_terminal(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed
        return False


def for_terminal(text: str, stream: object) -> str:
    """``text`` as it may be written to ``stream``: made visible if it is a terminal."""
    return visible(text) if _is_terminal(stream) else text


def guest_output(data: bytes, stream: TextIO | None = None) -> None:
    """Write bytes a guest produced to ``stream`` (default stdout), and flush.

    A terminal gets them decoded (UTF-8; bytes that are not, as ``\\xNN``) with
    control characters made visible; anything else gets the bytes unchanged.
    """
    out = sys.stdout if stream is None else stream
    out.flush()
    raw: BinaryIO = out.buffer if hasattr(out, "buffer") else out  # type: ignore[assignment]
    if _is_terminal(out):
        data = visible(data.decode("utf-8", errors="backslashreplace")).encode()
    raw.write(data)
    raw.flush()


class TerminalFilter:
    """A guest's PTY output for the user's terminal (``./inv launch --shell``).

    An interactive shell needs the terminal's colours and cursor movement, so CSI
    and the other short sequences pass, as ssh passes them. The string sequences
    do not: OSC (window title, clipboard, hyperlinks, colour queries), DCS (terminal
    programming and status reports), APC, PM and SOS are dropped whole, also when
    split across chunks, so a guest cannot set what the terminal might later type
    back, write the clipboard, or reprogram keys. Text is decoded as UTF-8 (a
    malformed byte becomes U+FFFD).
    """

    _ESC_STRING = "]P_^X"  # ESC + one of these opens a string sequence
    _C1_STRING = "\x9d\x90\x9f\x9e\x98"  # the same as one C1 character
    _SPECIAL = re.compile("[\x1b\x9d\x90\x9f\x9e\x98]")

    def __init__(self) -> None:
        import codecs

        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._state = "text"  # text | esc | string | string-esc

    def feed(self, data: bytes) -> bytes:
        text = self._decoder.decode(data)
        if self._state == "text" and not self._SPECIAL.search(text):
            return text.encode()
        out: list[str] = []
        for ch in text:
            if self._state == "text":
                if ch == "\x1b":
                    self._state = "esc"
                elif ch in self._C1_STRING:
                    self._state = "string"
                else:
                    out.append(ch)
            elif self._state == "esc":
                if ch in self._ESC_STRING:
                    self._state = "string"
                elif ch == "\x1b":
                    out.append(ch)  # the first ESC introduced nothing
                else:
                    out.append("\x1b" + ch)
                    self._state = "text"
            elif self._state == "string":
                if ch in "\x07\x9c":  # BEL or ST ends it
                    self._state = "text"
                elif ch == "\x1b":
                    self._state = "string-esc"
            else:  # string-esc: ESC \ is ST; anything else stays inside the string
                self._state = "text" if ch == "\\" else "string"
        return "".join(out).encode()


class TerminalSafe(logging.Filter):
    """Log records as text safe for the terminal the handler writes to."""

    def __init__(self, stream: object) -> None:
        super().__init__()
        self.stream = stream

    def filter(self, record: logging.LogRecord) -> bool:
        if _is_terminal(self.stream):
            record.msg, record.args = visible(record.getMessage()), None
        return True


err = Console(stderr=True, highlight=False)
if not err.is_terminal:  # CI logs: do not wrap tables at 80 columns
    err = Console(stderr=True, highlight=False, width=160)
log = logging.getLogger("image")


def markup_safe(text: str) -> str:
    """A message (it may quote a guest) for ``err.print``: no markup, no control sequences."""
    from rich.markup import escape

    return escape(for_terminal(text, err.file))


def setup_logging(debug: bool = False) -> None:
    level = logging.DEBUG if debug else logging.INFO
    root = logging.getLogger("image")
    root.setLevel(level)
    if root.handlers:
        return
    handler: logging.Handler
    if err.is_terminal and not os.environ.get("CI"):
        handler = RichHandler(console=err, show_path=False, markup=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.addFilter(TerminalSafe(err.file if isinstance(handler, RichHandler) else sys.stderr))
    root.addHandler(handler)


@contextlib.contextmanager
def step(name: str, timings: dict[str, float] | None = None) -> Iterator[None]:
    """Log the start and the duration of a step; record it in ``timings``."""
    log.info("==> %s", name)
    start = time.monotonic()
    try:
        yield
    finally:
        seconds = time.monotonic() - start
        if timings is not None:
            timings[name] = round(seconds, 2)
        log.info("<== %s (%.1f s)", name, seconds)


def print_json(result: dict[str, Any]) -> None:
    """The machine-readable result: one JSON object, always the last line on stdout."""
    sys.stdout.write(json.dumps(result, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def progress_enabled() -> bool:
    return err.is_terminal and not os.environ.get("CI")


def print_summary(title: str, timings: dict[str, float]) -> None:
    """A table of steps and their seconds, on stderr (stdout stays for results)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for name, seconds in timings.items():
        table.add_row(name, f"{seconds:.1f}")
    table.add_row("total", f"{sum(timings.values()):.1f}", style="bold")
    err.print(table)
