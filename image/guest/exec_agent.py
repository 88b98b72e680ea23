#!/usr/bin/env python3
"""sandbox-image exec agent: runs commands for the host over one channel, streaming.

Started at boot in the guest (stdlib only, Python >= 3.10), it serves one host
session at a time on a virtio-serial port (``--device``), on a vsock port
(``--vsock``: a second instance, for hosts with vhost-vsock; only the host, CID 2,
is served) or, for tests and other transports, a Unix socket (``--listen``).
Per session, any number of processes:
spawn (argv, env, cwd, pipes or a PTY, sandboxed through the launcher or not);
their stdout and stderr stream back as produced; the host writes and closes stdin,
sends signals (to the whole process group), resizes the PTY; each ends with an
``exit`` message (code, or the signal that killed it) after all of its output.
Files go both ways (``put``/``get``). The wire format is channel.py.

``standby`` starts a sandbox ahead of its command (before a snapshot is saved): the
next spawn with the same sandbox request, from any session, takes it instead of
starting one, so a launch's first sandboxed command costs no bwrap, socat or
interpreter start after the resume (``Standby``).

A session that breaks the protocol (garbage, an oversized frame, a bad request)
gets one ``error`` message naming what was wrong and is closed; its processes are
killed. Everything here runs single-threaded around one selector.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import os
import pty
import re
import select
import selectors
import signal
import socket
import stat
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__:
    from image.guest import channel
else:  # run as a script in the guest (python3 -I: its folder is not on the path)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import channel  # type: ignore[import-not-found,no-redef]

CHUNK = 64 << 10
EXIT_GRACE = 1.0  # after a process exits, how long its output may still drain
MAX_PENDING_STDIN = 16 << 20
SANDBOX_LAUNCHER = "/usr/local/bin/sandbox-exec"


@dataclass(frozen=True)
class AgentOptions:
    launcher: str  # for sandbox=true: a new process through the launcher
    profile_dir: Path | None  # for a sandbox request: None is the launcher's default
    seccomp_dir: Path | None


def _launcher_module() -> Any:
    """The sandbox launcher's code (image/guest/sandbox_exec.py), beside this file."""
    if __package__:
        from image.guest import sandbox_exec
    else:
        import sandbox_exec  # type: ignore[import-not-found,no-redef]
    return sandbox_exec


class Forked:
    """A child forked from this agent that runs Python code, not a new program (the
    prepared sandbox: no interpreter to start). What the agent uses of Popen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    @classmethod
    def start(cls, fds: tuple[int, ...], use_pty: bool, env: dict[str, str],
              cwd: str | None, run: Any) -> Forked:  # fmt: skip
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            return cls(pid)
        code = 125
        try:  # the child: never returns into the agent's loop
            os.setsid()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            if use_pty:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            # Nothing of the agent's reaches the sandbox: above all not the host's
            # channel, which would let a command speak for the agent.
            os.closerange(len(fds), os.sysconf("SC_OPEN_MAX"))
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            os.environ.clear()
            os.environ.update(env)
            if cwd:
                os.chdir(cwd)
            code = run()
        except BaseException as exc:  # reported on the command's stderr
            with contextlib.suppress(Exception):
                os.write(2, f"exec agent: {exc!r}\n".encode())
        finally:
            os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode


DEFAULT_PROFILE = "agent"  # a sandbox request that names none
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _sandbox_request(request: Any) -> dict[str, Any]:
    """A spawn's ``sandbox``: {profile, workspace, user, terminal}, checked."""
    if not isinstance(request, dict):
        raise channel.ProtocolError("sandbox must be true or an object")
    profile, workspace = request.get("profile", DEFAULT_PROFILE), request.get("workspace")
    user, terminal = request.get("user"), request.get("terminal", False)
    if (not isinstance(profile, str) or not _NAME.fullmatch(profile)
            or not isinstance(workspace, str) or not workspace.startswith("/")
            or not (user is None or (isinstance(user, str) and _NAME.fullmatch(user)))
            or not isinstance(terminal, bool)):  # fmt: skip
        raise channel.ProtocolError(f"a bad sandbox request: {request!r}")
    return {"profile": profile, "workspace": workspace, "user": user, "terminal": terminal}


