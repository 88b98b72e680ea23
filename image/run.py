"""The one subprocess wrapper. Every external command goes through here.

It takes argv lists only, logs a copy-pasteable ``+ shlex.join(argv)``, gives
the child /dev/null as stdin and a minimal environment, and on failure raises
one CommandError naming the command, the exit code and the tail of stderr.
Strings passed in ``redact`` never reach the log or the error.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from image.errors import ImageError

log = logging.getLogger(__name__)

# Enough for a person to see why a tool failed, without flooding the screen.
STDERR_TAIL_LINES = 20
_KEEP_ENV = (
    "PATH", "HOME", "TERM", "TMPDIR", "USER", "http_proxy", "https_proxy", "no_proxy",
    # How this host trusts TLS (a company CA): without them Node.js, curl or
    # requests in a child cannot reach a registry the host itself reaches.
    "SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE",
)  # fmt: skip


class CommandError(ImageError):
    def __init__(
        self, argv: Sequence[str], returncode: int | None, stderr: str, hint: str | None = None
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        tail = "\n".join(stderr.rstrip().splitlines()[-STDERR_TAIL_LINES:])
        what = "timed out" if returncode is None else f"failed with exit code {returncode}"
        message = f"command {what}: {shlex.join(self.argv)}"
        if tail:
            message += "\n--- stderr (tail) ---\n" + tail
        super().__init__(message, hint)


def minimal_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["LC_ALL"] = "C.UTF-8"
    env.update(extra or {})
    return env


def redacted(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    input: bytes | None = None,
    capture: bool = True,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    redact: Sequence[str] = (),
    hint: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv to completion.

    capture=False lets the child's stdout/stderr reach ours (long, chatty tools);
    the error then points at the output above instead of quoting it.
    """
    args = [os.fspath(a) for a in argv]
    shown = [redacted(a, redact) for a in args]
    log.info("+ %s", shlex.join(shown))
    # A new session so that a timeout kills the whole process group, not just
    # the direct child (qemu-img, gpg and friends may fork helpers).
    proc = subprocess.Popen(
        args,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        env=minimal_env(env),
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        raise CommandError(
            shown,
            None,
            redacted((err or b"").decode(errors="replace"), redact),
            hint or f"it ran longer than {timeout:g} s",
        ) from None
    except BaseException:  # Ctrl-C, SIGTERM as exception: leave nothing running
        _kill_group(proc)
        proc.wait()
        raise
    result = subprocess.CompletedProcess(args, proc.returncode, out or b"", err or b"")
    if check and proc.returncode != 0:
        stderr = redacted(result.stderr.decode(errors="replace"), redact)
        if not capture:
            stderr = "(output shown above)"
        raise CommandError(shown, proc.returncode, stderr, hint)
    return result


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the parent dies, however it dies.

    Even a SIGKILLed toolkit then leaves no QEMU behind. (The signal follows the
    parent *thread*, so long-running children are started from the main thread.)
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def background(
    argv: Sequence[str | os.PathLike[str]],
    *,
    stdout: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    terminate_timeout: float = 10.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a long-running process; on exit from the block it is gone, whatever happened.

    stdout and stderr go to ``stdout`` (a log file) or /dev/null.
    """
    args = [os.fspath(a) for a in argv]
    log.info("+ %s &", shlex.join(args))
    sink = (stdout or Path(os.devnull)).open("ab")
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=minimal_env(env),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    finally:
        sink.close()
    try:
        yield proc
    finally:
        stop(proc, terminate_timeout)


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL the process group. Idempotent."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    _kill_group(proc)
    proc.wait()
