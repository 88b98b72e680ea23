"""Every task, driven with bad input as a new release engineer types it: exit 1, one
``error:`` line and a ``hint:`` line, no traceback, nothing written.

Each row runs the real ``./inv`` from an empty working directory (relative paths are
the caller's) with a private cache, so "nothing written" is checked on both. No row
boots a VM or opens a connection: every input is refused before that.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tasks import ns

ROOT = Path(__file__).resolve().parents[2]

# (task, arguments); AFILE is an existing file, ADIR an existing (empty) directory.
BAD = [
    ("config", ["--cpus", "abc"]),
    ("config", ["--memory", "4"]),
    ("config", ["--release", "noble"]),
    ("config", ["--arch", "sparc"]),
    ("config", ["--cache-dir", ""]),
    ("config", ["--cache-dir"]),
    ("doctor", ["--install=yes"]),
    ("test", ["--fast", "--arm64"]),
    ("test", ["-k", ""]),
    ("fetch", ["--mirror", "ftp://example.invalid/"]),
    ("fetch", ["--serial", "yesterday"]),
    ("fetch", ["--keyring", "AFILE"]),
    ("fetch", ["--offline", "--arch", "amd64"]),
    ("standin", ["--arch", "sparc"]),
    ("mirror", ["--port", "70000"]),
    ("mirror", ["--port", "abc"]),
    ("packages", ["--profile", "nosuch"]),
    ("packages", ["--distro", "fedora"]),
    ("render", ["--profile", "nosuch"]),
    ("render", ["--profile", "smoke", "--no-validate", "--out", "AFILE"]),
    ("seed", ["--profile", "smoke", "--no-validate", "--out", "ADIR"]),
    ("render", ["--profile", "smoke", "--no-validate", "--out", "/proc/sandbox-image-test"]),
    ("build-image", ["--profile", "nosuch"]),
    ("build-image", ["--distro", "fedora"]),
    ("build-image", ["--package-lists", "/nonexistent"]),
    ("build-image", ["--skills", "/nonexistent"]),
    ("build-image", ["--boot-timeout", "abc"]),
    ("build-image", ["--provision-timeout", "-5"]),
    ("build-image", ["--release", "noble"]),
    ("build-image", ["--memory", "4"]),
    ("build-image", ["--profile", "smoke", "--out", "AFILE"]),
    ("build-image", ["--insecure-skip-signature", "-u"]),
    ("build-image", ["--pip-index", "ftp://pypi.corp/simple/"]),
    ("build-image", ["--apt-mirror-key", "AFILE"]),
    ("build-image", ["--apt-mirror", "http://m/debian", "--apt-mirror-key", "AFILE"]),
    ("build-image", ["--upstream-proxy", "https://proxy.corp:3128"]),
    ("build-image", ["--keep-failed=yes"]),
    ("build-image", ["--profile", "smoke", "--sign-key", "AFILE"]),
    ("lock", []),
    ("lock", ["/nonexistent"]),
    ("lock", ["ADIR"]),
    ("cache", ["--max-size", "5G"]),
    ("cache", ["--prune", "--max-size", "5"]),
    ("cache", ["--prune", "--older-than", "soon"]),
    ("cache", ["--stats", "--prune"]),
    ("compile-seccomp", ["--arch", "sparc"]),
    ("compile-seccomp", ["--profile", "nosuch"]),
    ("compile-seccomp", ["--out", "AFILE"]),
    ("sandbox-run", ["--profile", "nosuch", "--", "true"]),
    ("sandbox-run", ["--workspace", "/nonexistent", "--", "true"]),
    ("snapshot", ["/nonexistent.qcow2", "--out", "snap"]),
    ("snapshot", ["AFILE", "--out", "snap"]),
    ("snapshot", ["AFILE", "--out", "snap", "--timeout", "abc"]),
    ("snapshot", ["AFILE", "--out", "ADIR"]),
    ("snapshot", ["AFILE"]),
    ("proxy", ["--http-port", "70000"]),
    ("proxy", ["--socks-port", "abc"]),
    ("proxy", ["--policy", "/nonexistent"]),
    ("proxy", ["--upstream-proxy", "proxy.corp:3128"]),
    ("launch", ["--snapshot", "/nonexistent"]),
    ("launch", ["--snapshot", "ADIR", "--timeout", "abc"]),
    ("launch", ["--snapshot", "ADIR", "--session-disk", "10"]),
    ("launch", ["--snapshot", "ADIR", "--share", "/nonexistent"]),
    ("launch", ["--snapshot", "ADIR", "--shell"]),  # stdin is not a terminal
    ("demo", ["--arch", "sparc"]),
    ("demo", ["--out", "AFILE"]),
    ("bench-resume", ["--runs", "abc"]),
    ("bench-resume", ["--image", "/nonexistent.qcow2"]),
    ("publish", ["ADIR"]),
    ("publish", ["/nonexistent", "--to", "127.0.0.1:9/x:y"]),
    ("publish", ["ADIR", "--to", "not a reference"]),
    ("pull", []),
    ("pull", ["127.0.0.1:9/x:y"]),
    ("pull", ["bad::ref", "--out", "new"]),
    ("pull", ["127.0.0.1:9/x:y", "--out", "AFILE"]),
    ("pull", ["127.0.0.1:9/x:y", "--out", "new", "--expect-revision", "abc1234"]),
    ("pull", ["127.0.0.1:9/x:y", "--out", "new", "--verify-key", "AFILE"]),
    ("sign", ["ADIR"]),
    ("sign", ["/nonexistent", "--key", "AFILE"]),
    ("sign", ["ADIR", "--key", "AFILE"]),
    ("verify", ["ADIR"]),
    ("verify", ["ADIR", "--key", "/nonexistent.asc"]),
    ("verify", ["ADIR", "--key", "AFILE"]),
    ("verify", ["no-such-dir", "--key", "AFILE"]),
    ("diff", ["/nonexistent", "ADIR"]),
    ("diff", ["ADIR"]),
    ("report", ["/nonexistent"]),
    ("report", ["ADIR", "--out", "ADIR"]),
    ("registry", ["--port", "abc"]),
    ("registry", ["--port", "99999"]),
]


@pytest.fixture
def place(tmp_path: Path) -> dict[str, Path]:
    work = tmp_path / "work"
    work.mkdir()
    (work / "AFILE").write_text("not an image\n")
    (work / "ADIR").mkdir()
    return {"work": work, "xdg": tmp_path / "xdg"}


def _snapshot(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _run(place: dict[str, Path], task: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_IMAGE_")}
    env["XDG_CACHE_HOME"] = str(place["xdg"])
    return subprocess.run(
        [str(ROOT / "inv"), task, *args], cwd=place["work"], env=env, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(("task", "args"), BAD, ids=[f"{t} {' '.join(a)}" for t, a in BAD])
def test_bad_input_is_one_error_and_a_hint(
    place: dict[str, Path], task: str, args: list[str]
) -> None:
    before = _snapshot(place["work"])
    result = _run(place, task, args)
    lines = result.stderr.splitlines()
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert [line for line in lines if line.startswith("error:")] != [], result.stderr
    assert len([line for line in lines if line.startswith("error:")]) == 1, result.stderr
    assert len([line for line in lines if line.startswith("hint:")]) == 1, result.stderr
    assert _snapshot(place["work"]) == before, "a bad input wrote into the working directory"
    assert _snapshot(place["xdg"]) == [], "a bad input wrote into the cache"


def test_every_task_has_bad_inputs_in_the_table() -> None:
    assert {t for t, _ in BAD} == set(ns.task_names)


@pytest.mark.parametrize("task", sorted(ns.task_names))
def test_an_unknown_flag_is_an_error_with_a_hint(place: dict[str, Path], task: str) -> None:
    result = _run(place, task, ["--no-such-flag"])
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: unknown task or flag: --no-such-flag",
        f"hint: ./inv {task} --help lists its flags",
    ]