def sandboxed(
    request: dict[str, Any], argv: list[str], options: AgentOptions, claim_fd: int | None = None
) -> int:
    """In a forked child: the launcher's work, in this already-warm interpreter (no
    ARGV and a ``claim_fd``: a standby)."""
    return int(_launcher_module().run_in_process(
        request["profile"], argv, Path(request["workspace"]), request["user"],
        request["terminal"], options.profile_dir, options.seccomp_dir, claim_fd=claim_fd,
    ))  # fmt: skip


STANDBY_TIMEOUT = 120.0  # a standby's start, in a TCG guest (arm64: slow)
MS_BIND, MS_SHARED = 0x1000, 0x100000


@dataclass
class Standby:
    """A sandbox started before its command: bwrap, both filters, Landlock and the
    bridges all up, the inner stage waiting on ``sock`` (sandbox_inner.claim). Made
    before a snapshot is saved, it is in every launch's memory; the first spawn with
    the same ``request`` claims it and it is gone (one command, like any sandbox).

    What that shares between launches is what every process saved in a snapshot
    shares (the kernel's randomness is reseeded by ``personalize``; the command
    itself is a new exec with its own). Its workspace is bound before the launch
    mounts the session's workspace there: the directory is made a shared mount point
    first, so that mount reaches the standby (mount propagation)."""

    request: dict[str, Any]
    proc: Forked
    sock: socket.socket

    def discard(self) -> None:
        self.sock.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


_STANDBY: Standby | None = None  # one per agent; it outlives the session that made it


def mount_points(mountinfo: str = "/proc/self/mountinfo") -> set[str]:
    """Every mount point of this mount namespace (os.path.ismount misses a bind mount
    within one filesystem: it compares devices)."""
    with Path(mountinfo).open() as table:
        # ID PARENT MAJ:MIN ROOT MOUNT-POINT ...; spaces and the like as octal escapes
        points = (line.split()[4] for line in table)
        return {re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), p) for p in points}


def shared_mount_point(path: str) -> None:
    """PATH a mount point of its own, propagation shared: a mount made on it later is
    seen by the sandboxes that bound it before (bwrap makes their copies slaves)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for source, flags in ((path.encode(), MS_BIND), (None, MS_SHARED)):
        if flags == MS_BIND and os.path.realpath(path) in mount_points():
            continue
        if libc.mount(source, path.encode(), None, flags, None) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"making {path} a shared mount point: {os.strerror(code)}")


def start_standby(request: dict[str, Any], options: AgentOptions) -> Standby:
    """A sandbox for REQUEST started now, returned once it waits for its command.
    Raises OSError or the launcher's error (with what it said) if it does not start."""
    sandbox_exec = _launcher_module()
    shared_mount_point(request["workspace"])
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    err_r, err_w = os.pipe()  # what the launcher says if it does not start
    null = os.open(os.devnull, os.O_RDWR)
    try:
        proc = Forked.start((null, null, err_w, theirs.fileno()), False, dict(os.environ), None,
                            lambda: sandboxed(request, [], options, claim_fd=3))  # fmt: skip
    except BaseException:
        ours.close()
        os.close(err_r)
        raise
    finally:
        for fd in (null, err_w, theirs.detach()):
            os.close(fd)
    try:
        ready, _, _ = select.select([ours], [], [], STANDBY_TIMEOUT)
        said = ours.recv(1) if ready else b""
        if said == b"R":
            return Standby(request, proc, ours)
        standby = Standby(request, proc, ours)
        standby.discard()  # a launcher that is still starting is stopped here
        os.set_blocking(err_r, False)
        with contextlib.suppress(OSError):
            said = os.read(err_r, 4096)
        why = said.decode(errors="replace").strip() or f"not ready in {STANDBY_TIMEOUT:g} s"
        raise sandbox_exec.LauncherError(why)
    finally:
        os.close(err_r)


