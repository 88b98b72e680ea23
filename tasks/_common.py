"""What every task shares: user errors as clean messages, the config, flag help.

Tasks stay thin: parse flags -> load the config once -> call image.*. User errors
(ImageError) become a message, a hint and exit 1; SIGTERM and Ctrl-C unwind like an
exception, so every cleanup runs. Tracebacks only with --debug.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shlex
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from invoke import tasks as invoke_tasks
from invoke.context import Context
from invoke.exceptions import Exit

from image import config, console
from image.errors import ImageError

ROOT = Path(__file__).resolve().parent.parent


def _debug() -> bool:
    """--debug (before or after the task) or SANDBOX_IMAGE_DEBUG=1; "0", "no", "off",
    "false" or empty mean off."""
    flag = os.environ.get("SANDBOX_IMAGE_DEBUG", "").strip().lower()
    on = flag not in ("", "0", "no", "off", "false")
    return on or logging.getLogger().isEnabledFor(logging.DEBUG)


def task(**kwargs: Any) -> Callable[[Callable[..., None]], invoke_tasks.Task[Any]]:
    """invoke's @task without automatic short flags: ``-h`` is help on every task, and
    no switch gets a letter by accident (invoke would make --insecure-skip-signature
    ``-u``). A one-letter parameter is its own short flag (test's ``-k``, as pytest's)."""
    kwargs.setdefault("auto_shortflags", False)
    made: Callable[[Callable[..., None]], invoke_tasks.Task[Any]] = invoke_tasks.task(**kwargs)
    return made


class _Terminated(KeyboardInterrupt):
    """SIGTERM unwinds like Ctrl-C, so every `finally` and context manager runs."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    console.setup_logging(_debug())
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    except ImageError as exc:
        if _debug():
            raise
        # Messages may quote a guest (serial log, cloud-init output): shown, not obeyed.
        console.err.print(f"[bold red]error:[/] {console.markup_safe(exc.message)}",
                          markup=True, highlight=False)  # fmt: skip
        if exc.hint:
            console.err.print(f"[bold]hint:[/] {console.markup_safe(exc.hint)}")
        raise Exit(code=1) from None
    except OSError as exc:
        # The filesystem said no (a read-only --out, a full disk): a message, not a
        # traceback; each task checks what it can before it starts writing.
        if _debug():
            raise
        what = (exc.strerror or str(exc)) + (f": {exc.filename}" if exc.filename else "")
        console.err.print(f"[bold red]error:[/] {console.markup_safe(what)}",
                          markup=True, highlight=False)  # fmt: skip
        console.err.print("[bold]hint:[/] check that path and its permissions and free "
                          "space; --debug shows where it happened")  # fmt: skip
        raise Exit(code=1) from None
    except _Terminated:
        console.err.print("terminated (SIGTERM); cleaned up")
        raise Exit(code=143) from None
    except KeyboardInterrupt:
        console.err.print("interrupted; cleaned up")
        raise Exit(code=130) from None


def _config(c: Context, only: tuple[str, ...] | None = None, **cli: Any) -> config.Resolved:
    """The config from flags, environment and invoke.yaml; ``only``: the fields this task
    uses, so a bad setting it never reads (a build's mirror, for a launch) cannot fail it."""
    section = c.config.get("sandbox_image", None)
    if section is not None and not isinstance(section, Mapping):
        kind = type(section).__name__
        raise ImageError(
            f"invoke.yaml: sandbox_image must be a mapping of settings, not a {kind}",
            hint="write `sandbox_image:` then indented `key: value` lines (./inv config: the keys)",
        )
    file_values = dict(section) if section else {}
    resolved = config.load(cli, file_values, only)
    # One rule for relative paths: the caller's directory (flags, environment and
    # defaults such as out/); only invoke.yaml's are relative to the checkout it
    # lives in, where tasks run.
    moved: dict[str, Any] = {
        name: _user_path(value)
        for name, value in dataclasses.asdict(resolved.config).items()
        if isinstance(value, Path) and not value.is_absolute()
        and resolved.sources[name] != "invoke.yaml"
    }  # fmt: skip
    if not moved:
        return resolved
    return dataclasses.replace(resolved, config=dataclasses.replace(resolved.config, **moved))


