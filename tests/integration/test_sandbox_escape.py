"""The escape suite: real bwrap, real filters, a C probe making raw syscalls.

Three runs of the same probe prove that the *filter* answers, not the kernel:
  filtered  the shipped profiles: each blocked call gets the profile's errno or SIGSYS;
  control   the same sandbox without seccomp: the kernel's own answer to those
            arguments differs (success, EBADF, EFAULT, EINVAL, ...);
  marker    the same profiles with every errno but ENOSYS replaced by EBADSLT: each blocked call
            returns EBADSLT, which no kernel path gives for these arguments. This
            also covers the calls the kernel refuses with EPERM before looking at
            anything else (an init-namespace capability check), which no argument
            can tell apart from the filter.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from image import run
from image.guest import exec_agent
from image.runtime.execchannel import ChannelError, ExecSession
from image.sandbox import bwrap, guestfiles, seccomp
from tests.fixtures import escape_cases
from tests.hosttools import need

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "image" / "guest" / "sandbox_exec.py"
PROBE_SOURCE = ROOT / "tests" / "fixtures" / "escape_probe.c"
ARCH = seccomp.target_arch(os.uname().machine)
MARKER = escape_cases.MARKER
NOBODY = 65534

if ARCH != "x86_64":  # the probe's foreign-ABI cases are x86 assembly
    pytest.skip(
        "the escape suite's expectations are written for x86_64 hosts", allow_module_level=True
    )

BLOCKED = escape_cases.blocked(ARCH)
KERNEL_SAYS_EPERM_FIRST = escape_cases.KERNEL_SAYS_EPERM_FIRST
ALLOWED = escape_cases.ALLOWED
outcome = escape_cases.outcome


@dataclass
class Sandbox:
    base: Path
    workspace: Path
    seccomp_dir: Path
    marker_dir: Path
    profile_dir: Path
    proxy_port: int
    closed_port: int

    def run(
        self,
        cmd: Sequence[str],
        *,
        profile: str = "agent",
        marker: bool = False,
        launcher: Sequence[str] = (),
        timeout: float = 120,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        argv = [
            sys.executable,
            str(LAUNCHER),
            "--profile",
            profile,
            "--profile-dir",
            str(self.profile_dir),
            "--seccomp-dir",
            str(self.marker_dir if marker else self.seccomp_dir),
            "--workspace",
            str(self.workspace),
            *launcher,
            "--",
            *cmd,
        ]
        return run.run(argv, check=False, timeout=timeout, env=env)

    def sh(self, script: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        return self.run(["sh", "-c", script], **kwargs)

    def probe(self, **kwargs: Any) -> dict[str, dict[str, Any]]:
        result = self.run(["./escape_probe", "all"], **kwargs)
        assert result.returncode == 0, result.stderr.decode()
        return escape_cases.parse_probe_output(result.stdout)


class _Proxy(http.server.BaseHTTPRequestHandler):
    """Stands in for the VM's HTTP proxy: answers every request, names the URL asked for."""

    def do_GET(self) -> None:
        body = f"proxied {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _proxy() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _removed(path: Path) -> Iterator[None]:
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _profile_variant(connect_port: int, **changes: Any) -> str:
    document = bwrap.load(bwrap.shipped()["agent"]).to_document()
    for bridge in document["bridges"]:  # both bridges go to the stand-in proxy
        bridge["connect"] = f"tcp:127.0.0.1:{connect_port}"
    document.update(changes)
    return json.dumps(document)


@pytest.fixture(scope="module")
def sbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    need("bwrap", "socat", "libseccomp", "gcc")
    base = tmp_path_factory.mktemp("sandbox")
    seccomp_dir, marker_dir, profile_dir = base / "seccomp", base / "marker", base / "profiles"
    for d in (marker_dir, profile_dir):
        d.mkdir()
    # Started as root, the launcher runs the sandbox as the workspace's owner: a
    # workspace nobody owns, in a folder nobody can reach (pytest's are root-only).
    workspace = Path(tempfile.mkdtemp(prefix="sandbox-ws.", dir="/tmp"))
    seccomp.write_all(seccomp_dir, arches=[ARCH])
    for name in seccomp.shipped():
        (marker_dir / f"{name}.bpf").write_bytes(escape_cases.marked_filter(name, ARCH))
    run.run(["gcc", "-O1", "-Wall", "-Werror", "-o", workspace / "escape_probe", PROBE_SOURCE])
    if os.geteuid() == 0:
        os.chown(workspace, NOBODY, NOBODY)
    closed = _closed_port()
    with _proxy() as port, _removed(workspace):
        (profile_dir / "agent.json").write_text(_profile_variant(port))
        (profile_dir / "noproxy.json").write_text(_profile_variant(closed))
        (profile_dir / "nofilter.json").write_text(
            _profile_variant(port, seccomp={"bwrap": [], "launcher": []})
        )
        yield Sandbox(base, workspace, seccomp_dir / ARCH, marker_dir, profile_dir, port, closed)