@dataclass
class Child:
    channel: int
    proc: subprocess.Popen[bytes] | Forked
    outputs: dict[int, int]  # fd -> STDOUT/STDERR (a PTY: one fd, STDOUT)
    stdin: int | None
    pending: bytearray = field(default_factory=bytearray)
    close_stdin: bool = False
    exited_at: float | None = None
    status: int | None = None


class Session:
    """One host connection: its frames in, its processes' output out."""

    def __init__(self, conn_in: int, conn_out: int, options: AgentOptions) -> None:
        self.conn_in, self.conn_out = conn_in, conn_out
        self.options = options
        self.decoder = channel.Decoder()
        self.children: dict[int, Child] = {}
        self.uploads: dict[int, Upload] = {}
        self.selector = selectors.DefaultSelector()
        self.closed = False

    # -- output to the host ---------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Blocking: the host reads all the time, so a slow host slows the output down
        (the processes block on full pipes) instead of growing a buffer here."""
        view = memoryview(frame)
        while view:
            view = view[os.write(self.conn_out, view) :]

    def reply(self, channel_id: int, op: str, **fields: Any) -> None:
        self.send(channel.control(channel_id, op, **fields))

    # -- the loop ---------------------------------------------------------------------

    def serve(self) -> None:
        # The host's fd stays blocking: it is read only when the selector says it is
        # readable (a read then returns what is there), and written whole.
        self.selector.register(self.conn_in, selectors.EVENT_READ, "host")
        try:
            while not self.closed:
                for key, _events in self.selector.select(timeout=0.1):
                    if key.data == "host":
                        self._from_host()
                    elif isinstance(key.data, tuple) and key.data[0] == "out":
                        self._from_child(key.data[1], key.fd)
                    elif isinstance(key.data, tuple) and key.data[0] == "in":
                        self._to_child(self.children[key.data[1]])
                    if self.closed:
                        break
                self._reap()
        except channel.ProtocolError as exc:
            with contextlib.suppress(OSError):
                self.reply(0, "error", message=f"protocol: {exc}")
        finally:
            self._kill_all()

    def _from_host(self) -> None:
        try:
            data = os.read(self.conn_in, CHUNK)
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return
        for kind, channel_id, payload in self.decoder.feed(data):
            if kind == channel.CONTROL:
                message = channel.decode_control(payload)
                try:
                    self._request(channel_id, message)
                except (KeyError, TypeError, ValueError) as exc:
                    raise channel.ProtocolError(
                        f"a bad {message['op']!r} request: {exc!r}"
                    ) from None
            elif kind == channel.STDIN:
                self._stdin(channel_id, payload)
            elif kind == channel.FILE:
                self._upload(channel_id, payload)
            else:
                raise channel.ProtocolError(f"the host sent a frame of kind {kind}")

    def _request(self, channel_id: int, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "hello":
            self.reply(0, "hello", version=channel.VERSION, pid=os.getpid())
        elif op == "spawn":
            self._spawn(channel_id, message)
        elif op == "signal":
            child = self.children.get(channel_id)
            if child is not None and child.status is None:
                signal_command(child.proc.pid, int(message.get("signal", signal.SIGTERM)))
        elif op == "resize":
            child = self.children.get(channel_id)
            if child is not None and child.outputs:
                fd = next(iter(child.outputs))
                size = struct.pack("HHHH", int(message["rows"]), int(message["cols"]), 0, 0)
                with contextlib.suppress(OSError):
                    fcntl.ioctl(fd, termios.TIOCSWINSZ, size)
        elif op == "personalize":
            try:
                personalize(message)
            except OSError as exc:
                where = f"{exc.filename}: " if exc.filename else ""
                self.reply(channel_id, "personalize-done", error=f"{where}{exc.strerror or exc}")
            else:
                self.reply(channel_id, "personalize-done")
        elif op == "standby":
            self._standby(channel_id, message)
        elif op == "put":
            self._put(channel_id, message)
        elif op == "get":
            self._get(channel_id, message)
        else:
            raise channel.ProtocolError(f"unknown request {op!r}")

    # -- processes ----------------------------------------------------------------------

    def _standby(self, channel_id: int, message: dict[str, Any]) -> None:
        global _STANDBY
        request = _sandbox_request(message.get("sandbox"))
        if request["terminal"]:
            raise channel.ProtocolError("a standby sandbox is for pipes, not a terminal")
        if _STANDBY is not None:
            _STANDBY.discard()
            _STANDBY = None
        try:
            _STANDBY = start_standby(request, self.options)
        except Exception as exc:  # OSError, the launcher's error
            text = f"{exc.strerror}" if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.reply(channel_id, "standby-done", error=text)
        else:
            self.reply(channel_id, "standby-done", pid=_STANDBY.proc.pid)

    def _claim(self, request: dict[str, Any], fds: tuple[int, ...], argv: list[str],
               env: dict[str, str]) -> Forked | None:  # fmt: skip
        """The standby, given ARGV and the command's ends, if it was started for
        REQUEST and is still there; None: start a sandbox as usual."""
        global _STANDBY
        standby = _STANDBY
        if standby is None or standby.request != request:
            return None
        _STANDBY = None
        if standby.proc.poll() is not None:  # it died: reaped, and not used
            standby.discard()
            return None
        sandbox_exec = _launcher_module()
        profile, _filters = sandbox_exec.loaded(
            request["profile"], self.options.profile_dir, self.options.seccomp_dir
        )
        spec = os.memfd_create("sandbox-command", os.MFD_CLOEXEC)
        try:
            os.write(spec, sandbox_exec.standby_command(profile, argv, env))
            socket.send_fds(standby.sock, [b"C"], [*fds, spec])
        except OSError:
            standby.discard()
            return None
        finally:
            os.close(spec)
        standby.sock.close()
        return standby.proc

    def _spawn(self, channel_id: int, message: dict[str, Any]) -> None:
        argv = message.get("argv")
        if (channel_id == 0 or channel_id in self.children or not isinstance(argv, list)
                or not argv or not all(isinstance(a, str) for a in argv)):  # fmt: skip
            raise channel.ProtocolError(f"a bad spawn request on channel {channel_id}")
        sandbox = message.get("sandbox")
        if sandbox is True:  # through the launcher, as a new process
            argv, sandbox = [self.options.launcher, "--", *argv], None
        elif sandbox:
            sandbox = _sandbox_request(sandbox)
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in (message.get("env") or {}).items()})
        use_pty, cwd = bool(message.get("pty")), message.get("cwd")
        # The command's ends: a PTY (one stream) or three pipes. Made with os.pipe,
        # so each fd has one owner here and is closed once.
        if use_pty:
            master, slave = pty.openpty()
            if message.get("rows") and message.get("cols"):
                size = struct.pack("HHHH", int(message["rows"]), int(message["cols"]), 0, 0)
                fcntl.ioctl(master, termios.TIOCSWINSZ, size)
            theirs: tuple[int, ...] = (slave, slave, slave)
            outputs, stdin = {master: channel.STDOUT}, master
        else:
            (in_r, in_w), (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe(), os.pipe()
            theirs = (in_r, out_w, err_w)
            outputs, stdin = {out_r: channel.STDOUT, err_r: channel.STDERR}, in_w
        proc: subprocess.Popen[bytes] | Forked
        try:
            claimed = self._claim(sandbox, theirs, argv, env) if sandbox and not use_pty else None
            if claimed is not None:
                proc = claimed
            elif sandbox:
                proc = Forked.start(
                    theirs, use_pty, env, cwd, lambda: sandboxed(sandbox, argv, self.options)
                )
            else:
                proc = subprocess.Popen(
                    argv, stdin=theirs[0], stdout=theirs[1], stderr=theirs[2], env=env, cwd=cwd,
                    start_new_session=True,
                    preexec_fn=(lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0)) if use_pty else None,
                )  # fmt: skip
        except OSError as exc:
            for fd in {*outputs, stdin}:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.reply(channel_id, "exit", code=127, signal=None,
                       error=f"{argv[0]}: {exc.strerror or exc}")  # fmt: skip
            return
        finally:
            for fd in set(theirs):
                with contextlib.suppress(OSError):
                    os.close(fd)
        child = Child(channel_id, proc, outputs, stdin)
        self.children[channel_id] = child
        for fd in outputs:
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ, ("out", channel_id))
        if not use_pty:
            os.set_blocking(stdin, False)
        self.reply(channel_id, "started", pid=proc.pid, standby=claimed is not None)

    def _from_child(self, channel_id: int, fd: int) -> None:
        child = self.children[channel_id]
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:  # a PTY whose last user went away: EIO
            if exc.errno != errno.EIO:
                raise
            data = b""
        kind = child.outputs[fd]
        if data:
            self.send(channel.encode(kind, channel_id, data))
            return
        self._close_output(child, fd)

    def _close_output(self, child: Child, fd: int) -> None:
        kind = child.outputs.pop(fd)
        self.selector.unregister(fd)
        if fd != child.stdin:
            os.close(fd)
        self.send(channel.encode(kind, child.channel, b""))  # that stream's end

    def _stdin(self, channel_id: int, payload: bytes) -> None:
        child = self.children.get(channel_id)
        if child is None or child.stdin is None:
            return  # the process is gone (its exit is on the way): input has nowhere to go
        if not payload:
            child.close_stdin = True
        elif len(child.pending) + len(payload) > MAX_PENDING_STDIN:
            raise channel.ProtocolError(f"more than {MAX_PENDING_STDIN} bytes of unread input")
        child.pending += payload
        self._to_child(child)

    def _to_child(self, child: Child) -> None:
        fd = child.stdin
        if fd is None:
            return
        if fd in child.outputs:  # a PTY's master: typed input is small, written whole
            while child.pending:
                select.select([], [fd], [], 1.0)
                with contextlib.suppress(BlockingIOError):
                    del child.pending[: os.write(fd, child.pending)]
            if child.close_stdin:  # end of input is ^D at the start of a line
                with contextlib.suppress(OSError):
                    os.write(fd, b"\x04")
                child.stdin = None
            return
        while child.pending:
            try:
                written = os.write(fd, child.pending)
            except BlockingIOError:
                break
            except OSError:  # the process closed its stdin: what it did not read is lost
                child.pending.clear()
                break
            del child.pending[:written]
        registered = fd in self.selector.get_map()
        if child.pending and not registered:
            self.selector.register(fd, selectors.EVENT_WRITE, ("in", child.channel))
        elif not child.pending and registered:
            self.selector.unregister(fd)
        if not child.pending and child.close_stdin:
            os.close(fd)
            child.stdin = None

    def _reap(self) -> None:
        now = time.monotonic()
        for child in list(self.children.values()):
            if child.status is None:
                status = child.proc.poll()
                if status is None:
                    continue
                child.status, child.exited_at = status, now
            drained = not child.outputs
            assert child.exited_at is not None
            if not drained and now - child.exited_at < EXIT_GRACE:
                continue
            for fd in list(child.outputs):  # a background process kept them open
                self._close_output(child, fd)
            if child.stdin is not None and child.stdin not in child.outputs:
                with contextlib.suppress(OSError):
                    if child.stdin in self.selector.get_map():
                        self.selector.unregister(child.stdin)
                    os.close(child.stdin)
            code = child.status if child.status >= 0 else None
            sig = -child.status if child.status < 0 else None
            self.reply(child.channel, "exit", code=code, signal=sig)
            del self.children[child.channel]

    def _kill_all(self) -> None:
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                child.proc.wait(timeout=5)
            for fd in child.outputs:
                with contextlib.suppress(OSError):
                    os.close(fd)
        for up in self.uploads.values():  # half-written files: nothing is left of them
            if up.fd >= 0:
                with contextlib.suppress(OSError):
                    os.unlink(up.temp, dir_fd=up.dir_fd)
                for fd in (up.fd, up.dir_fd):
                    with contextlib.suppress(OSError):
                        os.close(fd)
        self.selector.close()

    # -- files ----------------------------------------------------------------------------

    def _put(self, channel_id: int, message: dict[str, Any]) -> None:
        if channel_id in self.uploads:
            raise channel.ProtocolError(f"a second put on channel {channel_id}")
        shown, mode = str(message.get("path", "")), int(message.get("mode", 0o644)) & 0o777
        try:
            dir_fd, name, owner = _open_parent(message)
        except OSError as exc:
            self.reply(channel_id, "put-done", error=f"{shown}: {exc.strerror}")
            self.uploads[channel_id] = Upload(-1, -1, "", "", shown, None)
            return
        temp = f".{name}.part-{os.getpid()}-{channel_id}"
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            fd = os.open(temp, flags, mode, dir_fd=dir_fd)
            if owner is not None:
                os.fchown(fd, *owner)
        except OSError as exc:
            os.close(dir_fd)
            self.reply(channel_id, "put-done", error=f"{shown}: {exc.strerror}")
            self.uploads[channel_id] = Upload(-1, -1, "", "", shown, None)
            return
        self.uploads[channel_id] = Upload(fd, dir_fd, temp, name, shown, owner)

    def _upload(self, channel_id: int, payload: bytes) -> None:
        if channel_id not in self.uploads:
            raise channel.ProtocolError(f"file data on channel {channel_id} without a put")
        up = self.uploads[channel_id]
        if up.fd < 0:  # refused already; the data is dropped until its end
            if not payload:
                del self.uploads[channel_id]
            return
        if payload:
            os.write(up.fd, payload)
            return
        size = os.fstat(up.fd).st_size
        os.close(up.fd)
        del self.uploads[channel_id]
        try:
            os.replace(up.temp, up.name, src_dir_fd=up.dir_fd, dst_dir_fd=up.dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(up.temp, dir_fd=up.dir_fd)
            self.reply(channel_id, "put-done", error=f"{up.shown}: {exc.strerror}")
            return
        finally:
            os.close(up.dir_fd)
        self.reply(channel_id, "put-done", bytes=size)

    def _get(self, channel_id: int, message: dict[str, Any]) -> None:
        """A regular file only: a FIFO or a device would block this single-threaded agent."""
        shown = str(message.get("path", ""))
        try:
            dir_fd, name, owner = _open_parent(message)
            nofollow = os.O_NOFOLLOW if owner is not None else 0  # within a directory
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | nofollow, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            why = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
            self.reply(channel_id, "get-done", error=f"{shown}: {why}")
            return
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                self.reply(channel_id, "get-done", error=f"{shown}: not a regular file")
                return
            size = 0
            while chunk := f.read(channel.MAX_DATA):
                size += len(chunk)
                self.send(channel.encode(channel.FILE, channel_id, chunk))
        self.send(channel.encode(channel.FILE, channel_id, b""))
        self.reply(channel_id, "get-done", bytes=size)


def _sessions_below(root: int) -> list[int]:
    """Session leaders among ROOT's descendants: a sandboxed command (bwrap's
    --new-session puts it in a session of its own, led by itself)."""
    children: dict[int, list[int]] = {}
    leaders: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
        pid, ppid, sid = int(entry.name), int(fields[1]), int(fields[3])
        children.setdefault(ppid, []).append(pid)
        if sid == pid:
            leaders.add(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid in leaders:
            found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def signal_command(root: int, sig: int) -> None:
    """SIG to the command ROOT runs, as a terminal's Ctrl-C reaches its job.

    A plain command: its process group (every command starts one). A sandboxed one
    runs in a session of its own below the launcher (runuser, sandbox-exec, bwrap):
    the signal goes to that session's process group, not to the launcher, which
    would end the sandbox instead (bwrap dies of SIGINT, --die-with-parent does the
    rest). SIGKILL (kill, a timeout) goes to both, the command's own group first:
    killed the other way round, the launcher could see its session die and exit
    137 in between, and the host would hear of an exit, not a death by SIGKILL.
    """
    targets = _sessions_below(root)
    if sig == signal.SIGKILL or not targets:
        targets.insert(0, root)
    for group in targets:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)


_HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
RNDRESEEDCRNG = 0x5207  # _IO('R', 7)
MS_RDONLY, MS_NOSUID, MS_NODEV = 1, 2, 4


def personalize(message: dict[str, Any]) -> None:
    """Make a launch resumed from a snapshot its own machine, in this process (no
    fork: each costs ~0.1 s in a just-resumed TCG guest): the host's randomness mixed
    into the kernel's pool and the CRNG reseeded at once (two launches from one
    snapshot start with the same state), the clock, the host name, the shared folder
    and the session disk mounted (nosuid, nodev; ``bind``: a bind mount, which keeps
    its source's flags). Raises ValueError for a malformed request."""
    entropy = bytes.fromhex(message["entropy"])
    clock_ns, hostname = int(message["time_ns"]), str(message["hostname"])
    if len(entropy) < 32 or not _HOSTNAME.fullmatch(hostname) or clock_ns <= 0:
        raise ValueError("entropy, time_ns or hostname")
    mounts = [(str(m["source"]), str(m["target"]), str(m["fstype"]), str(m["options"]),
               (MS_BIND if m.get("bind") else MS_NOSUID | MS_NODEV)
               | (MS_RDONLY if m.get("readonly") else 0)) for m in message["mounts"]]  # fmt: skip
    if any(m.get("bind") and m.get("readonly") for m in message["mounts"]):
        raise ValueError("a read-only bind mount (MS_RDONLY would be ignored)")
    if not all(target.startswith("/") for _, target, _, _, _ in mounts):
        raise ValueError("a mount target that is not an absolute path")
    fd = os.open("/dev/urandom", os.O_WRONLY)
    try:
        os.write(fd, entropy)
        fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)
    time.clock_settime_ns(time.CLOCK_REALTIME, clock_ns)
    socket.sethostname(hostname)
    Path("/etc/hostname").write_text(hostname + "\n")
    libc = ctypes.CDLL(None, use_errno=True)
    for source, target, fstype, options, flags in mounts:
        if libc.mount(source.encode(), target.encode(), fstype.encode(), flags,
                      options.encode() or None) != 0:  # fmt: skip
            code = ctypes.get_errno()
            raise OSError(code, f"mount {source} on {target}: {os.strerror(code)}")


