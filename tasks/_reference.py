"""docs/cli.md, written from the tasks themselves: every task, its inputs and every flag.

    .venv/bin/python -m tasks._reference > docs/cli.md

tests/unit/test_cli_reference.py fails when the file and the tasks differ, so the
reference cannot fall behind a new flag.
"""

from __future__ import annotations

import inspect

from invoke.parser.argument import Argument
from invoke.tasks import Task

from tasks import build, release, runtime, sandbox, setup, source
from tasks._program import PLACEHOLDERS

AREAS = (
    ("Set-up", setup), ("Base image", source), ("Build", build), ("Sandbox", sandbox),
    ("Run", runtime), ("Release", release),
)  # fmt: skip


def _flag(arg: Argument) -> str:
    word = str(arg.name)
    name = "-" + word if len(word) == 1 else "--" + word.replace("_", "-")
    if arg.kind is bool:
        return f"--[no-]{name[2:]}" if arg.default is True else name
    shown = PLACEHOLDERS.get(word, "VALUE")
    return f"{name} {shown}" + (" …" if arg.kind is list else "")


def _task_section(task: Task) -> list[str]:  # type: ignore[type-arg]
    args = task.get_arguments()
    inputs = [str(a.name).upper() for a in args if a.positional]
    takes_command = "-- CMD" in (inspect.getdoc(task) or "") or task.name == "launch"
    usage = " ".join(["./inv", task.name, *inputs, "[flags]" if len(args) > len(inputs) else ""])
    if takes_command:
        usage += " [-- CMD [ARG…]]"
    doc = inspect.getdoc(task) or ""
    lines = [f"### `{task.name}`", "", f"`{usage.strip()}`".replace("  ", " "), "", doc, ""]
    lines += ["| flag | |", "|---|---|"]
    for arg in sorted(args, key=lambda a: (not a.positional, a.name)):
        label = str(arg.name).upper() if arg.positional else _flag(arg)
        text = (arg.help or "").replace("|", "\\|")
        if arg.positional:
            text = f"(input; also as {_flag(arg)}) {text}"
        lines.append(f"| `{label}` | {text} |")
    return [*lines, ""]


def markdown() -> str:
    lines = [
        "# Command-line reference",
        "",
        "Every `./inv` task and flag, written from the tasks by",
        "`.venv/bin/python -m tasks._reference > docs/cli.md` (a test keeps it current).",
        "`./inv TASK -h` prints the same for one task.",
        "",
        "Conventions: inputs are positional (`./inv publish BUILD`), `--out` names what a",
        "task writes; a flag's value says what it is (`SECONDS`, `SIZE` with a unit, `PORT`,",
        "`PATH` relative to where `./inv` runs); `…` marks a flag that may repeat. A bad",
        "input is one `error:` line and a `hint:` line, exit 1; `--debug` (before or after",
        "the task) or `SANDBOX_IMAGE_DEBUG=1` shows the traceback; `./inv --version` prints",
        "the toolkit's version and git revision. Config flags (`--arch`, `--memory`, …) can",
        "also be set as `SANDBOX_IMAGE_<KEY>` or in `invoke.yaml` (README, Configuration).",
        "",
    ]
    for title, module in AREAS:
        lines += [f"## {title}", ""]
        tasks = [v for v in vars(module).values() if isinstance(v, Task)]
        for task in sorted(tasks, key=lambda t: t.name):
            lines += _task_section(task)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
