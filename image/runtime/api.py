"""The Python API an agent harness imports: sandboxes launched from a snapshot.

    from image.runtime.api import launch

    with launch("out/snapshot", share="~/project") as sandbox:    # resumed and ready
        result = sandbox.run(["python3", "-c", "print(6 * 7)"], timeout=60)
        assert result.ok and result.stdout == b"42\\n"
        proc = sandbox.spawn(["make", "test"])                     # output as it comes
        for stream, chunk in proc.output():                        # "stdout"/"stderr"
            print(stream, chunk)
        print(proc.wait().code)
        sandbox.put("notes.txt", b"for the agent\\n")                # in the workspace
        report = sandbox.get("report.pdf")

Each `launch` resumes its own VM from the snapshot (its own copy-on-write disk,
session disk, host name, clock and randomness), whose only network is the egress
proxy the launch runs; leaving the `with` block stops the VM and removes what the
launch made. Commands run in the in-guest sandbox (bubblewrap, both seccomp
filters, no-new-privs, no capabilities) as the agent user, in the workspace (the
session disk's ``work`` folder, the command's current directory), through the
warm exec agent: output streams as produced, stdin can be written and closed,
signals and timeouts reach the command's whole process group.

Everything the guest sends is untrusted: `Result` and `Process` hold its bytes;
a guest that breaks the protocol or dies raises `ChannelError`, never hangs.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from image import config
from image.contract import guest
from image.egress import guestnet
from image.errors import ImageError
from image.runtime import snapshot
from image.runtime.execchannel import ChannelError, ExecSession, Process, Result

__all__ = ["ChannelError", "ImageError", "Process", "Result", "Sandbox", "launch"]

# The workspace as the VM sees it (where put/get go); commands see it at the
# profile's workspace path, which is their current directory.
WORKSPACE = snapshot.WORKSPACE
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class Sandbox:
    """A launched sandbox: run commands in it, move files in and out of its workspace."""

    vm: snapshot.Launch
    session: ExecSession

    @property
    def hostname(self) -> str:
        return self.vm.hostname

    @property
    def timings(self) -> dict[str, float]:
        """Seconds from the start of the launch: prepare, resume, agent, ready."""
        return self.vm.timings

    @property
    def audit_log(self) -> Path:
        """The egress proxy's record of this launch's connections (JSON lines)."""
        return self.vm.audit_log

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: str | None = None, pty: bool = False, rows: int | None = None,
              cols: int | None = None) -> Process:  # fmt: skip
        """Start ARGV in the sandbox; its output streams (`Process.output()`).

        ``env`` adds variables to the sandbox's own environment; ``cwd`` is relative
        to the workspace (or absolute inside the sandbox). ``pty`` gives it a terminal
        (one output stream) of ``rows`` x ``cols``. Write its stdin with
        `Process.write` and end it with `Process.close_stdin` (a command that reads
        stdin waits for that).
        """
        command = _with_env(argv, env, cwd)
        return self.session.spawn(
            command, sandbox=guest.sandbox_request(WORKSPACE, terminal=pty),
            pty=pty, rows=rows, cols=cols,
        )  # fmt: skip

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
            timeout: float | None = None, env: Mapping[str, str] | None = None,
            cwd: str | None = None) -> Result:  # fmt: skip
        """Run ARGV in the sandbox to its end: its exit code (or the signal that ended
        it), stdout and stderr. After ``timeout`` seconds its process group is killed
        and the result says ``timed_out``."""
        command = _with_env(argv, env, cwd)
        return self.session.run(
            command, sandbox=guest.sandbox_request(WORKSPACE), stdin=stdin, timeout=timeout
        )

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write a file in the workspace (PATH relative to it), whole or not at all,
        owned by the agent user. A symbolic link on the way is refused: the sandboxed
        command may have made it."""
        self.session.put(_relative(path), data, mode=mode, within=WORKSPACE)

    def get(self, path: str) -> bytes:
        """A regular file from the workspace (PATH relative to it); a symbolic link,
        a FIFO or a device is refused."""
        return self.session.get(_relative(path), within=WORKSPACE)


def _relative(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ImageError(f"{path!r} is not a plain path relative to the workspace",
                         hint="e.g. 'notes.txt' or 'src/main.py'")  # fmt: skip
    return path


def _with_env(argv: Sequence[str], env: Mapping[str, str] | None,
              cwd: str | None) -> list[str]:  # fmt: skip
    """ARGV, through `env` in the sandbox when it needs variables or a directory
    (the sandbox starts with its profile's environment, not the host's)."""
    command = [str(a) for a in argv]
    if not command:
        raise ImageError("an empty command", hint="e.g. ['python3', '-V']")
    if not env and cwd is None:
        return command
    prefix = ["env"]
    if cwd is not None:
        prefix += ["-C", cwd]
    for name, value in (env or {}).items():
        if not _ENV_NAME.fullmatch(name) or "\0" in value:
            raise ImageError(f"not an environment variable: {name!r}",
                             hint="letters, digits and '_', not starting with a digit")  # fmt: skip
        prefix.append(f"{name}={value}")
    if "=" in command[0]:  # env would take it for a variable
        raise ImageError(f"a command named {command[0]!r} cannot be given env or cwd")
    return [*prefix, *command]


@contextlib.contextmanager
def launch(
    snapshot_dir: str | os.PathLike[str],
    *,
    share: str | os.PathLike[str] | None = None,
    share_readonly: bool = False,
    session_disk: int | str = "10G",
    hostname: str | None = None,
    policy: str | os.PathLike[str] | None = None,
    allow: Sequence[str] = (),
    deny: Sequence[str] = (),
    audit_log: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Iterator[Sandbox]:
    """Resume a sandbox from SNAPSHOT_DIR (made by ``./inv snapshot``).

    ``share``: a host folder at /mnt/share (read-only with ``share_readonly``);
    ``session_disk``: its size (bytes, or "20G"); ``policy``, ``allow``, ``deny``:
    the egress policy (default: proxy-policies/launch.policy) and additions to it;
    ``audit_log``: where its record of connections goes; ``cache_dir``: as for the
    tasks (default: $SANDBOX_IMAGE_CACHE_DIR or ~/.cache/sandbox-image).
    Raises `ImageError` (with a ``hint``) for a snapshot or option that cannot work.
    """
    options = snapshot.parse_launch_options(
        share=None if share is None else f"{share}{':ro' if share_readonly else ''}",
        session_disk=str(session_disk) + ("B" if isinstance(session_disk, int) else ""),
        hostname=hostname,
        command=(),
        timeout=3600.0,
        policy=guestnet.PolicyChoice(
            Path(policy) if policy else guestnet.LAUNCH_POLICY, tuple(allow), tuple(deny)
        ),
        audit_log=None if audit_log is None else os.fspath(audit_log),
    )
    cli = {"cache_dir": os.fspath(cache_dir)} if cache_dir is not None else {}
    cfg = config.load(cli, None, ("cache_dir",)).config
    with open_sandbox(Path(snapshot_dir), cfg, options) as sandbox:
        yield sandbox


@contextlib.contextmanager
def open_sandbox(snapdir: Path, cfg: config.BuildConfig,
                 options: snapshot.LaunchOptions) -> Iterator[Sandbox]:  # fmt: skip
    """`launch` with options already parsed (the CLI's way in)."""
    with snapshot.launch(snapdir, cfg, options) as vm, vm.exec_session() as session:
        yield Sandbox(vm, session)