@dataclass
class Upload:
    fd: int  # -1: refused, its data is dropped
    dir_fd: int
    temp: str
    name: str
    shown: str
    owner: tuple[int, int] | None


def _open_parent(message: dict[str, Any]) -> tuple[int, str, tuple[int, int] | None]:
    """The directory a put/get names (an fd) and the file's name in it.

    With ``within`` (a directory, such as the workspace), ``path`` is relative to it
    and is walked one component at a time without following a symbolic link: what a
    sandboxed command left there (``out -> /etc``) cannot turn a write by this root
    agent into a write elsewhere. New files then get that directory's owner.
    Without it, ``path`` is absolute and followed as the kernel does.
    """
    path, within = message.get("path"), message.get("within")
    if not isinstance(path, str) or not path or "\0" in path:
        raise channel.ProtocolError("a put or get without a path")
    if within is None:
        final = Path(path)
        if not final.is_absolute() or final.name in ("", ".", ".."):
            raise channel.ProtocolError(f"not an absolute file path: {path!r}")
        return os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY), final.name, None
    parts = path.split("/")
    if (not isinstance(within, str) or not within.startswith("/") or path.startswith("/")
            or any(part in ("", ".", "..") for part in parts)):  # fmt: skip
        raise channel.ProtocolError(f"not a plain relative path: {path!r}")
    fd = os.open(within, os.O_RDONLY | os.O_DIRECTORY)
    try:
        root = os.fstat(fd)
        for part in parts[:-1]:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # O_DIRECTORY|O_NOFOLLOW on a link
            raise OSError(exc.errno, "a symbolic link or not a directory on the way") from None
        raise
    return fd, parts[-1], (root.st_uid, root.st_gid)


