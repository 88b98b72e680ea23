"""A VM's only way out: QEMU user networking with restrict=on, plus guestfwd to the host proxy.

With `restrict=on` the guest can send nothing beyond QEMU's user-mode network
(no routing to the host or the outside, no DNS). Two guestfwd rules are the
exception: TCP to GUEST_PROXY_IP:3128 and :1080 inside the guest is handed to
`socat`, which connects to the host proxy's Unix sockets (see image/egress/proxy.py).
One socat per guest connection (QEMU's `cmd:` form): a chardev target would
carry a single connection for the VM's whole life.

The guest side is fixed so images and snapshots do not depend on the host:
/etc/environment, apt and the in-guest sandbox launcher's bridges all point at
GUEST_PROXY_IP. The host side (socket paths, policy, audit log) is per VM.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
import tempfile
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from image.contract import guest
from image.egress import proxy
from image.errors import ImageError

log = logging.getLogger(__name__)

GUEST_PROXY_IP = guest.GUEST_PROXY_IP
GUEST_HTTP_PORT = guest.GUEST_HTTP_PORT
GUEST_SOCKS_PORT = guest.GUEST_SOCKS_PORT
GUEST_HTTP_PROXY = f"http://{GUEST_PROXY_IP}:{GUEST_HTTP_PORT}"
GUEST_SOCKS_PROXY = f"socks5h://{GUEST_PROXY_IP}:{GUEST_SOCKS_PORT}"
GUEST_NO_PROXY = "localhost,127.0.0.1,::1"

POLICIES_DIR = Path(__file__).resolve().parents[2] / "proxy-policies"
BUILD_POLICY = POLICIES_DIR / "build.policy"
LAUNCH_POLICY = POLICIES_DIR / "launch.policy"

HTTP_SOCKET = "http.sock"
SOCKS_SOCKET = "socks.sock"
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with its NUL
_FORWARD = "cmd:socat - UNIX-CONNECT:"


def socket_paths(directory: Path) -> tuple[Path, Path]:
    return directory / HTTP_SOCKET, directory / SOCKS_SOCKET


def make_socket_dir() -> Path:
    """A private directory with a short path for one VM's sockets: its proxy's,
    and QEMU's own (QMP, guest agent).

    Not the VM's work directory: that lives under the cache directory, whose
    path can be longer than a Unix socket path may be. The caller removes it.
    """
    directory = Path(tempfile.mkdtemp(prefix="sandbox-image-vm-"))
    directory.chmod(0o700)  # the sockets are reachable only by this user
    return directory


def guest_forwards(directory: Path) -> tuple[tuple[str, str], ...]:
    """The guestfwd rules for a VM whose proxy sockets live in `directory`."""
    http, socks = socket_paths(directory)
    for path in (http, socks):
        # QEMU splits -netdev options at commas; a path with one would silently
        # become a different option.
        if "," in str(path) or " " in str(path):
            raise ImageError(
                f"the VM's socket directory {directory} contains a comma or a space",
                hint="set TMPDIR to a directory without them",
            )
        if len(str(path).encode()) > SOCKET_PATH_MAX:
            raise ImageError(
                f"the socket path {path} is longer than a Unix socket path may be",
                hint="set TMPDIR to a shorter directory",
            )
    return (
        (f"{GUEST_PROXY_IP}:{GUEST_HTTP_PORT}", f"{_FORWARD}{http}"),
        (f"{GUEST_PROXY_IP}:{GUEST_SOCKS_PORT}", f"{_FORWARD}{socks}"),
    )


def forwarded_sockets(guestfwd: Sequence[tuple[str, str]]) -> list[Path]:
    """The host socket paths in guestfwd rules made by `guest_forwards` (per-VM details)."""
    return [Path(t.removeprefix(_FORWARD)) for _, t in guestfwd if t.startswith(_FORWARD)]


def guest_environment() -> list[str]:
    """/etc/environment lines: every login and service that reads it uses the proxy."""
    return [
        f"HTTP_PROXY={GUEST_HTTP_PROXY}",
        f"HTTPS_PROXY={GUEST_HTTP_PROXY}",
        f"http_proxy={GUEST_HTTP_PROXY}",
        f"https_proxy={GUEST_HTTP_PROXY}",
        f"ALL_PROXY={GUEST_SOCKS_PROXY}",
        f"all_proxy={GUEST_SOCKS_PROXY}",
        f"NO_PROXY={GUEST_NO_PROXY}",
        f"no_proxy={GUEST_NO_PROXY}",
    ]


@dataclass(frozen=True)
class PolicyChoice:
    """A policy file plus command-line additions (`--allow`, `--deny`, ...)."""

    file: Path
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    allow_addresses: tuple[str, ...] = ()
    allow_ports: tuple[str, ...] = ()  # validated by load(), like the file's entries
    upstream: str | None = None  # --upstream-proxy: replaces the file's `upstream`

    def load(self) -> proxy.Policy:
        return proxy.load_policy(self.file).extended(
            self.allow, self.deny, self.allow_addresses, self.allow_ports, self.upstream
        )


DEFAULT_BUILD = PolicyChoice(BUILD_POLICY)
DEFAULT_LAUNCH = PolicyChoice(LAUNCH_POLICY)


def with_local_addresses(choice: PolicyChoice, names: Sequence[str]) -> PolicyChoice:
    """`choice` plus the non-public addresses these names resolve to on this host.

    For a host whose resolver sends a public archive name to a local mirror or
    cache (a private or reserved address, which the policy refuses by default):
    the caller trusts this host's resolver for exactly these names. Logged.
    """
    extra: list[str] = []
    for name in names:
        try:
            infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
        except OSError:
            continue  # unresolvable here: the proxy will say so when it is used
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]))
            network = f"{address}/{address.max_prefixlen}"
            if not address.is_global and network not in extra:
                log.warning("%s resolves to %s here (not a public address): allowing it "
                            "for this VM", name, address)  # fmt: skip
                extra.append(network)
    return replace(choice, allow_addresses=choice.allow_addresses + tuple(extra))


def with_urls(choice: PolicyChoice, urls: Sequence[str]) -> PolicyChoice:
    """`choice` plus exactly what these URLs need: their host names (an IP literal
    as its one address) and any port other than 80 and 443. For the third-party
    sources a build is pointed at (build-image --source-file). Logged."""
    allow, addresses, ports = (
        list(choice.allow),
        list(choice.allow_addresses),
        list(choice.allow_ports),
    )
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            entry, kind = f"{literal}/{literal.max_prefixlen}", addresses
        else:
            entry, kind = host, allow
        if entry not in kind:
            kind.append(entry)
            log.info("egress: allowing %s for %s", entry, url)
        if port not in (80, 443) and str(port) not in ports:
            ports.append(str(port))
            log.info("egress: allowing port %d for %s", port, url)
    return replace(choice, allow=tuple(allow), allow_addresses=tuple(addresses),
                   allow_ports=tuple(ports))  # fmt: skip


@contextlib.contextmanager
def serve_for_vm(
    policy: proxy.Policy,
    directory: Path,
    audit_log: Path,
    resolver: proxy.Resolver = proxy.system_resolver,
) -> Iterator[proxy.Proxy]:
    """The host proxy on the Unix sockets `guest_forwards(directory)` points at."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)  # the sockets are reachable only by this user
    guest_forwards(directory)  # the same path checks, before anything listens
    with proxy.serve_proxy(
        policy, audit_log=audit_log, unix_sockets=socket_paths(directory),
        client_label="guest", resolver=resolver,
    ) as running:  # fmt: skip
        yield running


@dataclass(frozen=True)
class Summary:
    connections: dict[str, int]  # per decision: allow, deny, error
    hosts: list[str]  # host:port reached
    denied: list[str]  # "host:port (rule)" refused, in order of first refusal

    def to_json(self) -> dict[str, object]:
        return {"connections": self.connections, "hosts": self.hosts, "denied": self.denied}


def summarize(audit_log: Path) -> Summary:
    """Counts per decision, and every host:port that was denied (for errors and build-info)."""
    counts: dict[str, int] = {}
    denied: list[str] = []
    hosts: set[str] = set()
    try:
        lines = audit_log.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill: the rest still counts
        if record.get("event") == "close":
            continue  # its open record already counted the decision
        decision = str(record.get("decision"))
        counts[decision] = counts.get(decision, 0) + 1
        where = f"{record.get('host')}:{record.get('port')}"
        if decision == "allow":
            hosts.add(where)
        elif decision == "deny" and f"{where} ({record.get('rule')})" not in denied:
            denied.append(f"{where} ({record.get('rule')})")
    return Summary(counts, sorted(hosts), denied)
