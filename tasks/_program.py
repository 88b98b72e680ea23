"""``./inv``'s command line: invoke's Program with the project's conventions.

- ``-h``/``--help`` and ``--debug`` work before or after the task name (up to ``--``);
- ``./inv --version`` says the toolkit's version and, in a checkout, its revision;
- every flag that takes a value shows what (``--timeout=SECONDS``, ``--allow=VALUE``);
- a mistyped command line, an empty value or a broken ``invoke.yaml`` is one
  ``error:`` line and a ``hint:`` line, exit 1, never a traceback.

Run as ``python -m tasks`` (the ``./inv`` shim does); plain ``invoke`` still finds
the same tasks, without these niceties.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from invoke.exceptions import ParseError
from invoke.parser.context import ParserContext
from invoke.program import Program

import image

ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILES = ("invoke.yaml", "invoke.yml")

# What a flag's value is, by the flag's name; anything else that takes a value: VALUE.
PLACEHOLDERS = {
    **dict.fromkeys(("timeout", "boot_timeout", "provision_timeout"), "SECONDS"),
    **dict.fromkeys(("port", "http_port", "socks_port"), "PORT"),
    **dict.fromkeys(("cpus", "runs"), "N"),
    **dict.fromkeys(("memory", "disk_size", "session_disk", "max_size"), "SIZE"),
    "older_than": "AGE",
    **dict.fromkeys(
        (
            "out",
            "image",
            "snapshot",
            "policy",
            "audit_log",
            "cache_dir",
            "output_dir",
            "package_lists",
            "skills",
            "lock",
            "keyring",
            "storage",
            "workspace",
            "ssh_key",
            "ca_cert",
            "source_file",
            "build",
            "old",
            "new",
        ),
        "PATH",
    ),
    **dict.fromkeys(
        (
            "mirror",
            "apt_mirror",
            "apt_proxy",
            "skills_url",
            "source",
            "upstream_proxy",
            "pip_index",
            "npm_registry",
            "expect_source",
        ),
        "URL",
    ),
    "builder_id": "URI",
    "target": "DIR|REF",
    **dict.fromkeys(("to", "ref"), "REF"),
    **dict.fromkeys(("sign_key", "key", "verify_key"), "KEY"),
    **dict.fromkeys(("expect_revision", "revision"), "SHA"),
}


class UsageError(ParseError):
    """A command-line mistake, printed by invoke's Program as our two lines."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(f"error: {message}\nhint: {hint}")


