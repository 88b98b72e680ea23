# ruff: noqa: F811  (`setup`, test_proxy's fixture, is imported and then requested by name)
"""The egress proxy forwarding through a company's HTTP proxy (``upstream`` /
``--upstream-proxy``): our policy still decides, names are not resolved here, plain
HTTP goes up in absolute form, everything else through CONNECT, and an upstream
that refuses is a 502 naming it. The upstream is the project's own proxy (which
resolves and decides on its side), all on loopback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from image.egress import proxy
from image.errors import ImageError
from tests.integration.test_proxy import (  # noqa: F401
    IO_TIMEOUT,
    Setup,
    _status,
    _tcp,
    merged,
    read_log,
    setup,
)


def _front(
    setup: Setup, tmp_path: Path, extra: str = ""
) -> Generator[tuple[proxy.Proxy, Path], None, None]:
    upstream = _tcp(setup.proxy.http_address)
    policy = proxy.parse_policy(
        f"allow allowed.test\nallow other.test\nallow-port {setup.up_port}\n"
        f"upstream http://{upstream[0]}:{upstream[1]}\n{extra}"
    )
    audit = tmp_path / "front.jsonl"
    # A resolver that knows no name: through an upstream, this side never resolves.
    with proxy.serve_proxy(policy, audit_log=audit, resolver=proxy.mapping_resolver({}),
                           header_timeout=1.0, connect_timeout=3.0) as front:  # fmt: skip
        yield front, audit


@pytest.fixture
def front(setup: Setup, tmp_path: Path) -> Iterator[tuple[proxy.Proxy, Path]]:
    yield from _front(setup, tmp_path)


def _get(via: proxy.Proxy, url: str) -> tuple[int, bytes]:
    host = url.split("/")[2]
    request = f"GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection(_tcp(via.http_address), timeout=IO_TIMEOUT) as sock:
        sock.sendall(request)
        data = b"".join(iter(lambda: sock.recv(65536), b""))
    return _status(data)


def test_plain_http_goes_up_in_absolute_form(setup: Setup, front: tuple[proxy.Proxy, Path]) -> None:
    via, audit = front
    status, body = _get(via, f"http://allowed.test:{setup.up_port}/a?q=1")
    assert (status, body) == (200, b"ok /a?q=1")
    mine = merged(read_log(audit))
    assert [(r["decision"], r["rule"], r["upstream"]) for r in mine] == [
        ("allow", "allow allowed.test", f"http://{_tcp(setup.proxy.http_address)[0]}:"
         f"{_tcp(setup.proxy.http_address)[1]}")
    ]  # fmt: skip
    assert mine[0]["resolved"] == []  # not resolved on this side
    theirs = setup.audit_records()
    assert [(r["protocol"], r["method"], r["host"], r["path"]) for r in theirs] == [
        ("http", "GET", "allowed.test", "/a")
    ]


def test_connect_and_socks_go_through_a_connect_tunnel(
    setup: Setup, front: tuple[proxy.Proxy, Path]
) -> None:
    via, _ = front
    authority = f"allowed.test:{setup.up_port}"
    with socket.create_connection(_tcp(via.http_address), timeout=IO_TIMEOUT) as sock:
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 200")
        sock.sendall(f"GET /t HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode())
        data = b"".join(iter(lambda: sock.recv(65536), b""))
    assert _status(data) == (200, b"ok /t")
    assert [r["protocol"] for r in setup.audit_records()] == ["connect"]


def test_our_policy_still_decides(setup: Setup, front: tuple[proxy.Proxy, Path]) -> None:
    via, audit = front
    # sub.wild.test is allowed by the upstream, not by us: refused here, never sent up.
    status, _ = _get(via, f"http://sub.wild.test:{setup.up_port}/x")
    assert status == 403
    assert [r["rule"] for r in merged(read_log(audit))] == ["not-allowed"]
    assert setup.upstream.seen == []


def test_our_ports_and_names_are_checked_before_the_upstream(
    setup: Setup, front: tuple[proxy.Proxy, Path]
) -> None:
    via, _ = front
    status, _ = _get(via, "http://other.test:1/x")  # port 1: not allowed by us
    assert status == 403
    with socket.create_connection(_tcp(via.http_address), timeout=IO_TIMEOUT) as sock:
        sock.sendall(b"CONNECT deny.wild.test:443 HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b"".join(iter(lambda: sock.recv(65536), b""))
    assert head.startswith(b"HTTP/1.1 403")  # deny.wild.test is not in our allow list


def test_upstream_refusal_and_unreachable_upstream(setup: Setup, tmp_path: Path) -> None:
    # Allowed by us, denied by the upstream (its deny list): 502 with the upstream's code.
    gen = _front(setup, tmp_path, "allow deny.wild.test\n")
    via, audit = next(gen)
    try:
        status, body = _get(via, f"http://deny.wild.test:{setup.up_port}/x")
        with socket.create_connection(_tcp(via.http_address), timeout=IO_TIMEOUT) as sock:
            sock.sendall(f"CONNECT deny.wild.test:{setup.up_port} HTTP/1.1\r\n\r\n".encode())
            connect_reply = b"".join(iter(lambda: sock.recv(65536), b""))
    finally:
        gen.close()
    assert status == 403 and b"deny deny.wild.test" in body  # the upstream's own answer
    assert connect_reply.startswith(b"HTTP/1.1 502")
    records = merged(read_log(audit, closed=2))
    assert [(r["decision"], r["error"]) for r in records] == [
        ("allow", None), ("allow", "upstream-proxy-refused 403")
    ]  # fmt: skip
    # An upstream nobody listens on: 502, "upstream-proxy-unreachable".
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    policy = proxy.parse_policy(f"allow allowed.test\nupstream http://127.0.0.1:{port}\n")
    with proxy.serve_proxy(policy, resolver=proxy.mapping_resolver({}),
                           audit_log=tmp_path / "dead.jsonl") as lone:  # fmt: skip
        status, body = _get(lone, "http://allowed.test/x")
    assert status == 502 and b"upstream-proxy-unreachable" in body


def test_credentials_in_the_url_go_up_and_are_never_logged(tmp_path: Path) -> None:
    """A recording listener stands in for an authenticating proxy (none is packaged
    for this host's tests): it checks what arrives, answers 200 and echoes."""
    seen: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(1)
            seen.append(head)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            conn.sendall(conn.recv(100))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    policy = proxy.parse_policy(
        f"allow allowed.test\nupstream http://ci%40corp:s3cret@127.0.0.1:{port}\n"
    )
    audit = tmp_path / "a.jsonl"
    with (
        proxy.serve_proxy(policy, resolver=proxy.mapping_resolver({}), audit_log=audit) as via,
        socket.create_connection(_tcp(via.http_address), timeout=IO_TIMEOUT) as sock,
    ):
        sock.sendall(b"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
    thread.join(5)
    server.close()
    assert seen[0].startswith(b"CONNECT allowed.test:443 HTTP/1.1\r\n")
    assert b"Proxy-Authorization: Basic Y2lAY29ycDpzM2NyZXQ=\r\n" in seen[0]  # ci@corp:s3cret
    assert b"s3cret" not in audit.read_bytes() and b"Y2lAY29y" not in audit.read_bytes()


@pytest.mark.parametrize(
    "line", ["upstream https://proxy:3128", "upstream proxy:3128", "upstream http://p:99999",
             "upstream http://p:3128/path"],
)  # fmt: skip
def test_a_bad_upstream_is_refused_with_the_line(line: str) -> None:
    with pytest.raises(ImageError, match=r"policy>:1: .* proxy URL|has no valid port") as info:
        proxy.parse_policy(line)
    assert info.value.hint and "http://HOST:PORT" in info.value.hint
