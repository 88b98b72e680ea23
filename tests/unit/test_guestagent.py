"""The guest-agent client against a hostile guest agent on a real Unix socket.

The server below plays the guest's end of the channel: it reads the client's
requests and answers whatever its test tells it to (the client code is real,
and so are the socket and the bytes on it).
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from image.errors import ImageError
from image.vm.guestagent import MAX_REPLY_BYTES, GuestAgent, GuestAgentError

# What the fake agent sends for one request: bytes, or a function that writes
# to the connection itself (for streams), or None for no answer.
Answer = bytes | Callable[[socket.socket], None] | None


def line(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def well_behaved(request: dict[str, Any]) -> Answer:
    """What qemu-ga 7.2 answers (the id echoed; guest-sync's id as its return)."""
    command = request["execute"]
    echo = {"id": request["id"]} if "id" in request else {}
    if command == "guest-sync":
        return line({"return": request["arguments"]["id"], **echo})
    if command == "guest-exec":
        return line({"return": {"pid": 42}, **echo})
    if command == "guest-exec-status":
        out = base64.b64encode(b"hello\n").decode()
        return line({"return": {"exited": True, "exitcode": 0, "out-data": out}, **echo})
    return line({"return": {}, **echo})


class FakeAgent:
    def __init__(self, path: Path, answer: Callable[[dict[str, Any]], Answer]) -> None:
        self.path = path
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self.sent = 0
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeAgent:
        self._listener.bind(str(self.path))
        self._listener.listen()
        self._listener.settimeout(0.1)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn, contextlib.suppress(OSError):
                self._talk(conn)

    def _talk(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        buf = b""
        while not self._stop.is_set():
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                request = json.loads(raw)
                self.requests.append(request)
                out = self.answer(request)
                if callable(out):
                    out(conn)
                elif out is not None:
                    conn.sendall(out)
                    self.sent += len(out)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., GuestAgent]]:
    with contextlib.ExitStack() as stack:
        count = iter(range(100))

        def start(answer: Callable[[dict[str, Any]], Answer]) -> GuestAgent:
            path = tmp_path / f"qga{next(count)}.sock"
            stack.enter_context(FakeAgent(path, answer))
            return stack.enter_context(GuestAgent(path))

        yield start


def on(command: str, reply: Callable[[dict[str, Any]], Answer]) -> Callable[..., Answer]:
    """Well-behaved, except for ``command``."""
    return lambda r: reply(r) if r["execute"] == command else well_behaved(r)


def test_a_well_behaved_agent_runs_a_command(serve: Callable[..., GuestAgent]) -> None:
    agent = serve(well_behaved)
    agent.sync(timeout=5)
    result = agent.exec(["/bin/echo", "hello"], timeout=5)
    assert (result.exit_code, result.stdout, result.stderr, result.signal) == (
        0, b"hello\n", b"", None)  # fmt: skip


def test_sync_skips_what_an_earlier_connection_left_in_the_channel(
    serve: Callable[..., GuestAgent],
) -> None:
    def stale_first(request: dict[str, Any]) -> Answer:
        if request["execute"] == "guest-sync":
            # The tail of an old reply, an old reply, a resync marker, then ours.
            return (b'"out-data": "aGk="}}\n' + line({"return": 1234})
                    + b"\xff" + line({"return": request["arguments"]["id"]}))  # fmt: skip
        return well_behaved(request)

    agent = serve(stale_first)
    agent.sync(timeout=5)
    assert agent.call("guest-ping", timeout=5) == {}


def test_endless_bytes_without_a_newline_are_an_error_not_a_full_memory(
    serve: Callable[..., GuestAgent],
) -> None:
    cap = 4 * MAX_REPLY_BYTES  # the fake agent's own bound: it stops by itself

    def endless(conn: socket.socket) -> None:
        block = b"x" * 65536
        sent = 0
        conn.settimeout(5)
        while sent < cap:
            conn.sendall(block)  # raises once the client has hung up
            sent += len(block)

    agent = serve(on("guest-ping", lambda r: endless))
    agent.sync(timeout=5)
    with pytest.raises(GuestAgentError, match=f"longer than {MAX_REPLY_BYTES} bytes") as info:
        agent.call("guest-ping", timeout=30)
    assert info.value.hint and "compromised" in info.value.hint
    assert len(agent._buf) <= MAX_REPLY_BYTES + 1  # it stopped reading at the limit


def test_a_reply_line_past_the_limit_is_refused(
    serve: Callable[..., GuestAgent], tmp_path: Path
) -> None:
    agent = serve(on("guest-ping", lambda r: line({"return": "y" * 5000, "id": r["id"]})))
    agent.max_reply = 4096
    agent.sync(timeout=5)
    with pytest.raises(GuestAgentError, match="longer than 4096 bytes"):
        agent.call("guest-ping", timeout=5)


def _fails(serve: Callable[..., GuestAgent], command: str, reply: Callable[..., Answer],
           match: str) -> None:  # fmt: skip
    agent = serve(on(command, reply))
    agent.sync(timeout=5)
    with pytest.raises(GuestAgentError, match=match) as info:
        if command == "guest-ping":
            agent.call("guest-ping", timeout=5)
        else:
            agent.exec(["/bin/true"], timeout=5)
    assert isinstance(info.value, ImageError) and info.value.hint