@pytest.fixture(scope="module")
def filtered(sbx: Sandbox) -> dict[str, dict[str, Any]]:
    return sbx.probe()


@pytest.fixture(scope="module")
def control(sbx: Sandbox) -> dict[str, dict[str, Any]]:
    return sbx.probe(profile="nofilter")


@pytest.fixture(scope="module")
def marked(sbx: Sandbox) -> dict[str, dict[str, Any]]:
    return sbx.probe(marker=True)


# --- blocked ------------------------------------------------------------------------


def test_every_probe_case_is_classified(filtered: dict[str, dict[str, Any]]) -> None:
    assert set(filtered) == set(BLOCKED) | ALLOWED


@pytest.mark.parametrize("case", sorted(BLOCKED))
def test_blocked_call_gets_the_profiles_answer(
    case: str, filtered: dict[str, dict[str, Any]]
) -> None:
    assert outcome(filtered[case]) == BLOCKED[case]


@pytest.mark.parametrize("case", sorted(set(BLOCKED) - KERNEL_SAYS_EPERM_FIRST))
def test_without_the_filter_the_kernel_answers_differently(
    case: str, control: dict[str, dict[str, Any]]
) -> None:
    assert outcome(control[case]) != BLOCKED[case]


@pytest.mark.parametrize("case", escape_cases.marked(BLOCKED))
def test_the_filter_decides_every_errno(case: str, marked: dict[str, dict[str, Any]]) -> None:
    assert outcome(marked[case]) == errno.errorcode[MARKER]


@pytest.mark.parametrize("case", sorted(ALLOWED))
def test_allowed_call_gets_the_kernels_own_answer(
    case: str, filtered: dict[str, dict[str, Any]], control: dict[str, dict[str, Any]]
) -> None:
    assert outcome(filtered[case]) == outcome(control[case])


def test_no_direct_network_only_loopback(filtered: dict[str, dict[str, Any]]) -> None:
    assert outcome(filtered["tcp_connect"]) == "ENETUNREACH"


def test_af_unix_is_blocked_even_towards_the_bound_bridge_socket(sbx: Sandbox) -> None:
    script = (
        "import socket\ns = socket.socket(socket.AF_UNIX)\n"
        "s.connect('/run/sandbox-bridge/http.sock')\n"
    )
    result = sbx.run(["python3", "-c", script])
    assert result.returncode == 1
    assert b"PermissionError: [Errno 1] Operation not permitted" in result.stderr


# --- allowed ------------------------------------------------------------------------


def test_python3_runs(sbx: Sandbox) -> None:
    result = sbx.run(["python3", "-c", "import sys, ssl, sqlite3; print(sys.version_info[0])"])
    assert (result.returncode, result.stdout) == (0, b"3\n")


