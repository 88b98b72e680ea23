"""sandbox-exec: run one command under bubblewrap with two stacked seccomp filters.

Standard library only, Python 3.10 (it runs inside the VM, as the unprivileged user).

    sandbox-exec [--profile agent] [--workspace DIR] -- CMD [ARG...]
    sandbox-exec --self-test [--profile agent]

Two stages, one file:

outer (outside the sandbox)
    reads the profile, starts one socat per proxy bridge that listens on a Unix
    socket in a private session directory and forwards to the VM's proxy, and runs
    bwrap with the profile's options, the first filter passed by file descriptor
    (``--seccomp FD``), and the inner stage as the command.
inner (``sandbox_inner.py``: pid 2 inside the namespaces, already under the first filter)
    starts the in-sandbox half of each bridge (socat: TCP 127.0.0.1:PORT -> the
    bound Unix socket), waits until it listens, loads the second filter itself
    (no-new-privs + PR_SET_SECCOMP) and execs CMD. The bridge started before that
    filter, so it keeps AF_UNIX; CMD and everything it starts cannot make one. It is
    a module of its own, importing next to nothing, because its interpreter starts
    once per command.

Exit status: CMD's own; 128+N when CMD died of signal N (bwrap reports it so);
125 when the launcher itself failed, 126/127 when CMD could not be executed.
When CMD exits, bwrap's pid-namespace init exits and the kernel kills whatever
is left in the sandbox (the bridge included); the outer socats are stopped too.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

if __package__:
    from image.guest import bwrap_profile, sandbox_inner
    from image.guest.bwrap_profile import Profile
else:  # installed in the VM or run as a script: the modules sit next to this file
    # (python -I leaves the script's directory off sys.path, so put it there).
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bwrap_profile  # type: ignore[import-not-found,no-redef]
    import sandbox_inner  # type: ignore[import-not-found,no-redef]
    from bwrap_profile import Profile  # type: ignore[no-redef]

PROFILE_DIR = Path("/etc/sandbox-image/bwrap")
# Written into the image only (image/sandbox/guestfiles.py): the profiles' bridges lead to
# 10.0.2.100, QEMU's guestfwd address, which means something only inside the VM. On
# a host the same address can be a real machine, so without this file a bridge may
# lead to loopback or a Unix socket only (./inv sandbox-run passes --bridge).
IN_VM_MARKER = Path("/etc/sandbox-image/in-vm")
SECCOMP_DIR = Path("/usr/local/lib/sandbox-image/seccomp")
# A private copy of the inner stage's module is bound read-only here, so it runs the same
# code whether the launcher is installed under /usr (VM) or lives in a checkout (host).
INNER_DIR = "/run/sandbox-exec"
# Only for --print-argv: the real run passes whatever number the memfd got.
SECCOMP_FD = 3

# The inner stage's own (it runs alone inside the sandbox); the outer stage shares them.
LauncherError = sandbox_inner.LauncherError
load_seccomp = sandbox_inner.load_seccomp
enter_landlock_domain = sandbox_inner.enter_landlock_domain
EXIT_LAUNCHER = sandbox_inner.EXIT_LAUNCHER
EXIT_NOT_EXECUTABLE = sandbox_inner.EXIT_NOT_EXECUTABLE
EXIT_NOT_FOUND = sandbox_inner.EXIT_NOT_FOUND
INNER_MODULE = "sandbox_inner.py"


# --- pure builders -------------------------------------------------------------------


def sandbox_env(profile: Profile, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """The command's whole environment: the profile's, HOME, and the passed-through names."""
    env = dict(profile.env)
    env["HOME"] = profile.home
    for name in profile.pass_env:
        if name in environ:
            env[name] = environ[name]
    return sorted(env.items())


def inner_args(
    profile: Profile,
    launcher_filters: Sequence[bytes],
    ready_fd: int | None = None,
    claim_fd: int | None = None,
) -> list[str]:
    """The inner stage's arguments: the bound sockets it bridges to, the second filters,
    the fd on which the launcher says the outer bridges listen, a standby's socket."""
    return sandbox_inner.inner_args(
        [(b.port, f"{profile.bridge_dir}/{b.socket_name()}") for b in profile.bridges],
        launcher_filters,
        ready_fd,
        claim_fd,
    )


