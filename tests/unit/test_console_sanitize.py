"""Guest output on the host's terminal: control sequences shown, not obeyed; exact into pipes.

The terminal is a real pseudo-terminal (os.openpty), with output processing off
so that what the toolkit wrote is what the master end reads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import termios
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from image import console
from image.vm import qemu

HOSTILE = (
    b"plain \t tab\n"
    b"\x1b[2J\x1b[H"  # CSI: clear the screen, cursor home
    b"\x1b]0;pwned\x07"  # OSC: set the window title
    b"\x1b]52;c;ZWNobyBoaQ==\x07"  # OSC 52: write the clipboard
    b"\x1bP+q544e\x1b\\"  # DCS: ask the terminal to answer (XTGETTCAP)
    b"\x9b31m"  # an 8-bit CSI (not UTF-8)
    b"\xc2\x9b1m"  # a C1 CSI as UTF-8 (U+009B)
    b"safe\rEVIL\r\n"  # a lone CR overwrites the line; a CRLF does not
    b"bell\x07 nul\x00 bs\x08 del\x7f "
    b"\xe2\x80\xaetxt.exe\n"  # U+202E RIGHT-TO-LEFT OVERRIDE
    b"caf\xc3\xa9 \xe2\x9c\x93\n"  # ordinary UTF-8 text stays as it is
)
SHOWN = (
    b"plain \t tab\n"
    b"\\x1b[2J\\x1b[H"
    b"\\x1b]0;pwned\\x07"
    b"\\x1b]52;c;ZWNobyBoaQ==\\x07"
    b"\\x1bP+q544e\\x1b\\"
    b"\\x9b31m"
    b"\\x9b1m"
    b"safe\\x0dEVIL\r\n"
    b"bell\\x07 nul\\x00 bs\\x08 del\\x7f "
    b"\\u202etxt.exe\n"
    b"caf\xc3\xa9 \xe2\x9c\x93\n"
)


@contextlib.contextmanager
def terminal() -> Iterator[tuple[TextIO, int]]:
    """A text stream on a pty's slave end, and the master end's fd to read it back."""
    master, slave = os.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.OPOST  # no \n -> \r\n: read back exactly what was written
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    stream = os.fdopen(slave, "w", encoding="utf-8")
    try:
        yield stream, master
    finally:
        stream.close()
        os.close(master)


def read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    out = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            out += chunk
    return out


def test_on_a_terminal_control_sequences_are_shown_not_obeyed() -> None:
    with terminal() as (stream, master):
        assert stream.isatty()
        console.guest_output(HOSTILE, stream)
        seen = read_all(master)
    assert seen == SHOWN
    assert b"\x1b" not in seen and b"\x07" not in seen and b"\x9b" not in seen.replace(
        b"\\x9b", b"")  # fmt: skip


def test_into_a_pipe_the_bytes_pass_unchanged() -> None:
    read, write = os.pipe()
    with os.fdopen(write, "w") as stream, os.fdopen(read, "rb") as back:
        console.guest_output(HOSTILE, stream)
        stream.close()
        assert back.read() == HOSTILE


def test_into_a_file_the_bytes_pass_unchanged(tmp_path: Path) -> None:
    with (tmp_path / "out").open("w") as stream:
        stream.write("before ")  # text written earlier comes first (flushed)
        console.guest_output(HOSTILE, stream)
    assert (tmp_path / "out").read_bytes() == b"before " + HOSTILE


def test_for_terminal_only_changes_text_for_a_terminal() -> None:
    text = "\x1b]0;pwned\x07 ok"
    read, write = os.pipe()
    with terminal() as (stream, _), os.fdopen(write, "w") as pipe:
        assert console.for_terminal(text, stream) == "\\x1b]0;pwned\\x07 ok"
        assert console.for_terminal(text, pipe) == text
    os.close(read)


@pytest.mark.parametrize("on_terminal", [True, False], ids=["terminal", "pipe"])
def test_log_records_quoting_a_guest_are_safe_on_a_terminal(on_terminal: bool) -> None:
    read, write = os.pipe()
    with terminal() as (tty, master), os.fdopen(write, "w") as pipe:
        stream = tty if on_terminal else pipe
        handler = logging.StreamHandler(stream)
        handler.addFilter(console.TerminalSafe(stream))
        logger = logging.getLogger("test.console.sanitize")
        logger.addHandler(handler)
        logger.propagate = False
        try:
            logger.warning("the guest said: %s", "\x1b]0;pwned\x07done")
        finally:
            logger.removeHandler(handler)
        pipe.close()
        seen = read_all(master) if on_terminal else os.read(read, 65536)
    os.close(read)
    if on_terminal:
        assert seen == b"the guest said: \\x1b]0;pwned\\x07done\n"
    else:
        assert seen == b"the guest said: \x1b]0;pwned\x07done\n"


def test_a_serial_tail_shows_what_it_does_not_strip(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(b"\x1b[1mboot\x1b[0m\r\n\x1b]0;pwned\x07login: \x1bPq\x1b\\\r\n")
    assert qemu.serial_tail(log) == "boot\n\\x1b]0;pwned\\x07login: \\x1bPq\\x1b\\"


def test_an_error_message_printed_by_a_task_is_shown_not_obeyed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # tasks/ prints an ImageError through console.err (rich, markup on): a message
    # quoting a guest must neither reach the terminal raw nor be read as markup.
    from invoke.exceptions import Exit
    from rich.console import Console

    import tasks
    from image.errors import ImageError

    with terminal() as (stream, master):
        monkeypatch.setattr(console, "err", Console(file=stream, force_terminal=True,
                                                    highlight=False, width=200))  # fmt: skip
        previous = signal.getsignal(signal.SIGTERM)
        # _user_errors() sets up logging on this terminal; the terminal closes at the
        # end of the test, so later tests must not inherit a handler that writes to it.
        image_log = logging.getLogger("image")
        handlers = image_log.handlers[:]
        try:
            with pytest.raises(Exit), tasks._user_errors():
                raise ImageError("cloud-init: \x1b]0;pwned\x07 [link=file:///etc]x[/link] [/]",
                                 hint="\x1b[8mhidden")  # fmt: skip
        finally:
            signal.signal(signal.SIGTERM, previous)
            image_log.handlers[:] = handlers
        seen = read_all(master).decode()
    assert "\x1b]" not in seen and "\x1b[8m" not in seen  # rich's own styling aside
    assert "\\x1b]0;pwned\\x07 [link=file:///etc]x[/link] [/]" in seen
    assert "\\x1b[8mhidden" in seen