# Config flags explain themselves from the config's own field table.
CONFIG_HELP = {
    **config.flag_help(
        *(n for n in config.FIELDS if n not in ("boot_timeout", "provision_timeout", "skills"))
    ),
    "json": "print a JSON result as the last line",
}


EGRESS_HELP = {
    "policy": "egress policy file (docs/proxy.md); flags below add to it",
    "allow": "also allow this name or *.suffix (repeatable)",
    "deny": "also deny this name or *.suffix (repeatable)",
    "allow_address": "also allow connecting to this address/CIDR (repeatable)",
    "allow_port": "also allow this port besides 80 and 443 (repeatable)",
    "audit_log": "append the egress audit log (JSON lines) here",
    "upstream_proxy": "forward through this HTTP proxy (http://[USER:PASSWORD@]HOST:PORT): "
    "names go through it, address literals direct; the policy still decides",
}


def _policy_choice(
    policy: str | None, default: Path, allow: list[str] | None, deny: list[str] | None,
    allow_address: list[str] | None, allow_port: list[str] | None,
    upstream_proxy: str | None = None,
) -> Any:  # fmt: skip
    from image.egress import guestnet

    choice = guestnet.PolicyChoice(
        _user_path(policy) if policy else default, tuple(allow or ()), tuple(deny or ()),
        tuple(allow_address or ()), tuple(allow_port or ()), upstream_proxy,
    )  # fmt: skip
    choice.load()  # a bad policy or upstream URL fails here, before any work
    return choice


def _remainder(c: Context) -> list[str]:
    # invoke joins the words after "--" with spaces, losing their quoting
    # ("sh -c 'a b'"); the process's own argv still has them intact.
    if "--" in sys.argv:
        return sys.argv[sys.argv.index("--") + 1 :]
    return shlex.split(c.remainder)


def _caller_dir() -> Path:
    # ./inv changes into the checkout and says where its caller was; invoke run by
    # hand leaves the shell's PWD.
    return Path(os.environ.get("INV_CALLER_DIR") or os.environ.get("PWD") or Path.cwd())


def _user_path(text: str | Path) -> Path:
    """A path the user typed: relative to the directory ./inv was run from."""
    return (_caller_dir() / Path(text).expanduser()).resolve()


def _key_spec(text: str) -> str:
    """--sign-key: a key file the user named (relative to where they are), or a key id."""
    path = _user_path(text)
    return str(path) if path.is_file() else text


def _out_path(text: str, flag: str, *, directory: bool) -> Path:
    """An output the user named: checked before anything is written, so a wrong --out
    costs a message, not a half-made artifact."""
    path = _user_path(text)
    if directory and path.exists() and not path.is_dir():
        raise ImageError(f"{flag} {text}: a file is in the way, a directory goes there",
                         hint=f"name a new directory, or move {path} aside")  # fmt: skip
    if not directory and path.is_dir():
        raise ImageError(f"{flag} {text}: that is a directory, a file goes there",
                         hint=f"name the file, e.g. {flag} {Path(text) / 'NAME'}")  # fmt: skip
    parent = path if directory and path.is_dir() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ImageError(f"{flag} {text}: {parent} is a file, not a directory",
                         hint="name a path under a directory")  # fmt: skip
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ImageError(f"{flag} {text}: {parent} is not writable by this user",
                         hint="choose a directory you can write, or change its owner")  # fmt: skip
    return path


def _port(text: object, flag: str) -> int:
    """A TCP port on 127.0.0.1 from a flag: 0 (any free port) to 65535."""
    value = str(text).strip()
    if not value.isdigit() or int(value) > 65535:
        raise ImageError(f"{flag}: {text!r} is not a port number",
                         hint=f"0..65535, 0 for any free port: e.g. {flag} 0")  # fmt: skip
    return int(value)


def _count(text: object, flag: str) -> int:
    """A positive whole number from a flag (runs, vCPUs)."""
    value = str(text).strip()
    if not value.isdigit() or int(value) < 1:
        raise ImageError(f"{flag}: {text!r} is not a positive whole number",
                         hint=f"e.g. {flag} 3")  # fmt: skip
    return int(value)


def _seconds(text: object, flag: str) -> float:
    """A flag's number of seconds (invoke hands it over as text): positive and finite."""
    try:
        return config.parse_seconds(text)
    except ValueError as exc:
        raise ImageError(f"{flag}: {exc}", hint=f"give seconds, e.g. {flag} 900") from None