def standby_command(profile: Profile, cmd: Sequence[str], environ: Mapping[str, str]) -> bytes:
    """What claims a standby of PROFILE for CMD: what bwrap's --chdir and --setenv
    would have given a sandbox started for it (sandbox_inner.claim reads it)."""
    return sandbox_inner.encode_command(profile.workspace, cmd, sandbox_env(profile, environ))


def bwrap_argv(
    profile: Profile,
    *,
    bwrap: str,
    workspace: Path,
    launcher_dir: Path,
    session_dir: Path | None,
    seccomp_fd: int | None,
    inner: Sequence[str],
    cmd: Sequence[str],
    environ: Mapping[str, str],
) -> list[str]:
    argv = [bwrap, *profile.to_args(), "--hostname", profile.hostname, "--clearenv"]
    for name, value in sandbox_env(profile, environ):
        argv += ["--setenv", name, value]
    argv += ["--bind", str(workspace), profile.workspace, "--chdir", profile.workspace]
    argv += ["--ro-bind", str(launcher_dir), INNER_DIR]
    if session_dir is not None and profile.bridges:
        argv += ["--ro-bind", str(session_dir), profile.bridge_dir]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    argv += [
        "--",
        profile.python,
        "-I",  # nothing from the environment or the caller's directories
        "-S",  # no site-packages: the inner stage needs only the standard library
        f"{INNER_DIR}/{INNER_MODULE}",
        *inner,
        "--",
        *cmd,
    ]
    return argv


def outer_bridge_argv(socat: str, bridge: bwrap_profile.Bridge, session_dir: Path) -> list[str]:
    # unlink-early: a stale socket from a killed run never blocks the listener.
    return [
        socat,
        f"UNIX-LISTEN:{session_dir / bridge.socket_name()},fork,unlink-early",
        bridge.outside_address(),
    ]


# --- the outer stage -----------------------------------------------------------------


