"""The exec channel end to end on this host: the real agent (image/guest/exec_agent.py,
as the guest runs it) on a Unix socket, the host's ExecSession talking to it. What a
VM adds is the transport (virtio-serial); the protocol and every behaviour are here."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from image.guest import channel
from image.runtime.execchannel import ChannelError, ExecSession

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "image" / "guest" / "exec_agent.py"


def _start_agent(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen([sys.executable, str(AGENT), "--listen", str(sock), *extra])
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the agent did not start"
        time.sleep(0.02)
    return proc, sock


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    launcher = tmp_path / "launcher"
    launcher.write_text('#!/bin/sh\necho "launcher: $*"\n')
    launcher.chmod(0o755)
    proc, sock = _start_agent(tmp_path, "--launcher", str(launcher))
    yield proc, sock
    proc.kill()
    proc.wait()


@pytest.fixture
def guest(agent: tuple[subprocess.Popen[bytes], Path]) -> Iterator[ExecSession]:
    with ExecSession.connect(agent[1]) as session:
        yield session


def test_output_streams_in_the_order_it_is_produced(guest: ExecSession) -> None:
    proc = guest.spawn(["sh", "-c", "echo a; sleep 0.2; echo b >&2; sleep 0.2; echo c"])
    proc.close_stdin()
    assert list(proc.output(30)) == [("stdout", b"a\n"), ("stderr", b"b\n"), ("stdout", b"c\n")]
    assert proc.exit == {"code": 0, "signal": None}


def test_output_arrives_while_the_command_runs(guest: ExecSession) -> None:
    start = time.monotonic()
    proc = guest.spawn(["sh", "-c", "echo first; sleep 2; echo second"])
    chunks = proc.output(30)
    assert next(chunks) == ("stdout", b"first\n")
    first = time.monotonic() - start
    assert list(chunks) == [("stdout", b"second\n")]
    assert first < 1.5 <= time.monotonic() - start


def test_100_mb_of_output_arrive_whole(guest: ExecSession) -> None:
    block = bytes(range(256)) * 4096  # 1 MiB
    code = (
        "import sys\nb = bytes(range(256)) * 4096\nfor _ in range(100): sys.stdout.buffer.write(b)"
    )
    result = guest.run([sys.executable, "-c", code], timeout=300)
    assert result.ok and len(result.stdout) == 100 * len(block)
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(block * 100).digest()


def test_stdin_round_trip(guest: ExecSession) -> None:
    data = os.urandom(5 << 20)
    result = guest.run(["cat"], stdin=data, timeout=60)
    assert result.ok and result.stdout == data


def _gone(pid: int, within: float = 5) -> bool:
    """Dead within ``within`` s: no such process, or a zombie (killed, and waiting
    for whoever inherited it to reap it; on this machine PID 1 reaps orphans late)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return True
        if stat[stat.rindex(")") + 2] in "ZX":
            return True
        time.sleep(0.05)
    return False


def test_a_signal_ends_the_whole_process_group(guest: ExecSession) -> None:
    proc = guest.spawn(["sh", "-c", "sleep 300 & echo $!; wait"])
    _, line = next(proc.output(30))
    background = int(line)
    proc.signal(signal.SIGTERM)
    result = proc.wait(30)
    assert (result.code, result.signal) == (None, signal.SIGTERM)
    assert _gone(background), "the background process outlived the signal"


# A launcher that, like runuser + sandbox-exec + bwrap --new-session, runs the
# command in a session of its own and would end it if it got the signal itself.
_LAUNCHER_AND_SESSION = """
trap 'echo launcher-got-it; exit 99' INT
setsid sh -c 'trap "echo command-got-it; exit 5" INT; echo ready $$; while :; do sleep 0.1; done'
"""


