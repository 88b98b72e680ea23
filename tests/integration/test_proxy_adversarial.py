"""The egress proxy against address-form, authority, pipelining and handshake tricks.

Everything stays on loopback. Forms that stand for a non-loopback address go to
a proxy running the shipped launch policy (which lists no address, so nothing
can be connected to) with a resolver that records every name it is asked;
forms that stand for 127.0.0.2 go to the shared fixture's proxy, which lists
that address and runs the upstream there. Each test also shows the request was
decided on the address the form stands for (the `resolved` field of its open
record), never on a name.
"""

from __future__ import annotations

import contextlib
import ipaddress
import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from image.egress import proxy
from tests.integration import test_proxy
from tests.integration.test_proxy import (
    IO_TIMEOUT,
    ROOT,
    UPSTREAM_HOST,
    Setup,
    _assert_blocked,
    _exchange,
    _status,
    _tcp,
    http_get,
    merged,
    read_log,
)

setup = test_proxy.setup  # the shared fixture: upstream on 127.0.0.2, traps, audit log

# ----------------------------------------------------------------- helpers


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def domain(name: bytes) -> bytes:
    return b"\x03" + bytes([len(name)]) + name


def v6(address: str) -> bytes:
    return b"\x04" + ipaddress.IPv6Address(address).packed


def v4(address: str) -> bytes:
    return b"\x01" + ipaddress.IPv4Address(address).packed


def socks5(
    address: tuple[str, int] | Path, target: bytes, port: int, methods: bytes = b"\x00"
) -> tuple[bytes, socket.socket]:
    """A SOCKS5 CONNECT: (the 2-byte method choice if it is not "no auth", else the
    10-byte reply, and the socket)."""
    sock = socket.create_connection(_tcp(address), timeout=IO_TIMEOUT)
    sock.sendall(b"\x05" + bytes([len(methods)]) + methods)
    choice = _recv_exact(sock, 2)
    if choice != b"\x05\x00":
        return choice, sock
    sock.sendall(b"\x05\x01\x00" + target + struct.pack("!H", port))
    return _recv_exact(sock, 10), sock


def socks5_code(address: tuple[str, int] | Path, target: bytes, port: int) -> int:
    reply, sock = socks5(address, target, port)
    sock.close()
    assert len(reply) == 10, reply
    return reply[1]


def connect_status(address: tuple[str, int] | Path, authority: bytes) -> int:
    response = _exchange(_tcp(address), b"CONNECT " + authority + b" HTTP/1.1\r\n\r\n")
    return _status(response)[0]


def get_status(address: tuple[str, int] | Path, url: bytes) -> int:
    response = _exchange(_tcp(address), b"GET " + url + b" HTTP/1.1\r\nConnection: close\r\n\r\n")
    return _status(response)[0]


def settled(trap: Any) -> int:
    """A trap's count once anything the proxy might have connected has been accepted."""
    time.sleep(0.3)
    return int(trap.accepted)


@dataclass
class Launch:
    proxy: proxy.Proxy
    audit: Path
    asked: list[str]  # every name the resolver was asked for

    def records(self, closed: int) -> list[dict[str, Any]]:
        return merged(read_log(self.audit, closed))


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """The shipped launch policy (registries only, no allow-address): nothing here
    can be allowed, so nothing is ever connected to."""
    policy = proxy.load_policy(ROOT / "proxy-policies" / "launch.policy")
    assert policy.addresses == ()
    asked: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return []

    audit = tmp_path / "audit.jsonl"
    with proxy.serve_proxy(policy, audit_log=audit, resolver=resolver, header_timeout=2.0) as p:
        yield Launch(p, audit, asked)


# --------------------------------------------------------- address forms

