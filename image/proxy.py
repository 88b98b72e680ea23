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
import contextlib
import datetime
import ipaddress
import json
import re
import socket
import struct
import threading
import time
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

_NAME = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")


# ---------------------------------------------------------------- policy


@dataclass(frozen=True)
class Policy:
    """Allowed/denied names (exact or `*.suffix`), extra ports, allowed networks."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    ports: frozenset[int] = DEFAULT_PORTS
    addresses: tuple[IPNetwork, ...] = ()

    def extended(
        self,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        addresses: Iterable[str] = (),
        ports: Iterable[int | str] = (),
    ) -> Policy:
        """This policy plus command-line additions (validated like file entries)."""
        return replace(
            self,
            allow=self.allow + tuple(_pattern(v, f"--allow {v!r}") for v in allow),
            deny=self.deny + tuple(_pattern(v, f"--deny {v!r}") for v in deny),
            addresses=self.addresses
            + tuple(_network(v, f"--allow-address {v!r}") for v in addresses),
            ports=self.ports | {_port(str(v), f"--allow-port {v!r}") for v in ports},
        )


def normalize_name(name: str) -> str:
    """Lower case, one trailing dot dropped: `Example.COM.` and `example.com` are one name."""
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def _pattern(value: str, where: str) -> str:
    value = normalize_name(value.strip())
    bare = value[2:] if value.startswith("*.") else value
    if not bare or len(bare) > 253 or not _NAME.match(bare):
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


DIRECTIVES = ("allow", "deny", "allow-address", "allow-port")


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse the policy format: one `DIRECTIVE VALUE` per line, `#` comments.

    Directives: allow NAME, deny NAME, allow-address CIDR, allow-port N.
    Errors name the source and the line.
    """
    allow: list[str] = []
    deny: list[str] = []
    addresses: list[IPNetwork] = []
    ports: set[int] = set(DEFAULT_PORTS)
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
        else:
            ports.add(_port(value, where))
    return Policy(tuple(allow), tuple(deny), frozenset(ports), tuple(addresses))


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
        return ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return None


def _listed(policy: Policy, address: IPAddress) -> IPNetwork | None:
    return next((net for net in policy.addresses if address in net), None)


