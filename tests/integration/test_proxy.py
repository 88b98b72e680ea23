"""The egress proxy on loopback, with real upstream servers and a resolver the test controls.

Allowed traffic goes to an upstream on 127.0.0.2 (listed with allow-address).
"Trap" listeners on 127.0.0.1 and on a disallowed port count every connection
they accept: each bypass attempt must be refused AND leave the traps untouched,
and the proxy must still serve an allowed request afterwards.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from image.egress import proxy

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_HOST = "127.0.0.2"
IO_TIMEOUT = 10.0


def _tcp(address: tuple[str, int] | Path) -> tuple[str, int]:
    assert isinstance(address, tuple), "the proxy listens on TCP here"
    return address


def read_log(path: Path, closed: int = 1) -> list[dict[str, Any]]:
    """An audit log's records, once `closed` close records are in it (or after IO_TIMEOUT)."""
    deadline = time.monotonic() + IO_TIMEOUT
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        records = [json.loads(line) for line in lines]
        done = sum(r["event"] == "close" for r in records)
        if done >= closed or time.monotonic() > deadline:
            return records
        time.sleep(0.02)


def merged(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Open records updated with their close records (joined by id), in order of opening."""
    opens = {r["id"]: dict(r) for r in records if r["event"] == "open"}
    for record in records:
        if record["event"] == "close":
            opens[record["id"]].update(
                {k: record[k] for k in ("bytes_up", "bytes_down", "status", "duration_s", "error")}
            )
    return list(opens.values())


class _Upstream(http.server.ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, str | None]]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Upstream

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Host")))
        missing = self.path.startswith("/missing")
        body = f"{'no' if missing else 'ok'} {self.path}".encode()
        self.send_response(404 if missing else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Trap:
    """A TCP listener that only counts the connections it accepts."""

    host: str
    sock: socket.socket = field(init=False)
    accepted: int = 0

    def __post_init__(self) -> None:
        self.sock = socket.create_server((self.host, 0))
        self.sock.settimeout(0.02)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@dataclass
class Setup:
    proxy: proxy.Proxy
    upstream: _Upstream
    trap_loopback: Trap  # 127.0.0.1: where rebinding names point
    trap_port: Trap  # 127.0.0.2 on a port the policy does not allow
    trap_allowed: Trap  # 127.0.0.2 on an allowed port: what a refused request must not reach
    audit: Path

    @property
    def up_port(self) -> int:
        return int(self.upstream.server_address[1])

    def log(self, closed: int = 1) -> list[dict[str, Any]]:
        """The audit log's lines, once `closed` close records are in it (a close
        record is written when the proxy has closed both sides, a moment after the
        client saw EOF)."""
        return read_log(self.audit, closed)

    def audit_records(self, closed: int = 1) -> list[dict[str, Any]]:
        """One dict per decision, in the order decided: its open record updated
        with its close record (bytes, duration, error)."""
        return merged(self.log(closed))

    def nothing_leaked(self) -> None:
        assert (self.trap_loopback.accepted, self.trap_port.accepted) == (0, 0)
        # and the proxy still serves:
        status, body = http_get(self, f"http://allowed.test:{self.up_port}/still-serving")
        assert (status, body) == (200, b"ok /still-serving")


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    upstream = _Upstream((UPSTREAM_HOST, 0), _Handler)
    upstream.seen = []
    threading.Thread(target=upstream.serve_forever, args=(0.02,), daemon=True).start()
    trap_loopback, trap_port = Trap("127.0.0.1"), Trap(UPSTREAM_HOST)
    trap_allowed = Trap(UPSTREAM_HOST)
    up_port = upstream.server_address[1]
    policy = proxy.parse_policy(
        f"""
        allow allowed.test
        allow *.wild.test
        deny deny.wild.test
        allow-address {UPSTREAM_HOST}
        allow-port {up_port}
        allow-port {trap_loopback.port}
        allow-port {trap_allowed.port}
        """
    )
    resolver = proxy.mapping_resolver(
        {
            "allowed.test": [UPSTREAM_HOST],
            "sub.wild.test": [UPSTREAM_HOST],
            "wild.test": [UPSTREAM_HOST],
            "deny.wild.test": [UPSTREAM_HOST],
            "other.test": [UPSTREAM_HOST],
            "rebind.wild.test": ["127.0.0.1"],
            "mixed.wild.test": [UPSTREAM_HOST, "127.0.0.1"],
            "mapped.wild.test": ["::ffff:127.0.0.1"],
            "metadata.wild.test": ["169.254.169.254"],
        }
    )
    audit = tmp_path / "audit.jsonl"
    try:
        with proxy.serve_proxy(
            policy, audit_log=audit, resolver=resolver, header_timeout=1.0, connect_timeout=3.0
        ) as served:
            yield Setup(served, upstream, trap_loopback, trap_port, trap_allowed, audit)
    finally:
        upstream.shutdown()
        upstream.server_close()
        trap_loopback.close()
        trap_port.close()
        trap_allowed.close()


def _exchange(address: tuple[str, int], data: bytes) -> bytes:
    with socket.create_connection(address, timeout=IO_TIMEOUT) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _status(response: bytes) -> tuple[int, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def http_get(setup: Setup, url: str, extra: str = "") -> tuple[int, bytes]:
    host = url.split("/")[2]
    request = f"GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n"
    return _status(_exchange(_tcp(setup.proxy.http_address), request.encode()))


def connect(setup: Setup, authority: str) -> tuple[bytes, socket.socket]:
    sock = socket.create_connection(_tcp(setup.proxy.http_address), timeout=IO_TIMEOUT)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return head, sock


def socks(
    setup: Setup, host: str | bytes, port: int, command: int = 1
) -> tuple[int, socket.socket]:
    sock = socket.create_connection(_tcp(setup.proxy.socks_address), timeout=IO_TIMEOUT)
    sock.sendall(b"\x05\x01\x00")
    assert sock.recv(2) == b"\x05\x00"
    if isinstance(host, bytes):
        target = b"\x01" + host
    else:
        target = b"\x03" + bytes([len(host)]) + host.encode()
    sock.sendall(b"\x05" + bytes([command]) + b"\x00" + target + struct.pack("!H", port))
    reply = sock.recv(10)
    return reply[1], sock


# ---------------------------------------------------------------- allowed


OPEN_KEYS = {
    "event", "id", "connection", "time", "client", "protocol", "host", "port", "address",
    "resolved", "decision", "rule", "method", "path",
}  # fmt: skip
CLOSE_KEYS = {
    "event", "id", "connection", "time", "client", "protocol", "host", "port", "decision",
    "bytes_up", "bytes_down", "status", "duration_s", "error",
}  # fmt: skip


def test_plain_http_allowed_and_audited(setup: Setup) -> None:
    status, body = http_get(setup, f"http://allowed.test:{setup.up_port}/a?b=1")
    assert (status, body) == (200, b"ok /a?b=1")
    assert setup.upstream.seen == [("/a?b=1", f"allowed.test:{setup.up_port}")]
    opened, closed = setup.log()
    assert set(opened) == OPEN_KEYS and set(closed) == CLOSE_KEYS
    assert (opened["event"], closed["event"]) == ("open", "close")
    assert opened["id"] == closed["id"] and opened["id"].startswith(opened["connection"] + ".")
    assert opened["protocol"] == "http" and opened["decision"] == "allow"
    assert (opened["host"], opened["port"], opened["address"], opened["resolved"]) == (
        "allowed.test",
        setup.up_port,
        UPSTREAM_HOST,
        [UPSTREAM_HOST],
    )
    assert opened["rule"] == "allow allowed.test"
    assert (opened["method"], opened["path"]) == ("GET", "/a")  # the query is not logged
    assert closed["bytes_down"] > len(body) and closed["bytes_up"] > 0
    assert closed["error"] is None and closed["duration_s"] >= 0
    assert closed["time"] >= opened["time"]
    assert closed["status"] == 200


def test_the_upstreams_status_is_logged_as_the_client_got_it(setup: Setup) -> None:
    status, body = http_get(setup, f"http://allowed.test:{setup.up_port}/missing")
    assert (status, body) == (404, b"no /missing")
    (record,) = setup.audit_records()
    assert (record["decision"], record["status"], record["error"]) == ("allow", 404, None)


def test_connect_allowed_tunnels_bytes(setup: Setup) -> None:
    head, sock = connect(setup, f"sub.wild.test:{setup.up_port}")
    with sock:
        assert head.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /tunnel HTTP/1.0\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    assert _status(response) == (200, b"ok /tunnel")
    (record,) = setup.audit_records()
    assert (record["protocol"], record["status"]) == ("connect", 200)


def test_socks5_allowed_by_name(setup: Setup) -> None:
    code, sock = socks(setup, "Allowed.Test.", setup.up_port)
    with sock:
        assert code == 0
        sock.sendall(b"GET /socks HTTP/1.0\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    assert _status(response) == (200, b"ok /socks")
    (record,) = setup.audit_records()
    assert (record["protocol"], record["decision"]) == ("socks5", "allow")
    assert record["status"] is None  # SOCKS has no HTTP status; what it carried is not read


def test_uppercase_trailing_dot_is_the_same_name(setup: Setup) -> None:
    status, _ = http_get(setup, f"http://ALLOWED.test.:{setup.up_port}/x")
    assert status == 200


# ----------------------------------------------------------------- denied


def _assert_blocked(response: bytes) -> None:
    head = response.split(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 403 ")
    assert b"\r\nX-Proxy-Error: blocked-by-allowlist" in head


@pytest.mark.parametrize(
    ("host", "rule"),
    [
        ("other.test", "not-allowed"),
        ("wild.test", "not-allowed"),  # *.wild.test does not cover wild.test
        ("DENY.Wild.Test.", "deny deny.wild.test"),
        ("rebind.wild.test", "internal-address 127.0.0.1"),
        ("mixed.wild.test", "internal-address 127.0.0.1"),
        ("mapped.wild.test", "internal-address ::ffff:7f00:1"),
        ("127.0.0.1", "ip-literal"),
        ("[::1]", "ip-literal"),
        ("127.1", "ip-literal"),
    ],
)
def test_denied_everywhere_and_nothing_leaks(setup: Setup, host: str, rule: str) -> None:
    port = setup.trap_loopback.port
    if host in {"other.test", "wild.test", "DENY.Wild.Test."}:
        port = setup.up_port  # these would reach the real upstream if let through
    _assert_blocked(
        _exchange(
            _tcp(setup.proxy.http_address), f"GET http://{host}:{port}/ HTTP/1.1\r\n\r\n".encode()
        )
    )
    head, sock = connect(setup, f"{host}:{port}")
    sock.close()
    _assert_blocked(head)
    if not host.startswith("["):
        code, sock = socks(setup, host.strip("[]"), port)
        sock.close()
        assert code == 0x02  # connection not allowed by ruleset
    assert setup.upstream.seen == []
    records = setup.audit_records(2 if host.startswith("[") else 3)
    assert {(r["decision"], r["rule"]) for r in records} == {("deny", rule)}
    assert {r["protocol"]: r["status"] for r in records} == {
        "http": 403, "connect": 403, **({} if host.startswith("[") else {"socks5": None})
    }  # fmt: skip
    setup.nothing_leaked()


def test_metadata_address_denied(setup: Setup) -> None:
    status, body = http_get(setup, "http://metadata.wild.test/latest/meta-data/")
    assert status == 403 and b"internal-address 169.254.169.254" in body
    code, sock = socks(setup, bytes([169, 254, 169, 254]), 80)
    sock.close()
    assert code == 0x02
    setup.nothing_leaked()


def test_host_header_cannot_steer_the_request(setup: Setup) -> None:
    status, body = http_get(
        setup,
        f"http://allowed.test:{setup.up_port}/h",
        extra=f"Host: 127.0.0.1:{setup.trap_loopback.port}\r\n",
    )
    assert (status, body) == (200, b"ok /h")
    assert setup.upstream.seen == [("/h", f"allowed.test:{setup.up_port}")]
    setup.nothing_leaked()


def test_allowed_name_on_disallowed_port(setup: Setup) -> None:
    head, sock = connect(setup, f"allowed.test:{setup.trap_port.port}")
    sock.close()
    _assert_blocked(head)
    code, sock = socks(setup, "allowed.test", setup.trap_port.port)
    sock.close()
    assert code == 0x02
    status, _ = http_get(setup, f"http://allowed.test:{setup.trap_port.port}/")
    assert status == 403
    setup.nothing_leaked()


@pytest.mark.parametrize("command", [2, 3])  # BIND, UDP ASSOCIATE
def test_socks5_only_connect(setup: Setup, command: int) -> None:
    code, sock = socks(setup, "allowed.test", setup.up_port, command=command)
    sock.close()
    assert code == 0x07
    setup.nothing_leaked()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
        (b"GET /origin-form HTTP/1.1\r\nHost: allowed.test\r\n\r\n", 400),
        (b"GET http://allowed.test/ HTTP/1.1\r\nX: " + b"a" * (64 << 10) + b"\r\n\r\n", 431),
    ],
)
def test_malformed_and_oversized(setup: Setup, request_bytes: bytes, status: int) -> None:
    assert _status(_exchange(_tcp(setup.proxy.http_address), request_bytes))[0] == status
    setup.nothing_leaked()


def test_client_that_never_finishes_is_cut(setup: Setup) -> None:
    started = time.monotonic()
    with socket.create_connection(_tcp(setup.proxy.http_address), timeout=IO_TIMEOUT) as sock:
        sock.sendall(f"GET http://allowed.test:{setup.up_port}/ HTTP/1.1\r\nHost: a".encode())
        response = sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 408 ")
    with socket.create_connection(_tcp(setup.proxy.socks_address), timeout=IO_TIMEOUT) as sock:
        sock.sendall(b"\x05\x01")
        assert sock.recv(16) == b"\x05\x01\x00\x01\x00\x00\x00\x00\x00\x00"
    assert time.monotonic() - started < IO_TIMEOUT
    assert setup.upstream.seen == []
    setup.nothing_leaked()


def test_inv_proxy_prints_addresses_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    policy = tmp_path / "p.policy"
    policy.write_text("allow example.org\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "proxy", f"--policy={policy}", "--allow=a.org",
         "--http-port=0", "--socks-port=0", f"--audit-log={tmp_path / 'a.jsonl'}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        http_line = proc.stdout.readline().decode().split()
        socks_line = proc.stdout.readline().decode().split()
        assert http_line[0] == "http" and socks_line[0] == "socks5"
        host, port = http_line[1].rsplit(":", 1)
        response = _exchange((host, int(port)), b"GET http://b.org/ HTTP/1.1\r\n\r\n")
        _assert_blocked(response)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    opened, closed = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert (opened["event"], opened["host"], opened["decision"]) == ("open", "b.org", "deny")
    assert (closed["event"], closed["id"]) == ("close", opened["id"])


def test_bytes_sent_right_behind_connect_arrive(setup: Setup) -> None:
    """A client may send its first bytes (a TLS hello) without waiting for the 200;
    the relay must forward what the header reader already buffered."""
    authority = f"allowed.test:{setup.up_port}"
    response = _exchange(
        _tcp(setup.proxy.http_address),
        f"CONNECT {authority} HTTP/1.1\r\n\r\nGET /early HTTP/1.0\r\n\r\n".encode(),
    )
    established, _, tunneled = response.partition(b"\r\n\r\n")
    assert established.startswith(b"HTTP/1.1 200")
    assert _status(tunneled) == (200, b"ok /early")
    status, body = http_get(setup, f"http://allowed.test:{setup.up_port}/plain")
    assert (status, body) == (200, b"ok /plain")
    code, sock = socks(setup, "allowed.test", setup.up_port)
    with sock:
        assert code == 0
        sock.sendall(b"GET /socks HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert _status(reply) == (200, b"ok /socks")
    records = setup.audit_records(3)
    assert [r["decision"] for r in records] == ["allow"] * 3
    assert all(isinstance(r["bytes_down"], int) and r["bytes_down"] > 0 for r in records)


def test_client_half_close_still_gets_the_answer(setup: Setup) -> None:
    for request in (
        f"GET http://allowed.test:{setup.up_port}/half HTTP/1.0\r\n\r\n",
        f"CONNECT allowed.test:{setup.up_port} HTTP/1.1\r\n\r\nGET /half HTTP/1.0\r\n\r\n",
    ):
        with socket.create_connection(_tcp(setup.proxy.http_address), timeout=IO_TIMEOUT) as sock:
            sock.sendall(request.encode())
            sock.shutdown(socket.SHUT_WR)
            response = b""
            while chunk := sock.recv(65536):
                response += chunk
        assert response.endswith(b"\r\n\r\nok /half")


def test_vm_sockets_serve_what_guestfwd_runs(setup: Setup, tmp_path: Path) -> None:
    """The launch/build wiring: QEMU runs `socat - UNIX-CONNECT:<sock>` per guest
    connection (guestnet.guest_forwards); here the same command is the client."""
    from image.egress import guestnet

    sockdir = tmp_path / "vm"
    audit = tmp_path / "vm-audit.jsonl"
    resolver = proxy.mapping_resolver({"allowed.test": [UPSTREAM_HOST]})
    policy = proxy.parse_policy(
        f"allow allowed.test\nallow-address {UPSTREAM_HOST}\nallow-port {setup.up_port}\n"
    )
    with guestnet.serve_for_vm(policy, sockdir, audit, resolver):
        assert sockdir.stat().st_mode & 0o777 == 0o700
        (http_fwd, http_cmd), (socks_fwd, socks_cmd) = guestnet.guest_forwards(sockdir)
        assert (http_fwd, socks_fwd) == ("10.0.2.100:3128", "10.0.2.100:1080")
        for path in guestnet.socket_paths(sockdir):
            assert path.stat().st_mode & 0o777 == 0o600

        def through(cmd: str, request: bytes) -> bytes:
            argv = cmd.removeprefix("cmd:").split(" ")
            done = subprocess.run(argv, input=request, capture_output=True, timeout=IO_TIMEOUT)
            return done.stdout

        allowed = through(
            http_cmd,
            f"GET http://allowed.test:{setup.up_port}/fwd HTTP/1.1\r\n"
            f"Host: allowed.test\r\nConnection: close\r\n\r\n".encode(),
        )
        assert allowed.split(b" ", 2)[1] == b"200" and allowed.endswith(b"ok /fwd")
        denied = through(http_cmd, b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
        assert denied.startswith(b"HTTP/1.1 403") and proxy.BLOCKED_HEADER.encode() in denied
        # SOCKS5: no auth, then CONNECT to a domain name the policy denies.
        name = b"example.com"
        socks = through(
            socks_cmd,
            b"\x05\x01\x00" + b"\x05\x01\x00\x03" + bytes([len(name)]) + name + b"\x01\xbb",
        )
        assert socks[:2] == b"\x05\x00" and socks[2:4] == b"\x05\x02"
    records = merged(read_log(audit, 3))
    assert [(r["client"], r["protocol"], r["host"], r["decision"]) for r in records] == [
        ("guest", "http", "allowed.test", "allow"),
        ("guest", "http", "example.com", "deny"),
        ("guest", "socks5", "example.com", "deny"),
    ]


# ------------------------------------------------------------ audit records


def _records_now(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for(path: Path, event: str, count: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + IO_TIMEOUT
    while True:
        records = _records_now(path)
        if sum(r["event"] == event for r in records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.02)


def test_open_record_is_written_before_a_long_tunnel_closes(setup: Setup) -> None:
    head, sock = connect(setup, f"allowed.test:{setup.up_port}")
    with sock:
        assert head.startswith(b"HTTP/1.1 200")
        time.sleep(0.6)  # the tunnel stays open, idle
        (opened,) = _wait_for(setup.audit, "open")  # and nothing else: no close yet
        assert (opened["event"], opened["protocol"], opened["decision"]) == (
            "open",
            "connect",
            "allow",
        )
        assert (opened["host"], opened["address"], opened["method"]) == (
            "allowed.test",
            UPSTREAM_HOST,
            "CONNECT",
        )
        request = b"GET /long HTTP/1.0\r\n\r\n"
        sock.sendall(request)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    assert _status(response) == (200, b"ok /long")
    opened2, closed = setup.log(1)
    assert opened2 == opened
    assert (closed["event"], closed["id"], closed["connection"]) == (
        "close",
        opened["id"],
        opened["connection"],
    )
    assert (closed["bytes_up"], closed["bytes_down"]) == (len(request), len(response))
    assert closed["duration_s"] >= 0.6 and closed["error"] is None
    assert (closed["host"], closed["port"], closed["decision"]) == (
        "allowed.test",
        setup.up_port,
        "allow",
    )


def test_plain_http_records_method_and_path_never_credentials(setup: Setup) -> None:
    status, _ = http_get(
        setup,
        f"http://allowed.test:{setup.up_port}/dl/pkg.deb?token=s3cr3t-query",
        extra="Proxy-Authorization: Basic czNjcjN0LWF1dGg=\r\n"
        "Authorization: Bearer s3cr3t-bearer\r\n",
    )
    assert status == 200
    (record,) = setup.audit_records(1)
    assert (record["protocol"], record["method"], record["path"]) == ("http", "GET", "/dl/pkg.deb")
    text = setup.audit.read_text()
    for secret in ("s3cr3t", "czNjcjN0LWF1dGg=", "Basic", "Bearer", "token"):
        assert secret not in text
    # SOCKS5 and CONNECT records have no method/path of their own
    code, sock = socks(setup, "allowed.test", setup.trap_port.port)
    sock.close()
    assert code == 0x02
    socks_record = setup.audit_records(2)[1]
    assert (socks_record["method"], socks_record["path"]) == (None, None)


@pytest.mark.parametrize(
    ("request_bytes", "status", "rule", "host", "port", "path"),
    [
        (b"GET http://allowed.test:{p}/x?q HTTP/1.1\r\nno colon\r\n\r\n", 400, "malformed-header",
         "allowed.test", "{p}", "/x"),
        (b"GET http://allowed.test:{p}/x HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400,
         "malformed-header", "allowed.test", "{p}", "/x"),
        (b"POST http://allowed.test:{p}/up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411,
         "chunked-request-body", "allowed.test", "{p}", "/up"),
        (b"GET http://allowed.test:{p}/big HTTP/1.1\r\nX: " + b"a" * (64 << 10) + b"\r\n\r\n", 431,
         "header-too-large", "allowed.test", "{p}", "/big"),
        (b"GET http://allowed.test:{p}/slow HTTP/1.1\r\nHost: a", 408, "request-timeout",
         "allowed.test", "{p}", "/slow"),
        (b"CONNECT allowed.test:99999 HTTP/1.1\r\n\r\n", 400, "malformed-authority",
         "allowed.test", None, None),
        (b"GET http://other.test@allowed.test:{p}/ HTTP/1.1\r\n\r\n", 400, "malformed-authority",
         "other.test@allowed.test", "{p}", "/"),
    ],
)  # fmt: skip
def test_malformed_request_keeps_the_parsed_host(
    setup: Setup,
    request_bytes: bytes,
    status: int,
    rule: str,
    host: str,
    port: str | None,
    path: str | None,
) -> None:
    data = request_bytes.replace(b"{p}", str(setup.up_port).encode())
    with socket.create_connection(_tcp(setup.proxy.http_address), timeout=IO_TIMEOUT) as sock:
        sock.sendall(data)
        response = b""
        with contextlib.suppress(ConnectionResetError):  # 431: we sent more than it read
            while chunk := sock.recv(65536):
                response += chunk
    assert _status(response)[0] == status
    (record,) = setup.audit_records(1)
    expected_port = None if port is None else setup.up_port
    assert (record["decision"], record["rule"]) == ("error", rule)
    assert (record["host"], record["port"], record["path"]) == (host, expected_port, path)
    assert setup.upstream.seen == []


def test_unreachable_upstream_is_an_allow_with_an_error(tmp_path: Path) -> None:
    closed_port = socket.create_server((UPSTREAM_HOST, 0))
    port = closed_port.getsockname()[1]
    closed_port.close()  # nothing listens there now
    policy = proxy.parse_policy(f"allow-address {UPSTREAM_HOST}\nallow-port {port}\n")
    audit = tmp_path / "a.jsonl"
    with proxy.serve_proxy(policy, audit_log=audit) as served:
        response = _exchange(
            _tcp(served.http_address), f"CONNECT {UPSTREAM_HOST}:{port} HTTP/1.1\r\n\r\n".encode()
        )
    assert _status(response)[0] == 502
    opened, closed = read_log(audit)
    assert (opened["decision"], opened["address"]) == ("allow", UPSTREAM_HOST)
    assert closed["error"] == "upstream-unreachable ConnectionRefusedError"
    assert (closed["bytes_up"], closed["bytes_down"], closed["status"]) == (0, 0, 502)


def test_killed_proxy_keeps_every_open_record(setup: Setup, tmp_path: Path) -> None:
    """SIGKILL with a tunnel open: its open record (and every finished one) is on disk."""
    audit = tmp_path / "killed.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "proxy", f"--allow-address={UPSTREAM_HOST}/32",
         f"--allow-port={setup.up_port}", "--http-port=0", "--socks-port=0",
         f"--audit-log={audit}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        host, port = proc.stdout.readline().decode().split()[1].rsplit(":", 1)
        address = (host, int(port))
        _assert_blocked(_exchange(address, b"GET http://b.org/ HTTP/1.1\r\n\r\n"))
        with socket.create_connection(address, timeout=IO_TIMEOUT) as tunnel:
            tunnel.sendall(f"CONNECT {UPSTREAM_HOST}:{setup.up_port} HTTP/1.1\r\n\r\n".encode())
            assert tunnel.recv(4096).startswith(b"HTTP/1.1 200")
            _wait_for(audit, "open", 2)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    records = _records_now(audit)  # every line whole: each was written in one call
    assert [(r["event"], r["host"], r["decision"]) for r in records] == [
        ("open", "b.org", "deny"),
        ("close", "b.org", "deny"),
        ("open", UPSTREAM_HOST, "allow"),
    ]
