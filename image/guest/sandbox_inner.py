"""sandbox-exec's inner stage: pid 2 inside the sandbox's namespaces, then CMD.

    python3 -I -S sandbox_inner.py [--bridge PORT:SOCKET]... [--filter HEX]...
                                   [--ready-fd READY_FD] -- CMD...
    python3 -I -S sandbox_inner.py ... --claim-fd SOCKET_FD --

bwrap runs this file (already under the first filter). It starts the in-sandbox
half of each bridge (socat: TCP 127.0.0.1:PORT -> the bound Unix socket SOCKET),
waits until they listen and until the launcher, which starts the outer halves
while bwrap starts, says on READY_FD that those listen too; then it enters a
Landlock domain, loads the second filter (no-new-privs + PR_SET_SECCOMP) and
execs CMD. The bridges started before that filter, so they keep AF_UNIX; CMD and
everything it starts cannot make one.

With ``--claim-fd`` there is no CMD yet: this is a standby sandbox, started before a
snapshot is saved. Once everything above is done it says so (one byte on the
socket SOCKET_FD), then waits there for its one command: the command's stdin,
stdout and stderr and a memfd with its directory, argv and environment
(``encode_command``), passed by the exec agent that claims it. It changes into
that directory (the workspace, whose contents may have been mounted since) and
execs the command; everything before that was paid before the snapshot.

It runs once per sandboxed command, before the command: its interpreter start is
part of every command's latency (and tens of times slower in a TCG guest). So it
imports only os, sys and ctypes — no argparse, json, subprocess or pathlib — and
runs with ``-S`` (no site-packages, nothing from a ``.pth`` file); sandbox-exec
(the outer stage) imports the filter and Landlock code from here.

Exit status when CMD never started: 125 (this stage failed), 126/127 (CMD could not
be executed / was not found).
"""

# os.path, not pathlib: pathlib's imports would cost this stage more than its own.
# ruff: noqa: PTH113, PTH118, PTH123

from __future__ import annotations

import ctypes
import os
import sys
import time

# Not `from typing import TYPE_CHECKING`: importing typing alone costs as much as
# the rest of this stage's imports. Type checkers take any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import NoReturn

EXIT_LAUNCHER = 125
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127

# Bounded waits: a bridge that is not up in this time will not come up. Generous,
# because an arm64 guest under TCG starts socat tens of times slower than native.
READY_TIMEOUT = 30.0
READY_POLL = 0.005

PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2
BPF_INSTRUCTION_SIZE = 8
# Landlock (same numbers on x86_64 and aarch64; Linux >= 5.13, ABI 1 suffices).
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_RESTRICT_SELF = 446
# Rights the domain handles and never grants: making char and block device nodes.
LANDLOCK_ACCESS_FS_MAKE_CHAR = 1 << 6
LANDLOCK_ACCESS_FS_MAKE_BLOCK = 1 << 11


class LauncherError(Exception):
    """The launcher cannot do its job; the message says what to do about it."""


