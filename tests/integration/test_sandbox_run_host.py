"""`./inv sandbox-run` on a host: its bridges lead only to a proxy it started on loopback.

The shipped profile's bridges name 10.0.2.100, QEMU's guestfwd address, which only
means something inside the VM; on a host it can be a machine on the user's LAN. Each
run here is in a network namespace whose only interface is `lo`: a connection to
anything but loopback fails there for lack of a route, so these tests pass only if
the bridges went to loopback, and they cannot send a packet anywhere else.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from image import run
from tests.hosttools import need

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace needs root")


def _in_loopback_only_netns(args: list[str], out: Path) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "SANDBOX_IMAGE_OUTPUT_DIR": str(out)}
    script = 'ip link set lo up && exec "$@"'
    argv = ["unshare", "--net", "--", "sh", "-c", script, "sh", str(ROOT / "inv"), *args]
    return run.run(argv, check=False, timeout=300, env=env, cwd=ROOT)


@pytest.fixture
def workspace() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sandbox-run-ws.", dir="/tmp"))
    os.chown(path, NOBODY, NOBODY)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_self_test_passes_with_nothing_but_loopback(tmp_path: Path) -> None:
    need("bwrap", "socat", "libseccomp")
    result = _in_loopback_only_netns(["sandbox-run", "--self-test"], tmp_path)
    report = json.loads(result.stdout.decode().splitlines()[-1])
    assert report["ok"] is True, (report, result.stderr.decode()[-2000:])
    assert result.returncode == 0
    records = [json.loads(line) for line in (tmp_path / "sandbox-run" / "egress.jsonl").open()]
    # bridge_listens connected and closed at once: the proxy it reached is ours.
    assert records and all(r["client"].startswith("127.0.0.1:") for r in records), records


def test_a_request_through_the_bridge_reaches_the_tasks_own_proxy(
    tmp_path: Path, workspace: Path
) -> None:
    """Before the fix this got no answer: the outer bridge tried 10.0.2.100."""
    need("bwrap", "socat", "libseccomp")
    script = (
        "import urllib.request, urllib.error\n"
        "try:\n"
        "    urllib.request.urlopen('http://denied.example/x', timeout=30)\n"
        "except urllib.error.HTTPError as exc:\n"
        "    print(exc.code, exc.read().decode().strip())\n"
    )
    args = ["sandbox-run", "--workspace", str(workspace), "--", "python3", "-c", script]
    result = _in_loopback_only_netns(args, tmp_path)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout.decode().startswith("403 "), result.stdout
    records = [json.loads(line) for line in (tmp_path / "sandbox-run" / "egress.jsonl").open()]
    opened = [r for r in records if r["event"] == "open" and r["host"] == "denied.example"]
    assert [r["decision"] for r in opened] == ["deny"]


def test_the_launcher_refuses_a_non_loopback_bridge_outside_the_vm(workspace: Path) -> None:
    """Run directly with the shipped profile (10.0.2.100) and no VM marker: refused
    before any bridge starts, with the way out in the message."""
    need("bwrap", "socat", "libseccomp")
    from image.sandbox import bwrap, seccomp

    profile = workspace / "agent.json"
    profile.write_bytes(bwrap.compile_named("agent"))
    seccomp.write_all(workspace / "sc", arches=[seccomp.target_arch(os.uname().machine)])
    argv = [
        "python3",
        str(ROOT / "image" / "guest" / "sandbox_exec.py"),
        "--profile",
        str(profile),
        "--seccomp-dir",
        str(workspace / "sc" / seccomp.target_arch(os.uname().machine)),
        "--workspace",
        str(workspace),
        "--",
        "true",
    ]
    result = run.run(argv, check=False, timeout=60)
    assert result.returncode == 125
    message = result.stderr.decode()
    assert "leads to tcp:10.0.2.100:3128" in message, message
    assert "--bridge http=tcp:127.0.0.1:PORT" in message
    bad = run.run([*argv[:-2], "--bridge", "web=tcp:127.0.0.1:1", "--", "true"], check=False)
    assert bad.returncode == 125 and b"has no bridge 'web'" in bad.stderr


def test_the_skills_libreoffice_runner_converts_inside_the_sandbox(
    tmp_path: Path, workspace: Path
) -> None:
    """LibreOffice's command line exits 1 in the sandbox (its single-instance pipe is a
    Unix socket, which the second filter refuses): the skills convert through
    LibreOfficeKit (skills/_lib/soffice.py), which needs none. Both filters are on."""
    need("bwrap", "socat", "libseccomp", "swriter")
    shutil.copy(ROOT / "skills" / "_lib" / "soffice.py", workspace)
    (workspace / "in.rtf").write_text(r"{\rtf1 Converted inside the sandbox 42}")
    (workspace / "convert.py").write_text(
        "import sys\nfrom pathlib import Path\nsys.path.insert(0, '.')\n"
        "from soffice import convert\nprint(convert(Path('in.rtf'), 'pdf', Path('out')))\n"
    )
    for path in workspace.iterdir():
        os.chown(path, NOBODY, NOBODY)
    script = (
        "python3 -c 'import socket; socket.socket(socket.AF_UNIX)' 2>/dev/null "
        "&& echo unix-allowed || echo unix-refused; python3 convert.py"
    )
    result = _in_loopback_only_netns(
        ["sandbox-run", "--workspace", str(workspace), "--", "sh", "-c", script], tmp_path
    )
    out = result.stdout.decode()
    assert result.returncode == 0, (out, result.stderr.decode()[-2000:])
    assert "unix-refused" in out  # the filter the conversion has to live with
    text = run.run(["pdftotext", str(workspace / "out" / "in.pdf"), "-"]).stdout.decode()
    assert "Converted inside the sandbox 42" in text