def version() -> str:
    """'0.1.0' and, in a git checkout, '(git 2c83d24)' with '-dirty' for local edits."""
    text = image.__version__
    if (ROOT / ".git").exists():
        try:
            rev = subprocess.run(
                ["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout.strip()  # fmt: skip
            text += f" (git {rev})"
        except (OSError, subprocess.SubprocessError):
            pass
    return text


def _help_for(ctx: ParserContext, flag: str) -> tuple[str, str]:
    arg = ctx.flags[flag]
    if arg.kind is bool:
        return ParserContext.help_for(ctx, flag)
    shown = PLACEHOLDERS.get(arg.attr_name or arg.name, "VALUE")
    names = [f"{n}={shown}" if n.startswith("--") else f"{n} {shown}" for n in ctx.names_for(flag)]
    help_text = arg.help or ""
    if arg.kind is list and "repeatable" not in help_text:
        help_text += " (repeatable)"
    return ", ".join(sorted(names, key=len)), help_text


def _flag_name(match: re.Match[str]) -> str:
    return "--" + match.group(1).replace("_", "-")


def _readable(message: str) -> str:
    """invoke's parse messages, with '<Argument: cache_dir (h)>' as '--cache-dir'."""
    text = re.sub(r"<Argument: ([\w-]+)[^>]*>", _flag_name, message).rstrip("!")
    for pattern, readable in (
        (r"^No idea what '(.*)' is$", r"unknown task or flag: \1"),
        (r"^Flag (\S+) needed value and was not given one$", r"\1 needs a value"),
        (r"^Flag (\S+) doesn't take any value$", r"\1 is a switch: it takes no value"),
        (r"^'(\S+)' did not receive required positional arguments: (.*)$",
         r"\1 needs its input(s): \2"),
    ):  # fmt: skip
        text = re.sub(pattern, readable, text)
    return text


class SandboxImageProgram(Program):
    def __init__(self) -> None:
        super().__init__(name="sandbox-image", binary="inv", version=version())

    def print_version(self) -> None:
        print(f"{self.name} {self.version}")

    def parse_core(self, argv: list[str] | None) -> None:
        super().parse_core(_help_first(list(sys.argv if argv is None else argv)))

    def load_collection(self) -> None:
        for name in CONFIG_FILES:
            _check_config_file(ROOT / name, name)
        super().load_collection()

    def parse_tasks(self) -> None:
        try:
            super().parse_tasks()
        except UsageError:
            raise
        except ParseError as exc:
            task = exc.context.name if exc.context is not None else None
            hint = (
                f"./inv {task} --help lists its flags" if task else "./inv --list shows the tasks"
            )
            typo = _flag_taken_as_input(exc.context) if exc.context is not None else None
            raise UsageError(typo or _readable(str(exc)), hint) from None
        if self.args.debug.value:  # also when given after the task name
            os.environ["SANDBOX_IMAGE_DEBUG"] = "1"
        for ctx in self.tasks:
            typo = _flag_taken_as_input(ctx)
            if typo:
                raise UsageError(typo, f"./inv {ctx.name} --help lists its flags")
            for arg in ctx.args.values():
                values = arg.value if arg.kind is list else [arg.value]
                if arg.got_value and any(isinstance(v, str) and not v.strip() for v in values):
                    raise UsageError(
                        f"--{arg.name.replace('_', '-')} is empty",
                        f"give it a value, or leave the flag out ({ctx.name}'s default)",
                    )

    def update_config(self, merge: bool = True) -> None:
        runtime = self.args.config.value
        if runtime:
            _check_config_file(Path(runtime), f"-f {runtime}")
        super().update_config(merge)

    def print_task_help(self, name: str) -> None:
        ctx = self.parser.contexts[name]
        ctx.help_for = functools.partial(_help_for, ctx)  # type: ignore[method-assign,unused-ignore]
        super().print_task_help(name)


def _flag_taken_as_input(ctx: ParserContext) -> str | None:
    """invoke fills a task's input with the next word, even a mistyped "--flag"."""
    for arg in ctx.positional_args:
        if isinstance(arg.value, str) and arg.value.startswith("--"):
            return f"unknown task or flag: {arg.value}"
    return None


def _help_first(argv: list[str]) -> list[str]:
    """``inv TASK ... -h`` as ``inv --help TASK``: invoke would otherwise print its own
    help, or take ``-h`` as the value of TASK's first flag. Words after ``--`` are the
    sandboxed command's."""
    words = argv[1:]
    before = words[: words.index("--")] if "--" in words else words
    tasks = [w for w in before if not w.startswith("-")]
    if tasks and any(w in ("-h", "--help") for w in before[before.index(tasks[0]) + 1 :]):
        return [argv[0], "--help", tasks[0]]
    return argv


def _check_config_file(path: Path, label: str) -> None:
    """invoke.yaml (or -f FILE) loads as a mapping, or the user hears where it is wrong."""
    if not path.is_file():
        if label.startswith("-f"):
            raise UsageError(f"{label}: no such file", "give the path of a YAML config file")
        return
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{label}: cannot read {path}: {exc}", "check its permissions") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f":{where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(
            f"{path}{line}: not valid YAML ({problem})",
            "see README 'Configuration' for the file's shape: `sandbox_image:` and its keys",
        ) from None
    if data is not None and not isinstance(data, dict):
        raise UsageError(
            f"{path}: the file must be a mapping (`sandbox_image:` and its keys), "
            f"not a {type(data).__name__}",
            "see README 'Configuration'; ./inv config lists the keys",
        )


def main() -> None:
    try:
        SandboxImageProgram().run()
    except BrokenPipeError:  # `./inv ... | head`: the reader left; no traceback about it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
