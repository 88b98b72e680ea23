"""bwrap profiles: each option a small typed object that renders its own arguments.

Standard library only, Python 3.10: this module runs inside the VM (the launcher
imports it) and on the host (the compile step validates profiles with it).

Only options that bubblewrap 0.6.1 (Ubuntu 22.04) understands are offered; newer
ones such as --disable-userns, --size or --chmod are deliberately absent, and the
seccomp filter covers what --disable-userns would.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

FORMAT_VERSION = 1


class ProfileError(ValueError):
    """A profile that does not describe a valid sandbox; names the profile and the entry."""


def _abs(profile: str, where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ProfileError(f"bwrap profile {profile!r}, {where}: {value!r} is not an absolute path")
    return value


@dataclass(frozen=True)
class Flag:
    """An option without arguments."""

    name: str
    KNOWN: ClassVar[tuple[str, ...]] = (
        "unshare-all",
        "unshare-user",
        "unshare-ipc",
        "unshare-pid",
        "unshare-net",
        "unshare-uts",
        "unshare-cgroup",
        "die-with-parent",
        "new-session",
    )

    def to_args(self) -> list[str]:
        return [f"--{self.name}"]


@dataclass(frozen=True)
class CapDrop:
    cap: str

    def to_args(self) -> list[str]:
        return ["--cap-drop", self.cap]


@dataclass(frozen=True)
class Bind:
    """--bind, --ro-bind, --dev-bind and their -try forms (missing source: skipped)."""

    kind: str
    src: str
    dest: str
    KNOWN: ClassVar[tuple[str, ...]] = (
        "bind",
        "ro-bind",
        "dev-bind",
        "bind-try",
        "ro-bind-try",
        "dev-bind-try",
    )

    def to_args(self) -> list[str]:
        return [f"--{self.kind}", self.src, self.dest]


@dataclass(frozen=True)
class Symlink:
    target: str
    path: str

    def to_args(self) -> list[str]:
        return ["--symlink", self.target, self.path]


@dataclass(frozen=True)
class Mount:
    """A fresh filesystem at dest: tmpfs, proc, dev, or an empty dir."""

    kind: str
    dest: str
    KNOWN: ClassVar[tuple[str, ...]] = ("tmpfs", "proc", "dev", "dir", "remount-ro")

    def to_args(self) -> list[str]:
        return [f"--{self.kind}", self.dest]


Option = Flag | CapDrop | Bind | Symlink | Mount


@dataclass(frozen=True)
class Bridge:
    """TCP 127.0.0.1:port inside the sandbox -> a Unix socket bound in -> ``connect`` outside.

    ``connect`` is ``tcp:HOST:PORT`` or ``unix:/path`` as seen from outside the sandbox
    (the VM's proxy). Nothing needs to listen there: the bridge still listens inside,
    and a connection then fails when it is forwarded.
    """

    name: str
    port: int
    connect: str

    def socket_name(self) -> str:
        return f"{self.name}.sock"

    def outside_address(self) -> str:
        """The connect target in socat's address syntax."""
        kind, _, rest = self.connect.partition(":")
        if kind == "unix":
            return f"UNIX-CONNECT:{rest}"
        host, _, port = rest.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            return f"TCP6:{host}:{port}"
        return f"TCP:{host}:{port}"


@dataclass(frozen=True)
class Profile:
    name: str
    hostname: str
    workspace: str
    home: str
    python: str
    bridge_dir: str
    seccomp_bwrap: tuple[str, ...]
    seccomp_launcher: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    pass_env: tuple[str, ...]
    options: tuple[Option, ...]
    bridges: tuple[Bridge, ...] = field(default=())

    def to_args(self) -> list[str]:
        """The profile's own bwrap options, in order (the launcher adds per-run ones)."""
        args: list[str] = []
        for option in self.options:
            args += option.to_args()
        return args

    def to_document(self) -> dict[str, Any]:
        """The in-guest JSON form (what ``load_document`` reads back)."""
        options: list[dict[str, Any]] = []
        for o in self.options:
            if isinstance(o, Flag):
                options.append({"type": o.name})
            elif isinstance(o, CapDrop):
                options.append({"type": "cap-drop", "cap": o.cap})
            elif isinstance(o, Bind):
                options.append({"type": o.kind, "src": o.src, "dest": o.dest})
            elif isinstance(o, Symlink):
                options.append({"type": "symlink", "target": o.target, "path": o.path})
            else:
                options.append({"type": o.kind, "dest": o.dest})
        return {
            "format": FORMAT_VERSION,
            "name": self.name,
            "hostname": self.hostname,
            "workspace": self.workspace,
            "home": self.home,
            "python": self.python,
            "bridge_dir": self.bridge_dir,
            "seccomp": {"bwrap": list(self.seccomp_bwrap), "launcher": list(self.seccomp_launcher)},
            "env": dict(self.env),
            "pass_env": list(self.pass_env),
            "options": options,
            "bridges": [
                {"name": b.name, "port": b.port, "connect": b.connect} for b in self.bridges
            ],
        }


_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _option(profile: str, where: str, raw: Any) -> Option:
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise ProfileError(f"bwrap profile {profile!r}, {where}: an option needs a 'type'")
    kind = raw["type"]
    keys = set(raw) - {"type"}

    def expect(*names: str) -> None:
        if keys != set(names):
            raise ProfileError(
                f"bwrap profile {profile!r}, {where} ({kind}): expects keys "
                f"{sorted(names)}, got {sorted(keys)}"
            )

    if kind in Flag.KNOWN:
        expect()
        return Flag(kind)
    if kind == "cap-drop":
        expect("cap")
        cap = raw["cap"]
        if not isinstance(cap, str) or not re.match(r"^(ALL|CAP_[A-Z_]+)$", cap):
            raise ProfileError(f"bwrap profile {profile!r}, {where}: bad capability {cap!r}")
        return CapDrop(cap)
    if kind in Bind.KNOWN:
        expect("src", "dest")
        return Bind(kind, _abs(profile, where, raw["src"]), _abs(profile, where, raw["dest"]))
    if kind == "symlink":
        expect("target", "path")
        target = raw["target"]
        if not isinstance(target, str) or not target:
            raise ProfileError(f"bwrap profile {profile!r}, {where}: bad symlink target")
        return Symlink(target, _abs(profile, where, raw["path"]))
    if kind in Mount.KNOWN:
        expect("dest")
        return Mount(kind, _abs(profile, where, raw["dest"]))
    known = [*Flag.KNOWN, "cap-drop", *Bind.KNOWN, "symlink", *Mount.KNOWN]
    raise ProfileError(
        f"bwrap profile {profile!r}, {where}: unknown option {kind!r} "
        f"(bubblewrap 0.6.1 options offered: {', '.join(known)})"
    )


def _bridge(profile: str, where: str, raw: Any) -> Bridge:
    if not isinstance(raw, dict) or set(raw) != {"name", "port", "connect"}:
        raise ProfileError(
            f"bwrap profile {profile!r}, {where}: a bridge has exactly name, port, connect"
        )
    name, port, connect = raw["name"], raw["port"], raw["connect"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise ProfileError(f"bwrap profile {profile!r}, {where}: bad bridge name {name!r}")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ProfileError(f"bwrap profile {profile!r}, {where}: bad port {port!r}")
    if not isinstance(connect, str) or not _valid_connect(connect):
        raise ProfileError(
            f"bwrap profile {profile!r}, {where}: connect {connect!r} is not "
            "tcp:HOST:PORT or unix:/path"
        )
    return Bridge(name, port, connect)


def _valid_connect(connect: str) -> bool:
    kind, _, rest = connect.partition(":")
    if kind == "unix":
        return rest.startswith("/") and "," not in rest and "\0" not in rest
    if kind != "tcp":
        return False
    host, _, port = rest.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536 or not host:
        return False
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host))


