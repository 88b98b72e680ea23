"""The in-guest sandbox launcher run on this host (``./inv sandbox-run``, the tests).

``prepare`` compiles what the launcher loads (the filters for this host's
architecture, the bwrap profile as JSON) under one directory; ``launcher_argv``
leads the profile's bridges to the loopback ports of a proxy the caller started,
never to the VM-only 10.0.2.100 the shipped profile names: on a host that address
can be a real machine.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from image import hosttools
from image.errors import ImageError
from image.files import atomic_write_bytes
from image.sandbox import bwrap, seccomp

LAUNCHER = Path(__file__).resolve().parents[1] / "guest" / "sandbox_exec.py"


@dataclass(frozen=True)
class Prepared:
    profile: str
    profile_json: Path
    seccomp_dir: Path
    bridges: tuple[str, ...]


def prepare(base: Path, profile: str) -> Prepared:
    hosttools.require(["bwrap", "socat", "libseccomp"], "sandbox-run")
    compiled = bwrap.compile_named(profile)  # an unknown profile fails before anything is written
    host_arch = seccomp.target_arch(os.uname().machine)
    seccomp.write_all(base / "seccomp", arches=[host_arch])
    profile_json = base / "bwrap" / f"{profile}.json"
    atomic_write_bytes(profile_json, compiled)
    bridges = tuple(b.name for b in bwrap.load(bwrap.shipped()[profile]).bridges)
    return Prepared(profile, profile_json, base / "seccomp" / host_arch, bridges)


def launcher_argv(
    prepared: Prepared,
    workspace: Path,
    ports: Mapping[str, int | str],
    *,
    user: str | None = None,
    self_test: bool = False,
    cmd: Sequence[str] = (),
) -> list[str]:
    """The launcher's command line; ``ports`` maps each bridge name to a 127.0.0.1 port."""
    argv = [
        sys.executable, str(LAUNCHER), "--profile", str(prepared.profile_json),
        "--seccomp-dir", str(prepared.seccomp_dir), "--workspace", str(workspace),
    ]  # fmt: skip
    for name in prepared.bridges:
        if name not in ports:
            raise ImageError(
                f"profile {prepared.profile!r} has a bridge {name!r} this task has no proxy for",
                hint="bridges named http and socks are supported",
            )
        argv += ["--bridge", f"{name}=tcp:127.0.0.1:{ports[name]}"]
    argv += ["--user", user] if user else []
    argv += ["--self-test"] if self_test else ["--", *cmd]
    return argv
