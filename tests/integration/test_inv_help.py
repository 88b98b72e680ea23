"""The command line's conventions (tasks/_program.py), through the real ./inv: help on
every task with -h, no accidental short flags, typed values in help, --version,
--debug after the task, SANDBOX_IMAGE_DEBUG=0, a broken config file, diff --exit-code."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from invoke.parser.context import ParserContext

from tasks import _program, ns
from tests.fixtures.buildoutput import make_output

ROOT = Path(__file__).resolve().parents[2]


def _inv(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_IMAGE_")}
    return subprocess.run([str(ROOT / "inv"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False, env={**environ, **(env or {})})  # fmt: skip


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["lock", "--help"], ["--help", "lock"]),
        (["config", "-h"], ["--help", "config"]),
        (["publish", "out", "--to", "x", "--help"], ["--help", "publish"]),
        (["--help", "lock"], ["--help", "lock"]),
        (["launch", "--snapshot", "s", "--", "python3", "-h"],  # the sandboxed command's
         ["launch", "--snapshot", "s", "--", "python3", "-h"]),
        (["lock", "out"], ["lock", "out"]),
    ],
)  # fmt: skip
def test_help_after_the_task_name_moves_first(args: list[str], expected: list[str]) -> None:
    assert _program._help_first(["inv", *args]) == ["inv", *expected]


@pytest.mark.parametrize("task", sorted(ns.task_names))
def test_dash_h_is_help_on_every_task(task: str) -> None:
    result = _inv(task, "-h")
    assert result.returncode == 0, result.stderr
    assert f"Usage: inv [--core-opts] {task}" in result.stdout and "Options:" in result.stdout


def test_no_short_flags_but_pytests_k() -> None:
    short = {
        (name, flag)
        for name in ns.task_names
        for ctx in [ParserContext(args=ns[name].get_arguments())]
        for flag in ctx.flags
        if not flag.startswith("--")
    }
    assert short == {("test", "-k")}


def test_values_are_text_parsed_by_the_task_so_a_bad_number_is_a_clear_error() -> None:
    kinds = {arg.kind for name in ns.task_names for arg in ns[name].get_arguments()}
    assert kinds <= {str, bool, list}, "invoke's int/float conversion fails with a traceback"


def test_help_names_what_a_value_is() -> None:
    shown = _inv("build-image", "--help").stdout
    for flag in ("--boot-timeout=SECONDS", "--memory=SIZE", "--cpus=N", "--out=PATH",
                 "--mirror=URL", "--allow=VALUE", "--ca-cert=PATH"):  # fmt: skip
        assert flag in shown, flag
    assert "--http-port=PORT" in _inv("proxy", "--help").stdout
    assert "--timeout=SECONDS" in _inv("launch", "--help").stdout


def test_version() -> None:
    result = _inv("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("sandbox-image 0."), result.stdout


def test_debug_after_the_task_shows_the_traceback_and_zero_means_off() -> None:
    assert "Traceback" in _inv("config", "--cpus", "x", "--debug").stderr
    assert "Traceback" in _inv("config", "--cpus", "x", env={"SANDBOX_IMAGE_DEBUG": "1"}).stderr
    off = _inv("config", "--cpus", "x", env={"SANDBOX_IMAGE_DEBUG": "0"})
    assert "Traceback" not in off.stderr and off.stderr.startswith("error: bad value for cpus")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("sandbox_image: [1\n", "not valid YAML"),
        ("- a\n- b\n", "must be a mapping"),
        ("sandbox_image:\n  - arch\n", "sandbox_image must be a mapping"),
        ("sandbox_image:\n  memory: 4\n", "needs a unit"),
    ],
)
def test_a_broken_config_file_is_an_error_not_a_traceback(
    tmp_path: Path, text: str, says: str
) -> None:
    config = tmp_path / "ci.yaml"
    config.write_text(text)
    result = _inv("-f", str(config), "config")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error:") and says in lines[0], result.stderr
    assert lines[1].startswith("hint:")


def test_project_invoke_yaml_is_checked_the_same_way(tmp_path: Path) -> None:
    broken = tmp_path / "invoke.yaml"
    broken.write_text("sandbox_image: {arch: amd64\n")
    with pytest.raises(_program.UsageError, match=r"invoke.yaml:2: not valid YAML"):
        _program._check_config_file(broken, "invoke.yaml")


def test_diff_exit_code(tmp_path: Path) -> None:
    a = make_output(tmp_path / "a", dpkg=[("jq", "1.6", "amd64")])
    make_output(tmp_path / "b", dpkg=[("jq", "1.7", "amd64")])
    same = _inv("diff", str(a), str(a), "--exit-code")
    assert same.returncode == 0, same.stderr
    changed = _inv("diff", "a", "b", "--exit-code", cwd=tmp_path)  # paths: the caller's
    assert changed.returncode == 1 and "jq" in changed.stdout, changed.stderr
    assert _inv("diff", "a", "b", cwd=tmp_path).returncode == 0


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    """`./inv build-image --help | head -1`: the pipe is closed before the help is written."""
    proc = subprocess.Popen([str(ROOT / "inv"), "build-image", "--help"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    assert b"Traceback" not in proc.stderr.read()
    proc.wait(timeout=60)
