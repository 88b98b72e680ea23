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
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from invoke.context import Context
from invoke.exceptions import Exit

from image import config, console
from image.errors import ImageError

ROOT = Path(__file__).resolve().parent.parent


def _debug() -> bool:
    return bool(os.environ.get("SANDBOX_IMAGE_DEBUG")) or logging.getLogger().isEnabledFor(
        logging.DEBUG
    )


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
}


def _policy_choice(
    policy: str | None, default: Path, allow: list[str] | None, deny: list[str] | None,
    allow_address: list[str] | None, allow_port: list[str] | None,
) -> Any:  # fmt: skip
    from image.egress import guestnet

    return guestnet.PolicyChoice(
        _user_path(policy) if policy else default, tuple(allow or ()), tuple(deny or ()),
        tuple(allow_address or ()), tuple(allow_port or ()),
    )  # fmt: skip


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


def _seconds(text: object, flag: str) -> float:
    """A flag's number of seconds (invoke hands it over as text): positive and finite."""
    try:
        return config.parse_seconds(text)
    except ValueError as exc:
        raise ImageError(f"{flag}: {exc}", hint=f"give seconds, e.g. {flag} 900") from None
