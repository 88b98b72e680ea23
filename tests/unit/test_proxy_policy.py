"""The egress proxy's pure parts: policy format, name/address decision, request parsing."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from image.egress import proxy
from image.errors import ImageError

POLICY_TEXT = """
    # comment
    allow example.com
    allow *.pythonhosted.org   # trailing comment
    allow Mirror.Example.NET.
    deny *.bad.example.com
    deny evil.example.com
    allow *.example.com
    allow-address 10.0.2.2
    allow-address 192.0.2.0/24
    allow-port 8080
"""
POLICY = proxy.parse_policy(POLICY_TEXT, "test.policy")
PUBLIC = ["93.184.216.34"]
NAT64_META, NAT64_PUBLIC = "64:ff9b::a9fe:a9fe", "64:ff9b::5db8:d822"  # 169.254.169.254, PUBLIC
D = proxy.Decision


def test_parse_policy_normalizes_and_keeps_order() -> None:
    assert proxy.parse_policy(POLICY_TEXT, "test.policy") == proxy.Policy(
        allow=("example.com", "*.pythonhosted.org", "mirror.example.net", "*.example.com"),
        deny=("*.bad.example.com", "evil.example.com"),
        ports=frozenset({80, 443, 8080}),
        addresses=(ipaddress.ip_network("10.0.2.2/32"), ipaddress.ip_network("192.0.2.0/24")),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("allow ok.org\nallow\n", "x.policy:2: cannot read 'allow'"),
        ("permit a.org\n", "x.policy:1: cannot read 'permit a.org'"),
        ("\n\nallow a.org b.org\n", "x.policy:3: cannot read"),
        ("allow http://a.org/\n", "x.policy:1: 'http://a.org/' is not a domain name"),
        ("allow *\n", "x.policy:1: '*' is not a domain name"),
        ("deny a..org\n", "x.policy:1: 'a..org' is not a domain name"),
        ("allow-address 10.0.0.300\n", "x.policy:1: '10.0.0.300' is not an address"),
        ("allow-port 70000\n", "x.policy:1: '70000' is not a TCP port"),
        ("allow-port http\n", "x.policy:1: 'http' is not a TCP port"),
    ],
)
def test_parse_policy_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ImageError, match="^" + message.replace("*", r"\*").replace(".", r"\.")):
        proxy.parse_policy(text, "x.policy")


def test_load_policy_missing_file_has_hint(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read policy file") as info:
        proxy.load_policy(tmp_path / "nope.policy")
    assert info.value.hint


def test_shipped_build_policy_parses() -> None:
    policy = proxy.load_policy(Path(__file__).parents[2] / "proxy-policies" / "build.policy")
    for name in ("pypi.org", "files.pythonhosted.org", "registry.npmjs.org", "deb.debian.org"):
        assert proxy.check_name(policy, name, 443).allowed, name
    assert not proxy.check_name(policy, "github.com", 443).allowed


def test_extended_adds_and_validates_cli_values() -> None:
    extended = proxy.Policy().extended(["A.org."], ["b.org"], ["10.0.0.0/8"], ["8443"])
    assert extended.allow == ("a.org",) and extended.deny == ("b.org",)
    assert extended.ports == {80, 443, 8443}
    assert extended.addresses == (ipaddress.ip_network("10.0.0.0/8"),)
    with pytest.raises(ImageError, match="--allow-port '0'"):
        proxy.Policy().extended(ports=["0"])
    with pytest.raises(ImageError, match="--deny 'a b'"):
        proxy.Policy().extended(deny=["a b"])


@pytest.mark.parametrize(
    ("host", "port", "resolved", "expected"),
    [
        ("example.com", 443, PUBLIC, D(True, "allow example.com", PUBLIC[0])),
        ("EXAMPLE.com.", 80, PUBLIC, D(True, "allow example.com", PUBLIC[0])),
        ("www.example.com", 443, PUBLIC, D(True, "allow *.example.com", PUBLIC[0])),
        ("a.b.pythonhosted.org", 443, PUBLIC, D(True, "allow *.pythonhosted.org", PUBLIC[0])),
        ("example.com", 8080, PUBLIC, D(True, "allow example.com", PUBLIC[0])),
        # deny is checked first, whatever the order of the lines
        ("evil.example.com", 443, PUBLIC, D(False, "deny evil.example.com")),
        ("EVIL.example.com.", 443, PUBLIC, D(False, "deny evil.example.com")),
        ("x.bad.example.com", 443, PUBLIC, D(False, "deny *.bad.example.com")),
        # *.suffix never matches the bare suffix, nor a name merely ending like it
        ("pythonhosted.org", 443, PUBLIC, D(False, "not-allowed")),
        ("notpythonhosted.org", 443, PUBLIC, D(False, "not-allowed")),
        ("example.com.evil.org", 443, PUBLIC, D(False, "not-allowed")),
        ("example.com", 22, PUBLIC, D(False, "port-not-allowed 22")),
        # IP literals only when listed
        ("93.184.216.34", 443, [], D(False, "ip-literal")),
        ("127.0.0.1", 80, [], D(False, "ip-literal")),
        ("[::1]", 80, [], D(False, "ip-literal")),
        ("127.1", 80, ["127.0.0.1"], D(False, "ip-literal")),
        ("2130706433", 80, ["127.0.0.1"], D(False, "ip-literal")),
        ("10.0.2.2", 80, [], D(True, "allow-address 10.0.2.2/32", "10.0.2.2")),
        ("192.0.2.7", 443, [], D(True, "allow-address 192.0.2.0/24", "192.0.2.7")),
        # after resolving: internal answers deny, even one among public ones
        ("example.com", 443, ["127.0.0.1"], D(False, "internal-address 127.0.0.1")),
        ("example.com", 443, ["169.254.169.254"], D(False, "internal-address 169.254.169.254")),
        ("example.com", 443, [PUBLIC[0], "10.1.2.3"], D(False, "internal-address 10.1.2.3")),
        ("example.com", 443, ["::ffff:127.0.0.1"], D(False, "internal-address ::ffff:7f00:1")),
        ("example.com", 443, ["fd00:ec2::254"], D(False, "internal-address fd00:ec2::254")),
        ("example.com", 443, ["100.64.0.1"], D(False, "internal-address 100.64.0.1")),
        ("example.com", 443, ["0.0.0.0"], D(False, "internal-address 0.0.0.0")),
        ("example.com", 443, ["224.0.0.1"], D(False, "internal-address 224.0.0.1")),
        ("example.com", 443, ["10.0.2.2"], D(True, "allow example.com", "10.0.2.2")),
        ("example.com", 443, [], D(False, "unresolved")),
        ("", 443, PUBLIC, D(False, "invalid-name")),
        ("exa mple.com", 443, PUBLIC, D(False, "invalid-name")),
        ("ex\u00e4mple.com", 443, PUBLIC, D(False, "invalid-name")),
        # a newline after a name is no name (a `$` regex would have let it through)
        ("example.com\n", 443, PUBLIC, D(False, "invalid-name")),
        ("example.com\x00.evil.org", 443, PUBLIC, D(False, "invalid-name")),
        ("example%2ecom", 443, PUBLIC, D(False, "invalid-name")),
        # every IPv4 form is the address it stands for, never a name
        ("0x0a000001", 80, PUBLIC, D(False, "ip-literal")),
        ("0x0a.0.0x2.2", 80, [], D(True, "allow-address 10.0.2.2/32", "10.0.2.2")),
        ("012.0.2.2", 80, [], D(True, "allow-address 10.0.2.2/32", "10.0.2.2")),
        ("10.514", 80, [], D(True, "allow-address 10.0.2.2/32", "10.0.2.2")),
        ("167772674", 80, [], D(True, "allow-address 10.0.2.2/32", "10.0.2.2")),
        ("[::ffff:10.0.2.2]", 80, [], D(True, "allow-address 10.0.2.2/32", "10.0.2.2")),
        ("::ffff:a00:202", 80, [], D(True, "allow-address 10.0.2.2/32", "10.0.2.2")),
        ("[::ffff:a00:1]", 80, [], D(False, "ip-literal")),
        ("fe80::1%25eth0", 80, [], D(False, "ip-literal")),
        ("[fe80::1%eth0]", 80, [], D(False, "ip-literal")),
        ("1.2.3.4.5", 80, PUBLIC, D(False, "invalid-address")),
        ("256.0.0.1", 80, PUBLIC, D(False, "invalid-address")),
        ("08.0.0.1", 80, PUBLIC, D(False, "invalid-address")),
        ("4294967296", 80, PUBLIC, D(False, "invalid-address")),
        ("example.123", 80, PUBLIC, D(False, "invalid-address")),
        ("[127.0.0.1]", 80, PUBLIC, D(False, "invalid-address")),
        ("[::1", 80, PUBLIC, D(False, "invalid-address")),
        ("::1]", 80, PUBLIC, D(False, "invalid-address")),
        ("a:b", 80, PUBLIC, D(False, "invalid-address")),
        # answers: mapped/NAT64/6to4/IPv4-compatible carry an IPv4 address
        ("example.com", 443, [NAT64_META], D(False, f"internal-address {NAT64_META}")),
        ("example.com", 443, ["2002:a00:1::1"], D(False, "internal-address 2002:a00:1::1")),
        ("example.com", 443, ["::a00:1"], D(False, "internal-address ::a00:1")),
        ("example.com", 443, [NAT64_PUBLIC], D(True, "allow example.com", NAT64_PUBLIC)),
        ("example.com", 443, ["::ffff:10.0.2.2"], D(True, "allow example.com", "::ffff:10.0.2.2")),
    ],
)  # fmt: skip
def test_decide(host: str, port: int, resolved: list[str], expected: proxy.Decision) -> None:
    assert proxy.decide(POLICY, host, port, resolved) == expected


def test_denied_names_need_no_resolution() -> None:
    assert proxy.check_name(POLICY, "evil.example.com", 443) == proxy.Decision(
        False, "deny evil.example.com"
    )
    assert proxy.check_name(POLICY, "example.com", 443) == proxy.Decision(True, "allow example.com")


def test_parse_absolute_form_replaces_host_header_and_drops_hop_by_hop() -> None:
    head = (
        b"GET http://Example.com:8080/a/b?q=1 HTTP/1.1\r\nHost: evil.example.com\r\n"
        b"Proxy-Connection: keep-alive\r\nProxy-Authorization: x\r\nAccept: */*\r\n"
        b"Content-Length: 3\r\n\r\n"
    )
    request = proxy.parse_http_request(head)
    assert (request.method, request.host, request.port, request.body_length) == (
        "GET",
        "Example.com",
        8080,
        3,
    )
    assert request.head == (
        b"GET /a/b?q=1 HTTP/1.1\r\nHost: Example.com:8080\r\nAccept: */*\r\n"
        b"Content-Length: 3\r\nConnection: close\r\n\r\n"
    )


def test_parse_connect_and_defaults() -> None:
    assert proxy.parse_http_request(b"CONNECT a.org:443 HTTP/1.1\r\n\r\n").port == 443
    ipv6 = proxy.parse_http_request(b"CONNECT [::1]:443 HTTP/1.1\r\n\r\n")
    assert (ipv6.host, ipv6.port) == ("::1", 443)
    plain = proxy.parse_http_request(b"GET http://a.org HTTP/1.0\r\n\r\n")
    assert (plain.host, plain.port) == ("a.org", 80)
    assert plain.head.startswith(b"GET / HTTP/1.0\r\nHost: a.org\r\n")


@pytest.mark.parametrize(
    "head",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.org\r\n\r\n",  # origin-form: not a proxy request
        b"GET https://a.org/ HTTP/1.1\r\n\r\n",
        b"GET http://user@a.org/ HTTP/1.1\r\n\r\n",
        b"CONNECT a.org HTTP/1.1\r\n\r\n",
        b"CONNECT a.org:99999 HTTP/1.1\r\n\r\n",
        b"GET http://a.org/ HTTP/1.1\r\nno colon\r\n\r\n",
        b"GET http://a.org/ HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
        b"GET http://a.org/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST http://a.org/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET http://\xc3\xa4.org/ HTTP/1.1\r\n\r\n",
        b"GET http://a.org/ SPDY/3\r\n\r\n",
    ],
)
def test_parse_rejects_malformed(head: bytes) -> None:
    with pytest.raises(proxy._Refused):
        proxy.parse_http_request(head)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("example.com", None),
        ("0x1.example.com", None),
        ("1e3", None),
        ("127.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0X7F.0.0.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0177.0.0.01", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.1.", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0x0a000001", "10.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("2852039166", "169.254.169.254"),
        ("0", "0.0.0.0"),
        ("0x", "0.0.0.0"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("[::ffff:a00:1]", "10.0.0.1"),
        ("[::1]", "::1"),
        ("fe80::1%25eth0", "fe80::1%25eth0"),
    ],
)
def test_ip_literal_forms(host: str, address: str | None) -> None:
    literal = proxy.ip_literal(host)
    assert (None if literal is None else str(literal)) == address


@pytest.mark.parametrize(
    "host", ["1.2.3.4.5", "256.1", "1.256.1", "1.2.16777216", "08", "0x1g.1", "[1.2.3.4]", "a::b:"]
)
def test_ip_literal_rejects_broken_forms(host: str) -> None:
    with pytest.raises(ValueError):
        proxy.ip_literal(host)


def test_parse_query_after_authority_and_keep_alive() -> None:
    trick = proxy.parse_http_request(b"GET http://a.org?@b.org/ HTTP/1.1\r\n\r\n")
    assert (trick.host, trick.port, trick.path, trick.keep_alive) == ("a.org", 80, "/", True)
    assert trick.head.startswith(b"GET /?@b.org/ HTTP/1.1\r\nHost: a.org\r\n")
    plain = proxy.parse_http_request(b"GET http://a.org:81/p/q?x=1 HTTP/1.0\r\n\r\n")
    assert (plain.port, plain.path, plain.keep_alive) == (81, "/p/q", False)
    assert plain.head.startswith(b"GET /p/q?x=1 HTTP/1.0\r\n")
    closing = proxy.parse_http_request(
        b"GET http://a.org/ HTTP/1.1\r\nConnection: close, X-Drop\r\nX-Drop: 1\r\nA: b\r\n\r\n"
    )
    assert not closing.keep_alive
    assert closing.head == b"GET / HTTP/1.1\r\nHost: a.org\r\nA: b\r\nConnection: close\r\n\r\n"
    kept = proxy.parse_http_request(
        b"GET http://a.org/ HTTP/1.0\r\nProxy-Connection: Keep-Alive\r\n\r\n"
    )
    assert kept.keep_alive


@pytest.mark.parametrize(
    "head",
    [
        b"GET http://a.org/ HTTP/1.1\r\nX: 1\nHost: b.org\r\n\r\n",  # bare LF: a hidden header
        b"GET http://a.org/ HTTP/1.1\r\nX: 1\rHost: b.org\r\n\r\n",
        b"GET http://a.org/ HTTP/1.1\r\nX: 1\x00\r\n\r\n",
        b"GET http://a.org/x\nHost:b HTTP/1.1\r\n\r\n",
        b"GET http://a.org\x00.b.org/ HTTP/1.1\r\n\r\n",
        b"CONNECT a.org\n:443 HTTP/1.1\r\n\r\n",
        b"GET http://a.org#@b.org/ HTTP/1.1\r\n\r\n",
        b"GET http://a.org/#x HTTP/1.1\r\n\r\n",
        b"GET http://b.org@a.org/ HTTP/1.1\r\n\r\n",
        b"CONNECT a.org:443@b.org:443 HTTP/1.1\r\n\r\n",
        b"CONNECT a.org:443@b.org HTTP/1.1\r\n\r\n",
        b"CONNECT ::1:443 HTTP/1.1\r\n\r\n",  # IPv6 needs brackets
        b"CONNECT [127.0.0.1]:443 HTTP/1.1\r\n\r\n",
        b"CONNECT [::1]x:443 HTTP/1.1\r\n\r\n",
        b"GET http://a.org:80:80/ HTTP/1.1\r\n\r\n",
        b"GET http://a.org:0x50/ HTTP/1.1\r\n\r\n",
    ],
)
def test_parse_rejects_smuggling_and_authority_tricks(head: bytes) -> None:
    with pytest.raises(proxy._Refused):
        proxy.parse_http_request(head)


@pytest.mark.parametrize(
    ("head", "summary"),
    [
        (b"GET http://a.org:81/p?secret HTTP/1.1\r\nno colon\r\n\r\n", ("GET", "a.org", 81, "/p")),
        (b"GET http://a.org/p HTTP/1.1\r\nHost: a", ("GET", "a.org", 80, "/p")),
        (b"CONNECT a.org:99999 HTTP/1.1\r\n\r\n", ("CONNECT", "a.org", None, None)),
        (b"CONNECT [::1 HTTP/1.1\r\n\r\n", ("CONNECT", "[::1", None, None)),
        (b"GET http://b.org@a.org/ HTTP/1.1\r\n\r\n", ("GET", "b.org@a.org", 80, "/")),
        (b"\x16\x03\x01\x02\x00", (None, None, None, None)),
        (b"", (None, None, None, None)),
    ],
)
def test_request_summary_keeps_what_was_parsed(
    head: bytes, summary: tuple[str | None, str | None, int | None, str | None]
) -> None:
    assert proxy.request_summary(head) == summary


@pytest.mark.parametrize(
    ("head", "method", "keep_alive", "body_length", "connection"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n", "GET", True, 5,
         b"keep-alive"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", "GET", False, None, b"close"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", True, None, b"close"),
        (b"HTTP/1.1 200 OK\r\n\r\n", "GET", True, None, b"close"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", "HEAD", True, 0, b"keep-alive"),
        (b"HTTP/1.1 304 Not Modified\r\n\r\n", "GET", True, 0, b"keep-alive"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "GET", True, None,
         b"close"),
    ],
)  # fmt: skip
def test_parse_http_response_frames_or_closes(
    head: bytes, method: str, keep_alive: bool, body_length: int | None, connection: bytes
) -> None:
    response = proxy.parse_http_response(head, method, keep_alive)
    assert response is not None and response.body_length == body_length
    lines = response.head.split(b"\r\n")
    assert [line for line in lines if line.lower().startswith(b"connection")] == [
        b"Connection: " + connection
    ]


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"SSH-2.0-x\r\n\r\n",
        b"",
        b"HTTP/1.1 200 OK\r\nbad\r\n\r\n",
    ],
)
def test_parse_http_response_unframed(head: bytes) -> None:
    assert proxy.parse_http_response(head, "GET", True) is None


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 200),
        (b"HTTP/1.0 304 Not Modified\r\n\r\n", 304),
        (b"HTTP/1.1 404\r\n\r\n", 404),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", 100),
        (b"HTTP/2 200\r\n\r\n", None),
        (b"<html>not a response</html>", None),
        (b"", None),
    ],
)
def test_response_status_reads_the_status_line_only(head: bytes, status: int | None) -> None:
    assert proxy.response_status(head) == status