# (form as written in a URI or CONNECT authority, the address it stands for;
# None: no valid address, to be refused as malformed)
FORMS = [
    ("0x7f.1", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("0x0a000001", "10.0.0.1"),
    ("10.1", "10.0.0.1"),
    ("012.0.0.1", "10.0.0.1"),
    ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
    ("0251.0376.0251.0376", "169.254.169.254"),
    ("169.254.43518", "169.254.169.254"),
    ("2852039166", "169.254.169.254"),
    ("0", "0.0.0.0"),
    ("[::ffff:10.0.0.1]", "10.0.0.1"),
    ("[::ffff:a00:1]", "10.0.0.1"),
    ("[::ffff:169.254.169.254]", "169.254.169.254"),
    ("[fe80::1%25eth0]", "fe80::1%25eth0"),
    ("[::1]", "::1"),
    ("[::]", "::"),
    ("[64:ff9b::a9fe:a9fe]", "64:ff9b::a9fe:a9fe"),
    ("1.2.3.4.5", None),
    ("256.0.0.1", None),
    ("08.0.0.1", None),
    ("0x100000000", None),
    ("[127.0.0.1]", None),
    ("[fe80::1%25eth0", None),
]
REFUSED_RULES = {"ip-literal", "invalid-address", "malformed-authority"}


@pytest.mark.parametrize(("form", "address"), FORMS)
def test_address_forms_are_decided_as_their_address(
    launch: Launch, form: str, address: str | None
) -> None:
    """Absolute URI, CONNECT authority, SOCKS5 domain: refused as the address the
    form stands for (or as malformed), never looked up as a name."""
    http = launch.proxy.http_address
    assert get_status(http, f"http://{form}/".encode()) in (400, 403)
    assert connect_status(http, f"{form}:443".encode()) in (400, 403)
    assert socks5_code(launch.proxy.socks_address, domain(form.encode()), 443) == 0x02
    bare = form.strip("[]")
    if bare != form:  # the SOCKS5 domain field needs no brackets
        assert socks5_code(launch.proxy.socks_address, domain(bare.encode()), 443) == 0x02
    records = launch.records(4 if bare != form else 3)
    assert len(records) == (4 if bare != form else 3)
    assert [r["protocol"] for r in records[:3]] == ["http", "connect", "socks5"]
    for record in records:
        assert record["decision"] in ("deny", "error"), record
        assert record["rule"] in REFUSED_RULES, record
        if address is not None:
            assert (record["rule"], record["resolved"]) == ("ip-literal", [address]), record
    assert launch.asked == []


@pytest.mark.parametrize(
    ("target", "address"),
    [
        (v6("::ffff:10.0.0.1"), "10.0.0.1"),
        (v6("::ffff:169.254.169.254"), "169.254.169.254"),
        (v6("::1"), "::1"),
        (v6("::"), "::"),
        (v6("fe80::1"), "fe80::1"),
        (v6("64:ff9b::a9fe:a9fe"), "64:ff9b::a9fe:a9fe"),
        (v6("2002:a9fe:a9fe::1"), "2002:a9fe:a9fe::1"),
        (v4("10.0.0.1"), "10.0.0.1"),
        (v4("0.0.0.0"), "0.0.0.0"),
        (domain(b"::ffff:10.0.0.1"), "10.0.0.1"),
        (domain(b"fe80::1%eth0"), "fe80::1%eth0"),
        (domain(b"0x7f.1"), "127.0.0.1"),
        (domain(b"2852039166"), "169.254.169.254"),
    ],
)
def test_socks5_address_types_carry_literals(launch: Launch, target: bytes, address: str) -> None:
    assert socks5_code(launch.proxy.socks_address, target, 443) == 0x02
    (record,) = launch.records(1)
    assert (record["decision"], record["rule"], record["resolved"]) == (
        "deny",
        "ip-literal",
        [address],
    )
    assert launch.asked == []


LOOPBACK_FORMS = ["0x7f.2", "0177.0.0.2", "127.2", "2130706434", "0x7f000002", "0x7f.0.0.0x2"]
LOOPBACK_V6 = ["[::ffff:127.0.0.2]", "[::ffff:7f00:2]"]


def test_forms_of_a_listed_address_reach_that_address(setup: Setup) -> None:
    """Only loopback here: forms of 127.0.0.2 (listed) reach the upstream there;
    forms of 127.0.0.1 (not listed) are refused and the trap there sees nothing."""
    port = setup.up_port
    for number, form in enumerate(LOOPBACK_FORMS + LOOPBACK_V6):
        status, body = http_get(setup, f"http://{form}:{port}/f{number}")
        assert (status, body) == (200, f"ok /f{number}".encode()), form
        head, sock = _connect(setup, f"{form}:{port}")
        with sock:
            assert head.startswith(b"HTTP/1.1 200"), form
        reply, sock = socks5(setup.proxy.socks_address, domain(form.strip("[]").encode()), port)
        sock.close()
        assert reply[1] == 0, form
    reply, sock = socks5(setup.proxy.socks_address, v6("::ffff:127.0.0.2"), port)
    with sock:
        assert reply[1] == 0
        sock.sendall(b"GET /v6 HTTP/1.0\r\n\r\n")
        assert _status(_read_all(sock)) == (200, b"ok /v6")
    count = 3 * len(LOOPBACK_FORMS + LOOPBACK_V6) + 1
    records = setup.audit_records(count)
    assert {(r["decision"], r["address"]) for r in records} == {("allow", UPSTREAM_HOST)}
    assert {r["rule"] for r in records} == {f"allow-address {UPSTREAM_HOST}/32"}
    trap = setup.trap_loopback.port
    for form in ["0x7f.1", "0177.0.0.1", "127.1", "2130706433", "[::ffff:127.0.0.1]"]:
        request = f"GET http://{form}:{trap}/ HTTP/1.1\r\n\r\n".encode()
        _assert_blocked(_exchange(_tcp(setup.proxy.http_address), request))
        head, sock = _connect(setup, f"{form}:{trap}")
        sock.close()
        _assert_blocked(head)
        code = socks5_code(setup.proxy.socks_address, domain(form.strip("[]").encode()), trap)
        assert code == 0x02
    denied = setup.audit_records(count + 15)[count:]
    assert {(r["rule"], tuple(r["resolved"])) for r in denied} == {("ip-literal", ("127.0.0.1",))}
    assert settled(setup.trap_loopback) == 0
    setup.nothing_leaked()


def _connect(setup: Setup, authority: str) -> tuple[bytes, socket.socket]:
    sock = socket.create_connection(_tcp(setup.proxy.http_address), timeout=IO_TIMEOUT)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return head, sock


@pytest.mark.parametrize(
    "host_header",
    ["0x7f.1", "127.1", "2130706433", "[::ffff:127.0.0.1]", "[fe80::1%25eth0]", "10.1"],
)
def test_host_header_forms_never_steer(setup: Setup, host_header: str) -> None:
    trap = setup.trap_loopback.port
    status, body = http_get(
        setup, f"http://allowed.test:{setup.up_port}/h", extra=f"Host: {host_header}:{trap}\r\n"
    )
    assert (status, body) == (200, b"ok /h")
    assert setup.upstream.seen == [("/h", f"allowed.test:{setup.up_port}")]
    # origin-form with only a Host header: not a proxy request at all
    response = _exchange(
        _tcp(setup.proxy.http_address),
        f"GET /h HTTP/1.1\r\nHost: {host_header}:{trap}\r\n\r\n".encode(),
    )
    assert _status(response)[0] == 400
    assert settled(setup.trap_loopback) == 0
    setup.nothing_leaked()


# -------------------------------------------------- odd bytes in host names

ODD_NAMES = [
    b"allowed.test\x00.evil.test",
    b"allowed.test\x00",
    b"allowed%2etest",
    b"%61llowed.test",
    b"allowed.test%00",
    b"allowed.test\n",
    b"allowed.test\r\n",
    b"\nallowed.test",
    b"allowed.test\t",
]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_nul_percent_newline_in_names_are_refused(setup: Setup, name: bytes) -> None:
    """A C resolver would stop at the NUL and look up allowed.test: the name must
    be refused first. The trap listens on allowed.test's address and an allowed port."""
    port = setup.trap_allowed.port
    http = setup.proxy.http_address
    assert get_status(http, b"http://" + name + b":%d/" % port) in (400, 403)
    assert connect_status(http, name + b":%d" % port) in (400, 403)
    assert socks5_code(setup.proxy.socks_address, domain(name), port) == 0x02
    records = setup.audit_records(3)
    assert [r["decision"] for r in records][2] == "deny"
    socks_record = records[2]
    assert (socks_record["host"], socks_record["rule"]) == (name.decode(), "invalid-name")
    for record in records[:2]:
        assert record["rule"] in ("invalid-name", "malformed-request"), record
        assert record["decision"] in ("deny", "error") and record["address"] is None
    assert settled(setup.trap_allowed) == 0
    setup.nothing_leaked()


# -------------------------------------------------------- authority tricks


def test_query_with_at_sign_stays_on_the_uri_host(setup: Setup) -> None:
    status, body = http_get(setup, f"http://allowed.test:{setup.up_port}?@other.test/")
    assert (status, body) == (200, b"ok /?@other.test/")
    assert setup.upstream.seen == [("/?@other.test/", f"allowed.test:{setup.up_port}")]
    (record,) = setup.audit_records(1)
    assert (record["host"], record["path"]) == ("allowed.test", "/")


@pytest.mark.parametrize(
    "request_line",
    [
        "GET http://other.test@allowed.test:{ta}/ HTTP/1.1",
        "GET http://allowed.test:{ta}@other.test/ HTTP/1.1",
        "GET http://allowed.test:{ta}#@other.test/ HTTP/1.1",
        "GET http://allowed.test#@other.test:{ta}/ HTTP/1.1",
        "GET http://allowed.test:{ta}\\@other.test/ HTTP/1.1",
        "GET http://allowed.test:{ta}:{ta}/ HTTP/1.1",
        "CONNECT allowed.test:{ta}@other.test:{ta} HTTP/1.1",
        "CONNECT allowed.test:{ta}@other.test HTTP/1.1",
        "CONNECT other.test@allowed.test:{ta} HTTP/1.1",
        "CONNECT allowed.test:{ta}#@other.test:{ta} HTTP/1.1",
        "CONNECT allowed.test:{ta}/@other.test:{ta} HTTP/1.1",
    ],
)
def test_authority_tricks_are_refused(setup: Setup, request_line: str) -> None:
    """Had any of these been taken as allowed.test:{ta}, the trap there would count it."""
    line = request_line.format(ta=setup.trap_allowed.port)
    response = _exchange(_tcp(setup.proxy.http_address), f"{line}\r\n\r\n".encode())
    assert _status(response)[0] in (400, 403)
    (record,) = setup.audit_records(1)
    assert record["decision"] in ("deny", "error") and record["address"] is None
    assert settled(setup.trap_allowed) == 0
    setup.nothing_leaked()


# -------------------------------------------------- pipelining, smuggling


def _responses(data: bytes) -> list[tuple[int, bytes]]:
    """Split Content-Length-framed responses read from one connection."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        out.append((int(head.split(b" ")[1]), rest[:length]))
        data = rest[length:]
    return out


def test_pipelined_request_to_a_denied_host_is_refused_and_logged(setup: Setup) -> None:
    port = setup.up_port
    both = (
        f"GET http://allowed.test:{port}/first HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
        f"GET http://other.test:{port}/second HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
    )
    answers = _responses(_exchange(_tcp(setup.proxy.http_address), both.encode()))
    assert answers[0] == (200, b"ok /first")
    assert answers[1][0] == 403 and b"not-allowed" in answers[1][1]
    assert len(answers) == 2
    assert setup.upstream.seen == [("/first", f"allowed.test:{port}")]
    first, second = setup.audit_records(2)
    assert first["connection"] == second["connection"]
    assert (first["id"], second["id"]) == (f"{first['connection']}.1", f"{first['connection']}.2")
    assert (first["decision"], first["path"]) == ("allow", "/first")
    assert [second[k] for k in ("decision", "rule", "host", "method", "path")] == [
        "deny", "not-allowed", "other.test", "GET", "/second",
    ]  # fmt: skip
    setup.nothing_leaked()


def test_kept_alive_connection_serves_and_decides_each_request(setup: Setup) -> None:
    port = setup.up_port
    with socket.create_connection(_tcp(setup.proxy.http_address), timeout=IO_TIMEOUT) as sock:
        for path in ("/one", "/two"):
            sock.sendall(f"GET http://allowed.test:{port}{path} HTTP/1.1\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(1)
            assert b"\r\nConnection: keep-alive" in head
            body = _recv_exact(sock, len(f"ok {path}"))
            assert body == f"ok {path}".encode()
        # a later request on the same connection, to a disallowed port
        sock.sendall(f"GET http://allowed.test:{setup.trap_port.port}/ HTTP/1.1\r\n\r\n".encode())
        _assert_blocked(_read_all(sock))
    records = setup.audit_records(3)
    assert len({r["connection"] for r in records}) == 1
    assert [(r["decision"], r["path"]) for r in records] == [
        ("allow", "/one"),
        ("allow", "/two"),
        ("deny", "/"),
    ]
    assert records[2]["rule"] == f"port-not-allowed {setup.trap_port.port}"
    setup.nothing_leaked()


def test_no_keep_alive_means_one_request(setup: Setup) -> None:
    """HTTP/1.0 without keep-alive: the answer ends the connection; what the client
    sent after it is never read, so never decided."""
    port = setup.up_port
    both = (
        f"GET http://allowed.test:{port}/only HTTP/1.0\r\n\r\n"
        f"GET http://other.test:{port}/never HTTP/1.0\r\n\r\n"
    )
    response = _exchange(_tcp(setup.proxy.http_address), both.encode())
    assert _status(response) == (200, b"ok /only") and b"Connection: close" in response
    assert [r["path"] for r in setup.audit_records(1)] == ["/only"]


@pytest.mark.parametrize(
    "headers",
    [
        "X: a\nHost: other.test",  # a bare LF hides a second Host header from us
        "X: a\n\nGET /smuggled HTTP/1.1\nHost: other.test",  # ... or a second request
        "X: a\rHost: other.test",
        "X: a\x00b",
    ],
)
def test_header_smuggling_is_refused(setup: Setup, headers: str) -> None:
    request = f"GET http://allowed.test:{setup.up_port}/s HTTP/1.1\r\n{headers}\r\n\r\n"
    response = _exchange(_tcp(setup.proxy.http_address), request.encode())
    assert _status(response)[0] == 400
    assert setup.upstream.seen == []
    (record,) = setup.audit_records(1)
    assert (record["decision"], record["rule"], record["host"]) == (
        "error",
        "malformed-header",
        "allowed.test",
    )
    setup.nothing_leaked()


# ------------------------------------------------- SOCKS auth and SOCKS4


@pytest.mark.parametrize("methods", [b"\x02", b"\x01", b"\x80", b"", b"\x01\x02\x03"])
def test_socks5_auth_methods_other_than_none_are_refused(setup: Setup, methods: bytes) -> None:
    """Username/password (2) and the rest: "no acceptable method", then nothing. A
    client that sends its credentials and a CONNECT anyway reaches nothing."""
    ta = setup.trap_allowed.port
    choice, sock = socks5(setup.proxy.socks_address, domain(b"allowed.test"), ta, methods)
    with sock:
        assert choice == b"\x05\xff"
        with contextlib.suppress(OSError):  # the proxy may have closed already
            # username-only sub-negotiation (no password), then the request
            sock.sendall(b"\x01\x04user\x00" + b"\x05\x01\x00" + domain(b"allowed.test"))
        assert _read_all_or_reset(sock) == b""
    (record,) = setup.audit_records(1)
    assert (record["protocol"], record["decision"]) == ("socks5", "error")
    assert record["rule"] == f"no-acceptable-auth-method {methods.hex() or '-'}"
    assert settled(setup.trap_allowed) == 0
    setup.nothing_leaked()


def _read_all_or_reset(sock: socket.socket) -> bytes:
    try:
        return _read_all(sock)
    except ConnectionResetError:
        return b""


def test_socks5_no_auth_among_others_is_chosen(setup: Setup) -> None:
    reply, sock = socks5(
        setup.proxy.socks_address, domain(b"allowed.test"), setup.up_port, b"\x02\x00"
    )
    with sock:
        assert reply[1] == 0
        sock.sendall(b"GET /auth HTTP/1.0\r\n\r\n")
        assert _status(_read_all(sock)) == (200, b"ok /auth")


@pytest.mark.parametrize(
    ("request_bytes", "host"),
    [
        (b"\x04\x01{port}\x7f\x00\x00\x02user\x00", UPSTREAM_HOST),
        (b"\x04\x01{port}\x00\x00\x00\x01\x00allowed.test\x00", "allowed.test"),  # SOCKS4a
        (b"\x04\x01{port}\x00\x00\x00\x01user\x000x7f.2\x00", "0x7f.2"),
        (b"\x04\x01{port}\x7f\x00\x00\x02" + b"u" * 300 + b"\x00", UPSTREAM_HOST),
    ],
)  # fmt: skip
def test_socks4_and_4a_are_refused(setup: Setup, request_bytes: bytes, host: str) -> None:
    """SOCKS4/4a are not served even to an allowed address and port: reply 91."""
    ta = setup.trap_allowed.port
    data = request_bytes.replace(b"{port}", struct.pack("!H", ta))
    assert _exchange(_tcp(setup.proxy.socks_address), data) == b"\x00\x5b" + b"\x00" * 6
    (record,) = setup.audit_records(1)
    assert (record["protocol"], record["decision"], record["host"], record["port"]) == (
        "socks4",
        "error",
        host,
        ta,
    )
    assert record["rule"] in ("socks4-not-supported", "socks4-field-too-long")
    assert settled(setup.trap_allowed) == 0
    setup.nothing_leaked()


def test_trap_allowed_counts_what_gets_through(setup: Setup) -> None:
    """The control for the tests above: an allowed SOCKS5 CONNECT reaches the trap."""
    reply, sock = socks5(
        setup.proxy.socks_address, domain(b"allowed.test"), setup.trap_allowed.port
    )
    sock.close()
    assert reply[1] == 0
    assert settled(setup.trap_allowed) == 1


# ------------------------------------------------------------ half-open


HALF_OPEN = 300
HOLD = 30.0


@pytest.mark.timeout(120)  # slow (~33 s) but in the default run; a hang must not be
def test_slow_300_half_open_connections_do_not_starve_the_proxy(tmp_path: Path) -> None:
    """Slow (~35 s), in the default run. 300 connections that send nothing, part
    of a request line or a handshake, or trickle a byte every 2 s, are held for
    30 s while normal requests are served promptly; then the 30 s header/handshake
    timeout closes every one of them."""
    upstream = _tiny_upstream()
    up_port = upstream.getsockname()[1]
    policy = proxy.parse_policy(
        f"allow allowed.test\nallow-address {UPSTREAM_HOST}\nallow-port {up_port}\n"
    )
    resolver = proxy.mapping_resolver({"allowed.test": [UPSTREAM_HOST]})
    audit = tmp_path / "audit.jsonl"
    with proxy.serve_proxy(policy, audit_log=audit, resolver=resolver, header_timeout=HOLD) as p:
        http, socks_address = _tcp(p.http_address), _tcp(p.socks_address)
        idle: list[socket.socket] = []
        trickling: list[tuple[socket.socket, bytes]] = []
        started = time.monotonic()
        for number in range(HALF_OPEN):
            kind = number % 6
            sock = socket.create_connection(http if kind < 3 else socks_address, timeout=5)
            if kind == 1:
                sock.sendall(b"GET http://allowed.test/ HT")
            elif kind == 4:
                sock.sendall(b"\x05\x01")
            if kind == 2:
                trickling.append((sock, b"GET http://allowed.test/ HTTP/1.1\r\nX: " + b"a" * 200))
            elif kind == 5:
                trickling.append((sock, b"\x05\x01\x00\x05\x01\x00\x03\xff" + b"a" * 200))
            else:
                idle.append(sock)
        stop = threading.Event()
        trickler = threading.Thread(target=_trickle, args=(trickling, stop), daemon=True)
        trickler.start()
        latencies: list[float] = []
        try:
            while time.monotonic() - started < HOLD - 1.5:
                latencies.append(_timed_requests(http, socks_address, up_port))
                time.sleep(0.5)
            everyone = idle + [sock for sock, _ in trickling]
            assert _closed(everyone, wait=0) == 0, "closed before the header timeout"
            stop.set()
            trickler.join(5)
            # the timeout fires at 30 s after each connection's start
            assert _closed(everyone, wait=HOLD + 5 - (time.monotonic() - started)) == HALF_OPEN
        finally:
            stop.set()
            for sock in idle + [sock for sock, _ in trickling]:
                sock.close()
            upstream.close()
    assert len(latencies) >= 20
    assert max(latencies) < 2.0, sorted(latencies)[-5:]
    records = merged(read_log(audit, HALF_OPEN + 2 * len(latencies)))
    timeouts = [r for r in records if r["rule"] == "request-timeout"]
    assert len(timeouts) == HALF_OPEN
    assert all(r["decision"] == "error" for r in timeouts)
    # what a partial request line named is kept: the whole name (kind 1), or the
    # start of one trickled byte by byte (kind 2)
    assert sum(r["host"] == "allowed.test" for r in timeouts) == HALF_OPEN // 6
    assert sum(r["method"] == "GET" for r in timeouts) == 2 * HALF_OPEN // 6


def _tiny_upstream() -> socket.socket:
    """An upstream on 127.0.0.2 answering each connection with a fixed 200."""
    server = socket.create_server((UPSTREAM_HOST, 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return server


def _timed_requests(http: tuple[str, int], socks_address: tuple[str, int], port: int) -> float:
    """One plain-HTTP GET and one SOCKS5 tunnel through the proxy; the slower's seconds."""
    begin = time.monotonic()
    response = _exchange(
        http, f"GET http://allowed.test:{port}/ HTTP/1.1\r\nConnection: close\r\n\r\n".encode()
    )
    assert _status(response) == (200, b"ok")
    middle = time.monotonic()
    reply, sock = socks5(socks_address, domain(b"allowed.test"), port)
    with sock:
        assert reply[1] == 0
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert _status(_read_all(sock)) == (200, b"ok")
    end = time.monotonic()
    return max(middle - begin, end - middle)


def _trickle(sockets: list[tuple[socket.socket, bytes]], stop: threading.Event) -> None:
    offset = 0
    while not stop.wait(2.0):
        for sock, data in sockets:
            if offset < len(data):
                with contextlib.suppress(OSError):
                    sock.sendall(data[offset : offset + 1])
        offset += 1


def _closed(sockets: list[socket.socket], wait: float) -> int:
    """How many of the sockets the proxy has closed (EOF after any answer), waiting
    up to `wait` seconds for all of them."""
    selector = selectors.DefaultSelector()
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    closed = 0
    deadline = time.monotonic() + max(wait, 0)
    try:
        while closed < len(sockets):
            events = selector.select(timeout=max(deadline - time.monotonic(), 0))
            if not events:
                break
            for key, _ in events:
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                try:
                    data = ready.recv(65536)
                except ConnectionResetError:
                    data = b""
                except BlockingIOError:
                    continue
                if not data:
                    closed += 1
                    selector.unregister(ready)
            if wait <= 0:
                break
    finally:
        selector.close()
        for sock in sockets:
            sock.setblocking(True)
    return closed
