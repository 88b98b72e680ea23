"""VM tier: real QEMU boots (TCG here). One demo run per session is shared.

The demo is the production path end to end (stand-in -> signed mirror ->
build-image -> snapshot -> launch); the tests then inspect what it produced and
launch more sandboxes from its snapshot. Stand-in images are cached by recipe
hash in the user cache (outside the clone), so only the first run builds one.
When a test fails, the tails of the guest logs it registered are attached.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from image import config, hosttools
from image.runtime import demo
from image.vm import qemu
from tests.hosttools import need

ROOT = Path(__file__).resolve().parents[2]
LOG_TAIL = 60
_logs: list[Path] = []


def attach_logs(*paths: Path) -> None:
    """Show these logs (their tails) if the current test fails."""
    _logs.extend(paths)


def package_changes(old_out: Path, new_out: Path) -> dict[str, Any]:
    """What `./inv diff OLD NEW --json` says changed in the packages."""
    result = subprocess.run([str(ROOT / "inv"), "diff", str(old_out), str(new_out), "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    packages: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])["packages"]
    return packages


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call" and report.failed:
        for path in _logs:
            if path.is_file():
                report.sections.append((f"guest log {path}", qemu.serial_tail(path, LOG_TAIL)))
    if report.when == "teardown":
        _logs.clear()


def qemu_processes() -> list[str]:
    out = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True,
                         check=False)  # fmt: skip
    return [line for line in out.stdout.splitlines() if line.strip()]


STANDIN_TOOLS = ("qemu-img", "mmdebstrap", "grub-mkstandalone", "mkfs.vfat", "mcopy", "sfdisk",
                 "gpg", "gpgv", "cloud-init")  # fmt: skip


def tier_config(
    out: Path, arch: str, tools: tuple[str, ...], boot_timeout: float, provision_timeout: float
) -> config.BuildConfig:
    """A VM tier's build config: the smoke profile on the stand-in, as root.

    Its cache dir is the session's own (next to ``out``): package caches and
    provisioned layers start empty, so each session's first build provisions
    from scratch whatever an earlier session or user left behind. Only the
    stand-in images, which take half an hour to make, are the user's cache.
    """
    need(*tools, *STANDIN_TOOLS)
    if os.geteuid() != 0:
        pytest.fail(f"the {arch} vm tier builds the stand-in image and needs root",
                    pytrace=False)  # fmt: skip
    # cpus=2: on this 2-core machine, more vCPUs than cores only adds TCG contention.
    resolved = config.resolve(
        {"arch": arch, "profile": "smoke", "cpus": 2, "memory": "2G", "output_dir": str(out),
         "boot_timeout": boot_timeout, "provision_timeout": provision_timeout},
        os.environ, {},
    )  # fmt: skip
    user_cache = resolved.config.cache_dir
    cache = out.parent / f"{out.name}-cache"
    cache.mkdir()
    (user_cache / "standin").mkdir(parents=True, exist_ok=True)
    (cache / "standin").symlink_to(user_cache / "standin")
    return dataclasses.replace(resolved.config, cache_dir=cache)


@pytest.fixture(scope="session")
def vm_config(tmp_path_factory: pytest.TempPathFactory) -> config.BuildConfig:
    return tier_config(tmp_path_factory.mktemp("vm-out"), "amd64",
                       ("qemu-system-x86_64", "OVMF"), 600, 1800)  # fmt: skip


def run_demo(cfg: config.BuildConfig) -> dict[str, Any]:
    """The newcomer's `./inv demo`: a built smoke image, its snapshot, a launch."""
    logs = cfg.output_dir / "image" / "logs"
    attach_logs(logs / "serial.log", logs / "cloud-init-output.log")
    return demo.run_demo(cfg)


def demo_outputs(result: dict[str, Any]) -> dict[str, Path]:
    return {k: Path(v) for k, v in result["outputs"].items()}


@pytest.fixture(scope="session")
def demo_run(vm_config: config.BuildConfig) -> dict[str, Any]:
    """The demo, once per session: shared by the amd64 vm tier."""
    return run_demo(vm_config)


@pytest.fixture(scope="session")
def built(demo_run: dict[str, Any]) -> dict[str, Path]:
    return demo_outputs(demo_run)


@pytest.fixture
def fresh_config(vm_config: config.BuildConfig, tmp_path: Path) -> config.BuildConfig:
    return dataclasses.replace(vm_config, output_dir=tmp_path / "out")


__all__ = ["attach_logs", "hosttools", "qemu_processes"]