def load_document(name: str, document: Any) -> Profile:
    """Validate a profile document (the JSON in the guest, or the parsed YAML source)."""
    if not isinstance(document, dict):
        raise ProfileError(f"bwrap profile {name!r}: must be a mapping")
    known = {
        "format",
        "name",
        "hostname",
        "workspace",
        "home",
        "python",
        "bridge_dir",
        "seccomp",
        "env",
        "pass_env",
        "options",
        "bridges",
    }
    unknown = set(document) - known
    if unknown:
        raise ProfileError(f"bwrap profile {name!r}: unknown keys {sorted(unknown)}")
    if document.get("format", FORMAT_VERSION) != FORMAT_VERSION:
        raise ProfileError(
            f"bwrap profile {name!r}: format {document.get('format')!r} is not "
            f"{FORMAT_VERSION}; rebuild the image or update sandbox-exec"
        )
    hostname = document.get("hostname", "sandbox")
    if not isinstance(hostname, str) or not _HOSTNAME.match(hostname):
        raise ProfileError(f"bwrap profile {name!r}: bad hostname {hostname!r}")
    seccomp = document.get("seccomp") or {}
    if not isinstance(seccomp, dict) or set(seccomp) - {"bwrap", "launcher"}:
        raise ProfileError(f"bwrap profile {name!r}: seccomp has keys bwrap and launcher")
    stages = {}
    for stage in ("bwrap", "launcher"):
        names = seccomp.get(stage) or []
        if not isinstance(names, list) or not all(
            isinstance(n, str) and _NAME.match(n) for n in names
        ):
            raise ProfileError(f"bwrap profile {name!r}: seccomp.{stage} must list filter names")
        stages[stage] = tuple(names)
    if len(stages["bwrap"]) > 1:
        # bwrap 0.6.1's --seccomp takes one program; stack the rest in the launcher.
        raise ProfileError(f"bwrap profile {name!r}: seccomp.bwrap takes at most one filter")
    env = document.get("env") or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and _ENV_NAME.match(k) and isinstance(v, str) for k, v in env.items()
    ):
        raise ProfileError(f"bwrap profile {name!r}: env must map NAME to a string")
    pass_env = document.get("pass_env") or []
    if not isinstance(pass_env, list) or not all(
        isinstance(k, str) and _ENV_NAME.match(k) for k in pass_env
    ):
        raise ProfileError(f"bwrap profile {name!r}: pass_env must list variable names")
    raw_options = document.get("options")
    if not isinstance(raw_options, list) or not raw_options:
        raise ProfileError(f"bwrap profile {name!r}: options must be a non-empty list")
    options = tuple(_option(name, f"options[{i}]", o) for i, o in enumerate(raw_options))
    bridges = tuple(
        _bridge(name, f"bridges[{i}]", b) for i, b in enumerate(document.get("bridges") or [])
    )
    if len({b.name for b in bridges}) != len(bridges) or len({b.port for b in bridges}) != len(
        bridges
    ):
        raise ProfileError(f"bwrap profile {name!r}: bridge names and ports must be unique")
    return Profile(
        name=name,
        hostname=hostname,
        workspace=_abs(name, "workspace", document.get("workspace", "/workspace")),
        home=_abs(name, "home", document.get("home", "/home/sandbox")),
        python=_abs(name, "python", document.get("python", "/usr/bin/python3")),
        bridge_dir=_abs(name, "bridge_dir", document.get("bridge_dir", "/run/sandbox-bridge")),
        seccomp_bwrap=stages["bwrap"],
        seccomp_launcher=stages["launcher"],
        env=tuple(sorted(env.items())),
        pass_env=tuple(pass_env),
        options=options,
        bridges=bridges,
    )


def load_json(path: Path) -> Profile:
    name = path.name.removesuffix(".json")
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ProfileError(
            f"bwrap profile {name!r}: invalid JSON at line {exc.lineno}: {exc.msg}"
        ) from None
    return load_document(name, document)