def _serve_socket(path: Path, options: AgentOptions, once: bool) -> None:
    # Bound under another name and renamed once listening: whoever sees the path
    # can connect (no "connection refused" between bind and listen).
    building = path.with_name(f".{path.name}.{os.getpid()}")
    building.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(building))
    building.chmod(0o600)
    server.listen(1)
    building.replace(path)
    serve_listener(server, options, once=once)


def serve_listener(server: socket.socket, options: AgentOptions, *, once: bool = False,
                   allowed: Any = None) -> None:  # fmt: skip
    """One session per accepted connection, one after the other. ``allowed``: a
    test of the peer's address; a connection it refuses is closed unserved."""
    while True:
        conn, peer = server.accept()
        with conn:
            if allowed is not None and not allowed(peer):
                print(f"exec agent: a connection from {peer!r} refused", file=sys.stderr)
                continue
            fd = conn.fileno()
            Session(fd, os.dup(fd), options).serve()
        if once:
            return


def from_vsock_host(peer: Any) -> bool:
    """A vsock peer is the host (CID 2): a process in this guest may reach a local
    vsock listener too (the loopback transport), and must not run commands here."""
    return isinstance(peer, tuple) and peer[0] == VMADDR_CID_HOST


VMADDR_CID_HOST = 2
VIRTIO_ID_VSOCK = 19  # the virtio device ID of a vsock device (virtio spec 5.10)


