"""Rendered cloud-init checked by cloud-init itself; the seed ISO read by pycdlib and isoinfo."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from image import run
from image.build import cloudinit, packages
from image.build.cloudinit import RenderInputs, render
from image.errors import ImageError
from tests.hosttools import need

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ1aWxkLWtleS1mb3ItdGVzdHM build@host"
EVERYTHING: dict[str, Any] = {
    "build_ssh_public_key": KEY,
    "apt_proxy": "http://10.0.2.2:3142",
    "guest_files": {
        "/usr/local/bin/sandbox-run": b"#!/bin/sh\nexit 0\n",
        "/etc/sandbox/seccomp.bpf": bytes(range(256)),
    },
    "skills_dirs": (cloudinit.PROJECT_ROOT / "tests" / "fixtures" / "skills",),
}
CASES = [
    RenderInputs(profile="full", arch="arm64", build_ssh_public_key=KEY),
    RenderInputs(profile="smoke", arch="amd64", distro="debian", build_ssh_public_key=KEY),
    RenderInputs(profile="minimal", arch="amd64"),
    RenderInputs(profile="full", arch="amd64", apt_snapshot="20240301T000000Z", **EVERYTHING),
    RenderInputs(
        profile="smoke",
        arch="arm64",
        distro="debian",
        apt_mirror="http://127.0.0.1:8080/debian",
        **EVERYTHING,
    ),
]


@pytest.mark.parametrize("inputs", CASES, ids=lambda i: f"{i.profile}-{i.arch}-{i.distro}")
def test_cloud_init_schema_accepts_rendered_user_data(inputs: RenderInputs) -> None:
    need("cloud-init")
    cloudinit.validate_schema(render(inputs)["user-data"])


def test_cloud_init_schema_rejects_a_broken_config() -> None:
    """The check above can fail: cloud-init really looks at the document."""
    need("cloud-init")
    user_data = render(CASES[1])["user-data"].replace(
        b'permissions: "0644"', b"permissions: 0644", 1
    )
    rejected = r"(?s)cloud-init schema rejects.*permissions: 420 is not of type"
    with pytest.raises(ImageError, match=rejected):
        cloudinit.validate_schema(user_data)


def test_unknown_top_level_keys_are_refused() -> None:
    """cloud-init's schema lets any top-level key through; ours does not."""
    need("cloud-init")
    user_data = render(CASES[1])["user-data"] + b"apt_get_wrapper:\n  enabled: auto\n"
    with pytest.raises(
        ImageError, match="top-level keys no cloud-init module reads: apt_get_wrapper"
    ):
        cloudinit.validate_schema(user_data)


@pytest.mark.parametrize("renderer", ["netplan", "networkd", "eni"])
def test_network_config_converts_for_every_renderer(renderer: str, tmp_path: Path) -> None:
    """The stand-in (Debian) and jammy use different renderers: DHCP must reach all of them."""
    need("cloud-init")
    src = tmp_path / "network-config"
    src.write_bytes(render(CASES[1])["network-config"])
    out = tmp_path / "out"
    run.run(
        [
            "cloud-init",
            "devel",
            "net-convert",
            "-p",
            str(src),
            "-k",
            "yaml",
            "-d",
            str(out),
            "-D",
            "debian",
            "-O",
            renderer,
        ]
    )
    text = "\n".join(p.read_text() for p in sorted(out.rglob("*")) if p.is_file())
    if renderer == "netplan":
        assert "macaddress: '52:54:00:12:34:56'" in text and "dhcp4: true" in text
    elif renderer == "networkd":
        assert "MACAddress=52:54:00:12:34:56" in text and "DHCP=ipv4" in text
    else:
        assert 'ATTR{address}=="52:54:00:12:34:56", NAME="eth0"' in text
        assert "iface eth0 inet dhcp" in text


def test_smoke_packages_exist_in_debian() -> None:
    """Smoke names are shared by jammy and Debian: this Debian host's apt knows each (the
    stand-in, Debian 13, installs them in every VM-tier build; no network asked here)."""
    result = run.run(["apt-cache", "policy", *packages.load_profile("smoke").apt_packages])
    text = result.stdout.decode()
    if "Candidate:" not in text:
        pytest.fail("apt-cache knows no packages; run 'apt-get update' first", pytrace=False)
    blocks = re.split(r"^(?=\S)", text, flags=re.MULTILINE)
    found = {b.split(":", 1)[0]: b for b in blocks if b.strip()}
    for name in packages.load_profile("smoke").apt_packages:
        assert name in found, f"{name} unknown to apt on this Debian host"
        assert "Candidate: (none)" not in found[name], name


# --- the seed ISO ---------------------------------------------------------------