def open_libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [
        ctypes.c_int,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    libc.prctl.restype = ctypes.c_int
    return libc


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def load_seccomp(program: bytes) -> None:
    """Install a compiled filter on this thread (and whatever it execs), like bwrap does."""
    if not program or len(program) % BPF_INSTRUCTION_SIZE:
        raise LauncherError(f"a seccomp program of {len(program)} bytes is not BPF")
    count = len(program) // BPF_INSTRUCTION_SIZE
    instructions = (_SockFilter * count).from_buffer_copy(program)
    fprog = _SockFprog(count, instructions)
    libc = open_libc()
    # no-new-privs is already set by bwrap; setting it again is harmless and makes
    # this function correct on its own (the kernel demands it for unprivileged filters).
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise LauncherError(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        raise LauncherError(f"prctl(PR_SET_SECCOMP) failed: {os.strerror(ctypes.get_errno())}")


def enter_landlock_domain() -> bool:
    """Put this process (and what it execs) in a Landlock domain of its own.

    Landlock lets a process in a domain ptrace-access (``/proc/PID/mem``,
    ``pidfd_getfd``, process_vm_*) only processes in the same or a nested domain:
    bwrap's init and the bridges, started before, are outside it and out of reach,
    whatever the ptrace scope of the kernel. The domain handles only the making of
    device nodes, which it refuses; nothing else about files changes. Returns False
    where the kernel has no Landlock (then Yama's ptrace scope, which the image sets,
    is what stands between the command and the bridges).
    """
    libc = open_libc()
    libc.syscall.restype = ctypes.c_long
    handled = ctypes.c_uint64(LANDLOCK_ACCESS_FS_MAKE_CHAR | LANDLOCK_ACCESS_FS_MAKE_BLOCK)
    fd = libc.syscall(
        ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
        ctypes.byref(handled),
        ctypes.c_size_t(ctypes.sizeof(handled)),
        ctypes.c_uint32(0),
    )
    if fd < 0:
        return False  # ENOSYS / EOPNOTSUPP: not built in or not enabled
    try:
        if libc.syscall(ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(fd), 0) != 0:
            raise LauncherError(f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)
    return True


# --- what sandbox-exec passes: argv, built and parsed here ------------------------------


class InnerArgs:
    """What the launcher tells this stage (``inner_args``), parsed (``parse_args``)."""

    def __init__(self) -> None:
        self.bridges: list[tuple[int, str]] = []  # (port inside, bound socket path)
        self.filters: list[bytes] = []  # the second filters, loaded in order
        self.ready_fd: int | None = None  # one byte: the outer bridges listen
        self.claim_fd: int | None = None  # a standby: CMD comes over this socket
        self.cmd: list[str] = []


def inner_args(
    bridges: Sequence[tuple[int, str]],
    filters: Sequence[bytes],
    ready_fd: int | None = None,
    claim_fd: int | None = None,
) -> list[str]:
    """The arguments before ``--``: the bridges, the second filters, the fd on which
    the launcher says its outer bridges listen (it starts them beside bwrap) and, for
    a standby, the socket its command will come on."""
    args: list[str] = []
    for port, socket_path in bridges:
        args += ["--bridge", f"{port}:{socket_path}"]
    for program in filters:
        args += ["--filter", program.hex()]
    if ready_fd is not None:
        args += ["--ready-fd", str(ready_fd)]
    if claim_fd is not None:
        args += ["--claim-fd", str(claim_fd)]
    return args


def parse_args(argv: Sequence[str]) -> InnerArgs:
    """``inner_args(...) + ["--", *cmd]`` back into its parts."""
    parsed = InnerArgs()
    rest = list(argv)
    while rest and rest[0] != "--":
        option, value = rest[0], rest[1] if len(rest) > 1 else ""
        try:
            if option == "--bridge":
                port, socket_path = value.split(":", 1)
                parsed.bridges.append((int(port), socket_path))
            elif option == "--filter":
                parsed.filters.append(bytes.fromhex(value))
            elif option == "--ready-fd" and parsed.ready_fd is None:
                parsed.ready_fd = int(value)
            elif option == "--claim-fd" and parsed.claim_fd is None:
                parsed.claim_fd = int(value)
            else:
                raise ValueError(option)
        except ValueError:
            raise LauncherError(f"inner stage: bad argument {option} {value!r}") from None
        rest = rest[2:]
    parsed.cmd = rest[1:]
    if not parsed.cmd and parsed.claim_fd is None:
        raise LauncherError("inner stage: no command given")
    if parsed.cmd and parsed.claim_fd is not None:
        raise LauncherError("inner stage: a standby (--claim-fd) takes its command later")
    return parsed


# --- a standby's command ----------------------------------------------------------------

COMMAND_MAX = 1 << 20  # the exec agent's requests are far smaller (64 KiB frames)


def encode_command(cwd: str, argv: Sequence[str], env: Sequence[tuple[str, str]]) -> bytes:
    """What a standby is claimed with: NUL-separated (no argument, name or value can
    hold a NUL): the directory, the number of arguments, the arguments, NAME=VALUE."""
    fields = [cwd, str(len(argv)), *argv, *(f"{name}={value}" for name, value in env)]
    return b"\0".join(os.fsencode(field) for field in fields)


def decode_command(data: bytes) -> tuple[str, list[str], dict[str, str]]:
    """``encode_command``'s fields back; LauncherError for anything else."""
    fields = [os.fsdecode(field) for field in data.split(b"\0")]
    try:
        count = int(fields[1])
    except (IndexError, ValueError):
        count = -1
    argv, pairs = fields[2 : 2 + count], fields[2 + count :]
    if (
        count < 1
        or len(argv) != count
        or not fields[0].startswith("/")
        or not all("=" in pair[1:] for pair in pairs)
    ):
        raise LauncherError("a standby was claimed with a malformed command")
    return fields[0], argv, dict(pair.split("=", 1) for pair in pairs)


def claim(fd: int) -> tuple[str, list[str], dict[str, str]]:
    """A standby's wait: say it is ready on the socket FD, then take its command. The
    command's stdin, stdout and stderr become 0-2 here as soon as they arrive, so that
    whatever goes wrong after that is said on the command's own stderr."""
    import socket  # only a standby pays for it, and before the snapshot

    with socket.socket(fileno=fd) as sock:
        try:
            sock.sendall(b"R")
            message, fds, _flags, _address = socket.recv_fds(sock, 1, 4)
        except OSError as exc:
            raise LauncherError(f"a standby's socket: {exc.strerror}") from None
    if message != b"C" or len(fds) != 4:
        for received in fds:
            os.close(received)
        raise LauncherError("the exec agent went away before a command came")
    try:
        for target in (0, 1, 2):
            os.dup2(fds[target], target)
        size = os.fstat(fds[3]).st_size
        data = os.pread(fds[3], COMMAND_MAX + 1, 0) if size <= COMMAND_MAX else b""
    except OSError as exc:
        raise LauncherError(f"a standby's command: {exc.strerror}") from None
    finally:
        for received in fds:
            os.close(received)
    return decode_command(data)


# --- the bridges ------------------------------------------------------------------------


def bridge_argv(socat: str, port: int, socket_path: str) -> list[str]:
    return [
        socat,
        f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
        f"UNIX-CONNECT:{socket_path}",
    ]


def listening(port: int) -> bool:
    """Is something listening on 127.0.0.1:port in this network namespace?"""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        for line in table.read().splitlines()[1:]:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":  # 0A = TCP_LISTEN
                return True
    return False


def which(name: str) -> str:
    for directory in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise LauncherError(f"{name} not found on PATH; the image needs {name}")


def start_detached(argvs: Sequence[Sequence[str]]) -> None:
    """Start the bridges as grandchildren, so pid 1 (bwrap's init) adopts them.

    CMD replaces this process; were the bridges its children, a shell's bare `wait`
    would wait for them forever.
    """
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for argv in argvs:
                if os.fork() == 0:
                    try:  # what subprocess would do: /dev/null for 0-2, nothing else
                        for target in (0, 1, 2):
                            os.dup2(null, target)
                        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
                        os.execv(argv[0], list(argv))
                    finally:
                        os._exit(EXIT_NOT_EXECUTABLE)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def wait_for(ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready():
        if time.monotonic() > deadline:
            raise LauncherError(f"{what} did not come up within {READY_TIMEOUT:g} s")
        time.sleep(READY_POLL)


def wait_ready(fd: int) -> None:
    """Block until the launcher says its outer bridges listen; EOF means they did not."""
    try:
        said = os.read(fd, 1)
        os.close(fd)  # never inherited by CMD
    except OSError as exc:
        raise LauncherError(f"--ready-fd {fd}: {exc.strerror}") from None
    if not said:
        raise LauncherError("the bridge outside the sandbox did not start")


def main(argv: Sequence[str]) -> NoReturn:
    try:
        args = parse_args(argv)
        if args.bridges:
            socat = which("socat")
            start_detached([bridge_argv(socat, port, path) for port, path in args.bridges])
            wait_for(lambda: all(listening(port) for port, _ in args.bridges), "the proxy bridge")
        if args.ready_fd is not None:
            wait_ready(args.ready_fd)
        enter_landlock_domain()
        for program in args.filters:
            load_seccomp(program)
        cmd, env = args.cmd, None
        if args.claim_fd is not None:
            cwd, cmd, env = claim(args.claim_fd)
            try:  # again: a mount on the workspace since bwrap's --chdir
                os.chdir(cwd)
            except OSError as exc:
                raise LauncherError(f"the workspace {cwd}: {exc.strerror}") from None
            env["PWD"] = cwd  # as bwrap's --chdir sets it
    except LauncherError as exc:
        print(f"sandbox-exec: {exc}", file=sys.stderr)
        os._exit(EXIT_LAUNCHER)
    try:
        if env is None:
            os.execvp(cmd[0], cmd)
        else:
            os.execvpe(cmd[0], cmd, env)
    except FileNotFoundError:
        print(f"sandbox-exec: {cmd[0]}: command not found", file=sys.stderr)
        os._exit(EXIT_NOT_FOUND)
    except OSError as exc:
        print(f"sandbox-exec: {cmd[0]}: {exc.strerror}", file=sys.stderr)
        os._exit(EXIT_NOT_EXECUTABLE)


if __name__ == "__main__":
    main(sys.argv[1:])