def test_a_c_program_compiles_with_gcc_and_runs_inside(sbx: Sandbox) -> None:
    result = sbx.sh(
        "printf '#include <stdio.h>\\nint main(void){puts(\"built here\");}\\n' "
        "> hello.c && gcc -o hello hello.c && ./hello"
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"built here\n"
    assert (sbx.workspace / "hello").exists()


def test_sh_pipelines_work(sbx: Sandbox) -> None:
    result = sbx.sh("seq 1 1000 | grep -c 7 | tr -d '\\n' | wc -c")
    assert result.stdout.strip() == b"3"  # 271 lines contain a 7


def test_workspace_is_writable_and_the_system_read_only(sbx: Sandbox) -> None:
    result = sbx.sh(
        "echo data > written.txt; touch /usr/x 2>&1; echo $?; touch /etc/x 2>&1; "
        "echo > /tmp/scratch && echo tmp-ok; pwd"
    )
    assert (sbx.workspace / "written.txt").read_text() == "data\n"
    out = result.stdout.decode()
    assert "touch: cannot touch '/usr/x': Read-only file system\n1\n" in out
    assert "touch: cannot touch '/etc/x': Read-only file system" in out
    assert out.endswith("tmp-ok\n/workspace\n")


def test_proc_status_shows_no_privileges_and_two_filters(sbx: Sandbox) -> None:
    result = sbx.run(["cat", "/proc/self/status"])
    status = dict(line.split(":\t", 1) for line in result.stdout.decode().splitlines())
    assert status["NoNewPrivs"] == "1"
    assert int(status["CapEff"], 16) == 0
    assert int(status["CapPrm"], 16) == 0
    assert status["Seccomp"].strip() == "2"  # SECCOMP_MODE_FILTER
    assert status["Seccomp_filters"].strip() == "2"


def test_environment_is_explicit_and_the_hostname_fixed(sbx: Sandbox) -> None:
    assert sbx.run(["hostname"]).stdout == b"sandbox\n"
    result = sbx.run(["env"])
    names = {line.split("=", 1)[0] for line in result.stdout.decode().splitlines()}
    # bwrap sets PWD for --chdir; run.run passes TERM when the test has one, and the
    # profile passes it through; the profile itself sets NODE_PATH and SKILLS_DIR.
    # Nothing else of the caller's environment gets in.
    assert names == {
        "ALL_PROXY",
        "HOME",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "LANG",
        "NODE_PATH",
        "NO_PROXY",
        "PATH",
        "PWD",
        "SKILLS_DIR",
        "all_proxy",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    } | ({"TERM"} if "TERM" in os.environ else set())


# --- exit status, signals, teardown ---------------------------------------------------


def test_exit_status_passes_through(sbx: Sandbox) -> None:
    assert sbx.sh("exit 7").returncode == 7


def test_death_by_signal_is_128_plus_the_signal(sbx: Sandbox) -> None:
    assert sbx.sh("kill -TERM $$").returncode == 128 + signal.SIGTERM
    assert sbx.sh("kill -KILL $$").returncode == 128 + signal.SIGKILL


def test_missing_command_is_127(sbx: Sandbox) -> None:
    result = sbx.run(["no-such-command-here"])
    assert result.returncode == 127
    assert b"no-such-command-here: command not found" in result.stderr


_TERMINAL_PROBE = """
import errno, fcntl, termios
def answer(request, arg):
    try:
        fcntl.ioctl(0, request, arg)
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]
print("TIOCGPGRP", answer(termios.TIOCGPGRP, b"0000"), "TIOCSTI", answer(termios.TIOCSTI, b"x"))
"""


def _on_a_terminal(sbx: Sandbox, *launcher: str, marker: bool = False) -> str:
    """The probe with a PTY as stdin that is the launcher's controlling terminal (as
    the exec agent starts a command with a PTY)."""
    master, slave = os.openpty()
    argv = [sys.executable, str(LAUNCHER), "--profile-dir", str(sbx.profile_dir),
            "--seccomp-dir", str(sbx.marker_dir if marker else sbx.seccomp_dir),
            "--workspace", str(sbx.workspace), *launcher, "--",
            "python3", "-c", _TERMINAL_PROBE]  # fmt: skip
    try:
        proc = subprocess.run(
            argv, stdin=slave, capture_output=True, timeout=120, check=False,
            start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )  # fmt: skip
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return proc.stdout.decode().strip()


def test_terminal_keeps_the_pty_and_the_filter_still_refuses_tiocsti(sbx: Sandbox) -> None:
    """--terminal: the command's PTY stays its controlling terminal (TIOCGPGRP answers;
    under --new-session it is ENOTTY), and pushing input into it is still the
    filter's refusal (EBADSLT in the marker run)."""
    assert _on_a_terminal(sbx) == "TIOCGPGRP ENOTTY TIOCSTI EPERM"
    assert _on_a_terminal(sbx, "--terminal") == "TIOCGPGRP ok TIOCSTI EPERM"
    assert _on_a_terminal(sbx, "--terminal", marker=True) == "TIOCGPGRP ok TIOCSTI EBADSLT"
    refused = sbx.run(["true"], launcher=["--terminal"])  # stdin is not a terminal
    assert refused.returncode == 125
    assert b"--terminal: stdin is not a terminal" in refused.stderr


@contextlib.contextmanager
def _exec_agent(tmp_path: Path, profiles: Path, filters: Path) -> Iterator[Path]:
    """The guest's exec agent, run here on a Unix socket: yields the socket once it listens."""
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen([sys.executable, str(ROOT / "image" / "guest" / "exec_agent.py"),
                              "--listen", str(sock), "--profile-dir", str(profiles),
                              "--seccomp-dir", str(filters)])  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert agent.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        yield sock
    finally:
        agent.kill()
        agent.wait()


def test_the_exec_agent_runs_the_sandbox_in_process(sbx: Sandbox, tmp_path: Path) -> None:
    """The prepared sandbox: the agent forks and runs the launcher's code (no runuser,
    no new interpreter) with the same guarantees; none of the agent's descriptors (the
    host's channel) reach the command; Ctrl-C reaches the command's own session."""
    with _exec_agent(tmp_path, sbx.profile_dir, sbx.seccomp_dir) as sock:
        request = {"profile": "agent", "workspace": str(sbx.workspace), "user": None}
        with ExecSession.connect(sock) as session:
            script = ("id -u; grep -E '^(NoNewPrivs|CapEff|Seccomp_filters):' /proc/self/status;"
                      " ls /proc/self/fd")  # fmt: skip
            result = session.run(["sh", "-c", script], sandbox=request, timeout=120)
            assert result.ok, result.stderr.decode()
            lines = result.stdout.decode().splitlines()
            assert lines[0] == str(NOBODY)
            assert sorted(lines[1:4]) == ["CapEff:\t0000000000000000", "NoNewPrivs:\t1",
                                          "Seccomp_filters:\t2"]  # fmt: skip
            assert lines[4:] == ["0", "1", "2", "3"]  # 3: ls's own directory
            proc = session.spawn(["sh", "-c", "trap 'echo got-int; exit 6' INT; echo ready; "
                                  "while :; do sleep 0.1; done"], sandbox=request)  # fmt: skip
            proc.close_stdin()
            chunks = proc.output(60)
            assert next(chunks) == ("stdout", b"ready\n")
            proc.signal(signal.SIGINT)
            assert b"".join(c for _, c in chunks) == b"got-int\n"
            assert proc.exit is not None and proc.exit.get("code") == 6
            bad = session.run(["true"], sandbox={**request, "profile": "no-such"}, timeout=60)
            assert bad.code == 125 and b"no-such" in bad.stderr


def test_the_exec_agent_reads_the_profile_and_filters_once_at_its_start(
    sbx: Sandbox, tmp_path: Path
) -> None:
    """Read before the agent listens (so a snapshot saves them): a sandboxed command
    still runs, both filters on, after the files are gone."""
    profiles, filters = tmp_path / "profiles", tmp_path / "seccomp"
    shutil.copytree(sbx.profile_dir, profiles)
    shutil.copytree(sbx.seccomp_dir, filters)
    with _exec_agent(tmp_path, profiles, filters) as sock:
        shutil.rmtree(profiles)
        shutil.rmtree(filters)
        request = {"profile": "agent", "workspace": str(sbx.workspace), "user": None}
        with ExecSession.connect(sock) as session:
            result = session.run(["grep", "Seccomp_filters", "/proc/self/status"],
                                 sandbox=request, timeout=120)  # fmt: skip
            assert result.ok, result.stderr.decode()
            assert result.stdout == b"Seccomp_filters:\t2\n"
            # Another profile is read when asked for: gone, it is an error.
            other = session.run(["true"], sandbox={**request, "profile": "nofilter"}, timeout=60)
            assert other.code == 125 and b"cannot read profile" in other.stderr, other


# What a standby's command and a started sandbox's command must see alike.
_STANDBY_PROBE = """
import os, socket, sys
print(os.getuid(), os.getcwd(), sys.stdin.readline().strip())
print(open("from-the-session").read().strip())
with open("/proc/self/status") as status:
    names = ("NoNewPrivs", "CapEff", "Seccomp_filters")
    print(sorted(line.split()[1] for line in status if line.startswith(names)))
print(sorted(os.listdir("/proc/self/fd")))
try:
    socket.socket(socket.AF_UNIX)
except OSError as exc:
    print("AF_UNIX", exc.errno)
print(sorted(os.environ.items()))
open("written-inside", "w").write("ok")
print("to stderr", file=sys.stderr)
sys.exit(3)
"""


@contextlib.contextmanager
def _workspace_mounted_later() -> Iterator[tuple[Path, Path]]:
    """(WORKSPACE, SESSION): an empty directory nobody owns, and another with a file, in
    a folder nobody can reach (pytest's are root-only); the test binds SESSION on
    WORKSPACE, as a launch binds its session disk's work/ on the snapshot's /workspace.
    Unmounted and removed after."""
    base = Path(tempfile.mkdtemp(prefix="sandbox-standby.", dir="/tmp"))
    base.chmod(0o755)
    workspace, session = base / "workspace", base / "session-work"
    for path in (workspace, session):
        path.mkdir()
        os.chown(path, NOBODY, NOBODY)
    (session / "from-the-session").write_text("session disk\n")
    try:
        yield workspace, session
    finally:
        while str(workspace) in exec_agent.mount_points():
            subprocess.run(["umount", "-l", str(workspace)], check=True)
        shutil.rmtree(base)


@dataclass
class _Standby:
    session: ExecSession
    request: dict[str, Any]
    pid: int  # the standby's launcher
    workspace: Path
    session_work: Path  # for the test to bind on the workspace


@contextlib.contextmanager
def _agent_with_a_standby(tmp_path: Path, profiles: Path, filters: Path) -> Iterator[_Standby]:
    """The exec agent, a session with it, and a standby it started on an empty
    workspace (``_workspace_mounted_later``)."""
    with (
        _workspace_mounted_later() as (workspace, session_work),
        _exec_agent(tmp_path, profiles, filters) as sock,
        ExecSession.connect(sock) as session,
    ):
        request = {"profile": "agent", "workspace": str(workspace), "user": None}
        pid = session.standby(request, timeout=120)
        yield _Standby(session, request, pid, workspace, session_work)


@pytest.mark.skipif(os.geteuid() != 0, reason="the agent mounts, as it does in the guest")
def test_a_standby_sandbox_runs_the_first_command_as_a_started_one_would(
    sbx: Sandbox, tmp_path: Path
) -> None:
    """`standby` starts a sandbox ahead of its command; the next spawn with the same
    request runs in it (same pid), and sees what a sandbox started for it sees: the
    workspace mounted after the standby started (mount propagation) as its cwd, the
    user, no-new-privs, CapEff 0, both filters (the AF_UNIX refusal is the marker
    filter's errno), descriptors 0-2 only, the environment, stdin, stdout, stderr and
    the exit status. The next command starts a sandbox of its own."""
    with _agent_with_a_standby(tmp_path, sbx.profile_dir, sbx.marker_dir) as standby:
        run.run(["mount", "--bind", str(standby.session_work), str(standby.workspace)])
        results = []
        for _ in range(2):
            proc = standby.session.spawn(["python3", "-c", _STANDBY_PROBE],
                                         sandbox=standby.request,
                                         env={"TERM": "xterm", "SECRET": "not passed"})  # fmt: skip
            proc.write(b"from stdin\n")
            proc.close_stdin()
            results.append((proc.wait(120), proc.pid, proc.standby))
        written = (standby.session_work / "written-inside").read_text()
    (claimed, claimed_pid, was_standby), (started, started_pid, second_standby) = results
    assert (claimed_pid, was_standby, second_standby) == (standby.pid, True, False)
    assert started_pid != standby.pid
    assert claimed.code == 3, claimed.stderr.decode()
    assert claimed.stderr == b"to stderr\n"
    lines = claimed.stdout.decode().splitlines()
    assert lines[:3] == [f"{NOBODY} /workspace from stdin", "session disk",
                         "['0000000000000000', '1', '2']"]  # fmt: skip
    assert lines[3] == "['0', '1', '2', '3']"  # 3: listdir's own
    assert lines[4] == f"AF_UNIX {MARKER}"
    assert "('TERM', 'xterm')" in lines[5] and "SECRET" not in lines[5]
    assert (started.code, started.stdout, started.stderr) == (3, claimed.stdout, claimed.stderr)
    assert written == "ok"


@pytest.mark.skipif(os.geteuid() != 0, reason="the agent mounts, as it does in the guest")
def test_a_standby_that_died_or_would_not_start_is_not_used(sbx: Sandbox, tmp_path: Path) -> None:
    """A standby killed before its command: the command starts a sandbox of its own.
    One that cannot start (no such profile): the launcher's message, and no standby."""
    with _agent_with_a_standby(tmp_path, sbx.profile_dir, sbx.seccomp_dir) as standby:
        pid = standby.pid
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10  # dead: a zombie until the agent looks
        while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc = standby.session.spawn(["echo", "fresh"], sandbox=standby.request)
        proc.close_stdin()
        result = proc.wait(120)
        assert (result.ok, result.stdout, proc.standby) == (True, b"fresh\n", False)
        with pytest.raises(ChannelError, match="cannot read profile"):
            standby.session.standby({**standby.request, "profile": "no-such"}, timeout=120)


def _processes_with(marker: bytes, *, whole: bool = False) -> list[int]:
    """Pids whose command line holds marker (or is exactly it, NUL-terminated)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                if (cmdline == marker + b"\x00") if whole else (marker in cmdline):
                    found.append(int(entry.name))
    return found


def test_the_commands_death_tears_everything_down(sbx: Sandbox) -> None:
    # A background child that would outlive a plain shell, and the bridges of this run.
    result = sbx.sh("sleep 9871 & echo started")
    assert result.stdout == b"started\n"
    assert _processes_with(b"sleep\x009871") == []
    assert _processes_with(f"TCP:127.0.0.1:{sbx.proxy_port}".encode()) == []


def test_sigterm_to_the_launcher_ends_the_sandbox(sbx: Sandbox) -> None:
    argv = [
        sys.executable,
        str(LAUNCHER),
        "--profile-dir",
        str(sbx.profile_dir),
        "--seccomp-dir",
        str(sbx.seccomp_dir),
        "--workspace",
        str(sbx.workspace),
        "--",
        "sleep",
        "9874",
    ]
    with run.background(argv) as proc:
        deadline = time.monotonic() + 30
        # The sandboxed sleep itself, not the launcher whose argv also names it.
        while not _processes_with(b"sleep\x009874", whole=True):
            assert time.monotonic() < deadline, "the sandboxed sleep never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 128 + signal.SIGTERM
    assert _processes_with(b"sleep\x009874", whole=True) == []
    assert _processes_with(f"TCP:127.0.0.1:{sbx.proxy_port}".encode()) == []


def test_bare_wait_does_not_wait_for_the_bridge(sbx: Sandbox) -> None:
    result = sbx.sh("true & wait; echo done", timeout=30)
    assert result.stdout == b"done\n"


# --- the proxy bridge -----------------------------------------------------------------


def test_bridge_carries_http_to_the_outside_proxy(sbx: Sandbox) -> None:
    script = (
        "import urllib.request as u; print(u.urlopen('http://example.invalid/x').read().decode())"
    )
    result = sbx.run(["python3", "-c", script])
    assert result.stdout == b"proxied http://example.invalid/x\n", result.stderr.decode()


def test_bridge_listens_when_no_proxy_exists(sbx: Sandbox) -> None:
    script = (
        "import socket\ns = socket.create_connection(('127.0.0.1', 3128), timeout=10)\n"
        "s.sendall(b'GET http://x/ HTTP/1.0\\r\\n\\r\\n')\nprint(repr(s.recv(100)))\n"
    )
    result = sbx.run(["python3", "-c", script], profile="noproxy")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"b''\n"  # accepted inside, closed when forwarding failed


def test_a_command_s_first_connection_reaches_the_proxy_even_when_the_bridge_is_slow(
    sbx: Sandbox,
) -> None:
    """The outer bridges start beside bwrap; the command runs only once they listen
    (not merely once their socket files exist). Here the outer socat takes a second
    to start (a `socat` first on the launcher's PATH sleeps, then execs the real one;
    the sandbox's PATH is the profile's) and bash connects as its first act."""
    # Where the launcher, dropped to the workspace's owner, can run it (not tmp_path).
    slow = Path(tempfile.mkdtemp(prefix="sandbox-slowbin.", dir="/tmp"))
    slow.chmod(0o755)
    (slow / "socat").write_text(f'#!/bin/sh\nsleep 1\nexec {shutil.which("socat")} "$@"\n')
    (slow / "socat").chmod(0o755)
    script = (
        "exec 3<>/dev/tcp/127.0.0.1/3128 && "
        "printf 'GET http://example.invalid/first HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    )
    env = {**os.environ, "PATH": f"{slow}:{os.environ['PATH']}"}
    with _removed(slow):
        started = time.monotonic()
        result = sbx.run(["bash", "-c", script], timeout=60, env=env)
    assert time.monotonic() - started > 1  # the slow socat was the one used
    assert result.stdout.endswith(b"proxied http://example.invalid/first"), result


def test_an_outer_bridge_that_cannot_listen_stops_the_launch_before_the_command(
    sbx: Sandbox,
) -> None:
    # A Unix socket path is at most 107 bytes: under this TMPDIR the launcher's
    # session directory gets a longer one, and socat cannot listen there.
    tmp = Path(tempfile.mkdtemp(prefix="sandbox-long.", dir="/tmp"))
    deep = tmp / ("d" * 100)
    deep.mkdir()
    tmp.chmod(0o755)
    deep.chmod(0o1777)  # like /tmp: the launcher, dropped to the workspace's owner, cleans up
    try:
        env = {**os.environ, "TMPDIR": str(deep)}
        result = sbx.run(["sh", "-c", "touch ran-anyway"], timeout=60, env=env)
        assert result.returncode == 125, result
        assert b"the outer bridge sockets: socat exited" in result.stderr, result.stderr
        assert not (sbx.workspace / "ran-anyway").exists()
        assert not list(deep.iterdir())  # the session directory is gone too
        leftover = run.run(["pgrep", "-f", str(deep)], check=False)
        assert leftover.returncode == 1, leftover.stdout  # nothing of it still runs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- the self-test and the installed layout --------------------------------------------


def test_self_test_passes_and_prints_one_json_line(sbx: Sandbox) -> None:
    result = sbx.run([], launcher=["--self-test"])
    report = json.loads(result.stdout.decode().splitlines()[-1])
    assert report["ok"] is True, report
    assert report["arch"] == ARCH
    assert result.returncode == 0


def test_installed_layout_works_for_an_unprivileged_user(tmp_path: Path) -> None:
    """guest_files() laid over this host's / as the VM gets them; run as uid 65534."""
    need("bwrap", "socat")
    if os.geteuid() != 0:
        pytest.fail(
            "this test lays the files over / with bwrap and switches user: run as root",
            pytrace=False,
        )
    root = tmp_path / "root"
    for path, data in guestfiles.guest_files(ARCH).items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(0o755 if path in guestfiles.EXECUTABLES else 0o644)
    for d in [root, *root.rglob("*")]:
        if d.is_dir():
            d.chmod(0o755)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    workspace.chmod(0o777)
    # A private mount namespace (no user namespace: bwrap as root) in which /usr/local
    # and /etc/sandbox-image are the image's; then drop to nobody like the agent user.
    # New mount points go into tmpfs (/etc, /mnt) so nothing is created on the host.
    overlay: list[str] = ["bwrap", "--dev-bind", "/", "/"]
    overlay += ["--ro-bind", str(root / "usr/local"), "/usr/local"]
    overlay += ["--tmpfs", "/mnt", "--bind", str(workspace), "/mnt/ws", "--tmpfs", "/etc"]
    for entry in sorted(p.name for p in Path("/etc").iterdir()):
        overlay += ["--ro-bind", f"/etc/{entry}", f"/etc/{entry}"]
    overlay += ["--ro-bind", str(root / "etc/sandbox-image"), "/etc/sandbox-image"]
    overlay += ["--chdir", "/mnt/ws", "--"]
    overlay += ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    # The image's marker is laid over /etc too, so the launcher would take the shipped
    # 10.0.2.100 at its word: on this host the bridges lead to a closed loopback port.
    closed = _closed_port()
    bridges = [
        "--bridge",
        f"http=tcp:127.0.0.1:{closed}",
        "--bridge",
        f"socks=tcp:127.0.0.1:{closed}",
    ]
    true = run.run(
        [
            *overlay,
            "sandbox-exec",
            "--profile",
            "agent",
            *bridges,
            "--",
            "sh",
            "-c",
            "id -u; cat /proc/self/status | grep Seccomp_filters",
        ],
        check=False,
        timeout=120,
    )
    assert true.returncode == 0, true.stderr.decode()
    assert true.stdout.decode().split() == ["65534", "Seccomp_filters:", "2"]
    test = run.run([*overlay, "sandbox-exec", *bridges, "--self-test"], check=False, timeout=120)
    assert json.loads(test.stdout.decode().splitlines()[-1])["ok"] is True, test.stdout


# --- started as root: the same sandbox as for anyone else ------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="what a root caller gets")


@needs_root
def test_a_root_caller_never_runs_the_command_as_uid_0(sbx: Sandbox) -> None:
    result = sbx.sh("id -u; id -g; grep -E '^(Uid|Gid):' /proc/self/status")
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().split("\n")
    assert lines[:2] == [str(NOBODY), str(NOBODY)]
    assert "\t0\t" not in result.stdout.decode()


@needs_root
def test_a_root_caller_cannot_write_proc_sys_from_the_sandbox(sbx: Sandbox) -> None:
    knob = Path("/proc/sys/fs/lease-break-time")
    before = knob.read_text()
    wanted = "46\n" if before != "46\n" else "47\n"
    result = sbx.sh(f"echo {wanted.strip()} > {knob}; echo status=$?")
    assert knob.read_text() == before
    assert b"status=0" not in result.stdout
    assert b"Permission denied" in result.stderr


@needs_root
def test_a_root_caller_cannot_read_etc_shadow_from_the_sandbox(sbx: Sandbox) -> None:
    result = sbx.run(["cat", "/etc/shadow"])
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"Permission denied" in result.stderr


@needs_root
def test_a_root_owned_workspace_is_refused_with_a_hint(sbx: Sandbox, tmp_path: Path) -> None:
    workspace = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        argv = [sys.executable, str(LAUNCHER), "--profile-dir", str(sbx.profile_dir)]
        argv += ["--seccomp-dir", str(sbx.seccomp_dir), "--workspace", str(workspace)]
        result = run.run([*argv, "--", "true"], check=False, timeout=60)
        assert result.returncode == 125
        message = result.stderr.decode()
        assert "runs as nobody (uid 65534)" in message and "--user OWNER" in message, message
        asked = run.run([*argv, "--user", "root", "--", "true"], check=False, timeout=60)
        assert asked.returncode == 125
        assert b"--user must not be root" in asked.stderr
    finally:
        shutil.rmtree(workspace)


# --- unix-block: no way to a named Unix socket ------------------------------------------


def test_socketpair_dgram_cannot_sendto_a_named_socket(sbx: Sandbox) -> None:
    """The review's reproduction: a datagram listener in the workspace, reached with an
    unconnected socketpair end. Only SOCK_STREAM pairs are allowed."""
    path = sbx.workspace / "log.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    path.chmod(0o777)
    listener.settimeout(0.5)
    script = (
        "import socket\n"
        "try:\n"
        "    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "    a.sendto(b'escaped', '/workspace/log.sock')\n"
        "    print('sent')\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
    )
    try:
        result = sbx.run(["python3", "-c", script])
        marked = sbx.run(["python3", "-c", script], marker=True)
        with pytest.raises(TimeoutError):
            listener.recv(100)
    finally:
        listener.close()
        path.unlink()
    assert result.stdout == f"{errno.EPERM}\n".encode(), result.stderr.decode()
    assert marked.stdout == f"{MARKER}\n".encode(), marked.stderr.decode()


def test_asyncio_still_runs_with_its_stream_socketpair(sbx: Sandbox) -> None:
    script = (
        "import asyncio\n"
        "async def main():\n"
        "    proc = await asyncio.create_subprocess_exec('echo', 'child', "
        "stdout=asyncio.subprocess.PIPE)\n"
        "    out, _ = await proc.communicate()\n"
        "    await asyncio.sleep(0.01)\n"
        "    return out.decode().strip()\n"
        "print(asyncio.run(main()))\n"
    )
    result = sbx.run(["python3", "-c", script])
    assert (result.returncode, result.stdout) == (0, b"child\n"), result.stderr.decode()


# --- the bridges and bwrap's init are out of the command's reach ------------------------

_REACH = r"""
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SYS_pidfd_open, SYS_pidfd_getfd = 434, 438
result = {}
for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
    if pid == os.getpid():
        continue
    name = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode()
    try:
        os.close(os.open(f"/proc/{pid}/mem", os.O_RDWR))
        mem = "opened"
    except OSError as exc:
        mem = exc.errno
    pidfd = libc.syscall(SYS_pidfd_open, pid, 0)
    stolen = None
    if pidfd >= 0:
        ctypes.set_errno(0)
        got = libc.syscall(SYS_pidfd_getfd, pidfd, 0, 0)
        stolen = "stolen" if got >= 0 else ctypes.get_errno()
    result[pid] = {"name": name, "mem": mem, "getfd": stolen}
print(json.dumps(result))
"""


def _reach(sbx: Sandbox, **kwargs: Any) -> dict[str, dict[str, Any]]:
    result = sbx.run(["python3", "-c", _REACH], **kwargs)
    assert result.returncode == 0, result.stderr.decode()
    found: dict[str, dict[str, Any]] = json.loads(result.stdout)
    return found


def test_proc_pid_mem_of_bwrap_init_and_the_bridges_cannot_be_opened(sbx: Sandbox) -> None:
    """The review's reproduction: /proc/PID/mem O_RDWR of pid 1 and the inner socats.
    Landlock's domain (entered after the bridges started) refuses it whatever Yama says."""
    found = _reach(sbx)
    names = sorted(Path(v["name"]).name for v in found.values())
    assert names == ["bwrap", "socat", "socat"], found
    assert {v["mem"] for v in found.values()} == {errno.EACCES}, found


def test_pidfd_getfd_cannot_take_the_bridges_sockets(sbx: Sandbox) -> None:
    found = _reach(sbx)
    assert {v["getfd"] for v in found.values()} == {errno.EPERM}, found
    marked = _reach(sbx, marker=True)
    assert {v["getfd"] for v in marked.values()} == {MARKER}, marked