def _internal(address: IPAddress) -> bool:
    """Loopback, private, link-local (cloud metadata), CGNAT, multicast, unspecified..."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


def check_name(policy: Policy, host: str, port: int) -> Decision:
    """The part of the decision that needs no DNS: port, IP literal, name lists.

    Allowed here means "may be resolved"; names denied here are never looked up.
    """
    if port not in policy.ports:
        return Decision(False, f"port-not-allowed {port}")
    literal = _ip(host)
    if literal is not None:
        net = _listed(policy, literal)
        if net is None:
            return Decision(False, "ip-literal")
        return Decision(True, f"allow-address {net}", str(literal))
    name = normalize_name(host)
    if not name or len(name) > 253 or not _NAME.match(name):
        return Decision(False, "invalid-name")
    if name.rsplit(".", 1)[-1].isdigit():
        # 127.1, 2130706433...: numeric forms the resolver turns into addresses.
        return Decision(False, "ip-literal")
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


@dataclass
class Connection:
    """One audit record; written as one JSON line when the connection ends."""

    client: str
    protocol: str
    started: float = field(default_factory=time.time)
    host: str | None = None
    port: int | None = None
    address: str | None = None
    decision: str = "error"
    rule: str = ""
    bytes_up: int = 0
    bytes_down: int = 0

    def record(self) -> dict[str, object]:
        return {
            "time": datetime.datetime.fromtimestamp(self.started, datetime.timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "client": self.client,
            "protocol": self.protocol,
            "host": self.host,
            "port": self.port,
            "address": self.address,
            "decision": self.decision,
            "rule": self.rule,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "duration_s": round(time.time() - self.started, 6),
        }


class AuditLog:
    def __init__(self, stream: IO[str] | None) -> None:
        self._stream = stream

    def write(self, conn: Connection) -> None:
        if self._stream is not None:
            self._stream.write(json.dumps(conn.record(), sort_keys=False) + "\n")
            self._stream.flush()


# --------------------------------------------------------------- servers


class _Refused(Exception):
    """End a request with an error answer (HTTP status or SOCKS5 reply code)."""

    def __init__(self, rule: str, status: int = 400, socks: int = 0x01) -> None:
        super().__init__(rule)
        self.rule = rule
        self.status = status
        self.socks = socks


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


def _split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    if authority.startswith("["):
        host, sep, rest = authority[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _Refused("malformed-authority")
        port_text = rest[1:]
    else:
        host, _, port_text = authority.rpartition(":") if ":" in authority else (authority, "", "")
    if not port_text:
        if default_port is None:
            raise _Refused("malformed-authority")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _Refused("malformed-authority")
    return host, int(port_text)


def parse_http_request(head: bytes) -> HttpRequest:
    """Parse a proxy request head (ending in CRLFCRLF) into where it goes and what to send.

    The absolute URI decides where a plain request goes; the client's Host header
    is replaced by the URI's authority so it cannot steer the upstream elsewhere.
    """
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise _Refused("malformed-request") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
        raise _Refused("malformed-request")
    method, target, version = parts
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise _Refused("malformed-header")
        headers.append((name, value.strip()))
    if method == "CONNECT":
        host, port = _split_authority(target, None)
        return HttpRequest(method, host, port, b"", 0)
    if not target.lower().startswith("http://"):
        raise _Refused("not-absolute-http-uri")
    rest = target[len("http://") :]
    authority, slash, path = rest.partition("/")
    authority = authority.split("?", 1)[0]
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
    kept = [(n, v) for n, v in headers if n.lower() not in _HOP_BY_HOP]
    out = [f"{method} /{path if slash else ''} {version}", f"Host: {authority}"]
    out += [f"{n}: {v}" for n, v in kept]
    out.append("Connection: close")
    return HttpRequest(method, host, port, ("\r\n".join(out) + "\r\n\r\n").encode(), body_length)


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


class _ProxyServer:
    def __init__(self, settings: _Settings) -> None:
        self.s = settings

    async def _open(
        self, conn: Connection, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Decide, then connect to the checked address (never to the name)."""
        conn.host, conn.port = host, port
        verdict = check_name(self.s.policy, host, port)
        if verdict.allowed and verdict.address is None:
            try:
                resolved = await asyncio.wait_for(
                    self.s.resolver(normalize_name(host), port), self.s.connect_timeout
                )
            except (OSError, asyncio.TimeoutError):
                resolved = []
            verdict = decide(self.s.policy, host, port, resolved)
        conn.rule = verdict.rule
        if not verdict.allowed or verdict.address is None:
            conn.decision = "deny"
            raise _Refused(verdict.rule, status=403, socks=0x02)
        conn.decision, conn.address = "allow", verdict.address
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(verdict.address, port, limit=COPY_CHUNK),
                self.s.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            conn.decision = "error"
            conn.rule = f"{verdict.rule}; upstream-unreachable {type(exc).__name__}"
            raise _Refused(conn.rule, status=502, socks=0x05) from None

    async def _tunnel(
        self,
        conn: Connection,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        up_limit: int = -1,
    ) -> None:
        try:
            if up_limit >= 0:
                # Plain HTTP: only the declared body goes up; anything the client
                # sends after it is not forwarded (it could be a second request
                # for another host on this connection).
                conn.bytes_up += await _copy(client[0], upstream[1], up_limit)
            up, down = await _relay(client, upstream, forward_up=up_limit < 0)
            conn.bytes_up += up
            conn.bytes_down += down
        finally:
            upstream[1].close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else self.s.client_label
        conn = Connection(client, self.protocol)
        try:
            await self.serve(conn, reader, writer)
        except _Refused as refused:
            conn.rule = conn.rule or refused.rule
            if conn.decision != "deny":
                conn.decision = "error"
            with contextlib.suppress(ConnectionError, OSError):
                await self.refuse(writer, refused)
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            conn.rule = conn.rule or f"client-error {type(exc).__name__}"
        finally:
            self.s.audit.write(conn)
            writer.close()

    protocol = "?"

    async def serve(
        self, conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        raise NotImplementedError

    async def refuse(self, writer: asyncio.StreamWriter, refused: _Refused) -> None:
        raise NotImplementedError


class _HttpProxy(_ProxyServer):
    protocol = "http"

    async def serve(
        self, conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.s.header_timeout)
        except asyncio.TimeoutError:
            raise _Refused("request-timeout", status=408) from None
        except asyncio.LimitOverrunError:
            raise _Refused("header-too-large", status=431) from None
        except asyncio.IncompleteReadError:
            raise _Refused("incomplete-request") from None
        if len(head) > MAX_HEADER_BYTES:
            raise _Refused("header-too-large", status=431)
        request = parse_http_request(head)
        conn.protocol = "connect" if request.method == "CONNECT" else "http"
        upstream = await self._open(conn, request.host, request.port)
        if request.method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await self._tunnel(conn, (reader, writer), upstream)
        else:
            upstream[1].write(request.head)
            conn.bytes_up += len(request.head)
            await self._tunnel(conn, (reader, writer), upstream, up_limit=request.body_length)

    async def refuse(self, writer: asyncio.StreamWriter, refused: _Refused) -> None:
        writer.write(_http_error(refused.status, refused.rule))
        await writer.drain()


def socks_reply(code: int) -> bytes:
    return bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])


class _SocksProxy(_ProxyServer):
    protocol = "socks5"

    async def _read(self, reader: asyncio.StreamReader, n: int) -> bytes:
        try:
            return await asyncio.wait_for(reader.readexactly(n), self.s.header_timeout)
        except asyncio.TimeoutError:
            raise _Refused("request-timeout") from None

    async def serve(
        self, conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        version, count = await self._read(reader, 2)
        methods = await self._read(reader, count)
        if version != 5:
            raise _Refused("not-socks5", socks=-1)
        if 0 not in methods:
            writer.write(b"\x05\xff")
            await writer.drain()
            raise _Refused("no-acceptable-auth-method", socks=-1)
        writer.write(b"\x05\x00")
        await writer.drain()
        version, command, _, kind = await self._read(reader, 4)
        if kind == 1:
            host = str(ipaddress.IPv4Address(await self._read(reader, 4)))
        elif kind == 4:
            host = str(ipaddress.IPv6Address(await self._read(reader, 16)))
        elif kind == 3:
            (length,) = await self._read(reader, 1)
            raw = await self._read(reader, length)
            host = raw.decode("ascii", errors="replace")
        else:
            raise _Refused("bad-address-type", socks=0x08)
        (port,) = struct.unpack("!H", await self._read(reader, 2))
        if version != 5 or command != 1:
            conn.host, conn.port = host, port
            raise _Refused("command-not-supported (only CONNECT)", socks=0x07)
        upstream = await self._open(conn, host, port)
        # The bound address is not reported: the guest never needs it, and it
        # would tell the guest the host's outward address.
        writer.write(socks_reply(0))
        await writer.drain()
        await self._tunnel(conn, (reader, writer), upstream)

    async def refuse(self, writer: asyncio.StreamWriter, refused: _Refused) -> None:
        if refused.socks >= 0:
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

    The audit log is appended to (one JSON line per connection) and flushed per
    line, so it is complete up to the last finished connection even after a kill.
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