ERRORS = [
    ("a string", lambda r: line({"error": "boom", "id": r["id"]}), "'error' is str, not dict"),
    ("a list", lambda r: line({"error": ["x"], "id": r["id"]}), "'error' is list, not dict"),
    ("desc not text", lambda r: line({"error": {"desc": {"a": 1}}, "id": r["id"]}),
     "'desc' is dict, not str"),
    ("no desc", lambda r: line({"error": {"class": "X"}, "id": r["id"]}), "no 'desc'"),
    ("class not text", lambda r: line({"error": {"desc": "d", "class": 3}, "id": r["id"]}),
     "'class' is int, not str"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "reply", "match"), ERRORS, ids=[e[0] for e in ERRORS])
def test_a_malformed_error_is_the_projects_error(
    serve: Callable[..., GuestAgent], case: str, reply: Callable[..., Answer], match: str
) -> None:
    _fails(serve, "guest-ping", reply, match)


def test_a_well_formed_error_names_what_the_agent_said(serve: Callable[..., GuestAgent]) -> None:
    agent = serve(on("guest-ping", lambda r: line(
        {"error": {"class": "GenericError", "desc": "no such file"}, "id": r["id"]})))  # fmt: skip
    agent.sync(timeout=5)
    with pytest.raises(ImageError, match="guest agent guest-ping: no such file") as info:
        agent.call("guest-ping", timeout=5)
    assert not isinstance(info.value, GuestAgentError)


REPLIES = [
    ("not an object", "guest-ping", lambda r: b"[1, 2]\n", "a JSON list, not an object"),
    ("not JSON", "guest-ping", lambda r: b"{nope\n", "not JSON"),
    ("nested too deep", "guest-ping", lambda r: b"[" * 200000 + b"]" * 200000 + b"\n",
     "nested too deeply|not an object"),
    ("no return", "guest-ping", lambda r: line({"id": r["id"]}), "no 'return'"),
    ("null return", "guest-ping", lambda r: line({"return": None, "id": r["id"]}),
     "'return' is NoneType"),
    ("pid as text", "guest-exec", lambda r: line({"return": {"pid": "42"}, "id": r["id"]}),
     "'pid' is str, not int"),
    ("pid as bool", "guest-exec", lambda r: line({"return": {"pid": True}, "id": r["id"]}),
     "'pid' is bool, not int"),
    ("return a list", "guest-exec", lambda r: line({"return": [42], "id": r["id"]}),
     "'return' is list, not dict"),
    ("exited as text", "guest-exec-status",
     lambda r: line({"return": {"exited": "yes"}, "id": r["id"]}), "'exited' is str"),
    ("exit code as text", "guest-exec-status",
     lambda r: line({"return": {"exited": True, "exitcode": "0"}, "id": r["id"]}),
     "'exitcode' is str, not int"),
    ("output not base64", "guest-exec-status",
     lambda r: line({"return": {"exited": True, "exitcode": 0, "out-data": "%%%"}, "id": r["id"]}),
     "'out-data' is not base64"),
    ("output not text", "guest-exec-status",
     lambda r: line({"return": {"exited": True, "err-data": 7}, "id": r["id"]}),
     "'err-data' is int, not str"),
    ("signal as text", "guest-exec-status",
     lambda r: line({"return": {"exited": True, "signal": "9"}, "id": r["id"]}),
     "'signal' is str, not int"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "command", "reply", "match"), REPLIES,
                         ids=[r[0] for r in REPLIES])  # fmt: skip
def test_every_field_read_from_the_guest_is_checked(
    serve: Callable[..., GuestAgent], case: str, command: str, reply: Callable[..., Answer],
    match: str,
) -> None:  # fmt: skip
    _fails(serve, command, reply, match)


def test_a_reply_to_an_earlier_request_is_skipped(serve: Callable[..., GuestAgent]) -> None:
    agent = serve(on("guest-ping", lambda r: line({"return": "old", "id": 7})
                     + line({"return": "old", "id": str(r["id"])})  # an id of another type
                     + line({"return": {}, "id": r["id"]})))  # fmt: skip
    agent.sync(timeout=5)
    assert agent.call("guest-ping", timeout=5) == {}


def test_replies_that_never_answer_the_request_are_an_error(
    serve: Callable[..., GuestAgent],
) -> None:
    agent = serve(on("guest-ping", lambda r: line({"return": {}, "id": 7}) * 100))
    agent.sync(timeout=5)
    with pytest.raises(GuestAgentError, match="64 replies, none to this request"):
        agent.call("guest-ping", timeout=5)


def test_a_sync_reply_of_the_wrong_type_is_not_taken(serve: Callable[..., GuestAgent]) -> None:
    agent = serve(on("guest-sync", lambda r: line({"return": str(r["arguments"]["id"])})))
    with pytest.raises(TimeoutError):
        agent.sync(timeout=1)
