"""The host egress proxy: HTTP (CONNECT + absolute-form) and SOCKS5, one policy, one audit log.

Everything the guest sends to the network leaves through here. The decision is
a pure function of the policy, the requested name and port, and the addresses
the name resolved to (`decide`). The servers resolve a name once, check every
address, and connect to a checked address — never to the name — so a DNS
answer that changes between check and connect (rebinding) cannot slip through.

Why a small asyncio proxy rather than pproxy, proxy.py or mitmproxy: none of
them checks the *resolved* address before connecting, answers SOCKS5 denials
with "not allowed by ruleset", and logs the fields we need without a plugin that
would re-implement most of this module; see docs/proxy.md for the comparison.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import itertools
import json
import re
import secrets
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from image.errors import ImageError

DEFAULT_PORTS = frozenset({80, 443})
BLOCKED_HEADER = "X-Proxy-Error: blocked-by-allowlist"
MAX_HEADER_BYTES = 16 << 10
HEADER_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
COPY_CHUNK = 256 << 10

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")  # used with fullmatch


# ---------------------------------------------------------------- policy


@dataclass(frozen=True)
class Upstream:
    """An HTTP proxy this proxy forwards through (what a company's network requires)."""

    host: str
    port: int
    authorization: str | None = None  # "Basic ..." from user:password in the URL

    @property
    def label(self) -> str:  # for logs and records: never the credentials
        return f"http://{self.host}:{self.port}"


def parse_upstream(url: str, where: str) -> Upstream:
    parts = urllib.parse.urlsplit(url.strip())
    hint = "write http://HOST:PORT (or http://USER:PASSWORD@HOST:PORT)"
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise ImageError(f"{where}: {url!r} is not an http://HOST:PORT proxy URL", hint=hint)
    try:
        port = parts.port or 3128
    except ValueError:
        raise ImageError(f"{where}: {url!r} has no valid port", hint=hint) from None
    auth = None
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return Upstream(parts.hostname, port, auth)


@dataclass(frozen=True)
class Policy:
    """Allowed/denied names (exact or `*.suffix`), extra ports, allowed networks, and
    an optional upstream proxy that connections to names go through."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    ports: frozenset[int] = DEFAULT_PORTS
    addresses: tuple[IPNetwork, ...] = ()
    upstream: Upstream | None = None

    def extended(
        self,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        addresses: Iterable[str] = (),
        ports: Iterable[int | str] = (),
        upstream: str | None = None,
    ) -> Policy:
        """This policy plus command-line additions (validated like file entries)."""
        return replace(
            self,
            allow=self.allow + tuple(_pattern(v, f"--allow {v!r}") for v in allow),
            deny=self.deny + tuple(_pattern(v, f"--deny {v!r}") for v in deny),
            addresses=self.addresses
            + tuple(_network(v, f"--allow-address {v!r}") for v in addresses),
            ports=self.ports | {_port(str(v), f"--allow-port {v!r}") for v in ports},
            upstream=(parse_upstream(upstream, "--upstream-proxy") if upstream else self.upstream),
        )


def normalize_name(name: str) -> str:
    """Lower case, one trailing dot dropped: `Example.COM.` and `example.com` are one name."""
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def _pattern(value: str, where: str) -> str:
    value = normalize_name(value.strip())
    bare = value[2:] if value.startswith("*.") else value
    if not bare or len(bare) > 253 or not _NAME.fullmatch(bare):
        raise ImageError(
            f"{where}: {value!r} is not a domain name or *.suffix pattern",
            hint="write names like deb.debian.org or *.pythonhosted.org "
            "(addresses go in allow-address)",
        )
    return value


def _network(value: str, where: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ImageError(
            f"{where}: {value!r} is not an address or CIDR network",
            hint="write e.g. 10.0.2.2 or 192.168.0.0/16 or fd00::/8",
        ) from None


def _port(value: str, where: str) -> int:
    if not value.strip().isdigit() or not 0 < int(value) < 65536:
        raise ImageError(f"{where}: {value!r} is not a TCP port", hint="a number 1..65535")
    return int(value)


DIRECTIVES = ("allow", "deny", "allow-address", "allow-port", "upstream")


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse the policy format: one `DIRECTIVE VALUE` per line, `#` comments.

    Directives: allow NAME, deny NAME, allow-address CIDR, allow-port N, upstream URL
    (at most once). Errors name the source and the line.
    """
    allow: list[str] = []
    deny: list[str] = []
    addresses: list[IPNetwork] = []
    ports: set[int] = set(DEFAULT_PORTS)
    upstream: Upstream | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{number}"
        parts = line.split()
        if len(parts) != 2 or parts[0] not in DIRECTIVES:
            raise ImageError(
                f"{where}: cannot read {raw.strip()!r}",
                hint=f"each line is one of {', '.join(DIRECTIVES)} followed by one value",
            )
        directive, value = parts
        if directive == "allow":
            allow.append(_pattern(value, where))
        elif directive == "deny":
            deny.append(_pattern(value, where))
        elif directive == "allow-address":
            addresses.append(_network(value, where))
        elif directive == "upstream":
            if upstream is not None:
                raise ImageError(f"{where}: a second upstream", hint="a policy has one upstream")
            upstream = parse_upstream(value, where)
        else:
            ports.add(_port(value, where))
    return Policy(tuple(allow), tuple(deny), frozenset(ports), tuple(addresses), upstream)


def load_policy(path: Path) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ImageError(
            f"cannot read policy file {path}: {exc.strerror}",
            hint="pass an existing file to --policy (see proxy-policies/)",
        ) from None
    return parse_policy(text, str(path))


# -------------------------------------------------------------- decision


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str
    address: str | None = None  # the checked address to connect to (allowed only)


def _matches(name: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])  # "*.x.org" needs a label before ".x.org"
    return name == pattern


