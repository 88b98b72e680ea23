"""The host side of the exec channel: run commands in a guest through its exec agent
(image/guest/exec_agent.py), streaming.

    with ExecSession.connect(path) as guest:
        result = guest.run(["make", "test"], timeout=600)          # -> Result
        proc = guest.spawn(["pytest", "-x"], sandbox=True)
        for stream, chunk in proc.output():                       # as it is produced
            ...
        proc.wait()
        guest.put("/workspace/in.txt", b"...")
        data = guest.get("/workspace/out.txt")

Everything the guest says is untrusted: frames are bounded and checked (channel.py),
and a guest that breaks the protocol, goes away or dies ends the session with a
ChannelError naming what happened; no call waits forever on it.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from image.contract import guest
from image.errors import ImageError
from image.guest import channel

STREAMS = {channel.STDOUT: "stdout", channel.STDERR: "stderr"}


class ChannelError(ImageError):
    """The session with the guest's agent broke (protocol, connection, agent gone)."""


@dataclass(frozen=True)
class Result:
    code: int | None  # None: ended by a signal
    signal: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    error: str | None = None  # the agent could not start it (code 127)

    @property
    def ok(self) -> bool:
        return self.code == 0


# The one reply each of these requests gets.
TRANSFER_REPLIES = ("put-done", "get-done", "personalize-done", "standby-done")


class Process:
    """One command in the guest: its output as it comes, its stdin, signals, its end."""

    def __init__(self, session: ExecSession, channel_id: int) -> None:
        self.session, self.channel = session, channel_id
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.pid: int | None = None
        self.standby = False  # the agent's standby sandbox ran it (ExecSession.standby)
        self.exit: dict[str, Any] | None = None
        self._open_streams = 2

    def output(self, timeout: float | None = None) -> Iterator[tuple[str, bytes]]:
        """("stdout" | "stderr", bytes) as produced, until the process has ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.exit is None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                kind, value = self.events.get(timeout=left)
            except queue.Empty:
                raise TimeoutError(f"no end of the command within {timeout} s") from None
            if kind == "data":
                yield value
            else:
                self._event(kind, value)

    def _event(self, kind: str, value: Any) -> None:
        if kind == "started":
            self.pid, self.standby = value.get("pid"), bool(value.get("standby"))
        elif kind == "exit":
            self.exit = value
        elif kind == "broken":
            raise ChannelError(f"the guest's exec agent: {value}",
                               hint="the session is over; launch again")  # fmt: skip

    def write(self, data: bytes) -> None:
        for frame in channel.data_frames(channel.STDIN, self.channel, data):
            self.session.send(frame)

    def close_stdin(self) -> None:
        self.session.send(channel.encode(channel.STDIN, self.channel, b""))

    def signal(self, sig: int) -> None:
        """To the command's whole process group."""
        self.session.send(channel.control(self.channel, "signal", signal=int(sig)))

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def resize(self, rows: int, cols: int) -> None:
        self.session.send(channel.control(self.channel, "resize", rows=rows, cols=cols))

    def wait(self, timeout: float | None = None) -> Result:
        """Collect what is left of the output and the end; TimeoutError if it goes on."""
        out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        for stream, chunk in self.output(timeout):
            out[stream].append(chunk)
        assert self.exit is not None
        return Result(self.exit.get("code"), self.exit.get("signal"), b"".join(out["stdout"]),
                      b"".join(out["stderr"]), error=self.exit.get("error"))  # fmt: skip


