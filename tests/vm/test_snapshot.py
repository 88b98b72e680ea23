"""snapshot and launch from the demo's snapshot: isolation, folders, disks, integrity."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from image import config
from image.contract import vmstate
from image.errors import ImageError
from image.runtime import api, snapshot
from image.runtime.execchannel import ChannelError
from tests.vm.conftest import qemu_processes

ROOT = Path(__file__).resolve().parents[2]


def _digests(snapdir: Path) -> dict[str, str]:
    out = {}
    for path in sorted(snapdir.iterdir()):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        out[path.name] = digest.hexdigest()
    return out


@pytest.fixture(scope="module")
def snapdir(built: dict[str, Path]) -> Path:
    return built["snapshot"]


@pytest.fixture(scope="module")
def snapshot_digests(snapdir: Path) -> dict[str, str]:
    return _digests(snapdir)


def sh(sandbox: snapshot.Launch, script: str, timeout: float = 120) -> str:
    result = sandbox.exec(["/bin/sh", "-c", script], timeout=timeout)
    assert result.exit_code == 0, result.stderr.decode(errors="replace")
    return str(result.stdout.decode(errors="replace"))


@pytest.fixture
def launch_two(
    snapdir: Path, vm_config: config.BuildConfig
) -> Iterator[tuple[snapshot.Launch, snapshot.Launch]]:
    with ExitStack() as stack:
        a = stack.enter_context(snapshot.launch(snapdir, vm_config, snapshot.LaunchOptions()))
        b = stack.enter_context(snapshot.launch(snapdir, vm_config, snapshot.LaunchOptions()))
        yield a, b
    assert qemu_processes() == []


def test_snapshot_metadata(snapdir: Path) -> None:
    meta = snapshot.load_meta(snapdir)
    assert meta.arch == "amd64"
    assert meta.qemu_version == vmstate.qemu_version("amd64")
    assert meta.sizes["state"] < 64 << 20  # device state only: RAM is the memory file
    assert {p.name for p in snapdir.iterdir()} == {
        "memory", "state", "disk.qcow2", "base.qcow2", "vars.fd", "snapshot.json"}  # fmt: skip
    assert all(not os.access(p, os.W_OK) or os.geteuid() == 0 for p in snapdir.iterdir())
    assert all(p.stat().st_mode & 0o222 == 0 for p in snapdir.iterdir())


def test_launch_cli_streams_output_and_passes_the_exit_status(snapdir: Path) -> None:
    proc = subprocess.run(
        [str(ROOT / "inv"), "launch", "--snapshot", str(snapdir), "--json", "--", "sh", "-c",
         "echo out-line; echo err-line >&2; id -un; printf no-newline; exit 7"],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 7, proc.stderr[-2000:]
    assert proc.stdout.startswith("out-line\nagent\nno-newline\n")
    assert proc.stderr == "err-line\n"  # the command's only: no progress without --verbose
    # --json: the object is the last line, on a line of its own after the command's output.
    assert json.loads(proc.stdout.splitlines()[-1])["exit_code"] == 7
    assert qemu_processes() == []


def test_launch_cli_forwards_piped_stdin(snapdir: Path) -> None:
    proc = subprocess.run(
        [str(ROOT / "inv"), "launch", str(snapdir), "--verbose", "--", "sh", "-c",
         "tr a-z A-Z; echo done"],
        input="hello through the channel\n", capture_output=True, text=True, cwd=ROOT,
        timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "HELLO THROUGH THE CHANNEL\ndone\n"
    assert "launched sandbox-" in proc.stderr  # --verbose: the launch's progress


class _Screen:
    """What a PTY's master shows, read as it comes; ``expect`` consumes up to a match."""

    def __init__(self, fd: int) -> None:
        self.fd, self.pending, self.seen = fd, b"", b""

    def expect(self, wanted: bytes, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while wanted not in self.pending:
            left = deadline - time.monotonic()
            assert left > 0, f"{wanted!r} did not come; the terminal showed {self.seen[-2000:]!r}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # EIO: the launch closed the terminal
                    chunk = b""
                assert chunk, f"the terminal closed before {wanted!r}: {self.seen[-2000:]!r}"
                self.pending += chunk
                self.seen += chunk
        self.pending = self.pending[self.pending.index(wanted) + len(wanted) :]


def test_launch_shell_through_a_real_terminal(snapdir: Path) -> None:
    """--shell on a PTY, as a user's terminal: its size, keys, job control, and Ctrl-C
    interrupting the sandbox's foreground job (not the launch); `exit 3` is the status."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 37, 111, 0, 0))
    proc = subprocess.Popen(
        [str(ROOT / "inv"), "launch", str(snapdir), "--shell"],
        stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )  # fmt: skip
    os.close(slave)
    screen = _Screen(master)
    try:
        screen.expect(b"agent@sandbox:/workspace$ ")  # the prompt: bash reads keys now
        os.write(master, b"stty size; echo id=$(id -u) $((6 * 7))\r")
        screen.expect(b"37 111\r\nid=1001 42\r\n")
        screen.expect(b"$ ")
        os.write(master, b"echo sleeping; sleep 100\r")
        screen.expect(b"sleeping\r\n")
        time.sleep(1)
        os.write(master, b"\x03")  # Ctrl-C: to the sleep, in the sandbox
        screen.expect(b"$ ")
        os.write(master, b"echo status=$?\r")
        screen.expect(b"status=130")
        os.write(master, b"exit 3\r")
        assert proc.wait(timeout=120) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert qemu_processes() == []


def test_the_python_api(snapdir: Path, vm_config: config.BuildConfig) -> None:
    """What a harness imports: run (stdin, env, cwd, timeout), spawn with a PTY, and
    put/get in the workspace, never through a link the sandbox made."""
    with api.launch(snapdir, cache_dir=vm_config.cache_dir) as sandbox:
        result = sandbox.run(["sh", "-c", "id -u; pwd; tr a-z A-Z"], stdin=b"abc", timeout=120)
        assert (result.code, result.stdout) == (0, b"1001\n/workspace\nABC"), result.stderr
        assert sandbox.run(["mkdir", "sub"], timeout=60).ok
        result = sandbox.run(["sh", "-c", "echo $GREETING; pwd"], env={"GREETING": "hi"},
                             cwd="sub", timeout=60)  # fmt: skip
        assert result.stdout == b"hi\n/workspace/sub\n"
        slow = sandbox.run(["sleep", "100"], timeout=2)
        assert slow.timed_out and slow.signal == signal.SIGKILL
        sandbox.put("sub/in.txt", b"from the harness\n")
        assert sandbox.run(["stat", "-c", "%u %a", "sub/in.txt"]).stdout == b"1001 644\n"
        assert sandbox.get("sub/in.txt") == b"from the harness\n"
        assert sandbox.run(["ln", "-s", "/etc", "out"]).ok
        with pytest.raises(ChannelError, match="symbolic link"):
            sandbox.put("out/evil.conf", b"x")
        with pytest.raises(ChannelError, match="symbolic link"):
            sandbox.get("out/hostname")
        with pytest.raises(ImageError, match="not a plain path"):
            sandbox.get("../etc/hostname")
        term = sandbox.spawn(["sh", "-c", "test -t 0 && stty size"], pty=True,
                             rows=31, cols=97)  # fmt: skip
        assert term.wait(120).stdout == b"31 97\r\n"


def _launch_streaming(
    snapdir: Path, script: str, started: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    # SIGINT as a terminal's job gets it: a suite started in the background (`cmd &`
    # in a script) runs with SIGINT ignored, which a child would inherit and keep.
    proc = subprocess.Popen(
        [str(ROOT / "inv"), "launch", str(snapdir), "--", "sh", "-c", script],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    started.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"  # the command runs
    return proc


@pytest.fixture
def launches() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert qemu_processes() == []


def test_ctrl_c_reaches_the_sandboxed_command_and_a_second_ends_the_launch(
    snapdir: Path, launches: list[subprocess.Popen[bytes]]
) -> None:
    """The first Ctrl-C (SIGINT) is the command's, in the sandbox: it traps it and
    exits 4. A command that ignores it: the second Ctrl-C ends the launch (130)."""
    trapping = "trap 'echo interrupted; exit 4' INT; echo started; while :; do sleep 0.2; done"
    proc = _launch_streaming(snapdir, trapping, launches)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 4
    assert proc.stdout is not None and proc.stdout.read() == b"interrupted\n"
    stubborn = _launch_streaming(snapdir, "trap '' INT; echo started; sleep 120", launches)
    stubborn.send_signal(signal.SIGINT)
    time.sleep(3)
    assert stubborn.poll() is None  # the command ignored it; the launch goes on
    stubborn.send_signal(signal.SIGINT)
    assert stubborn.wait(timeout=120) == 130


def test_sigterm_ends_a_streaming_launch(
    snapdir: Path, launches: list[subprocess.Popen[bytes]]
) -> None:
    """SIGTERM while the command streams: the launch stops and cleans up (143)."""
    proc = _launch_streaming(snapdir, "echo started; sleep 120", launches)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143


def test_the_exec_agent_streams_runs_sandboxed_and_moves_files(
    snapdir: Path, vm_config: config.BuildConfig
) -> None:
    with (
        snapshot.launch(snapdir, vm_config, snapshot.LaunchOptions()) as sandbox,
        sandbox.exec_session() as session,
    ):
        start = time.monotonic()
        proc = session.spawn(["sh", "-c", "echo first; sleep 2; echo second"])
        proc.close_stdin()
        chunks = proc.output(60)
        assert next(chunks) == ("stdout", b"first\n")
        first_byte = time.monotonic() - start
        assert list(chunks) == [("stdout", b"second\n")]
        assert first_byte < 1.5 < time.monotonic() - start  # it arrived while the command ran
        # The session disk's work/ is the workspace (put before any sandbox ran).
        session.put("/sessions/work/in.txt", b"from the host\n")
        assert session.get("/workspace/in.txt") == b"from the host\n"
        script = "id -u; grep -E '^(NoNewPrivs|Seccomp_filters)' /proc/self/status; pwd; cat in.txt"
        # The first runs in the standby sandbox the snapshot saved (started before this
        # launch mounted its session disk), the second in one started for it: alike.
        outputs = []
        for standby in (True, False):
            sandboxed = sandbox.spawn_sandboxed(session, ["sh", "-c", script])
            sandboxed.close_stdin()
            result = sandboxed.wait(120)
            assert result.ok, result.stderr
            assert sandboxed.standby is standby
            outputs.append(result.stdout.decode().splitlines())
        assert outputs[0] == outputs[1] == ["1001", "NoNewPrivs:\t1", "Seccomp_filters:\t2",
                                            "/workspace", "from the host"]  # fmt: skip


def test_command_runs_in_the_sandbox_as_agent(snapdir: Path, vm_config: config.BuildConfig
                                              ) -> None:  # fmt: skip
    with snapshot.launch(snapdir, vm_config, snapshot.LaunchOptions()) as sandbox:
        result = sandbox.sandboxed(["cat", "/proc/self/status"])
        status = result.stdout.decode()
        assert result.exit_code == 0
        assert "NoNewPrivs:\t1" in status
        assert "CapEff:\t0000000000000000" in status
        assert "Seccomp_filters:\t2" in status
        # The build user is gone from the published image.
        assert sandbox.exec(["/usr/bin/id", "build"]).exit_code != 0
        assert sh(sandbox, "findmnt -n -o FSTYPE /sessions").strip() == "ext4"


def test_shared_folder_both_ways_and_read_only(snapdir: Path, vm_config: config.BuildConfig,
                                               tmp_path: Path) -> None:  # fmt: skip
    share = tmp_path / "share"
    share.mkdir()
    (share / "from-host.txt").write_text("hello guest\n")
    rw = snapshot.LaunchOptions(share=share)
    with snapshot.launch(snapdir, vm_config, rw) as sandbox:
        assert sh(sandbox, "cat /mnt/share/from-host.txt") == "hello guest\n"
        sh(sandbox, "echo hello host > /mnt/share/from-guest.txt")
    assert (share / "from-guest.txt").read_text() == "hello host\n"
    ro = dataclasses.replace(rw, share_readonly=True)
    with snapshot.launch(snapdir, vm_config, ro) as sandbox:
        assert sh(sandbox, "cat /mnt/share/from-host.txt") == "hello guest\n"
        denied = sandbox.exec(["/bin/sh", "-c", "echo x > /mnt/share/nope.txt"])
        assert denied.exit_code != 0
        assert b"Read-only file system" in denied.stderr
    assert not (share / "nope.txt").exists()


def test_concurrent_launches_are_isolated_and_have_their_own_randomness(
    launch_two: tuple[snapshot.Launch, snapshot.Launch],
) -> None:
    a, b = launch_two
    assert a.hostname != b.hostname
    assert sh(a, "hostname").strip() == a.hostname
    # Right after resume, before anything else draws from it: the kernel RNG.
    rand_a = sh(a, "head -c 32 /dev/urandom | od -An -tx1")
    rand_b = sh(b, "head -c 32 /dev/urandom | od -An -tx1")
    assert rand_a != rand_b
    sh(a, "echo only-in-a > /sessions/a.txt; echo only-in-a > /var/tmp/a.txt")
    assert sh(b, "ls /sessions /var/tmp").count("a.txt") == 0
    assert sh(a, "cat /sessions/a.txt") == "only-in-a\n"
    boot_a = sh(a, "cat /proc/sys/kernel/random/boot_id")
    assert boot_a == sh(b, "cat /proc/sys/kernel/random/boot_id")  # same boot, resumed twice


def test_the_snapshot_is_never_modified(
    snapdir: Path, snapshot_digests: dict[str, str], vm_config: config.BuildConfig
) -> None:
    with snapshot.launch(snapdir, vm_config, snapshot.LaunchOptions()) as sandbox:
        sh(sandbox, "dd if=/dev/urandom of=/var/tmp/junk bs=1M count=64 status=none; sync")
    assert _digests(snapdir) == snapshot_digests


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("qemu_version", "6.2.0", "made by QEMU 6.2.0"),
    ("device_hash", "0" * 64, "machine or device set differs"),
    ("format", 99, "snapshot format 99"),
])  # fmt: skip
def test_a_tampered_or_foreign_snapshot_is_refused(
    snapdir: Path,
    vm_config: config.BuildConfig,
    tmp_path: Path,
    field: str,
    value: object,
    fragment: str,
) -> None:
    copy = tmp_path / "snap"
    copy.mkdir()
    for path in snapdir.iterdir():
        if path.name != "snapshot.json":
            os.link(path, copy / path.name)  # no copy of the RAM file
    meta = json.loads((snapdir / "snapshot.json").read_text())
    meta[field] = value
    (copy / "snapshot.json").write_text(json.dumps(meta))
    with pytest.raises(ImageError) as info, \
            snapshot.launch(copy, vm_config, snapshot.LaunchOptions()):  # fmt: skip
        pass
    assert fragment in str(info.value)
    assert qemu_processes() == []


def test_a_missing_snapshot_is_a_clear_error(tmp_path: Path, vm_config: config.BuildConfig
                                             ) -> None:  # fmt: skip
    with pytest.raises(ImageError, match="is not a snapshot"), \
            snapshot.launch(tmp_path, vm_config, snapshot.LaunchOptions()):  # fmt: skip
        pass
