#!/usr/bin/env python3
"""sandbox-image exec agent: runs commands for the host over one channel, streaming.

Started at boot in the guest (stdlib only, Python >= 3.10), it serves one host
session at a time on a virtio-serial port (``--device``) or, for tests and other
transports, a Unix socket (``--listen``). Per session, any number of processes:
spawn (argv, env, cwd, pipes or a PTY, sandboxed through the launcher or not);
their stdout and stderr stream back as produced; the host writes and closes stdin,
sends signals (to the whole process group), resizes the PTY; each ends with an
``exit`` message (code, or the signal that killed it) after all of its output.
Files go both ways (``put``/``get``). The wire format is channel.py.

A session that breaks the protocol (garbage, an oversized frame, a bad request)
gets one ``error`` message naming what was wrong and is closed; its processes are
killed. Everything here runs single-threaded around one selector.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import pty
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__:
    from image.guest import channel
else:  # run as a script in the guest (python3 -I: its folder is not on the path)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import channel  # type: ignore[import-not-found,no-redef]

CHUNK = 64 << 10
EXIT_GRACE = 1.0  # after a process exits, how long its output may still drain
MAX_PENDING_STDIN = 16 << 20
SANDBOX_LAUNCHER = "/usr/local/bin/sandbox-exec"


@dataclass
class Child:
    channel: int
    proc: subprocess.Popen[bytes]
    outputs: dict[int, int]  # fd -> STDOUT/STDERR (a PTY: one fd, STDOUT)
    stdin: int | None
    pending: bytearray = field(default_factory=bytearray)
    close_stdin: bool = False
    exited_at: float | None = None
    status: int | None = None


class Session:
    """One host connection: its frames in, its processes' output out."""

    def __init__(self, conn_in: int, conn_out: int, launcher: str) -> None:
        self.conn_in, self.conn_out = conn_in, conn_out
        self.launcher = launcher
        self.decoder = channel.Decoder()
        self.children: dict[int, Child] = {}
        self.uploads: dict[int, tuple[int, Path, Path]] = {}  # channel -> (fd, temp, final)
        self.selector = selectors.DefaultSelector()
        self.closed = False

    # -- output to the host ---------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Blocking: the host reads all the time, so a slow host slows the output down
        (the processes block on full pipes) instead of growing a buffer here."""
        view = memoryview(frame)
        while view:
            view = view[os.write(self.conn_out, view) :]

    def reply(self, channel_id: int, op: str, **fields: Any) -> None:
        self.send(channel.control(channel_id, op, **fields))

    # -- the loop ---------------------------------------------------------------------

    def serve(self) -> None:
        # The host's fd stays blocking: it is read only when the selector says it is
        # readable (a read then returns what is there), and written whole.
        self.selector.register(self.conn_in, selectors.EVENT_READ, "host")
        try:
            while not self.closed:
                for key, _events in self.selector.select(timeout=0.1):
                    if key.data == "host":
                        self._from_host()
                    elif isinstance(key.data, tuple) and key.data[0] == "out":
                        self._from_child(key.data[1], key.fd)
                    elif isinstance(key.data, tuple) and key.data[0] == "in":
                        self._to_child(self.children[key.data[1]])
                    if self.closed:
                        break
                self._reap()
        except channel.ProtocolError as exc:
            with contextlib.suppress(OSError):
                self.reply(0, "error", message=f"protocol: {exc}")
        finally:
            self._kill_all()

    def _from_host(self) -> None:
        try:
            data = os.read(self.conn_in, CHUNK)
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return
        for kind, channel_id, payload in self.decoder.feed(data):
            if kind == channel.CONTROL:
                message = channel.decode_control(payload)
                try:
                    self._request(channel_id, message)
                except (KeyError, TypeError, ValueError) as exc:
                    raise channel.ProtocolError(
                        f"a bad {message['op']!r} request: {exc!r}"
                    ) from None
            elif kind == channel.STDIN:
                self._stdin(channel_id, payload)
            elif kind == channel.FILE:
                self._upload(channel_id, payload)
            else:
                raise channel.ProtocolError(f"the host sent a frame of kind {kind}")

    def _request(self, channel_id: int, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "hello":
            self.reply(0, "hello", version=channel.VERSION, pid=os.getpid())
        elif op == "spawn":
            self._spawn(channel_id, message)
        elif op == "signal":
            child = self.children.get(channel_id)
            if child is not None and child.status is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, int(message.get("signal", signal.SIGTERM)))
        elif op == "resize":
            child = self.children.get(channel_id)
            if child is not None and child.outputs:
                fd = next(iter(child.outputs))
                size = struct.pack("HHHH", int(message["rows"]), int(message["cols"]), 0, 0)
                with contextlib.suppress(OSError):
                    fcntl.ioctl(fd, termios.TIOCSWINSZ, size)
        elif op == "put":
            self._put(channel_id, message)
        elif op == "get":
            self._get(channel_id, message)
        else:
            raise channel.ProtocolError(f"unknown request {op!r}")

    # -- processes ----------------------------------------------------------------------

    def _spawn(self, channel_id: int, message: dict[str, Any]) -> None:
        argv = message.get("argv")
        if (channel_id == 0 or channel_id in self.children or not isinstance(argv, list)
                or not argv or not all(isinstance(a, str) for a in argv)):  # fmt: skip
            raise channel.ProtocolError(f"a bad spawn request on channel {channel_id}")
        if message.get("sandbox"):
            argv = [self.launcher, "--", *argv]
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in (message.get("env") or {}).items()})
        use_pty = bool(message.get("pty"))
        try:
            if use_pty:
                master, slave = pty.openpty()
                if message.get("rows") and message.get("cols"):
                    size = struct.pack("HHHH", int(message["rows"]), int(message["cols"]), 0, 0)
                    fcntl.ioctl(master, termios.TIOCSWINSZ, size)
                proc = subprocess.Popen(
                    argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                    cwd=message.get("cwd"), start_new_session=True,
                    preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
                )  # fmt: skip
                os.close(slave)
                outputs, stdin = {master: channel.STDOUT}, master
            else:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    env=env, cwd=message.get("cwd"), start_new_session=True,
                )  # fmt: skip
                assert proc.stdin and proc.stdout and proc.stderr
                outputs = {proc.stdout.fileno(): channel.STDOUT,
                           proc.stderr.fileno(): channel.STDERR}  # fmt: skip
                stdin = proc.stdin.fileno()
        except OSError as exc:
            self.reply(channel_id, "exit", code=127, signal=None,
                       error=f"{argv[0]}: {exc.strerror or exc}")  # fmt: skip
            return
        child = Child(channel_id, proc, outputs, stdin)
        self.children[channel_id] = child
        for fd in outputs:
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ, ("out", channel_id))
        if not use_pty:
            os.set_blocking(stdin, False)
        self.reply(channel_id, "started", pid=proc.pid)

    def _from_child(self, channel_id: int, fd: int) -> None:
        child = self.children[channel_id]
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:  # a PTY whose last user went away: EIO
            if exc.errno != errno.EIO:
                raise
            data = b""
        kind = child.outputs[fd]
        if data:
            self.send(channel.encode(kind, channel_id, data))
            return
        self._close_output(child, fd)

    def _close_output(self, child: Child, fd: int) -> None:
        kind = child.outputs.pop(fd)
        self.selector.unregister(fd)
        if fd != child.stdin:
            os.close(fd)
        self.send(channel.encode(kind, child.channel, b""))  # that stream's end

    def _stdin(self, channel_id: int, payload: bytes) -> None:
        child = self.children.get(channel_id)
        if child is None or child.stdin is None:
            return  # the process is gone (its exit is on the way): input has nowhere to go
        if not payload:
            child.close_stdin = True
        elif len(child.pending) + len(payload) > MAX_PENDING_STDIN:
            raise channel.ProtocolError(f"more than {MAX_PENDING_STDIN} bytes of unread input")
        child.pending += payload
        self._to_child(child)

    def _to_child(self, child: Child) -> None:
        fd = child.stdin
        if fd is None:
            return
        if fd in child.outputs:  # a PTY's master: typed input is small, written whole
            while child.pending:
                select.select([], [fd], [], 1.0)
                with contextlib.suppress(BlockingIOError):
                    del child.pending[: os.write(fd, child.pending)]
            if child.close_stdin:  # end of input is ^D at the start of a line
                with contextlib.suppress(OSError):
                    os.write(fd, b"\x04")
                child.stdin = None
            return
        while child.pending:
            try:
                written = os.write(fd, child.pending)
            except BlockingIOError:
                break
            except OSError:  # the process closed its stdin: what it did not read is lost
                child.pending.clear()
                break
            del child.pending[:written]
        registered = fd in self.selector.get_map()
        if child.pending and not registered:
            self.selector.register(fd, selectors.EVENT_WRITE, ("in", child.channel))
        elif not child.pending and registered:
            self.selector.unregister(fd)
        if not child.pending and child.close_stdin:
            os.close(fd)
            child.stdin = None

    def _reap(self) -> None:
        now = time.monotonic()
        for child in list(self.children.values()):
            if child.status is None:
                status = child.proc.poll()
                if status is None:
                    continue
                child.status, child.exited_at = status, now
            drained = not child.outputs
            assert child.exited_at is not None
            if not drained and now - child.exited_at < EXIT_GRACE:
                continue
            for fd in list(child.outputs):  # a background process kept them open
                self._close_output(child, fd)
            if child.stdin is not None and child.stdin not in child.outputs:
                with contextlib.suppress(OSError):
                    if child.stdin in self.selector.get_map():
                        self.selector.unregister(child.stdin)
                    os.close(child.stdin)
            code = child.status if child.status >= 0 else None
            sig = -child.status if child.status < 0 else None
            self.reply(child.channel, "exit", code=code, signal=sig)
            del self.children[child.channel]

    def _kill_all(self) -> None:
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                child.proc.wait(timeout=5)
            for fd in child.outputs:
                with contextlib.suppress(OSError):
                    os.close(fd)
        for fd, temp, _ in self.uploads.values():
            with contextlib.suppress(OSError):
                os.close(fd)
                temp.unlink()
        self.selector.close()

    # -- files ----------------------------------------------------------------------------

    def _put(self, channel_id: int, message: dict[str, Any]) -> None:
        final = Path(str(message.get("path", "")))
        if not final.is_absolute() or channel_id in self.uploads:
            raise channel.ProtocolError(f"a bad put request on channel {channel_id}")
        temp = final.with_name(f".{final.name}.part-{os.getpid()}-{channel_id}")
        try:
            fd = os.open(
                temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, int(message.get("mode", 0o644))
            )
        except OSError as exc:
            self.reply(channel_id, "put-done", error=f"{final}: {exc.strerror}")
            self.uploads[channel_id] = (-1, temp, final)
            return
        self.uploads[channel_id] = (fd, temp, final)

    def _upload(self, channel_id: int, payload: bytes) -> None:
        if channel_id not in self.uploads:
            raise channel.ProtocolError(f"file data on channel {channel_id} without a put")
        fd, temp, final = self.uploads[channel_id]
        if fd < 0:  # refused already; the data is dropped until its end
            if not payload:
                del self.uploads[channel_id]
            return
        if payload:
            os.write(fd, payload)
            return
        os.close(fd)
        del self.uploads[channel_id]
        try:
            temp.replace(final)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            self.reply(channel_id, "put-done", error=f"{final}: {exc.strerror}")
            return
        self.reply(channel_id, "put-done", bytes=final.stat().st_size)

    def _get(self, channel_id: int, message: dict[str, Any]) -> None:
        path = Path(str(message.get("path", "")))
        try:
            with path.open("rb") as f:
                while chunk := f.read(channel.MAX_DATA):
                    self.send(channel.encode(channel.FILE, channel_id, chunk))
        except OSError as exc:
            self.reply(channel_id, "get-done", error=f"{path}: {exc.strerror}")
            return
        self.send(channel.encode(channel.FILE, channel_id, b""))
        self.reply(channel_id, "get-done", bytes=path.stat().st_size)


def _serve_socket(path: Path, launcher: str, once: bool) -> None:
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    path.chmod(0o600)
    server.listen(1)
    while True:
        conn, _ = server.accept()
        with conn:
            fd = conn.fileno()
            Session(fd, os.dup(fd), launcher).serve()
        if once:
            return


def _serve_device(path: Path, launcher: str) -> None:
    """A virtio-serial port: one fd both ways; a host that goes away reads as EOF (or
    nothing), then the next session starts on the same port."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        except FileNotFoundError:  # not (yet) there: a VM without the port, or early boot
            time.sleep(1)
            continue
        try:
            Session(fd, fd, launcher).serve()
        finally:
            os.close(fd)
        time.sleep(0.05)  # no host: the port reads as EOF at once


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--device", type=Path, help="a virtio-serial port, e.g. /dev/virtio-ports/..."
    )
    where.add_argument("--listen", type=Path, help="a Unix socket to serve on")
    parser.add_argument("--once", action="store_true", help="with --listen: one session, then exit")
    parser.add_argument("--launcher", default=SANDBOX_LAUNCHER, help="the sandbox launcher")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if args.device:
        _serve_device(args.device, args.launcher)
    else:
        _serve_socket(args.listen, args.launcher, args.once)
    return 0


if __name__ == "__main__":
    sys.exit(main())