class ExecSession:
    """One connection to the agent. Thread-safe for sending; one reader thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()
        self._channels = itertools.count(1)
        self._processes: dict[int, Process] = {}
        self._transfers: dict[int, queue.Queue[tuple[str, Any]]] = {}
        self._session_events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.broken: str | None = None
        self._reader = threading.Thread(target=self._read, daemon=True, name="exec-channel")
        self._reader.start()

    @classmethod
    def connect(cls, path: Path, timeout: float = 30.0) -> ExecSession:
        """Connect to a Unix socket (QEMU's end of the virtio-serial port) and greet."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
        except OSError as exc:
            sock.close()
            raise ChannelError(f"cannot reach the exec agent at {path}: {exc.strerror}",
                               hint="is the VM running with its exec port?") from None  # fmt: skip
        return cls._greeted(sock, timeout)

    @classmethod
    def connect_vsock(cls, cid: int, port: int, timeout: float = 30.0) -> ExecSession:
        """Connect over vsock to the agent on ``port`` of the guest with ``cid`` and
        greet. Retried until ``timeout``: a guest just resumed with a new CID takes
        a moment to hear of it (QEMU sends it a transport reset)."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                sock.connect((cid, port))
                break
            except OSError as exc:
                sock.close()
                if time.monotonic() >= deadline:
                    why = exc.strerror or exc
                    raise ChannelError(
                        f"cannot reach the exec agent at vsock {cid}:{port}: {why}",
                        hint="is the VM running with its vsock device, from an image "
                        f"with {guest.EXEC_VSOCK_SERVICE}?",
                    ) from None
                time.sleep(0.05)
        sock.settimeout(None)
        return cls._greeted(sock, timeout)

    @classmethod
    def _greeted(cls, sock: socket.socket, timeout: float) -> ExecSession:
        session = cls(sock)
        try:
            session.hello(timeout)
        except BaseException:
            session.close()
            raise
        return session

    def __enter__(self) -> ExecSession:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(5)

    # -- sending ---------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        if self.broken:
            raise ChannelError(f"the guest's exec agent: {self.broken}",
                               hint="the session is over; launch again")  # fmt: skip
        with self._send_lock:
            try:
                self.sock.sendall(frame)
            except OSError as exc:
                self._break(f"the connection failed ({exc.strerror or exc})")
                raise ChannelError(f"the guest's exec agent: {self.broken}") from None

    def hello(self, timeout: float = 30.0) -> int:
        self.send(channel.control(0, "hello", version=channel.VERSION))
        kind, value = self._next(self._session_events, timeout, "a greeting")
        if kind != "hello":
            raise ChannelError(f"the agent answered {kind!r} to a greeting")
        return int(value.get("version", 0))

    def spawn(self, argv: list[str], *, env: dict[str, str] | None = None,
              cwd: str | None = None, sandbox: bool | dict[str, Any] = False,
              pty: bool = False, rows: int | None = None,
              cols: int | None = None) -> Process:  # fmt: skip
        """ARGV in the guest. ``sandbox``: True runs it through the launcher program;
        {"profile", "workspace", "user", "terminal"} has the agent run the launcher's
        code in a forked child of its own (no new interpreter: the prepared sandbox)."""
        number = next(self._channels)
        proc = self._processes[number] = Process(self, number)
        self.send(channel.control(number, "spawn", argv=list(argv), env=env or {}, cwd=cwd,
                                  sandbox=sandbox, pty=pty, rows=rows, cols=cols))  # fmt: skip
        return proc

    def run(self, argv: list[str], *, stdin: bytes | None = None,
            timeout: float | None = None, **options: Any) -> Result:  # fmt: skip
        """Run to the end; after ``timeout`` seconds its process group is killed."""
        proc = self.spawn(argv, **options)
        if stdin:
            proc.write(stdin)
        proc.close_stdin()
        try:
            return proc.wait(timeout)
        except TimeoutError:
            proc.kill()
            result = proc.wait(30)
            return Result(result.code, result.signal, result.stdout, result.stderr, True)

    def put(self, path: str, data: bytes, mode: int = 0o644, timeout: float = 120,
            within: str | None = None) -> None:  # fmt: skip
        """Write ``data`` to ``path`` in the guest (whole or not at all).

        ``within``: a guest directory that ``path`` is relative to, walked without
        following a symbolic link (files a sandboxed command can change); the file
        gets that directory's owner."""
        number = next(self._channels)
        events = self._transfers[number] = queue.Queue()
        self.send(channel.control(number, "put", path=path, mode=mode, within=within))
        for frame in channel.data_frames(channel.FILE, number, data):
            self.send(frame)
        self.send(channel.encode(channel.FILE, number, b""))
        _, done = self._next(events, timeout, f"put {path}")
        if done.get("error"):
            raise ChannelError(f"put {path}: {done['error']}")

    def personalize(self, *, hostname: str, time_ns: int, entropy: bytes,
                    mounts: list[dict[str, Any]], timeout: float = 60) -> None:  # fmt: skip
        """Make a just-resumed guest its own machine in one request: ENTROPY mixed
        in and the CRNG reseeded, the clock, the host name, MOUNTS (each ``source``,
        ``target``, ``fstype``, ``options``, ``readonly``) mounted."""
        number = next(self._channels)
        events = self._transfers[number] = queue.Queue()
        self.send(channel.control(number, "personalize", hostname=hostname, time_ns=time_ns,
                                  entropy=entropy.hex(), mounts=mounts))  # fmt: skip
        _, done = self._next(events, timeout, "personalize")
        if done.get("error"):
            raise ChannelError(f"preparing the launch failed: {done['error']}",
                               hint="was the snapshot made from an image built by this "
                               "version of sandbox-image?")  # fmt: skip

    def standby(self, sandbox: dict[str, Any], timeout: float = 180) -> int:
        """Have the agent start a sandbox for SANDBOX (a spawn's request) now, waiting
        for its command: the next spawn with the same request, from this session or a
        later one, runs in it without starting one (snapshot: before the VM is saved).
        Returns its launcher's pid in the guest."""
        number = next(self._channels)
        events = self._transfers[number] = queue.Queue()
        self.send(channel.control(number, "standby", sandbox=sandbox))
        _, done = self._next(events, timeout, "standby")
        if done.get("error"):
            raise ChannelError(f"the standby sandbox did not start: {done['error']}",
                               hint="does `./inv launch -- true` work on this image?")  # fmt: skip
        return int(done["pid"])

    def get(self, path: str, timeout: float = 120, within: str | None = None) -> bytes:
        """A regular file's bytes (``within`` as for put)."""
        number = next(self._channels)
        events = self._transfers[number] = queue.Queue()
        self.send(channel.control(number, "get", path=path, within=within))
        chunks = []
        while True:
            kind, value = self._next(events, timeout, f"get {path}")
            if kind == "data":
                chunks.append(value)
            elif value.get("error"):
                raise ChannelError(f"get {path}: {value['error']}")
            else:
                return b"".join(chunks)

    def _next(self, events: queue.Queue[tuple[str, Any]], timeout: float,
              what: str) -> tuple[str, Any]:  # fmt: skip
        try:
            kind, value = events.get(timeout=timeout)
        except queue.Empty:
            raise ChannelError(
                f"no answer from the exec agent to {what} within {timeout} s",
                hint="the guest may be overloaded or its agent stuck",
            ) from None
        if kind == "broken":
            raise ChannelError(f"the guest's exec agent: {value}",
                               hint="the session is over; launch again")  # fmt: skip
        return kind, value

    # -- the reader thread -------------------------------------------------------------

    def _read(self) -> None:
        stream = self.sock.makefile("rb")
        try:
            while True:
                frame = channel.read_frame(stream)
                if frame is None:
                    self._break("the agent closed the channel")
                    return
                self._dispatch(*frame)
        except channel.ProtocolError as exc:
            self._break(f"protocol: {exc}")
        except OSError as exc:
            self._break(f"the connection failed ({exc.strerror or exc})")
        finally:
            stream.close()

    def _dispatch(self, kind: int, number: int, payload: bytes) -> None:
        if kind == channel.CONTROL:
            message = channel.decode_control(payload)
            op = message.pop("op")
            if number == 0:
                if op == "error":
                    raise channel.ProtocolError(f"the agent refused: {message.get('message')}")
                self._session_events.put((op, message))
            elif number in self._processes and op in ("started", "exit"):
                proc = self._processes[number]
                proc.events.put((op, message))
                if op == "exit":
                    del self._processes[number]
            elif number in self._transfers and op in TRANSFER_REPLIES:
                self._transfers.pop(number).put((op, message))
            else:
                raise channel.ProtocolError(f"an unexpected {op!r} on channel {number}")
        elif kind in STREAMS and number in self._processes:
            if payload:
                self._processes[number].events.put(("data", (STREAMS[kind], payload)))
        elif kind == channel.FILE and number in self._transfers:
            if payload:
                self._transfers[number].put(("data", payload))
        else:
            raise channel.ProtocolError(f"a frame of kind {kind} on unknown channel {number}")

    def _break(self, why: str) -> None:
        if self.broken is None:
            self.broken = why
        for proc in list(self._processes.values()):
            proc.events.put(("broken", why))
        for events in list(self._transfers.values()):
            events.put(("broken", why))
        self._session_events.put(("broken", why))
