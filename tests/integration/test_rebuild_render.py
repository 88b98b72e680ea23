"""A cached and a locked build's user-data pass cloud-init's schema; the cached pip flow works.

The pip flow is the rendered commands themselves, run here with the guest
paths pointed at temporary directories and no index at all: gather from the
cache into the download directory, install offline from it, copy it out.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from image import run
from image.build import cloudinit, lockfile, packagecache, packages
from image.build.cloudinit import RenderInputs
from image.build.lockfile import Lock, Pin
from tests.fixtures.stagescripts import commands, stage
from tests.hosttools import need

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ1aWxkLWtleS1mb3ItdGVzdHM build@host"
SMOKE = packages.load_profile("smoke")
SMOKE_LOCK = Lock("debian", "jammy", "amd64", "smoke", "20990101", "0" * 64,
                  apt=tuple(Pin(n, "1.0-1", "amd64") for n in SMOKE.apt_packages))  # fmt: skip
CASES = [
    RenderInputs(profile="full", arch="arm64", build_ssh_public_key=KEY, package_cache=True),
    RenderInputs(
        profile="smoke",
        arch="amd64",
        distro="debian",
        build_ssh_public_key=KEY,
        package_cache=True,
        lock=SMOKE_LOCK,
    ),
]


@pytest.mark.parametrize("inputs", CASES, ids=["full-cached", "smoke-cached-locked"])
def test_cloud_init_schema_accepts_cached_and_locked_user_data(inputs: RenderInputs) -> None:
    need("cloud-init")
    cloudinit.validate_schema(cloudinit.render(inputs)["user-data"])


def _wheel(directory: Path, name: str, version: str) -> Path:
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}/__init__.py", f"VERSION = {version!r}\n")
        info = f"{name}-{version}.dist-info"
        wheel.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                       "Root-Is-Purelib: true\nTag: py3-none-any\n")  # fmt: skip
        wheel.writestr(f"{info}/RECORD", "")
    return path


def test_cached_pip_flow_installs_offline_and_hands_back_what_it_used(tmp_path: Path) -> None:
    lists = tmp_path / "package-lists"
    shutil.copytree(packages.PACKAGE_LISTS, lists)
    (lists / "pip" / "skills.list").write_text("sandbox_demo_pkg==1.0\n")
    (lists / "pip" / "skills.constraints").unlink()
    inputs = RenderInputs(profile="full", arch="amd64", build_ssh_public_key=KEY,
                          package_cache=True, package_lists=lists)  # fmt: skip
    runcmd = commands(stage(inputs, "libraries"))
    cache, download, new, target = (tmp_path / d for d in ("cache", "download", "new", "target"))
    for directory in (cache / "pip", download, new / "pip"):
        directory.mkdir(parents=True)
    _wheel(cache / "pip", "sandbox_demo_pkg", "1.0")
    # The outbox's path extends the cache's: replace it first.
    where = {packagecache.GUEST_NEW: str(new), packagecache.GUEST_CACHE: str(cache),
             cloudinit.PIP_DOWNLOAD_DIR: str(download)}  # fmt: skip

    def local(argv: list[str]) -> list[str]:
        out = []
        for arg in argv:
            for guest, host in where.items():
                arg = arg.replace(guest, host)
            out.append(arg)
        return out

    steps = [local(i) for i in runcmd if cloudinit.PIP_DOWNLOAD_DIR in i]
    gather = next(s for s in steps if s[:4] == ["python3", "-m", "pip", "wheel"])
    install = next(s for s in steps if s[:4] == ["python3", "-m", "pip", "install"])
    copy_out = next(s for s in steps if s[0] == "find")
    # No index reachable: everything must come from the cache.
    env = {"PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": "/dev/null", "PATH": "/usr/bin:/bin"}
    run.run([sys.executable, *gather[1:]], env=env, timeout=120)
    assert [p.name for p in download.iterdir()] == ["sandbox_demo_pkg-1.0-py3-none-any.whl"]
    run.run([sys.executable, *install[1:], "--target", str(target)], env=env, timeout=120)
    assert (target / "sandbox_demo_pkg" / "__init__.py").read_text() == "VERSION = '1.0'\n"
    run.run(copy_out, timeout=60)
    assert [p.name for p in (new / "pip").iterdir()] == ["sandbox_demo_pkg-1.0-py3-none-any.whl"]
    filled = packagecache.fill_back(tmp_path / "hostcache", "ubuntu-jammy-amd64", new)
    assert filled.added["pip"] == 1


def test_a_locked_smoke_render_is_what_the_lock_says() -> None:
    doc = yaml.safe_load(cloudinit.render(dataclasses.replace(CASES[1]))["user-data"])
    assert doc["packages"] == [f"{n}=1.0-1" for n in SMOKE.apt_packages]
    assert lockfile.apt_preferences(SMOKE_LOCK) in {f.get("content") for f in doc["write_files"]}
