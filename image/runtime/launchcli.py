"""`./inv launch` as a user meets it, built on the API (image/runtime/api.py).

- ``-- CMD``: CMD's stdout and stderr as they arrive (exact bytes into a pipe;
  control sequences shown, not obeyed, on a terminal), piped stdin forwarded, the
  exit status CMD's own (128 + N if signal N ended it). The first Ctrl-C goes to
  CMD in the sandbox; a second one or SIGTERM ends the launch: the VM stops and
  nothing is left (130 / 143).
- ``--shell``: a terminal inside the sandbox: this terminal in raw mode, its keys
  (Ctrl-C too: it interrupts the sandbox's foreground job) to a PTY in the guest,
  its size followed, the guest's output through `console.TerminalFilter`.
- neither: the sandbox stays up until Ctrl-C or SIGTERM, and says how to reach it.

The launch's own progress goes to stderr only with --verbose or --debug (the task
sets the log level): an agent harness reads a launch's output as the command's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from image.config import BuildConfig
from image.console import TerminalFilter, guest_output, print_json
from image.errors import ImageError
from image.runtime.api import Sandbox, open_sandbox
from image.runtime.execchannel import ChannelError, Process
from image.runtime.snapshot import LaunchOptions

log = logging.getLogger(__name__)
SHELL = ("bash", "--login")


def launch_and_run(snapdir: Path, cfg: BuildConfig, options: LaunchOptions,
                   json_result: bool = False, shell: bool = False) -> int:  # fmt: skip
    """The `./inv launch` behaviour: run CMD (or a shell) and return its status, or
    stay up until stopped."""
    if shell and not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise ImageError(
            "--shell needs a terminal on stdin and stdout",
            hint="from a script, run a command: ./inv launch SNAPSHOT -- CMD",
        )
    with open_sandbox(snapdir, cfg, options) as sandbox:
        log.info("launched %s: resumed in %.2f s, ready in %.2f s", sandbox.hostname,
                 sandbox.timings["resume"], sandbox.timings["ready"])  # fmt: skip
        log.info("egress audit log: %s", sandbox.audit_log)
        if shell:
            return _terminal(sandbox, options)
        if not options.command:
            spec = sandbox.vm.vm.spec
            print(f"sandbox {sandbox.hostname} is running (Ctrl-C or SIGTERM stops it)")
            print(f"  guest agent: socat - UNIX-CONNECT:{spec.qga_socket}")
            print(f"  QMP:         socat - UNIX-CONNECT:{spec.qmp_socket}")
            sys.stdout.flush()
            while sandbox.vm.vm.alive():
                time.sleep(0.5)
            return 0
        code, line_ended = _stream_command(sandbox, options)
        if json_result:
            if not line_ended:
                guest_output(b"\n", sys.stdout)  # the object goes on a line of its own
            print_json({"hostname": sandbox.hostname, "exit_code": code,
                        "timings": sandbox.timings,
                        "audit_log": str(sandbox.audit_log)})  # fmt: skip
        return code


def _status(proc: Process) -> int:
    end = proc.exit or {}
    if end.get("error"):
        log.error("the sandbox could not start the command: %s", end["error"])
    code = end.get("code") if end.get("signal") is None else 128 + int(end["signal"])
    return int(code if code is not None else 1)


def _until_the_end(proc: Process, timeout: float, deadline: float) -> Iterator[tuple[str, bytes]]:
    """The command's output; past ``deadline`` it is killed and that is an error."""
    try:
        yield from proc.output(max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        proc.kill()
        with contextlib.suppress(TimeoutError):
            proc.wait(30)
        raise ImageError(f"the command ran longer than {timeout:g} s; it was killed",
                         hint="--timeout SECONDS gives it longer") from None  # fmt: skip


def _stream_command(sandbox: Sandbox, options: LaunchOptions) -> tuple[int, bool]:
    """Returns the exit status as a shell gives it and whether stdout ended with a
    newline. The first Ctrl-C goes to the command (the agent signals its session in
    the sandbox, as a terminal would); a second one, or SIGTERM, ends the launch."""
    spawned = time.monotonic()
    deadline = spawned + options.command_timeout
    proc = sandbox.spawn(list(options.command))
    _forward_stdin(proc)
    last, interrupted = b"\n", False
    while proc.exit is None:
        try:
            for stream, chunk in _until_the_end(proc, options.command_timeout, deadline):
                sandbox.timings.setdefault(
                    "command_first_output", round(time.monotonic() - spawned, 3)
                )
                guest_output(chunk, sys.stdout if stream == "stdout" else sys.stderr)
                if stream == "stdout":
                    last = chunk
        except KeyboardInterrupt as exc:
            if interrupted or type(exc) is not KeyboardInterrupt:  # SIGTERM: a subclass
                raise
            interrupted = True
            proc.signal(signal.SIGINT)
    sandbox.timings["command_end"] = round(time.monotonic() - spawned, 3)
    return _status(proc), last.endswith(b"\n")


def _forward_stdin(proc: Process) -> None:
    """Piped input goes to the command as it comes; a terminal's does not (a command
    would wait for it forever; --shell gives the command the terminal)."""
    stdin = sys.stdin
    if stdin is None or stdin.isatty():
        proc.close_stdin()
        return

    def pump() -> None:
        with contextlib.suppress(ChannelError, OSError, ValueError):
            source = stdin.buffer
            while (
                data := source.read1(1 << 16) if hasattr(source, "read1") else source.read(1 << 16)
            ):
                proc.write(data)
            proc.close_stdin()

    threading.Thread(target=pump, daemon=True, name="launch-stdin").start()


def _terminal(sandbox: Sandbox, options: LaunchOptions) -> int:
    """A shell (or CMD) on a PTY in the sandbox, driven from this terminal."""
    stdin_fd, out = sys.stdin.fileno(), sys.stdout.buffer
    size = os.get_terminal_size(sys.stdout.fileno())  # the terminal's, not $COLUMNS
    command = list(options.command) or list(SHELL)
    term = {name: os.environ[name] for name in ("TERM", "COLORTERM") if os.environ.get(name)}
    proc = sandbox.spawn(command, env=term, pty=True, rows=size.lines, cols=size.columns)

    def resized(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ChannelError, OSError):
            now = os.get_terminal_size(sys.stdout.fileno())
            proc.resize(now.lines, now.columns)

    saved = termios.tcgetattr(stdin_fd)
    previous = signal.signal(signal.SIGWINCH, resized)
    screen = TerminalFilter()
    try:
        tty.setraw(stdin_fd)

        def keys() -> None:
            with contextlib.suppress(ChannelError, OSError):
                while data := os.read(stdin_fd, 4096):
                    proc.write(data)

        threading.Thread(target=keys, daemon=True, name="launch-keys").start()
        deadline = time.monotonic() + options.command_timeout
        for _stream, chunk in _until_the_end(proc, options.command_timeout, deadline):
            out.write(screen.feed(chunk))
            out.flush()
    finally:
        termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, previous)
    return _status(proc)