def test_a_signal_reaches_a_sandboxed_command_in_its_own_session(guest: ExecSession) -> None:
    """Ctrl-C into the sandbox: the command's session gets SIGINT, the launcher above
    it (which would end the whole sandbox) does not."""
    proc = guest.spawn(["sh", "-c", _LAUNCHER_AND_SESSION])
    proc.close_stdin()
    chunks = proc.output(30)
    assert next(chunks)[1].startswith(b"ready ")
    proc.signal(signal.SIGINT)
    assert b"".join(c for _, c in chunks) == b"command-got-it\n"
    assert proc.exit is not None and proc.exit.get("code") == 5
    killed = guest.spawn(["sh", "-c", _LAUNCHER_AND_SESSION])  # SIGKILL: all of it
    killed.close_stdin()
    inner = int(next(killed.output(30))[1].split()[1])
    killed.kill()
    assert killed.wait(30).signal == signal.SIGKILL
    assert _gone(inner), "the command in its own session outlived SIGKILL"


def test_a_timeout_kills_and_says_so(guest: ExecSession) -> None:
    start = time.monotonic()
    result = guest.run(["sleep", "30"], timeout=1)
    assert result.timed_out and result.signal == signal.SIGKILL
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(
    ("argv", "code", "sig"),
    [(["sh", "-c", "exit 3"], 3, None), (["sh", "-c", "kill -SEGV $$"], None, signal.SIGSEGV),
     (["true"], 0, None)],
)  # fmt: skip
def test_exit_codes_and_deaths_by_signal(
    guest: ExecSession, argv: list[str], code: int | None, sig: int | None
) -> None:
    result = guest.run(argv, timeout=30)
    assert (result.code, result.signal) == (code, sig)


def test_a_command_that_does_not_exist(guest: ExecSession) -> None:
    result = guest.run(["/nonexistent/tool"], timeout=30)
    assert result.code == 127 and "No such file" in (result.error or "")


def test_a_pty(guest: ExecSession) -> None:
    proc = guest.spawn(["sh", "-c", "tty; stty size; read line; echo got:$line"],
                       pty=True, rows=40, cols=100)  # fmt: skip
    proc.write(b"hello\n")
    result = proc.wait(30)
    text = result.stdout.decode()
    assert "/dev/pts/" in text and "40 100" in text and "got:hello" in text
    assert result.stderr == b""  # one terminal: everything is on it


def test_two_commands_at_once(guest: ExecSession) -> None:
    start = time.monotonic()
    one = guest.spawn(["sh", "-c", "sleep 1; echo one"])
    two = guest.spawn(["sh", "-c", "sleep 1; echo two"])
    assert (one.wait(30).stdout, two.wait(30).stdout) == (b"one\n", b"two\n")
    assert time.monotonic() - start < 1.9


def test_sandboxed_commands_go_through_the_launcher(guest: ExecSession) -> None:
    assert guest.run(["true"], sandbox=True, timeout=30).stdout == b"launcher: -- true\n"


