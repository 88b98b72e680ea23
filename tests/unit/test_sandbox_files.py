"""What the image gets for the sandbox, and that the guest code stays Python 3.10 + stdlib."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from image.contract import guest
from image.guest import bwrap_profile
from image.sandbox import guestfiles, seccomp

GUEST_FILES = [guestfiles.GUEST_DIR / m for m in guestfiles.GUEST_MODULES]


@pytest.mark.parametrize(("arch", "seccomp_arch"), [("arm64", "aarch64"), ("amd64", "x86_64")])
def test_guest_files_hold_the_launcher_profiles_and_that_arch_s_filters(
    arch: str, seccomp_arch: str
) -> None:
    files = guestfiles.guest_files(arch)
    assert sorted(files) == sorted(
        [
            "/usr/local/bin/sandbox-exec",
            "/usr/local/lib/sandbox-image/sandbox_exec.py",
            "/usr/local/lib/sandbox-image/sandbox_inner.py",
            "/usr/local/lib/sandbox-image/bwrap_profile.py",
            "/usr/local/lib/sandbox-image/exec_agent.py",
            "/usr/local/lib/sandbox-image/channel.py",
            "/etc/systemd/system/sandbox-image-exec.service",
            "/etc/systemd/system/sandbox-image-exec-vsock.service",
            "/etc/sandbox-image/bwrap/agent.json",
            "/etc/sandbox-image/in-vm",
            "/etc/sysctl.d/60-sandbox-image.conf",
            *[
                f"/usr/local/lib/sandbox-image/seccomp/{n}{ext}"
                for n in ("agent", "unix-block")
                for ext in (".bpf", ".pfc", ".bpf.sha256")
            ],
        ]
    )
    assert (
        files["/usr/local/lib/sandbox-image/seccomp/agent.bpf"]
        == seccomp.compile_named("agent", seccomp_arch).bpf
    )
    pfc = files["/usr/local/lib/sandbox-image/seccomp/agent.pfc"].decode()
    assert f"# filter for arch {seccomp_arch} " in pfc
    profile = json.loads(files["/etc/sandbox-image/bwrap/agent.json"])
    assert bwrap_profile.load_document("agent", profile).name == "agent"
    assert {"/usr/local/bin/sandbox-exec"} == guestfiles.EXECUTABLES
    assert files["/etc/sysctl.d/60-sandbox-image.conf"] == b"kernel.yama.ptrace_scope = 1\n"


def test_the_command_on_path_runs_the_installed_launcher() -> None:
    shim = guestfiles.guest_files("arm64")["/usr/local/bin/sandbox-exec"].decode()
    assert shim.startswith("#!/usr/bin/python3 -I\n")
    assert 'sys.path.insert(0, "/usr/local/lib/sandbox-image")' in shim
    ast.parse(shim, feature_version=(3, 10))


def test_the_exec_agent_starts_at_boot_on_its_port() -> None:
    unit = guestfiles.guest_files("amd64")["/etc/systemd/system/sandbox-image-exec.service"]
    text = unit.decode()
    assert ("ExecStart=/usr/bin/python3 -I /usr/local/lib/sandbox-image/exec_agent.py "
            "--device /dev/virtio-ports/org.sandbox-image.exec.0\n") in text  # fmt: skip
    assert "Restart=always" in text and "WantedBy=multi-user.target" in text
    # Its vsock twin: the same agent, for snapshots made where the host has vhost-vsock.
    vsock = guestfiles.guest_files("amd64")["/etc/systemd/system/sandbox-image-exec-vsock.service"]
    assert ("ExecStart=/usr/bin/python3 -I /usr/local/lib/sandbox-image/exec_agent.py "
            f"--vsock {guest.EXEC_VSOCK_PORT}\n") in vsock.decode()  # fmt: skip
    # Exit 0 in a VM without vsock is the end of it; a crash is restarted.
    assert "Restart=on-failure" in vsock.decode()


def test_guest_paths_match_the_launcher_defaults() -> None:
    from image.guest import sandbox_exec

    assert str(sandbox_exec.PROFILE_DIR) == guestfiles.PROFILE_DIR
    assert str(sandbox_exec.SECCOMP_DIR) == guestfiles.SECCOMP_DIR


@pytest.mark.parametrize("path", GUEST_FILES, ids=lambda p: p.name)
def test_guest_code_parses_as_python_3_10_and_imports_only_the_stdlib(path: Path) -> None:
    source = path.read_text()
    tree = ast.parse(source, feature_version=(3, 10))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    # The sibling modules (the launcher's, the exec agent's), host or guest layout.
    ours = {"image", "bwrap_profile", "channel", "sandbox_exec", "sandbox_inner"}
    assert imported - ours <= set(sys.stdlib_module_names)
    for name in ("tomllib", "typing_extensions"):  # 3.11+ or not stdlib
        assert name not in imported


@pytest.mark.allow_subprocess
def test_the_inner_stage_starts_without_the_heavy_modules() -> None:
    """The inner stage's interpreter starts once per sandboxed command: what it imports
    is part of every command's latency. Loaded as bwrap runs it (-I -S)."""
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import sandbox_inner; "
        "print(' '.join(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe, str(guestfiles.GUEST_DIR)],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert "sandbox_inner" in out and "ctypes" in out
    heavy = {"typing", "subprocess", "json", "argparse", "pathlib", "re", "shutil", "site"}
    assert heavy.isdisjoint(out), sorted(heavy.intersection(out))


def test_mount_points_are_read_from_mountinfo_with_its_escapes(tmp_path: Path) -> None:
    """The standby's workspace is made a mount point once: a bind mount within one
    filesystem is one too (os.path.ismount compares devices and misses it)."""
    from image.guest import exec_agent

    table = tmp_path / "mountinfo"
    table.write_text(
        "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
        "47 27 254:0 /workspace /workspace rw,relatime shared:2 - ext4 /dev/vda rw\n"
        "48 27 0:5 / /mnt/my\\040share rw - 9p share rw\n"
    )
    assert exec_agent.mount_points(str(table)) == {"/", "/workspace", "/mnt/my share"}
