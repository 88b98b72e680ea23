"""A small client for qemu-guest-agent over its virtio-serial chardev.

qemu.qmp speaks QMP (greeting, capabilities negotiation); the guest agent speaks
the same JSON but with neither, and a stale reply from an earlier connection can
sit in the channel. ``guest-sync`` with a random id re-frames the stream before
every session, as the QGA protocol documentation prescribes.
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


class GuestAgent:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._buf = b""

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
            self._sock, self._buf = sock, b""
        self._sock.settimeout(timeout)
        return self._sock

    def _send(self, message: dict[str, Any], timeout: float) -> None:
        self._connect(timeout).sendall(json.dumps(message).encode() + b"\n")

    def _receive(self, timeout: float) -> dict[str, Any]:
        sock = self._connect(timeout)
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("no reply from the guest agent")
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("guest agent channel closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        # The agent may prefix a resync with 0xFF; drop anything before the JSON.
        line = line[line.find(b"{") :] if b"{" in line else b"{}"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def sync(self, timeout: float = 5.0) -> None:
        token = random.randint(1, 2**31)
        self._send({"execute": "guest-sync", "arguments": {"id": token}}, timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._receive(max(0.1, deadline - time.monotonic())).get("return") == token:
                return
        raise TimeoutError("guest agent did not answer guest-sync")

    def call(self, command: str, timeout: float = 30.0, **arguments: Any) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self._send(message, timeout)
        if command in ("guest-shutdown",):  # no reply by design
            return None
        reply = self._receive(timeout)
        if "error" in reply:
            raise ImageError(f"guest agent {command}: {reply['error'].get('desc', reply)}")
        return reply.get("return")

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
        pid = self.call("guest-exec", **args)["pid"]
        deadline = time.monotonic() + timeout
        delay = 0.005
        while time.monotonic() < deadline:
            status = self.call("guest-exec-status", pid=pid)
            if status.get("exited"):
                return ExecResult(
                    exit_code=int(status.get("exitcode", -1)),
                    stdout=base64.b64decode(status.get("out-data", "")),
                    stderr=base64.b64decode(status.get("err-data", "")),
                    signal=status.get("signal"),
                )
            time.sleep(delay)
            # Short commands are the common case: poll often, but not busily.
            delay = min(delay * 2, 0.05)
        raise ImageError(f"guest command timed out after {timeout:g} s: {' '.join(argv)}")