def test_put_and_get(guest: ExecSession, tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    guest.put(str(tmp_path / "file.bin"), data, mode=0o600)
    assert (tmp_path / "file.bin").read_bytes() == data
    assert (tmp_path / "file.bin").stat().st_mode & 0o777 == 0o600
    assert guest.get(str(tmp_path / "file.bin")) == data
    with pytest.raises(ChannelError, match="No such file"):
        guest.get(str(tmp_path / "missing"))
    with pytest.raises(ChannelError, match="No such file"):
        guest.put(str(tmp_path / "no" / "dir" / "x"), b"x")
    assert guest.run(["true"], timeout=30).ok  # the session goes on


def test_files_within_a_directory_never_follow_a_link_out_of_it(
    guest: ExecSession, tmp_path: Path
) -> None:
    """What a sandboxed command can leave in its workspace (a link to /etc, a FIFO)
    cannot redirect the root agent's put or get, nor block it."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    os.chown(work, 1234, 4321)
    (elsewhere / "secret").write_text("not yours\n")
    (work / "out").symlink_to(elsewhere)
    (work / "secret").symlink_to(elsewhere / "secret")
    os.mkfifo(work / "pipe")
    inside = str(work)
    with pytest.raises(ChannelError, match="symbolic link"):
        guest.put("out/passwd", b"x", within=inside)
    assert not (elsewhere / "passwd").exists()
    with pytest.raises(ChannelError, match="symbolic link"):
        guest.get("out/secret", within=inside)
    with pytest.raises(ChannelError, match="symbolic link"):
        guest.get("secret", within=inside)
    with pytest.raises(ChannelError, match="not a regular file"):
        guest.get("pipe", within=inside, timeout=10)
    (work / "sub").mkdir()
    guest.put("sub/new.txt", b"new\n", within=inside)
    made = (work / "sub" / "new.txt").stat()
    assert (made.st_uid, made.st_gid) == (1234, 4321)  # the directory's owner, not root
    assert guest.get("sub/new.txt", within=inside) == b"new\n"
    guest.put("secret", b"replaced\n", within=inside)  # the link itself is replaced
    assert (elsewhere / "secret").read_text() == "not yours\n"
    assert not (work / "secret").is_symlink()
    assert sorted(p.name for p in work.iterdir()) == ["out", "pipe", "secret", "sub"]


def _raw(sock_path: Path, data: bytes) -> list[dict[str, object]]:
    """Send raw bytes to the agent; the control messages it answers before closing."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(sock_path))
        sock.sendall(data)
        stream = sock.makefile("rb")
        messages = []
        while (frame := channel.read_frame(stream)) is not None:
            messages.append(channel.decode_control(frame[2]))
        return messages


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "not a frame"),
        (
            struct.pack("!2sBBII", b"SX", 1, channel.STDIN, 1, 1 << 31),
            "a frame of 2147483648 bytes",
        ),
        (struct.pack("!2sBBII", b"SX", 9, channel.CONTROL, 0, 0), "protocol version 9"),
        (channel.encode(channel.CONTROL, 0, b"[1, 2]"), "without an 'op'"),
        (channel.control(0, "format-disk"), "unknown request 'format-disk'"),
        (channel.control(1, "spawn", argv="rm -rf /"), "a bad spawn request"),
        (channel.control(1, "put", path="/tmp/x", mode="rw"), "a bad 'put' request"),
        (channel.control(1, "get", path="../etc/shadow", within="/tmp"), "not a plain relative"),
        (channel.control(1, "get", path="etc/shadow"), "not an absolute file path"),
        # Checked before anything is touched (this runs on the test host):
        (
            channel.control(
                1, "personalize", hostname="a b", time_ns=1, entropy="00" * 64, mounts=[]
            ),
            "a bad 'personalize' request",
        ),
        (
            channel.control(
                1, "personalize", hostname="ok", time_ns=1, entropy="00" * 8, mounts=[]
            ),
            "a bad 'personalize' request",
        ),
        (
            channel.control(
                1,
                "personalize",
                hostname="ok",
                time_ns=1,
                entropy="00" * 64,
                mounts=[{"source": "x", "target": "rel", "fstype": "9p", "options": ""}],
            ),
            "a bad 'personalize' request",
        ),
        (
            channel.control(
                1,
                "personalize",
                hostname="ok",
                time_ns=1,
                entropy="00" * 64,
                mounts=[
                    {
                        "source": "/a",
                        "target": "/b",
                        "fstype": "none",
                        "options": "",
                        "bind": True,
                        "readonly": True,
                    }
                ],
            ),
            "a read-only bind mount",
        ),
        (channel.control(1, "standby", sandbox={"workspace": "rel"}), "a bad sandbox request"),
        (
            channel.control(1, "standby", sandbox={"workspace": "/w", "terminal": True}),
            "for pipes, not a terminal",
        ),
    ],
)
def test_a_host_that_breaks_the_protocol_gets_one_error_and_is_closed(
    tmp_path: Path, data: bytes, says: str
) -> None:
    proc, sock = _start_agent(tmp_path, "--once")
    try:
        messages = _raw(sock, data)
        assert proc.wait(10) == 0  # the session ended; the agent is ready for the next
    finally:
        proc.kill()
    assert len(messages) == 1 and messages[0]["op"] == "error"
    assert says in str(messages[0]["message"])