@pytest.fixture
def seed_files() -> dict[str, bytes]:
    """A standalone seed (./inv seed): the later stages' scripts and the skills ride on it."""
    files = render(dataclasses.replace(CASES[4]), standalone=True)
    assert {"stage-config.sh", "skills.tar.gz"} <= set(files)
    return files


@pytest.fixture
def tz_restored() -> Iterator[None]:
    before = os.environ.get("TZ")
    yield
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


def test_seed_is_byte_for_byte_deterministic(
    seed_files: dict[str, bytes], tmp_path: Path, tz_restored: None
) -> None:
    first, second, third = (tmp_path / f"{n}.iso" for n in ("a", "b", "c"))
    cloudinit.write_seed_iso(seed_files, first)
    time.sleep(1.1)  # a clock-stamped ISO would now differ in its seconds
    cloudinit.write_seed_iso(seed_files, second)
    os.environ["TZ"] = "Asia/Kolkata"  # and a local-time-stamped one in its offset
    time.tzset()
    cloudinit.write_seed_iso(seed_files, third)
    assert first.read_bytes() == second.read_bytes() == third.read_bytes()
    changed = dict(seed_files, **{"meta-data": seed_files["meta-data"] + b"\n"})
    cloudinit.write_seed_iso(changed, second)
    assert first.read_bytes() != second.read_bytes()


def test_seed_read_back_with_pycdlib(seed_files: dict[str, bytes], tmp_path: Path) -> None:
    import pycdlib

    out = tmp_path / "seed.iso"
    cloudinit.write_seed_iso(seed_files, out)
    iso = pycdlib.PyCdlib()
    iso.open(str(out))
    try:
        assert iso.pvd.volume_identifier.rstrip() == b"CIDATA"
        assert iso.has_joliet() and iso.has_rock_ridge()
        rr_names = sorted(
            iso.full_path_from_dirrecord(c, rockridge=True)
            for c in iso.list_children(rr_path="/")
            if not (c.is_dot() or c.is_dotdot())
        )
        assert rr_names == sorted(f"/{name}" for name in seed_files)
    finally:
        iso.close()
    assert cloudinit.read_seed_iso(out) == seed_files


def test_seed_read_back_with_isoinfo(seed_files: dict[str, bytes], tmp_path: Path) -> None:
    need("isoinfo")
    out = tmp_path / "seed.iso"
    cloudinit.write_seed_iso(seed_files, out)
    info = run.run(["isoinfo", "-d", "-i", str(out)]).stdout.decode()
    assert "Volume id: CIDATA" in info
    assert "Joliet with UCS level 3 found" in info
    assert "Rock Ridge signatures version 1 found" in info
    for flag in ("-J", "-R"):
        listing = run.run(["isoinfo", flag, "-l", "-i", str(out)]).stdout.decode()
        names = sorted(line.split()[-1] for line in listing.splitlines() if line.startswith("-"))
        assert names == sorted(seed_files), flag
    for name, content in seed_files.items():
        extracted = run.run(["isoinfo", "-J", "-x", f"/{name}", "-i", str(out)]).stdout
        assert extracted == content, name


def test_skills_archive_lists_root_owned_with_real_tar(tmp_path: Path) -> None:
    archive = tmp_path / "skills.tar.gz"
    archive.write_bytes(render(CASES[4], standalone=True)[cloudinit.SKILLS_PAYLOAD_FILE])
    listing = (
        run.run(["tar", "--list", "--verbose", "--numeric-owner", "--gzip", "--file", str(archive)])
        .stdout.decode()
        .splitlines()
    )
    seen = {line.split()[-1]: (line.split()[0], line.split()[1]) for line in listing}
    assert seen["alpha/"] == ("drwxr-xr-x", "0/0")
    assert seen["alpha/SKILL.md"] == ("-rw-r--r--", "0/0")
    assert seen["alpha/scripts/count.py"] == ("-rwxr-xr-x", "0/0")
    assert seen["index.json"] == ("-rw-r--r--", "0/0")
    assert {owner for _, owner in seen.values()} == {"0/0"}


