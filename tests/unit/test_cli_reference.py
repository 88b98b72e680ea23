"""docs/cli.md is the tasks' own reference: regenerate it when a task or flag changes."""

from __future__ import annotations

from pathlib import Path

from tasks import _reference, ns

ROOT = Path(__file__).resolve().parents[2]


def test_docs_cli_md_matches_the_tasks() -> None:
    assert (ROOT / "docs" / "cli.md").read_text() == _reference.markdown(), (
        "docs/cli.md is stale: .venv/bin/python -m tasks._reference > docs/cli.md"
    )


def test_every_task_and_flag_is_in_it() -> None:
    text = _reference.markdown()
    for name in ns.task_names:
        assert f"### `{name}`" in text
        for arg in ns[name].get_arguments():
            assert arg.name.replace("_", "-") in text, (name, arg.name)