def has_vsock_device(bus: Path = Path("/sys/bus/virtio/devices")) -> bool:
    """Whether the VM has a virtio vsock device (the bus lists every device before
    userspace starts: no wait for udev to load the transport)."""
    for device in bus.glob("*/device"):
        with contextlib.suppress(OSError, ValueError):
            if int(device.read_text().strip(), 16) == VIRTIO_ID_VSOCK:
                return True
    return False


def _serve_vsock(port: int, options: AgentOptions, bus: Path) -> int:
    """A vsock port, where the host gave the VM a vhost-vsock device. Without one
    there is nothing to serve: exit 0 (the unit stays down)."""
    if not has_vsock_device(bus):
        print("exec agent: this VM has no vsock device; nothing to serve", file=sys.stderr)
        return 0
    try:
        server = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        server.bind((socket.VMADDR_CID_ANY, port))
        server.listen(1)
    except (OSError, AttributeError) as exc:
        print(f"exec agent: no vsock here ({exc}); nothing to serve", file=sys.stderr)
        return 0
    serve_listener(server, options, allowed=from_vsock_host)
    return 0


def _serve_device(path: Path, options: AgentOptions) -> None:
    """A virtio-serial port: one fd both ways; a host that goes away reads as EOF (or
    nothing), then the next session starts on the same port."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        except FileNotFoundError:  # not (yet) there: a VM without the port, or early boot
            time.sleep(1)
            continue
        try:
            Session(fd, fd, options).serve()
        finally:
            os.close(fd)
        time.sleep(0.05)  # no host: the port reads as EOF at once


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--device", type=Path, help="a virtio-serial port, e.g. /dev/virtio-ports/..."
    )
    where.add_argument("--listen", type=Path, help="a Unix socket to serve on")
    where.add_argument("--vsock", type=int, metavar="PORT",
                       help="a vsock port to serve the host (CID 2) on")  # fmt: skip
    parser.add_argument("--once", action="store_true", help="with --listen: one session, then exit")
    parser.add_argument("--virtio-devices", type=Path, default=Path("/sys/bus/virtio/devices"),
                        help="with --vsock: where the VM's virtio devices are listed")  # fmt: skip
    parser.add_argument("--launcher", default=SANDBOX_LAUNCHER, help="the sandbox launcher")
    parser.add_argument(
        "--profile-dir",
        type=Path,
        default=None,
        help="bwrap profiles for in-process sandboxes (the launcher's default)",
    )
    parser.add_argument(
        "--seccomp-dir",
        type=Path,
        default=None,
        help="compiled filters for in-process sandboxes (the launcher's default)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # Imported now, and the default profile and its filters read, so the snapshot
    # saves them warm and no launch pays for them. Where that fails, each sandboxed
    # command reports why (the same error, from the same code).
    with contextlib.suppress(ImportError):
        launcher = _launcher_module()
        with contextlib.suppress(Exception):
            launcher.preload(DEFAULT_PROFILE, args.profile_dir, args.seccomp_dir)
    options = AgentOptions(args.launcher, args.profile_dir, args.seccomp_dir)
    if args.device:
        _serve_device(args.device, options)
    elif args.vsock is not None:
        return _serve_vsock(args.vsock, options, args.virtio_devices)
    else:
        _serve_socket(args.listen, options, args.once)
    return 0


if __name__ == "__main__":
    sys.exit(main())