def test_tasks_render_and_seed_end_to_end(tmp_path: Path) -> None:
    """./inv render and ./inv seed as a user runs them; --json's last line is the result."""
    need("cloud-init")
    invoke = [sys.executable, "-m", "invoke", "--search-root", str(cloudinit.PROJECT_ROOT)]
    out = run.run(
        [
            *invoke,
            "render",
            "--profile",
            "smoke",
            "--arch",
            "amd64",
            "--distro",
            "debian",
            "--out",
            str(tmp_path / "ci"),
            "--json",
        ],
        cwd=cloudinit.PROJECT_ROOT,
    ).stdout.decode()
    assert '"schema_validated": true' in out.strip().splitlines()[-1]
    # What a build renders: the seed, the later stage (smoke has no pip or npm: no
    # "libraries") and the project's skills beside it.
    assert sorted(p.name for p in (tmp_path / "ci").iterdir()) == [
        "meta-data",
        "network-config",
        "skills.tar.gz",
        "stage-config.sh",
        "user-data",
    ]
    out = run.run(
        [
            *invoke,
            "seed",
            "--profile",
            "smoke",
            "--arch",
            "amd64",
            "--distro",
            "debian",
            "--out",
            str(tmp_path / "seed.iso"),
            "--json",
        ],
        cwd=cloudinit.PROJECT_ROOT,
    ).stdout.decode()
    assert '"sha256": "' in out.strip().splitlines()[-1]
    assert cloudinit.read_seed_iso(tmp_path / "seed.iso")["user-data"].startswith(
        b"#cloud-config\n"
    )
    bad = run.run(
        [*invoke, "packages", "--profile", "nope"], check=False, cwd=cloudinit.PROJECT_ROOT
    )
    assert bad.returncode == 1
    assert "no profile 'nope'" in bad.stderr.decode()


# --- the runcmd script, as cloud-init writes it ------------------------------------


def _runcmd_script(inputs: RenderInputs) -> str:
    """The script cloud-init's scripts_user runs, made by cloud-init's own shellify()."""
    need("cloud-init")
    runcmd = yaml.safe_load(render(inputs)["user-data"])["runcmd"]
    python = cloudinit.cloud_init_python()
    code = (
        "import json, sys; from cloudinit import util; print(util.shellify(json.load(sys.stdin)))"
    )
    return run.run([python, "-c", code], input=json.dumps(runcmd).encode()).stdout.decode()


@pytest.mark.parametrize("inputs", CASES, ids=lambda i: f"{i.profile}-{i.arch}-{i.distro}")
def test_runcmd_script_is_valid_sh(inputs: RenderInputs, tmp_path: Path) -> None:
    script = tmp_path / "runcmd"
    script.write_text(_runcmd_script(inputs))
    run.run(["sh", "-n", str(script)])  # dash, as /bin/sh on Debian and Ubuntu


@pytest.mark.parametrize("inputs", CASES, ids=lambda i: f"{i.profile}-{i.arch}-{i.distro}")
def test_stage_scripts_are_valid_sh_and_the_standalone_seed_runs_them(
    inputs: RenderInputs, tmp_path: Path
) -> None:
    stages = cloudinit.render_stages(inputs)
    assert stages[-1].name == "config"
    for stage in stages:
        script = tmp_path / f"stage-{stage.name}.sh"
        script.write_bytes(stage.script)
        run.run(["sh", "-n", str(script)])
    runcmd = _runcmd_script(dataclasses.replace(inputs))
    standalone = yaml.safe_load(render(inputs, standalone=True)["user-data"])["runcmd"]
    ran = [c for c in standalone if isinstance(c, list) and c[0] == "sh"]
    assert [c[1] for c in ran] == [f"{cloudinit.SEED_MOUNT}/stage-{s.name}.sh" for s in stages]
    assert ".sh " not in runcmd  # a build's own seed runs only the system stage


def _installed_here(*names: str) -> list[str]:
    out = run.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}${Package}\n", *names])
    return [line[3:] for line in out.stdout.decode().splitlines() if line.startswith("ii ")]


def test_package_check_passes_when_all_are_installed_and_names_the_missing(
    tmp_path: Path,
) -> None:
    listed = tmp_path / "apt-packages"
    command = cloudinit.verify_packages_command().replace(cloudinit.APT_LIST_PATH, str(listed))
    present = _installed_here("bash", "coreutils", "dpkg")
    assert len(present) == 3
    listed.write_text("\n".join(present) + "\n")
    assert run.run(["sh", "-eu", "-c", command], check=False).returncode == 0
    listed.write_text("\n".join([*present, "no-such-package-sandbox-image"]) + "\n")
    failed = run.run(["sh", "-eu", "-c", command], check=False)
    assert failed.returncode == 1
    assert b"packages not installed" in failed.stderr
    assert b"no-such-package-sandbox-image" in failed.stderr


def test_marker_command_writes_exactly_the_marker(tmp_path: Path) -> None:
    marker = tmp_path / "provisioned"
    inputs = CASES[0]
    command = cloudinit.marker_command(inputs).replace(cloudinit.MARKER_PATH, str(marker))
    run.run(["sh", "-eu", "-c", command])
    assert marker.read_text() == cloudinit.marker_content(inputs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["provisioned"]