def _ip(value: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _unmapped(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (::ffff:10.0.0.1) is the IPv4 address it carries."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


_NUMBER = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


def _ipv4_number(part: str) -> int:
    if part.startswith("0x"):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part[1:], 8)  # ValueError for 08, 09
    return int(part)


def ip_literal(host: str) -> IPAddress | None:
    """The address an IP-literal host stands for; None for a (would-be) domain name.

    Covers what resolvers and URL parsers accept besides dotted quads: `[v6]`,
    IPv4-mapped IPv6 (the IPv4 address), and the inet_aton forms — hex, octal,
    fewer than four parts, one integer (`0x7f.1`, `0177.0.0.1`, `127.1`,
    `2130706433`). A host whose last label is a number but that is no valid
    address (`1.2.3.4.5`, `256.1`, `08.1`) raises ValueError: it is neither a
    name nor an address.
    """
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            raise ValueError(host)
        return _unmapped(ipaddress.IPv6Address(host[1:-1]))
    literal = _ip(host)
    if literal is not None:
        return _unmapped(literal)
    if ":" in host:
        raise ValueError(host)  # no name has a colon; no address form it would be
    labels = normalize_name(host).split(".")
    if not _NUMBER.match(labels[-1]):
        return None
    if len(labels) > 4 or not all(_NUMBER.match(label) for label in labels):
        raise ValueError(host)
    numbers = [_ipv4_number(label) for label in labels]
    last_max = 256 ** (5 - len(numbers)) - 1
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] > last_max:
        raise ValueError(host)
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _listed(policy: Policy, address: IPAddress) -> IPNetwork | None:
    address = _unmapped(address)
    return next((net for net in policy.addresses if address in net), None)


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that mapped, NAT64 (64:ff9b::/96) and 6to4 addresses reach."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _internal(address: IPAddress) -> bool:
    """Loopback, private, link-local (cloud metadata), CGNAT, multicast, unspecified...

    For IPv6 also: the deprecated IPv4-compatible range (::/96), and mapped,
    NAT64 and 6to4 addresses whose IPv4 address is internal.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address in _IPV4_COMPATIBLE:
            return True
        embedded = _embedded_ipv4(address)
        if embedded is not None and _internal(embedded):
            return True
    return not address.is_global or address.is_multicast


def check_name(policy: Policy, host: str, port: int) -> Decision:
    """The part of the decision that needs no DNS: port, IP literal, name lists.

    Allowed here means "may be resolved"; names denied here are never looked up.
    """
    if port not in policy.ports:
        return Decision(False, f"port-not-allowed {port}")
    try:
        literal = ip_literal(host)
    except ValueError:
        return Decision(False, "invalid-address")
    if literal is not None:
        net = _listed(policy, literal)
        if net is None:
            return Decision(False, "ip-literal")
        return Decision(True, f"allow-address {net}", str(literal))
    name = normalize_name(host)
    if not name or len(name) > 253 or not _NAME.fullmatch(name):
        return Decision(False, "invalid-name")
    for pattern in policy.deny:
        if _matches(name, pattern):
            return Decision(False, f"deny {pattern}")
    for pattern in policy.allow:
        if _matches(name, pattern):
            return Decision(True, f"allow {pattern}")
    return Decision(False, "not-allowed")


def decide(policy: Policy, host: str, port: int, resolved_addresses: Sequence[str]) -> Decision:
    """Whether a connection to host:port may go out, given what `host` resolved to.

    Deny wins: one internal address among the answers denies the whole name
    (a rebinding answer may mix a public and a private address).
    """
    named = check_name(policy, host, port)
    if not named.allowed or named.address is not None:
        return named
    if not resolved_addresses:
        return Decision(False, "unresolved")
    for value in resolved_addresses:
        address = _ip(value)
        if address is None:
            return Decision(False, f"bad-address {value}")
        if _internal(address) and _listed(policy, address) is None:
            return Decision(False, f"internal-address {address}")
    return Decision(True, named.rule, resolved_addresses[0])


# ------------------------------------------------------------- resolving


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for info in infos:
        seen[str(info[4][0])] = None
    return list(seen)


def mapping_resolver(table: Mapping[str, Sequence[str]]) -> Resolver:
    """A resolver answering from a table (names normalized); unknown names do not resolve."""

    async def resolve(host: str, port: int) -> list[str]:
        return list(table.get(normalize_name(host), ()))

    return resolve


# ----------------------------------------------------------------- audit


def _utc(moment: float) -> str:
    return (
        datetime.datetime.fromtimestamp(moment, datetime.timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


LOGGED_PATH_CHARS = 2048


@dataclass
class Connection:
    """One decision (a connection, or one plain-HTTP request on it) and its two records.

    The open record is written when the decision is made, the close record when
    the connection (or the request's response) ends; both carry `id`.
    """

    id: str
    connection: str
    client: str
    protocol: str
    opened: float | None = None  # when the open record was written
    host: str | None = None
    port: int | None = None
    address: str | None = None
    resolved: list[str] = field(default_factory=list)
    decision: str = "error"
    rule: str = ""
    method: str | None = None
    path: str | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    status: int | None = None  # the HTTP status the client got (not for SOCKS)
    error: str | None = None
    upstream: str | None = None  # the upstream proxy it went through (no credentials)

    def open_record(self) -> dict[str, object]:
        assert self.opened is not None
        return {
            "event": "open",
            "id": self.id,
            "connection": self.connection,
            "time": _utc(self.opened),
            "client": self.client,
            "protocol": self.protocol,
            "host": self.host,
            "port": self.port,
            "address": self.address,
            "resolved": self.resolved,
            "decision": self.decision,
            "rule": self.rule,
            "method": self.method,
            "path": self.path[:LOGGED_PATH_CHARS] if self.path is not None else None,
            **({"upstream": self.upstream} if self.upstream else {}),
        }

    def close_record(self, now: float) -> dict[str, object]:
        assert self.opened is not None
        return {
            "event": "close",
            "id": self.id,
            "connection": self.connection,
            "time": _utc(now),
            "client": self.client,
            "protocol": self.protocol,
            "host": self.host,
            "port": self.port,
            "decision": self.decision,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "status": self.status,
            "duration_s": round(now - self.opened, 6),
            "error": self.error,
        }


class AuditLog:
    """JSON lines, each written with one call and flushed at once.

    Connection ids are `<run>-<n>`: `run` is random per proxy run (one log may
    hold several runs), `n` counts client connections; a decision's id is the
    connection id and `.k` for the k-th request on that connection.
    """

    def __init__(self, stream: IO[str] | None) -> None:
        self._stream = stream
        self._run = secrets.token_hex(4)
        self._connections = itertools.count(1)

    def connection_id(self) -> str:
        return f"{self._run}-{next(self._connections)}"

    def _write(self, record: dict[str, object]) -> None:
        if self._stream is not None:
            self._stream.write(json.dumps(record) + "\n")
            self._stream.flush()

    def open(self, conn: Connection) -> None:
        if conn.opened is None:
            conn.opened = time.time()
            self._write(conn.open_record())

    def close(self, conn: Connection) -> None:
        self.open(conn)  # a request that ended before any decision: open, then close
        self._write(conn.close_record(time.time()))


# --------------------------------------------------------------- servers


class _Refused(Exception):
    """End a request with an error answer (HTTP status or SOCKS reply code)."""

    def __init__(
        self, rule: str, status: int = 400, socks: int = 0x01, reply: bytes | None = None
    ) -> None:
        super().__init__(rule)
        self.rule = rule
        self.status = status
        self.socks = socks  # SOCKS5 reply code; -1: no reply
        self.reply = reply  # the exact answer, where it is neither HTTP nor SOCKS5


class _Idle(Exception):
    """A kept-alive connection ended (or idled out) between requests: nothing to log."""


_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    411: "Length Required",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
}
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
    "host",
}
_RESPONSE_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection"}
# Control characters: never in a request line; only HTAB in a header line. A
# bare CR or LF would let a client hide a second header (e.g. Host) or request
# from us that the upstream then reads.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEADER_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _http_error(status: int, rule: str) -> bytes:
    body = f"{status} {_REASONS[status]}: {rule}\n".encode()
    extra = f"{BLOCKED_HEADER}\r\n" if status == 403 else ""
    return (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n{extra}Content-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


@dataclass(frozen=True)
class HttpRequest:
    method: str
    host: str
    port: int
    head: bytes  # what goes upstream (plain HTTP only): origin-form, our Host header
    body_length: int
    path: str | None = None  # for the audit log: the path without the query (plain HTTP)
    keep_alive: bool = False  # the client may send another request on this connection


def _split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    if authority.startswith("["):
        host, sep, rest = authority[1:].partition("]")
        bracketed = _ip(host)
        if (
            not sep
            or (rest and not rest.startswith(":"))
            or bracketed is None
            or bracketed.version != 6
        ):
            raise _Refused("malformed-authority")  # brackets hold an IPv6 address only
        port_text = rest[1:]
    else:
        host, _, port_text = authority.partition(":")
        if ":" in port_text:
            raise _Refused("malformed-authority")  # an IPv6 address must be in brackets
    if not port_text:
        if default_port is None:
            raise _Refused("malformed-authority")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _Refused("malformed-authority")
    return host, int(port_text)


def _split_target(target: str) -> tuple[str, str, str]:
    """An absolute `http://` URI as (authority, path, query); the authority ends at
    the first `/` or `?` (so `http://a?@b/` is host a, query `@b/`)."""
    rest = target[len("http://") :]
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, rest = rest[:end], rest[end:]
    path, _, query = rest.partition("?")
    return authority, path or "/", query


def request_summary(head: bytes) -> tuple[str | None, str | None, int | None, str | None]:
    """Best effort, for the audit log only: (method, host, port, path) of a request
    head that may be partial or malformed. Never used to decide anything."""
    line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1")
    parts = line.split(" ")
    method = parts[0][:32] if parts[0].isalpha() else None
    if len(parts) < 2:
        return method, None, None, None
    target, path = parts[1], None
    if method == "CONNECT":
        authority = target
    elif target[:7].lower() == "http://":
        authority, path, _ = _split_target(target)
    else:
        return method, None, None, target or None
    try:
        host, port = _split_authority(authority, None if method == "CONNECT" else 80)
        return method, host, port, path
    except _Refused:  # a bad port or bracket: keep the part that names the host
        if authority.startswith("["):
            bracketed, end, _ = authority.partition("]")
            host = bracketed + end
        else:
            host = authority.partition(":")[0]
        return method, host[:255], None, path


def _tokens(headers: list[tuple[str, str]], *names: str) -> set[str]:
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() in names
        for token in value.split(",")
    }


def parse_http_request(head: bytes) -> HttpRequest:
    """Parse a proxy request head (ending in CRLFCRLF) into where it goes and what to send.

    The absolute URI decides where a plain request goes; the client's Host header
    is replaced by the URI's authority so it cannot steer the upstream elsewhere.
    """
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise _Refused("malformed-request") from None
    lines = text[:-4].split("\r\n") if text.endswith("\r\n\r\n") else text.split("\r\n")
    parts = lines[0].split(" ")
    if (
        len(parts) != 3
        or not parts[2].startswith("HTTP/1.")
        or not parts[0].isalpha()
        or _CONTROL.search(lines[0])
    ):
        raise _Refused("malformed-request")
    method, target, version = parts
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise _Refused("malformed-header")
        if _HEADER_CONTROL.search(line):
            raise _Refused("malformed-header")
        headers.append((name, value.strip()))
    if method == "CONNECT":
        host, port = _split_authority(target, None)
        return HttpRequest(method, host, port, b"", 0)
    if not target.lower().startswith("http://"):
        raise _Refused("not-absolute-http-uri")
    if "#" in target:
        raise _Refused("malformed-request")  # a fragment is never part of a request
    authority, path, query = _split_target(target)
    if "@" in authority or not authority:
        raise _Refused("malformed-authority")
    host, port = _split_authority(authority, 80)
    lower = {name.lower() for name, _ in headers}
    if "transfer-encoding" in lower:
        raise _Refused("chunked-request-body", status=411)
    lengths = {value for name, value in headers if name.lower() == "content-length"}
    if len(lengths) > 1 or any(not v.isdigit() for v in lengths):
        raise _Refused("malformed-content-length")
    body_length = int(next(iter(lengths))) if lengths else 0
    connection = _tokens(headers, "connection", "proxy-connection")
    keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    dropped = _HOP_BY_HOP | (connection - {"close", "keep-alive"})
    kept = [(n, v) for n, v in headers if n.lower() not in dropped]
    origin = path + (f"?{query}" if query or target.endswith("?") else "")
    out = [f"{method} {origin} {version}", f"Host: {authority}"]
    out += [f"{n}: {v}" for n, v in kept]
    out.append("Connection: close")
    return HttpRequest(
        method,
        host,
        port,
        ("\r\n".join(out) + "\r\n\r\n").encode(),
        body_length,
        path,
        keep_alive,
    )


@dataclass(frozen=True)
class HttpResponse:
    head: bytes  # what goes to the client: our Connection header
    body_length: int | None  # None: until the upstream closes (then the client is closed)


_STATUS = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: [^\r\n]*)?")


def response_status(head: bytes) -> int | None:
    """The status code of a response head, if its first line is an HTTP/1 status line."""
    match = _STATUS.fullmatch(head.split(b"\r\n", 1)[0])
    return int(match.group(1)) if match else None


def parse_http_response(head: bytes, method: str, keep_alive: bool) -> HttpResponse | None:
    """The upstream's response head rewritten for the client, and how long its body is.

    Only a response whose end is known (Content-Length, or no body) lets the
    client connection carry another request; None: not a response head we can
    frame (forward it as it is and close after it).
    """
    lines = head[:-4].split(b"\r\n")
    status = response_status(head)
    if status is None:
        return None
    if status < 200:
        return None  # interim answers (100 Continue) precede the real one
    headers: list[tuple[bytes, bytes, bytes]] = []  # (lower-case name, value, line)
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            return None
        headers.append((name.lower(), value.strip(), line))
    connection = {
        token.strip().lower()
        for name, value, _ in headers
        if name in (b"connection", b"proxy-connection")
        for token in value.split(b",")
    }
    lengths = {value for name, value, _ in headers if name == b"content-length"}
    body_length: int | None
    if method == "HEAD" or status in (204, 304):
        body_length = 0
    elif any(name == b"transfer-encoding" for name, _, _ in headers):
        body_length = None
    elif len(lengths) == 1 and next(iter(lengths)).isdigit():
        body_length = int(next(iter(lengths)))
    else:
        body_length = None
    dropped = {n.encode() for n in _RESPONSE_HOP_BY_HOP} | (connection - {b"close"})
    kept = [line for name, _, line in headers if name not in dropped]
    again = keep_alive and body_length is not None
    out = [lines[0], *kept, b"Connection: keep-alive" if again else b"Connection: close"]
    return HttpResponse(b"\r\n".join(out) + b"\r\n\r\n", body_length if again else None)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int = -1) -> int:
    """Copy until EOF (or `limit` bytes), then half-close; return the bytes moved."""
    moved = 0
    try:
        while limit < 0 or moved < limit:
            want = COPY_CHUNK if limit < 0 else min(COPY_CHUNK, limit - moved)
            data = await reader.read(want)
            if not data:
                break
            writer.write(data)
            moved += len(data)
            await writer.drain()
        if limit < 0 and writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass
    return moved


class _Relay(asyncio.Protocol):
    """Forward what one transport receives to the other, with flow control both ways.

    Bulk data is moved by the transports' callbacks rather than by read/drain
    coroutines: per chunk that is one call instead of a task switch and a buffer
    copy, which is what makes a tunnel run near loopback speed.
    """

    def __init__(self, target: asyncio.Transport, forward: bool, closing_ends_both: bool) -> None:
        self.target = target
        self.forward = forward
        self.closing_ends_both = closing_ends_both
        self.count = 0
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self.forward:
            self.count += len(data)
            self.target.write(data)

    def eof_received(self) -> bool:
        if not self.forward:
            return True  # plain HTTP: the request is complete; wait for the answer
        if self.closing_ends_both:
            self.target.close()  # flushes what is buffered, then closes
            return False
        if self.target.can_write_eof() and not self.target.is_closing():
            self.target.write_eof()
        return True  # half-close: the other direction keeps going

    # Called by *our* transport when its write buffer (filled by the partner) is full.
    def pause_writing(self) -> None:
        self.target.pause_reading()

    def resume_writing(self) -> None:
        if not self.target.is_closing():
            self.target.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.target.close()
        if not self.lost.done():
            self.lost.set_result(None)


async def _relay(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    forward_up: bool,
) -> tuple[int, int]:
    """Hand both connections over to _Relay protocols; return bytes (up, down) once closed."""
    client_t = client[1].transport
    upstream_t = upstream[1].transport
    assert isinstance(client_t, asyncio.Transport) and isinstance(upstream_t, asyncio.Transport)
    up = _Relay(upstream_t, forward_up, closing_ends_both=False)
    down = _Relay(client_t, True, closing_ends_both=True)
    pending: list[tuple[_Relay, asyncio.StreamReader, asyncio.Transport]] = [
        (up, client[0], client_t),
        (down, upstream[0], upstream_t),
    ]
    for relay, reader, transport in pending:
        # Bytes the stream reader already buffered (e.g. a TLS hello sent right
        # behind CONNECT) are forwarded first; StreamReader has no public
        # accessor for them.
        state = vars(reader)
        buffer: bytearray = state["_buffer"]
        buffered = bytes(buffer)
        buffer.clear()
        transport.set_protocol(relay)
        if buffered:
            relay.data_received(buffered)
        if state["_eof"]:
            relay.eof_received()
        if not transport.is_closing():
            transport.resume_reading()
    try:
        await asyncio.gather(up.lost, down.lost)
    finally:
        for transport in (client_t, upstream_t):
            if not transport.is_closing():
                transport.abort()
    return up.count, down.count


@dataclass
class _Settings:
    policy: Policy
    resolver: Resolver
    audit: AuditLog
    header_timeout: float
    connect_timeout: float
    client_label: str = "?"  # for clients without an address (Unix sockets)


def _buffered(reader: asyncio.StreamReader) -> bytes:
    """What the reader holds but nobody has read (StreamReader has no accessor)."""
    return bytes(vars(reader)["_buffer"])


class _ProxyServer:
    protocol = "?"

    def __init__(self, settings: _Settings) -> None:
        self.s = settings

    async def _open(
        self, conn: Connection, host: str, port: int, *, plain_http: bool = False
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Decide, write the open record, then connect to the checked address (never the name).

        With an upstream proxy, an allowed *name* is not resolved here (a company
        network may not resolve outside names): the upstream connects to it, through
        a CONNECT tunnel, or, for ``plain_http``, by being sent the request itself.
        Allowed address literals still connect directly."""
        conn.host, conn.port = host, port
        with contextlib.suppress(ValueError):
            literal = ip_literal(host)
            conn.resolved = [str(literal)] if literal is not None else []
        verdict = check_name(self.s.policy, host, port)
        upstream = self.s.policy.upstream
        if verdict.allowed and verdict.address is None and upstream is not None:
            conn.rule, conn.decision, conn.upstream = verdict.rule, "allow", upstream.label
            self.s.audit.open(conn)
            return await self._via_upstream(conn, upstream, host, port, plain_http)
        if verdict.allowed and verdict.address is None:
            try:
                resolved = await asyncio.wait_for(
                    self.s.resolver(normalize_name(host), port), self.s.connect_timeout
                )
            except (OSError, asyncio.TimeoutError):
                resolved = []
            conn.resolved = list(resolved)
            verdict = decide(self.s.policy, host, port, resolved)
        conn.rule = verdict.rule
        if not verdict.allowed or verdict.address is None:
            conn.decision = "deny"
            self.s.audit.open(conn)
            raise _Refused(verdict.rule, status=403, socks=0x02)
        conn.decision, conn.address = "allow", verdict.address
        self.s.audit.open(conn)
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(verdict.address, port, limit=COPY_CHUNK),
                self.s.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            conn.error = f"upstream-unreachable {type(exc).__name__}"
            raise _Refused(f"{verdict.rule}; {conn.error}", status=502, socks=0x05) from None

    async def _via_upstream(
        self, conn: Connection, upstream: Upstream, host: str, port: int, plain_http: bool
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(upstream.host, upstream.port, limit=COPY_CHUNK),
                self.s.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            conn.error = f"upstream-proxy-unreachable {type(exc).__name__}"
            raise _Refused(f"{conn.rule}; {conn.error}", status=502, socks=0x05) from None
        if plain_http:
            return reader, writer
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        auth = (
            f"Proxy-Authorization: {upstream.authorization}\r\n" if upstream.authorization else ""
        )
        writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{auth}\r\n".encode())
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.s.connect_timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError) as exc:  # fmt: skip
            writer.close()
            conn.error = f"upstream-proxy-error {type(exc).__name__}"
            raise _Refused(f"{conn.rule}; {conn.error}", status=502, socks=0x05) from None
        status = _STATUS.match(head)
        if status is None or status.group(1) != b"200":
            writer.close()
            code = status.group(1).decode() if status else "not-http"
            conn.error = f"upstream-proxy-refused {code}"
            raise _Refused(f"{conn.rule}; {conn.error}", status=502, socks=0x02) from None
        return reader, writer

    async def _tunnel(
        self,
        conn: Connection,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        try:
            up, down = await _relay(client, upstream, forward_up=True)
            conn.bytes_up += up
            conn.bytes_down += down
        finally:
            upstream[1].close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else self.s.client_label
        connection = self.s.audit.connection_id()
        try:
            for number in itertools.count(1):
                conn = Connection(f"{connection}.{number}", connection, client, self.protocol)
                if not await self._decision(conn, number, reader, writer):
                    break
        finally:
            writer.close()

    async def _decision(
        self,
        conn: Connection,
        number: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """One request: decide, serve, write both records; True if another may follow."""
        logged = True
        try:
            return await self.serve(conn, number, reader, writer)
        except _Idle:
            logged = False
            return False
        except _Refused as refused:
            if conn.opened is None:
                conn.decision, conn.rule = "error", refused.rule
            with contextlib.suppress(ConnectionError, OSError):
                await self.refuse(conn, writer, refused)
            return False
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            if conn.opened is None:
                conn.rule = f"client-error {type(exc).__name__}"
            else:
                conn.error = conn.error or f"client-error {type(exc).__name__}"
            return False
        except asyncio.CancelledError:
            conn.error = conn.error or "proxy-stopped"
            if conn.opened is None:
                conn.rule = "proxy-stopped"
                # between two requests on a kept-alive connection: nothing to log
                logged = number == 1 or conn.method is not None
            raise
        finally:
            if logged:
                self.s.audit.close(conn)

    async def serve(
        self,
        conn: Connection,
        number: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        raise NotImplementedError

    async def refuse(
        self, conn: Connection, writer: asyncio.StreamWriter, refused: _Refused
    ) -> None:
        raise NotImplementedError


def _for_upstream_proxy(request: HttpRequest, upstream: Upstream | None) -> HttpRequest:
    """The request as a proxy takes it: the absolute URI, and the upstream's credentials."""
    line, _, rest = request.head.partition(b"\r\n")
    method, origin, version = line.split(b" ", 2)
    port = b"" if request.port == 80 else f":{request.port}".encode()
    host = f"[{request.host}]" if ":" in request.host else request.host
    absolute = b"http://" + host.encode() + port + origin
    auth = b""
    if upstream is not None and upstream.authorization:
        auth = f"Proxy-Authorization: {upstream.authorization}\r\n".encode()
    head = b" ".join((method, absolute, version)) + b"\r\n" + auth + rest
    return replace(request, head=head)


def _note_request(conn: Connection, head: bytes) -> None:
    """What the audit log says of a request, from as much of its head as arrived."""
    conn.method, conn.host, conn.port, conn.path = request_summary(head)
    conn.protocol = "connect" if conn.method == "CONNECT" else "http"


class _HttpProxy(_ProxyServer):
    protocol = "http"

    async def _head(self, conn: Connection, reader: asyncio.StreamReader, first: bool) -> bytes:
        """The next request head; on a kept-alive connection, silence or EOF ends it quietly."""
        try:
            return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.s.header_timeout)
        except asyncio.TimeoutError:
            partial, rule, status = _buffered(reader), "request-timeout", 408
        except asyncio.LimitOverrunError:
            partial, rule, status = _buffered(reader), "header-too-large", 431
        except asyncio.IncompleteReadError as exc:
            partial, rule, status = exc.partial, "incomplete-request", 400
        if not partial and not first:
            raise _Idle
        _note_request(conn, partial)
        raise _Refused(rule, status=status)

    async def serve(
        self,
        conn: Connection,
        number: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        head = await self._head(conn, reader, first=number == 1)
        _note_request(conn, head)
        if len(head) > MAX_HEADER_BYTES:
            raise _Refused("header-too-large", status=431)
        request = parse_http_request(head)
        conn.method, conn.path = request.method, request.path
        plain = request.method != "CONNECT"
        upstream = await self._open(conn, request.host, request.port, plain_http=plain)
        if plain and conn.upstream is not None:
            request = _for_upstream_proxy(request, self.s.policy.upstream)
        if request.method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            conn.status = 200
            await writer.drain()
            await self._tunnel(conn, (reader, writer), upstream)
            return False
        try:
            return await self._exchange(conn, request, (reader, writer), upstream)
        finally:
            upstream[1].close()

    async def _exchange(
        self,
        conn: Connection,
        request: HttpRequest,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> bool:
        """Plain HTTP: the request and exactly its declared body go up, the answer down.

        Anything the client sends after the body is the next request, read and
        decided on its own. True if the client connection may carry another.
        """
        upstream[1].write(request.head)
        conn.bytes_up += len(request.head)
        sent = await _copy(client[0], upstream[1], request.body_length)
        conn.bytes_up += sent
        if sent < request.body_length:
            return False  # the client went away in the middle of its body
        try:
            head = await upstream[0].readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            head = exc.partial  # not HTTP, or cut short: pass on what came
        except asyncio.LimitOverrunError:
            head = b""  # a huge response head: relay it as it is
        except (ConnectionError, OSError) as exc:
            conn.error = f"upstream-error {type(exc).__name__}"
            raise _Refused(conn.error, status=502) from None  # nothing has gone down yet
        response = parse_http_response(head, request.method, request.keep_alive)
        conn.status = response_status(head)
        if response is None or response.body_length is None:
            client[1].write(head if response is None else response.head)
            conn.bytes_down += len(head if response is None else response.head)
            _, down = await _relay(client, upstream, forward_up=False)
            conn.bytes_down += down
            return False
        client[1].write(response.head)
        conn.bytes_down += len(response.head)
        conn.bytes_down += await _copy(upstream[0], client[1], response.body_length)
        return conn.bytes_down == len(response.head) + response.body_length

    async def refuse(
        self, conn: Connection, writer: asyncio.StreamWriter, refused: _Refused
    ) -> None:
        conn.status = refused.status
        writer.write(_http_error(refused.status, refused.rule))
        await writer.drain()


def socks_reply(code: int) -> bytes:
    return bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])


SOCKS4_REJECTED = bytes([0, 0x5B, 0, 0, 0, 0, 0, 0])
SOCKS_FIELD_MAX = 255  # SOCKS4 user ids and SOCKS4a names


class _SocksProxy(_ProxyServer):
    """SOCKS5, CONNECT only, no authentication. SOCKS4/4a requests are read (for the
    log) and refused."""

    protocol = "socks5"

    async def serve(
        self,
        conn: Connection,
        number: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        # One deadline for the whole handshake: a client trickling one byte at a
        # time cannot hold the connection longer than header_timeout.
        try:
            host, port = await asyncio.wait_for(
                self._handshake(conn, reader, writer), self.s.header_timeout
            )
        except asyncio.TimeoutError:
            raise _Refused(
                "request-timeout", socks=0x01 if conn.protocol == "socks5" else -1,
                reply=SOCKS4_REJECTED if conn.protocol == "socks4" else None,
            ) from None  # fmt: skip
        upstream = await self._open(conn, host, port)
        # The bound address is not reported: the guest never needs it, and it
        # would tell the guest the host's outward address.
        writer.write(socks_reply(0))
        await writer.drain()
        await self._tunnel(conn, (reader, writer), upstream)
        return False

    async def _handshake(
        self, conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[str, int]:
        (version,) = await reader.readexactly(1)
        if version == 4:
            conn.protocol = "socks4"
            await self._socks4(conn, reader)
        if version != 5:
            raise _Refused("not-socks", socks=-1)
        (count,) = await reader.readexactly(1)
        methods = await reader.readexactly(count)
        if 0 not in methods:
            # Username/password (2), GSSAPI (1) and the rest are not offered:
            # the guest's proxy needs no credentials and takes none.
            writer.write(b"\x05\xff")
            await writer.drain()
            raise _Refused(f"no-acceptable-auth-method {methods.hex() or '-'}", socks=-1)
        writer.write(b"\x05\x00")
        await writer.drain()
        version, command, _, kind = await reader.readexactly(4)
        if kind == 1:
            host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
        elif kind == 4:
            host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
        elif kind == 3:
            (length,) = await reader.readexactly(1)
            raw = await reader.readexactly(length)
            host = raw.decode("ascii", errors="replace")
        else:
            raise _Refused("bad-address-type", socks=0x08)
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        conn.host, conn.port = host, port
        if version != 5 or command != 1:
            raise _Refused("command-not-supported (only CONNECT)", socks=0x07)
        return host, port

    async def _socks4(self, conn: Connection, reader: asyncio.StreamReader) -> None:
        """Read a SOCKS4 or SOCKS4a request for the log, then refuse it (reply 91)."""
        _, port_high, port_low, *ip = await reader.readexactly(7)
        conn.port = port_high << 8 | port_low
        conn.host = str(ipaddress.IPv4Address(bytes(ip)))
        await self._until_nul(reader)  # the user id
        if ip[:3] == [0, 0, 0] and ip[3] != 0:  # SOCKS4a: a name follows
            conn.host = (await self._until_nul(reader)).decode("ascii", errors="replace")
        raise _Refused("socks4-not-supported", reply=SOCKS4_REJECTED)

    async def _until_nul(self, reader: asyncio.StreamReader) -> bytes:
        data = b""
        while len(data) <= SOCKS_FIELD_MAX:
            byte = await reader.readexactly(1)
            if byte == b"\0":
                return data
            data += byte
        raise _Refused("socks4-field-too-long", reply=SOCKS4_REJECTED)

    async def refuse(
        self, conn: Connection, writer: asyncio.StreamWriter, refused: _Refused
    ) -> None:
        if refused.reply is not None:
            writer.write(refused.reply)
        elif refused.socks >= 0:
            writer.write(socks_reply(refused.socks))
        await writer.drain()


# ------------------------------------------------------------ the thread


@dataclass(frozen=True)
class Proxy:
    """Where the two proxies listen: (host, port) pairs, or Unix socket paths."""

    http_address: tuple[str, int] | Path
    socks_address: tuple[str, int] | Path

    @property
    def http_url(self) -> str:
        return _url("http", self.http_address)

    @property
    def socks_url(self) -> str:
        return _url("socks5h", self.socks_address)


def _url(scheme: str, address: tuple[str, int] | Path) -> str:
    if isinstance(address, Path):
        return f"unix:{address}"
    return f"{scheme}://{address[0]}:{address[1]}"


async def _listen_unix(
    handler: Callable[..., Awaitable[None]], path: Path, limit: int
) -> asyncio.Server:
    path.unlink(missing_ok=True)
    server = await asyncio.start_unix_server(handler, str(path), limit=limit)
    path.chmod(0o600)
    return server


# Long on purpose: the listeners, the audit stream and the thread are set up and torn
# down in one ExitStack, so a failure halfway leaves nothing listening.
@contextlib.contextmanager
def serve_proxy(
    policy: Policy,
    http_port: int = 0,
    socks_port: int = 0,
    audit_log: Path | None = None,
    *,
    audit_stream: IO[str] | None = None,
    host: str = "127.0.0.1",
    unix_sockets: tuple[Path, Path] | None = None,
    client_label: str = "?",
    resolver: Resolver = system_resolver,
    header_timeout: float = HEADER_TIMEOUT,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> Iterator[Proxy]:
    """Run both proxies on `host` in a background thread until the block ends.

    With `unix_sockets` (http, socks) they listen on those Unix sockets instead
    (mode 0600): what a VM's guestfwd connects to, and no other local user can.
    Clients there have no address; the audit log names them `client_label`.

    The audit log is appended to: an open line per decision as it is made, a
    close line when it ends (see docs/proxy.md), each flushed as written, so even
    a SIGKILL loses nothing already decided.
    """
    with contextlib.ExitStack() as stack:
        stream = audit_stream
        if audit_log is not None:
            try:
                stream = stack.enter_context(audit_log.open("a", encoding="utf-8"))
            except OSError as exc:
                raise ImageError(
                    f"cannot open audit log {audit_log}: {exc.strerror}",
                    hint="pass a writable path to --audit-log",
                ) from None
        settings = _Settings(
            policy, resolver, AuditLog(stream), header_timeout, connect_timeout, client_label
        )
        loop = asyncio.new_event_loop()
        started = threading.Event()
        stop: asyncio.Future[None] = loop.create_future()
        result: dict[str, object] = {}

        async def main() -> None:
            tasks: set[asyncio.Task[None]] = set()

            def tracked(server: _ProxyServer) -> Callable[..., Awaitable[None]]:
                async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                    task = asyncio.current_task()
                    assert task is not None
                    tasks.add(task)
                    try:
                        await server.handle(r, w)
                    except asyncio.CancelledError:
                        # Shutting down: the connection is dropped. Re-raising would
                        # only make asyncio's stream callback log a traceback.
                        w.transport.abort()
                    finally:
                        tasks.discard(task)

                return handler

            try:
                if unix_sockets is not None:
                    http_sock, socks_sock = unix_sockets
                    http = await _listen_unix(
                        tracked(_HttpProxy(settings)), http_sock, MAX_HEADER_BYTES
                    )
                    socks = await _listen_unix(
                        tracked(_SocksProxy(settings)), socks_sock, COPY_CHUNK
                    )
                    result["proxy"] = Proxy(*unix_sockets)
                else:
                    http = await asyncio.start_server(
                        tracked(_HttpProxy(settings)), host, http_port, limit=MAX_HEADER_BYTES
                    )
                    socks = await asyncio.start_server(
                        tracked(_SocksProxy(settings)), host, socks_port, limit=COPY_CHUNK
                    )
                    result["proxy"] = Proxy(
                        http.sockets[0].getsockname()[:2], socks.sockets[0].getsockname()[:2]
                    )
            except OSError as exc:
                result["error"] = exc
                started.set()
                return
            started.set()
            try:
                await stop
            finally:
                for server in (http, socks):
                    server.close()
                for task in list(tasks):
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        thread = threading.Thread(
            target=loop.run_until_complete, args=(main(),), name="egress-proxy", daemon=True
        )
        thread.start()
        started.wait()
        try:
            if "error" in result:
                where = (
                    f"{unix_sockets[0]} and {unix_sockets[1]}"
                    if unix_sockets
                    else f"{host} (http port {http_port}, socks port {socks_port})"
                )
                raise ImageError(
                    f"cannot listen on {where}: {result['error']}",
                    hint="pick free ports with --http-port/--socks-port (0: any free port)"
                    if not unix_sockets
                    else "the directory must exist and be writable",
                )
            proxy = result["proxy"]
            assert isinstance(proxy, Proxy)
            yield proxy
        finally:

            def finish() -> None:
                if not stop.done():
                    stop.set_result(None)

            loop.call_soon_threadsafe(finish)
            thread.join(timeout=30)
            loop.close()
