"""The sample CI workflow parses, and every ./inv call in it names a real task and real flags."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from invoke.collection import Collection

import tasks

WORKFLOW = Path(__file__).resolve().parents[2] / ".github" / "workflows" / "build-image.yml"
_INV = re.compile(r"\./inv\s+(?P<task>[a-z][a-z0-9-]*)(?P<rest>[^|;&\n]*)")


def _task_flags() -> dict[str, set[str]]:
    """{task name: its long flags}, from the same Collection ./inv runs."""
    flags: dict[str, set[str]] = {}
    for context in Collection.from_module(tasks).to_contexts():
        long_flags = {f for f in context.flags if f.startswith("--")}
        for name in (context.name, *context.aliases):
            if name:
                flags[name] = long_flags
    return flags


def _run_scripts(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["run"]] if isinstance(node.get("run"), str) else []
        for value in node.values():
            found += _run_scripts(value)
        return found
    if isinstance(node, list):
        return [s for item in node for s in _run_scripts(item)]
    return []


def inv_calls(script: str) -> list[tuple[str, list[str]]]:
    """(task, [--flag, ...]) for each ./inv in a shell script; backslash-continued lines joined."""
    text = script.replace("\\\n", " ")
    return [
        (m.group("task"), re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", m.group("rest")))
        for m in _INV.finditer(text)
    ]


def test_inv_calls_parser() -> None:
    script = (
        "sudo ./inv doctor --install || echo x\n./inv pull a --out b && ./inv diff a \\\n  b --json"
    )
    assert inv_calls(script) == [
        ("doctor", ["--install"]), ("pull", ["--out"]), ("diff", ["--json"]),
    ]  # fmt: skip


def test_workflow_parses_with_the_promised_shape() -> None:
    doc = yaml.safe_load(WORKFLOW.read_text())
    job = doc["jobs"]["build"]
    assert {entry["arch"] for entry in job["strategy"]["matrix"]["include"]} == {"amd64", "arm64"}
    uses = [step.get("uses", "") for step in job["steps"]]
    assert any(u.startswith("actions/cache@") for u in uses)
    assert any(u.startswith("actions/upload-artifact@") for u in uses)
    scripts = "\n".join(_run_scripts(doc))
    assert "GITHUB_STEP_SUMMARY" in scripts
    called = {task for script in _run_scripts(doc) for task, _ in inv_calls(script)}
    assert {"doctor", "build-image", "snapshot", "publish", "pull", "diff"} <= called


def _calls() -> list[tuple[str, list[str]]]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    return [call for script in _run_scripts(doc) for call in inv_calls(script)]


@pytest.mark.parametrize(("task", "flags"), _calls(), ids=lambda v: str(v))
def test_every_inv_call_exists(task: str, flags: list[str]) -> None:
    known = _task_flags()
    assert task in known, f"./inv {task}: no such task (tasks: {sorted(known)})"
    unknown = [f for f in flags if f not in known[task]]
    assert not unknown, f"./inv {task}: unknown flags {unknown}; it has {sorted(known[task])}"


def test_checker_rejects_what_does_not_exist() -> None:
    """The check itself can fail: a made-up task and a made-up flag are caught."""
    known = _task_flags()
    assert "build-imag" not in known
    assert "--arch" in known["build-image"] and "--archh" not in known["build-image"]