def _die_with_us() -> None:
    # Runs in the child between fork and exec: if the launcher is killed outright, the
    # kernel stops the bridge too, so nothing outlives a session.
    sandbox_inner.open_libc().prctl(sandbox_inner.PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def unix_listening(paths: Collection[str]) -> set[str]:
    """Which of PATHS a Unix socket listens on, in this network namespace."""
    found = set()
    # Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 is __SO_ACCEPTCON,
    # set by listen(2): a socket file exists from bind(2) on, before it accepts.
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split(maxsplit=7)
        if len(fields) == 8 and int(fields[3], 16) & 0x10000 and fields[7] in paths:
            found.add(fields[7])
    return found


@contextlib.contextmanager
def _outer_bridges(profile: Profile, session_dir: Path) -> Iterator[Callable[[], None]]:
    """Start the outer halves of the bridges; yields a wait until they all listen (not
    waited for here: bwrap and the inner stage start meanwhile)."""
    procs: list[subprocess.Popen[bytes]] = []
    wanted = {str(session_dir / b.socket_name()) for b in profile.bridges}

    def up() -> bool:
        for proc in procs:
            if proc.poll() is not None:
                raise LauncherError(
                    f"the outer bridge sockets: socat exited with {proc.returncode}"
                )
        return unix_listening(wanted) == wanted

    def listening() -> None:
        sandbox_inner.wait_for(up, "the outer bridge sockets")

    try:
        if profile.bridges:
            socat = _which("socat", "install socat (apt-get install socat)")
            for bridge in profile.bridges:
                procs.append(
                    subprocess.Popen(
                        outer_bridge_argv(socat, bridge, session_dir),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        preexec_fn=_die_with_us,
                    )
                )
        yield listening
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _which(name: str, hint: str) -> str:
    found = shutil.which(name)
    if not found:
        raise LauncherError(f"{name} not found on PATH; {hint}")
    return found


def _read_filter(seccomp_dir: Path, name: str) -> bytes:
    path = seccomp_dir / f"{name}.bpf"
    try:
        return path.read_bytes()
    except OSError as exc:
        raise LauncherError(
            f"cannot read seccomp filter {path}: {exc.strerror}; "
            "compile it (./inv compile-seccomp) or pass --seccomp-dir"
        ) from None


@dataclass(frozen=True)
class Prepared:
    """What the launcher reads with the caller's privileges, before it drops them."""

    profile: Profile
    first: tuple[bytes, ...]
    second: tuple[bytes, ...]
    launcher_dir: Path  # a private copy of the inner stage's module


Filters = tuple[tuple[bytes, ...], tuple[bytes, ...]]  # (loaded by bwrap, by the inner stage)


def read_filters(profile: Profile, seccomp_dir: Path) -> Filters:
    return (
        tuple(_read_filter(seccomp_dir, n) for n in profile.seccomp_bwrap),
        tuple(_read_filter(seccomp_dir, n) for n in profile.seccomp_launcher),
    )


def prepare(
    profile: Profile, seccomp_dir: Path, staging: Path, filters: Filters | None = None
) -> Prepared:
    """Read the filters (unless given) and copy the inner stage's code into ``staging``.

    The copy makes the inner stage independent of where the launcher lives: a
    checkout under /root is not readable once a root caller has dropped to nobody.
    """
    first, second = filters or read_filters(profile, seccomp_dir)
    launcher_dir = staging / "launcher"
    launcher_dir.mkdir()
    shutil.copyfile(Path(__file__).resolve().parent / INNER_MODULE, launcher_dir / INNER_MODULE)
    (launcher_dir / INNER_MODULE).chmod(0o644)
    launcher_dir.chmod(0o755)
    return Prepared(profile, first, second, launcher_dir)


# --- never uid 0 inside ----------------------------------------------------------------


def sandbox_user(workspace: Path, user: str | None) -> pwd.struct_passwd:
    """Whom a root caller runs the sandbox as: ``user``, else the workspace's owner
    unless that is root, else nobody.

    The kernel checks /proc/sys and file modes against the *outer* uid: a user
    namespace that maps root to root leaves /proc/sys writable (bwrap skips its
    read-only remount there) and /etc/shadow readable. Only a real unprivileged uid
    gives the same sandbox to every caller.
    """
    try:
        if user is not None:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        else:
            try:
                owner = workspace.stat().st_uid
            except OSError:
                owner = 0
            entry = pwd.getpwuid(owner) if owner != 0 else pwd.getpwnam("nobody")
    except (KeyError, ValueError):
        raise LauncherError(
            f"no such user {user or 'nobody'!r}; pass --user NAME|UID of an unprivileged user"
        ) from None
    if entry.pw_uid == 0:
        raise LauncherError("--user must not be root: a command never runs as uid 0 inside")
    return entry


def drop_privileges(entry: pwd.struct_passwd) -> None:
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    if os.getuid() == 0 or os.geteuid() == 0:  # pragma: no cover - the kernel said no
        raise LauncherError("could not drop root privileges")


def run_sandbox(
    prepared: Prepared,
    cmd: Sequence[str],
    *,
    workspace: Path,
    staging: Path,
    stdout: IO[bytes] | None = None,
    dropped_root: bool = False,
    claim_fd: int | None = None,
) -> int:
    """Run cmd in the sandbox; returns its exit status (128+N for signal N). With
    ``claim_fd`` (and no cmd) it is a standby: its command comes later, over that
    socket (sandbox_inner.claim)."""
    profile = prepared.profile
    bwrap = _which("bwrap", "install bubblewrap (apt-get install bubblewrap)")
    try:
        usable = workspace.is_dir() and os.access(workspace, os.W_OK | os.X_OK)
    except OSError:
        usable = False
    if not usable:
        who = pwd.getpwuid(os.getuid()).pw_name
        hint = (
            f"; started as root, the sandbox runs as {who} (uid {os.getuid()}): "
            f"chown the workspace to it, or pass --user OWNER"
            if dropped_root
            else ""
        )
        raise LauncherError(f"workspace {workspace} is not a directory {who} can write{hint}")
    session_dir = staging / "bridges"
    session_dir.mkdir()
    with _outer_bridges(profile, session_dir) as outer_listening:
        fds: list[int] = []
        if prepared.first:
            # bwrap reads the program from this fd; a memfd would do, a pipe could
            # block on programs larger than its buffer.
            # Passed under its own number (pass_fds keeps it): never dup2 onto a
            # fixed one, which might be an fd the caller is using.
            fd = os.memfd_create("seccomp-filter", 0)
            os.write(fd, prepared.first[0])
            os.lseek(fd, 0, os.SEEK_SET)
            fds.append(fd)
        # The inner stage runs CMD only after a byte on this pipe: the outer bridges,
        # started beside bwrap, listen. Closed unwritten, it means they did not start.
        ready_r, ready_w = os.pipe() if profile.bridges else (None, None)
        if ready_r is not None:
            fds.append(ready_r)
        kept = fds if claim_fd is None else [*fds, claim_fd]
        argv = bwrap_argv(
            profile,
            bwrap=bwrap,
            workspace=workspace.resolve(),
            launcher_dir=prepared.launcher_dir,
            session_dir=session_dir,
            seccomp_fd=fds[0] if prepared.first else None,
            inner=inner_args(profile, prepared.second, ready_r, claim_fd),
            cmd=cmd,
            environ=os.environ,
        )
        try:
            proc = subprocess.Popen(argv, pass_fds=kept, stdout=stdout)
        except BaseException:
            if ready_w is not None:
                os.close(ready_w)
            raise
        finally:
            for fd in kept:
                os.close(fd)
        if ready_w is not None:
            try:
                outer_listening()
            except LauncherError:
                os.close(ready_w)
                proc.wait()  # the inner stage reads EOF and ends; so does bwrap
                raise
            with contextlib.suppress(BrokenPipeError):  # bwrap already ended: its status says
                os.write(ready_w, b"1")
            os.close(ready_w)
        return _wait_forwarding_signals(proc)


def _wait_forwarding_signals(proc: subprocess.Popen[bytes]) -> int:
    def forward(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    previous = {
        s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 - code if code < 0 else code


# --- the self-test -------------------------------------------------------------------

# Runs inside the sandbox with the guest's own filters. Each blocked call uses
# arguments the kernel would answer differently (success, EBADF, EINVAL), so the
# expected errno can only come from the filter.
SELF_TEST = r"""
import ctypes, errno, json, platform, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
arch = platform.machine()
NR = {"x86_64": {"unshare": 272, "ioctl": 16, "clone3": 435},
      "aarch64": {"unshare": 97, "ioctl": 29, "clone3": 435}}[arch]
def sc(name, *args):
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(NR[name]), *[ctypes.c_long(a) for a in args])
    return ret, ctypes.get_errno()
def sock_errno(family, kind, address=None):
    try:
        s = socket.socket(family, kind)
    except OSError as exc:
        return exc.errno
    try:
        s.settimeout(3)
        if address:
            s.connect(address)
        return 0
    except OSError as exc:
        return exc.errno
    finally:
        s.close()
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
status = {k: v.strip() for k, v in status.items()}
checks = {}
def check(name, ok, got):
    checks[name] = {"ok": bool(ok), "got": got}
check("no_new_privs", status.get("NoNewPrivs") == "1", status.get("NoNewPrivs"))
check("cap_eff_zero", int(status.get("CapEff", "1"), 16) == 0, status.get("CapEff"))
check("seccomp_filters_2", status.get("Seccomp_filters") == "2", status.get("Seccomp_filters"))
r, e = sc("unshare", 0x10000000 | 0x00020000)
check("unshare_userns_eperm", r == -1 and e == errno.EPERM, errno.errorcode.get(e, e))
r, e = sc("ioctl", -1, 0x5412 | (1 << 32), 0)
check("tiocsti_high_bits_eperm", r == -1 and e == errno.EPERM, errno.errorcode.get(e, e))
r, e = sc("clone3", 0, 0)
check("clone3_enosys", r == -1 and e == errno.ENOSYS, errno.errorcode.get(e, e))
e = sock_errno(socket.AF_UNIX, socket.SOCK_STREAM)
check("af_unix_eperm", e == errno.EPERM, errno.errorcode.get(e, e))
e = sock_errno(socket.AF_INET, socket.SOCK_STREAM, ("10.0.2.100", 3128))
check("no_direct_network", e in (errno.ENETUNREACH, errno.EHOSTUNREACH), errno.errorcode.get(e, e))
e = sock_errno(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 3128))
check("bridge_listens", e == 0, errno.errorcode.get(e, e))
import os
others = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
reached = []
for pid in others:  # bwrap's init (pid 1) and the bridges: started before us
    try:
        os.close(os.open(f"/proc/{pid}/mem", os.O_RDWR))
        reached.append(pid)
    except FileNotFoundError:
        pass  # gone meanwhile
    except PermissionError:
        pass
check("others_memory_unreachable", bool(others) and not reached, reached or len(others))
ok = all(c["ok"] for c in checks.values())
print(json.dumps({"ok": ok, "arch": arch, "checks": checks}, sort_keys=True))
sys.exit(0 if ok else 1)
"""


def self_test(prepared: Prepared, staging: Path) -> int:
    workspace = staging / "workspace"
    workspace.mkdir()
    cmd = [prepared.profile.python, "-I", "-c", SELF_TEST]
    return run_sandbox(prepared, cmd, workspace=workspace, staging=staging)


# --- command line --------------------------------------------------------------------


def _loopback(connect: str) -> bool:
    kind, _, rest = connect.partition(":")
    if kind == "unix":
        return True
    host = rest.rpartition(":")[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name could resolve anywhere


def with_bridges(profile: Profile, overrides: Sequence[str], in_vm: bool) -> Profile:
    """Apply --bridge NAME=ADDR and refuse a non-loopback target outside the VM."""
    targets = {b.name: b.connect for b in profile.bridges}
    for spec in overrides:
        name, _, connect = spec.partition("=")
        if name not in targets:
            raise LauncherError(
                f"--bridge {spec!r}: profile {profile.name!r} has no bridge {name!r} "
                f"(it has: {', '.join(targets) or 'none'})"
            )
        try:
            bwrap_profile.load_document(
                "--bridge", {"options": ["die-with-parent"], "bridges": [
                    {"name": name, "port": 1, "connect": connect}]}
            )  # fmt: skip
        except bwrap_profile.ProfileError:
            raise LauncherError(
                f"--bridge {spec!r}: give NAME=tcp:HOST:PORT or NAME=unix:/path"
            ) from None
        targets[name] = connect
    if not in_vm:
        for name, connect in targets.items():
            if not _loopback(connect):
                raise LauncherError(
                    f"bridge {name!r} leads to {connect}, which means something only "
                    f"inside the VM ({IN_VM_MARKER} is missing); on a host it could be a "
                    f"real machine: pass --bridge {name}=tcp:127.0.0.1:PORT to a proxy you "
                    "run (./inv sandbox-run starts one)"
                )
    bridges = tuple(bwrap_profile.Bridge(b.name, b.port, targets[b.name]) for b in profile.bridges)
    return dataclasses.replace(profile, bridges=bridges)


def _load_profile(spec: str, profile_dir: Path) -> Profile:
    path = Path(spec) if "/" in spec or spec.endswith(".json") else profile_dir / f"{spec}.json"
    try:
        return bwrap_profile.load_json(path)
    except OSError as exc:
        raise LauncherError(
            f"cannot read profile {path}: {exc.strerror}; "
            "pass --profile NAME (in --profile-dir) or a path"
        ) from None
    except bwrap_profile.ProfileError as exc:
        raise LauncherError(str(exc)) from None


def keep_terminal(profile: Profile) -> Profile:
    """The profile without --new-session, for a command on its own terminal.

    bwrap's --new-session guards against CVE-2017-5226: a sandboxed process pushing
    input into the terminal of whoever started it (TIOCSTI). The seccomp filter
    refuses that ioctl and TIOCLINUX, and the self-test proves it; here the terminal
    is the command's own (a PTY the exec agent made for it), so it may keep it.
    """
    if not sys.stdin.isatty():
        raise LauncherError("--terminal: stdin is not a terminal")
    if not (profile.seccomp_bwrap or profile.seccomp_launcher):
        raise LauncherError(
            f"--terminal: profile {profile.name!r} has no seccomp filter to refuse TIOCSTI"
        )
    options = tuple(o for o in profile.options if o != bwrap_profile.Flag("new-session"))
    return dataclasses.replace(profile, options=options)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sandbox-exec",
        description="Run a command under bubblewrap with the sandbox's seccomp filters.",
        epilog="exit status: the command's; 128+N if it died of signal N; "
        "125 launcher failure; 126 not executable; 127 not found",
    )
    parser.add_argument("--profile", default="agent", help="profile name or path (agent)")
    parser.add_argument(
        "--workspace",
        type=Path,
        default=None,
        help="directory bound read-write as the workspace (default: cwd)",
    )
    parser.add_argument(
        "--user",
        default=None,
        help="started as root: run the sandbox as this user (default: the workspace's "
        "owner, or nobody if that is root)",
    )
    parser.add_argument(
        "--bridge",
        action="append",
        default=[],
        metavar="NAME=ADDR",
        help="lead the profile's bridge NAME to tcp:HOST:PORT or unix:/path instead "
        "(outside the VM every bridge must lead to loopback or a Unix socket)",
    )
    parser.add_argument(
        "--terminal",
        action="store_true",
        help="stdin is a terminal that stays the command's controlling terminal (no "
        "bwrap --new-session), so a shell has job control and Ctrl-C reaches its "
        "foreground job; pushing input into it (TIOCSTI, TIOCLINUX) stays refused by "
        "the seccomp filter",
    )
    parser.add_argument("--profile-dir", type=Path, default=PROFILE_DIR, help=str(PROFILE_DIR))
    parser.add_argument("--seccomp-dir", type=Path, default=SECCOMP_DIR, help=str(SECCOMP_DIR))
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="prove the sandbox works here: print one JSON line, exit 0 if ok",
    )
    parser.add_argument(
        "--print-argv",
        action="store_true",
        help="print the bwrap argv as JSON instead of running it",
    )
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    return parser


def _run(profile: Profile, args: argparse.Namespace, cmd: list[str], workspace: Path,
         filters: Filters | None = None, claim_fd: int | None = None) -> int:  # fmt: skip
    """Prepare with the caller's rights, drop root if we have it, run, clean up."""
    staging = Path(tempfile.mkdtemp(prefix="sandbox-exec."))
    try:
        prepared = prepare(profile, args.seccomp_dir, staging, filters)
        dropped = os.geteuid() == 0
        if dropped:
            entry = sandbox_user(workspace, args.user)
            for path in (staging, prepared.launcher_dir, *prepared.launcher_dir.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            drop_privileges(entry)
        if args.self_test:
            return self_test(prepared, staging)
        return run_sandbox(
            prepared, cmd, workspace=workspace, staging=staging, dropped_root=dropped,
            claim_fd=claim_fd,
        )  # fmt: skip
    finally:
        # Everything in it is ours (or in a folder we own, after a drop).
        shutil.rmtree(staging, ignore_errors=True)


# Profiles and their filters read ahead by a long-lived caller (the exec agent, at
# its start, so a snapshot saves them): its forked children find them here and read
# nothing. Keyed by (profile, profile dir, seccomp dir); what changes on disk later
# is not seen until that caller restarts (in the image, both are root's, fixed).
_PRELOADED: dict[tuple[str, Path, Path], tuple[Profile, Filters]] = {}


def loaded(profile_name: str, profile_dir: Path | None = None,
           seccomp_dir: Path | None = None) -> tuple[Profile, Filters]:  # fmt: skip
    """PROFILE_NAME and its filters: as preloaded, else read now."""
    key = (profile_name, profile_dir or PROFILE_DIR, seccomp_dir or SECCOMP_DIR)
    if key in _PRELOADED:
        return _PRELOADED[key]
    profile = with_bridges(_load_profile(profile_name, key[1]), [], IN_VM_MARKER.exists())
    return profile, read_filters(profile, key[2])


def preload(profile_name: str, profile_dir: Path | None = None,
            seccomp_dir: Path | None = None) -> None:  # fmt: skip
    """Read PROFILE_NAME and its filters now, for `run_in_process` in forked children.
    Raises `LauncherError` as `run_in_process` would report it."""
    _PRELOADED[(profile_name, profile_dir or PROFILE_DIR, seccomp_dir or SECCOMP_DIR)] = loaded(
        profile_name, profile_dir, seccomp_dir
    )


def run_in_process(
    profile_name: str, cmd: Sequence[str], workspace: Path, user: str | None, terminal: bool,
    profile_dir: Path | None = None, seccomp_dir: Path | None = None,
    claim_fd: int | None = None,
) -> int:  # fmt: skip
    """What `sandbox-exec --profile P --workspace W [--user U] [--terminal] -- CMD` does,
    for a root caller that is already a Python process (the exec agent forks and
    calls this: no new interpreter, no runuser; the profile and filters `preload`ed,
    if they were). With ``claim_fd`` and no CMD, a standby (run_sandbox). Errors print
    and return 125."""
    seccomp_dir = seccomp_dir or SECCOMP_DIR
    args = argparse.Namespace(seccomp_dir=seccomp_dir, user=user, self_test=False)
    try:
        profile, filters = loaded(profile_name, profile_dir, seccomp_dir)
        if terminal:
            profile = keep_terminal(profile)
        return _run(profile, args, list(cmd), workspace.absolute(), filters, claim_fd)
    except LauncherError as exc:
        print(f"sandbox-exec: {exc}", file=sys.stderr)
        return EXIT_LAUNCHER


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cmd = list(args.cmd)
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    try:
        profile = _load_profile(args.profile, args.profile_dir)
        profile = with_bridges(profile, args.bridge, IN_VM_MARKER.exists())
        if args.terminal:
            profile = keep_terminal(profile)
        if not cmd and not args.self_test:
            raise LauncherError("no command given; usage: sandbox-exec [options] -- CMD [ARG...]")
        workspace = (args.workspace or Path.cwd()).absolute()
        if args.print_argv:
            print(
                json.dumps(
                    bwrap_argv(
                        profile,
                        bwrap="bwrap",
                        workspace=workspace.resolve(),
                        launcher_dir=Path("/SESSION/launcher"),
                        session_dir=Path("/SESSION/bridges"),
                        seccomp_fd=SECCOMP_FD if profile.seccomp_bwrap else None,
                        inner=inner_args(profile, []),
                        cmd=cmd,
                        environ=os.environ,
                    )
                )
            )
            return 0
        return _run(profile, args, cmd, workspace)
    except LauncherError as exc:
        print(f"sandbox-exec: {exc}", file=sys.stderr)
        return EXIT_LAUNCHER


if __name__ == "__main__":
    sys.exit(main())