def _fake_agent(tmp_path: Path, answer: bytes) -> Path:
    """A guest side that answers the greeting with ``answer`` (a broken or hostile agent)."""
    path = tmp_path / "fake.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(answer)
            time.sleep(1)
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return path


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (b"\x00" * 64, "not a frame"),
        (struct.pack("!2sBBII", b"SX", 1, channel.STDOUT, 1, 1 << 30), "a frame of 1073741824"),
        (struct.pack("!2sBBII", b"SX", 1, channel.CONTROL, 0, 100) + b"{", "closed the channel"),
    ],
)
def test_a_guest_that_sends_garbage_is_a_clear_error_not_a_hang(
    tmp_path: Path, answer: bytes, says: str
) -> None:
    start = time.monotonic()
    with pytest.raises(ChannelError, match=says):
        ExecSession.connect(_fake_agent(tmp_path, answer), timeout=20)
    assert time.monotonic() - start < 15


def test_the_agent_killed_mid_command_is_a_clear_error(
    agent: tuple[subprocess.Popen[bytes], Path], guest: ExecSession
) -> None:
    proc = guest.spawn(["sleep", "30"])
    agent[0].kill()
    with pytest.raises(ChannelError, match=r"closed the channel|connection failed"):
        proc.wait(30)
    with pytest.raises(ChannelError):
        guest.run(["true"], timeout=5)


def test_a_listener_serves_only_peers_it_allows_and_the_vsock_agent_only_the_host(
    tmp_path: Path,
) -> None:
    """The agent's listener (the vsock transport's, on a Unix socket here: a test may
    not open vsock connections, which would reach this machine's hypervisor): a
    refused peer gets no session; the next, allowed, is served as on any transport."""
    from image.guest import exec_agent

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "agent.sock"))
    server.listen(1)
    verdicts = iter([False, True])
    options = exec_agent.AgentOptions("/bin/false", None, None)
    serving = threading.Thread(target=exec_agent.serve_listener, args=(server, options),
                               kwargs={"once": True, "allowed": lambda _peer: next(verdicts)},
                               daemon=True)  # fmt: skip
    serving.start()
    with pytest.raises(ChannelError, match=r"closed the channel|connection failed"):
        ExecSession.connect(tmp_path / "agent.sock", timeout=10)  # closed, never greeted
    with ExecSession.connect(tmp_path / "agent.sock", timeout=10) as session:
        assert session.run(["echo", "served"], timeout=30).stdout == b"served\n"
    serving.join(10)
    assert not serving.is_alive()
    server.close()
    # vsock: the host is CID 2; a process in the guest itself (loopback) is not.
    assert exec_agent.from_vsock_host((2, 40000))
    assert not exec_agent.from_vsock_host((1, 40000)) and not exec_agent.from_vsock_host((7, 1))
    assert not exec_agent.from_vsock_host("/some/unix/peer")


def test_the_vsock_agent_serves_only_a_vm_with_a_vsock_device(tmp_path: Path) -> None:
    from image.guest import exec_agent

    bus = tmp_path / "devices"
    for name, device_id in (("virtio0", "0x0001"), ("virtio1", "0x0003")):
        (bus / name).mkdir(parents=True)
        (bus / name / "device").write_text(f"{device_id}\n")
    assert not exec_agent.has_vsock_device(bus)
    (bus / "virtio2").mkdir()
    (bus / "virtio2" / "device").write_text("0x0013\n")  # virtio-vsock
    assert exec_agent.has_vsock_device(bus)
    # Started in a VM without one (the bus above): exit 0 at once, nothing listens.
    (bus / "virtio2" / "device").write_text("0x0001\n")
    done = subprocess.run([sys.executable, str(AGENT), "--vsock", "5200", "--virtio-devices",
                           str(bus)], capture_output=True, text=True, timeout=30,
                          check=False)  # fmt: skip
    assert done.returncode == 0 and "no vsock device" in done.stderr
