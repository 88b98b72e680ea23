"""What the image needs for the in-guest sandbox: the launcher, its profiles, the filters.

``guest_files(arch)`` is the one entry point for the build (cloud-init write_files,
or a copy over SSH): absolute guest path -> bytes. Every file is 0644 except the
paths in ``EXECUTABLES`` (0755). The build proves the result in the VM with
``SELF_TEST_COMMAND`` run as the unprivileged user: it prints one JSON line
(``{"ok": true, "arch": ..., "checks": {...}}``) and exits 0 only if every check held.
"""

from __future__ import annotations

from pathlib import Path

from image.contract import guest
from image.sandbox import bwrap, seccomp

GUEST_DIR = Path(__file__).resolve().parents[1] / "guest"

LAUNCHER = guest.LAUNCHER
LIB_DIR = "/usr/local/lib/sandbox-image"
SECCOMP_DIR = f"{LIB_DIR}/seccomp"
PROFILE_DIR = "/etc/sandbox-image/bwrap"
EXECUTABLES = frozenset({LAUNCHER})
SELF_TEST_COMMAND = guest.SELF_TEST_COMMAND
# Tells the launcher it runs in the VM, where 10.0.2.100 is QEMU's way to the host's
# proxy; without it the launcher leads bridges to loopback only.
IN_VM_MARKER = guest.IN_VM_MARKER
_IN_VM_TEXT = b"""This file tells sandbox-exec it runs inside a sandbox-image VM, where the
bridges' 10.0.2.100 is QEMU's forward to the host's egress proxy. Do not copy it to a host.
"""

# The launcher proper lives in LIB_DIR next to the module it imports; the command on
# PATH only points there. -I: PYTHON* variables of the caller cannot change it.
_SHIM = f'''#!/usr/bin/python3 -I
"""sandbox-exec: run a command in the sandbox. The code is in {LIB_DIR}/sandbox_exec.py."""
import sys

sys.path.insert(0, "{LIB_DIR}")
import sandbox_exec  # noqa: E402

sys.exit(sandbox_exec.main())
'''

GUEST_MODULES = (
    "sandbox_exec.py", "sandbox_inner.py", "bwrap_profile.py", "exec_agent.py", "channel.py",
)  # fmt: skip

# The exec agent, started at boot; it waits for its port (the build VM has none).
_EXEC_DEVICE = f"/dev/virtio-ports/{guest.EXEC_PORT_NAME}"
EXEC_UNIT = f"/etc/systemd/system/{guest.EXEC_SERVICE}"
_EXEC_UNIT_TEXT = f"""[Unit]
Description=sandbox-image exec agent: the host's channel for commands (docs/exec.md)

[Service]
ExecStart=/usr/bin/python3 -I {LIB_DIR}/exec_agent.py --device {_EXEC_DEVICE}
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
""".encode()
# The same agent on vsock (launches from a snapshot made where the host has
# vhost-vsock); it exits at once, and stays down, in a guest without vsock.
EXEC_VSOCK_UNIT = f"/etc/systemd/system/{guest.EXEC_VSOCK_SERVICE}"
_EXEC_VSOCK_UNIT_TEXT = f"""[Unit]
Description=sandbox-image exec agent on vsock (docs/exec.md)

[Service]
ExecStart=/usr/bin/python3 -I {LIB_DIR}/exec_agent.py --vsock {guest.EXEC_VSOCK_PORT}
Restart=on-failure
RestartSec=1

[Install]
WantedBy=multi-user.target
""".encode()


# Yama's "restricted" scope: a process may ptrace (and open /proc/PID/mem of) only
# its own descendants, so a sandboxed command cannot reach the launcher's bridges or
# bwrap's init even where its filters or Landlock would not stop it. Applied at
# provisioning (runcmd: sysctl --system) and on every boot.
SYSCTL_FILE = "/etc/sysctl.d/60-sandbox-image.conf"
_SYSCTL_TEXT = b"kernel.yama.ptrace_scope = 1\n"


def guest_files(arch: str) -> dict[str, bytes]:
    """Absolute guest path -> content, for a guest of ``arch`` (arm64/amd64 or
    aarch64/x86_64). The filters are compiled for that architecture only."""
    target = seccomp.target_arch(arch)
    files: dict[str, bytes] = {
        LAUNCHER: _SHIM.encode(),
        IN_VM_MARKER: _IN_VM_TEXT,
        SYSCTL_FILE: _SYSCTL_TEXT,
        EXEC_UNIT: _EXEC_UNIT_TEXT,
        EXEC_VSOCK_UNIT: _EXEC_VSOCK_UNIT_TEXT,
    }
    for module in GUEST_MODULES:
        files[f"{LIB_DIR}/{module}"] = (GUEST_DIR / module).read_bytes()
    for name in seccomp.shipped():
        compiled = seccomp.compile_named(name, target)
        for file_name, data in seccomp.outputs(compiled).items():
            files[f"{SECCOMP_DIR}/{file_name}"] = data
    for name in bwrap.shipped():
        files[f"{PROFILE_DIR}/{name}.json"] = bwrap.compile_named(name)
    return files
