"""Stopping a stand-in build half-way leaves no image, no scratch tree, no mount, no process."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.hosttools import need

ROOT = Path(__file__).resolve().parents[2]


def _mounts_under(path: Path) -> list[str]:
    text = Path("/proc/self/mountinfo").read_text()
    return [line.split()[4] for line in text.splitlines() if f" {path}/" in line]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and proc.name != str(os.getpid()):
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(cmdline)
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_build_leaves_nothing_behind(tmp_path: Path, sig: signal.Signals) -> None:
    need("mmdebstrap")
    if os.geteuid() != 0:
        pytest.fail("building the stand-in needs root: run the tests as root", pytrace=False)
    env = {**os.environ, "SANDBOX_IMAGE_CACHE_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [str(ROOT / "inv"), "standin", "--arch", "amd64"],
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # A Ctrl-C as a terminal delivers it: a test runner started in the
        # background (a non-interactive shell's `&`) passes SIGINT on ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        # Wait until mmdebstrap has mounted /proc, /sys, /dev inside the scratch rootfs:
        # the worst moment to stop, since deleting through those mounts would hurt the host.
        deadline = time.monotonic() + 180
        while not _mounts_under(tmp_path) and time.monotonic() < deadline:
            assert proc.poll() is None, "the build ended before it was interrupted"
            time.sleep(0.5)
        assert _mounts_under(tmp_path), "mmdebstrap never mounted anything within 180 s"
        proc.send_signal(sig)
        # Ctrl-C exits 130 and SIGTERM 143, as shells report them; both clean up first.
        assert proc.wait(timeout=120) == (143 if sig == signal.SIGTERM else 130)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _mounts_under(tmp_path) == []
    assert _processes_mentioning(str(tmp_path)) == []  # mmdebstrap and its children are gone
    left = sorted(p.name for p in (tmp_path / "standin").iterdir())
    assert [name for name in left if not name.endswith(".build.log")] == []
    assert Path("/dev/shm").is_dir()  # was bind-mounted into the rootfs; still the host's
