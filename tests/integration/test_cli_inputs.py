"""Bad input to a task: one error line and a hint, no traceback, nothing written, no boot."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NAME = "sandbox-image-jammy-amd64-smoke.qcow2"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ1aWxkLWtleS1mb3ItdGVzdHM build@host"


def _inv(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_IMAGE_")}
    environ.update(env or {}, PWD=str(cwd))
    return subprocess.run([str(ROOT / "inv"), *args], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


@pytest.fixture
def amd64_output(tmp_path: Path) -> Path:
    """An amd64 build output as snapshot reads it (a real qcow2 header, build-info)."""
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(out / NAME), "16M"], check=True)
    info = {"config": {"arch": "amd64"}, "outputs": {NAME: "0" * 64}}
    (out / "build-info.json").write_text(json.dumps(info))
    (out / "manifest.json").write_text("{}")
    return out


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        (["--arch", "arm64"], {}, "built for amd64, not arm64"),
        ([], {"SANDBOX_IMAGE_ARCH": "arm64"}, "built for amd64, not arm64"),
        (["--timeout", "abc"], {}, "--timeout: not a number of seconds: 'abc'"),
        (["--timeout", "-5"], {}, "--timeout: must be positive: '-5'"),
    ],
)  # fmt: skip
def test_snapshot_refuses_before_booting(
    amd64_output: Path, tmp_path: Path, extra: list[str], env: dict[str, str], message: str
) -> None:
    # Relative paths are the caller's: run from tmp_path, not the checkout.
    result = _inv("snapshot", "--image", f"out/{NAME}", "--out", "snap", *extra,
                  "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path, env=env)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert message in result.stderr
    assert "hint:" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "snap").exists()
    assert not (tmp_path / "cache" / "work").exists()  # nothing prepared, nothing booted


def test_snapshot_of_a_file_that_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    result = _inv("snapshot", "--image", "notes.txt", "--out", "snap", "--arch", "amd64",
                  "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "notes.txt is not a qcow2 image" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "snap").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--profile", "nosuch"], "no profile 'nosuch'"),
        (["--distro", "fedora"], "is for ubuntu, debian, not 'fedora'"),
        (["--package-lists", "/nonexistent"], "no package lists folder at /nonexistent"),
        (["--skills", "/nonexistent"], "skills folder /nonexistent is not a directory"),
    ],
)  # fmt: skip
def test_build_image_checks_its_inputs_before_any_download(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    # --offline and an empty cache: a build that got as far as fetching would fail
    # there ("not cached") instead, and would leave a logs/<id> folder behind.
    cache = tmp_path / "cache"
    result = _inv("build-image", "--offline", "--arch", "amd64", "--cache-dir", str(cache),
                  "--out", "out", *extra, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert message in result.stderr
    assert "hint:" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (cache / "logs").exists()
    assert not (tmp_path / "out").exists()


def test_relative_paths_are_the_caller_s(tmp_path: Path) -> None:
    """`render --out` and the default out/ land where ./inv was run, not in the checkout."""
    (tmp_path / "id.pub").write_text(KEY + "\n")
    for args, where in ((["--out", "myci"], tmp_path / "myci"),
                        ([], tmp_path / "out" / "cloud-init")):  # fmt: skip
        result = _inv("render", "--profile", "smoke", "--arch", "amd64", "--ssh-key", "id.pub",
                      "--no-validate", *args, cwd=tmp_path)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert KEY in (where / "user-data").read_text()  # --ssh-key: the caller's path too
    assert not (ROOT / "myci").exists()
