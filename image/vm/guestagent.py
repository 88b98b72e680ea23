"""A small client for qemu-guest-agent over its virtio-serial chardev.

qemu.qmp speaks QMP (greeting, capabilities negotiation); the guest agent speaks
the same JSON but with neither, and a stale reply from an earlier connection can
sit in the channel. ``guest-sync`` with a random id re-frames the stream before
every session, as the QGA protocol documentation prescribes.

Everything on this channel is written by the guest, so nothing in it is
trusted: a reply line is read up to MAX_REPLY_BYTES (past that, and for an
endless stream without a newline, the client gives up with an error instead
of buffering), every request carries a random id that its reply must echo,
and every field read is checked for its type. A reply that breaks the
protocol is a GuestAgentError (an ImageError), never a KeyError or a
TypeError from deep inside the toolkit.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image.errors import ImageError


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    signal: int | None = None


# guest-exec's captured output is at most 16 MiB per stream (qemu-ga's
# GUEST_EXEC_MAX_OUTPUT); base64 makes both streams ~43 MiB. One line more
# than this is not a reply qemu-ga would send.
MAX_REPLY_BYTES = 48 << 20
MAX_STALE_REPLIES = 64  # replies to earlier requests skipped before one gives up
_RECV = 1 << 16
_HINT = (
    "the reply came from inside the VM and breaks the guest agent protocol: "
    "the guest is broken or compromised (its serial log may say which)"
)


class GuestAgentError(ImageError):
    """The guest agent sent something the protocol does not allow."""

    def __init__(self, message: str) -> None:
        super().__init__(f"guest agent: {message}", hint=_HINT)


def _new_id() -> int:
    return random.randint(1, 2**31)


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    """``obj[name]``, which must be of ``kind`` (bool is no int here)."""
    if name not in obj:
        raise GuestAgentError(f"{what}: no {name!r} in the reply")
    value = obj[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise GuestAgentError(
            f"{what}: {name!r} is {type(value).__name__}, not "
            f"{' or '.join(k.__name__ for k in kinds)}"
        )
    return value


def _optional(obj: dict[str, Any], name: str, kind: type, what: str) -> Any:
    return _field(obj, name, kind, what) if name in obj else None


def _b64(obj: dict[str, Any], name: str, what: str) -> bytes:
    text = _optional(obj, name, str, what)
    if text is None:
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise GuestAgentError(f"{what}: {name!r} is not base64") from None


def _error_text(reply: dict[str, Any], what: str) -> str:
    error = _field(reply, "error", dict, what)
    desc = _field(error, "desc", str, what)
    klass = _optional(error, "class", str, what)
    return f"{desc} ({klass})" if klass else desc


class GuestAgent:
    def __init__(self, path: Path, max_reply: int = MAX_REPLY_BYTES) -> None:
        self.path = path
        self.max_reply = max_reply
        self._sock: socket.socket | None = None
        self._buf = bytearray()

    def __enter__(self) -> GuestAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _connect(self, timeout: float) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(str(self.path))
            self._sock, self._buf = sock, bytearray()
        self._sock.settimeout(timeout)
        return self._sock

    def _send(self, message: dict[str, Any], timeout: float) -> None:
        self._connect(timeout).sendall(json.dumps(message).encode() + b"\n")

    def _read_line(self, deadline: float) -> bytes:
        """One line from the channel, at most ``max_reply`` bytes, by ``deadline``."""
        sock = self._connect(max(0.01, deadline - time.monotonic()))
        scanned = 0
        while (end := self._buf.find(b"\n", scanned)) < 0:
            scanned = len(self._buf)
            if len(self._buf) > self.max_reply:
                # Not a reply: drop the connection rather than what is buffered.
                self.close()
                raise GuestAgentError(
                    f"a reply longer than {self.max_reply} bytes without a newline"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from the guest agent")
            sock.settimeout(left)
            chunk = sock.recv(min(_RECV, self.max_reply + 1 - len(self._buf)) or 1)
            if not chunk:
                self.close()
                raise ConnectionError("guest agent channel closed")
            self._buf += chunk
        if end > self.max_reply:
            self.close()
            raise GuestAgentError(f"a reply longer than {self.max_reply} bytes")
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        return line

    def _parse(self, line: bytes) -> dict[str, Any] | None:
        """A reply object, None for a blank line; raises ValueError for what is no JSON."""
        # A resync (guest-sync-delimited) may prefix a reply with 0xFF.
        text = line.lstrip(b"\xff").strip()
        if not text:
            return None
        try:
            reply = json.loads(text)
        except RecursionError:
            raise GuestAgentError("a reply nested too deeply") from None
        if not isinstance(reply, dict):
            raise GuestAgentError(f"a reply that is a JSON {type(reply).__name__}, not an object")
        return reply

    def _receive(self, request_id: int, what: str, deadline: float) -> dict[str, Any]:
        """The reply to the request with ``request_id``; replies to earlier ones are skipped."""
        for _ in range(MAX_STALE_REPLIES):
            try:
                reply = self._parse(self._read_line(deadline))
            except ValueError as exc:
                raise GuestAgentError(f"{what}: a reply that is not JSON ({exc})") from None
            if reply is None:
                continue
            if reply.get("id") == request_id and type(reply.get("id")) is int:
                return reply
        raise GuestAgentError(f"{what}: {MAX_STALE_REPLIES} replies, none to this request")

    def sync(self, timeout: float = 5.0) -> None:
        """Re-frame the stream: skip whatever is left in it up to our guest-sync's reply."""
        token = _new_id()
        self._send({"execute": "guest-sync", "arguments": {"id": token}}, timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self._read_line(deadline)  # bounded: too long is an error here too
            try:
                reply = self._parse(line)
            except (ValueError, GuestAgentError):
                continue  # the tail of a reply from before: what sync is for
            if reply is not None and reply.get("return") == token:
                if type(reply["return"]) is not int:
                    raise GuestAgentError("guest-sync: 'return' is not the id sent")
                return
        raise TimeoutError("guest agent did not answer guest-sync")

    def call(self, command: str, timeout: float = 30.0, **arguments: Any) -> Any:
        request_id = _new_id()
        message: dict[str, Any] = {"execute": command, "id": request_id}
        if arguments:
            message["arguments"] = arguments
        self._send(message, timeout)
        if command in ("guest-shutdown",):  # no reply by design
            return None
        what = command
        reply = self._receive(request_id, what, time.monotonic() + timeout)
        if "error" in reply:
            raise ImageError(
                f"guest agent {command}: {_error_text(reply, what)}",
                hint="the guest agent refused or failed the command",
            )
        return _field(reply, "return", (dict, list, str, int, float), what)

    def wait_ready(self, timeout: float, alive: Any = None) -> float:
        """Until the agent answers guest-ping; returns the seconds it took."""
        start = time.monotonic()
        last: Exception | None = None
        while time.monotonic() - start < timeout:
            if alive is not None and not alive():
                raise ImageError("the VM stopped while waiting for the guest agent")
            try:
                self.sync(timeout=min(2.0, timeout))
                self.call("guest-ping", timeout=2.0)
                return time.monotonic() - start
            except (OSError, TimeoutError, ValueError) as exc:
                last = exc
                self.close()
                time.sleep(0.05)
        raise ImageError(f"the guest agent did not answer within {timeout:g} s ({last})")

    def exec(
        self, argv: list[str], timeout: float = 600.0, input: bytes | None = None,
        env: list[str] | None = None,
    ) -> ExecResult:  # fmt: skip
        args: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True}
        if input is not None:
            args["input-data"] = base64.b64encode(input).decode()
        if env is not None:
            args["env"] = env
        started = self.call("guest-exec", **args)
        if not isinstance(started, dict):
            raise GuestAgentError(f"guest-exec: 'return' is {type(started).__name__}, not dict")
        pid = _field(started, "pid", int, "guest-exec")
        deadline = time.monotonic() + timeout
        delay = 0.005
        while time.monotonic() < deadline:
            status = self.call("guest-exec-status", pid=pid)
            what = "guest-exec-status"
            if not isinstance(status, dict):
                raise GuestAgentError(f"{what}: 'return' is {type(status).__name__}, not dict")
            if _field(status, "exited", bool, what):
                code = _optional(status, "exitcode", int, what)
                return ExecResult(
                    exit_code=-1 if code is None else code,
                    stdout=_b64(status, "out-data", what),
                    stderr=_b64(status, "err-data", what),
                    signal=_optional(status, "signal", int, what),
                )
            time.sleep(delay)
            # Short commands are the common case: poll often, but not busily.
            delay = min(delay * 2, 0.05)
        raise ImageError(f"guest command timed out after {timeout:g} s: {' '.join(argv)}")
