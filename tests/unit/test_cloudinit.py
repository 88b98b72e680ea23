"""Rendering is pure: RenderInputs -> exact documents. The seed ISO's pure checks."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import random
import shutil
import ssl
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from image.build import cloudinit, lockfile, packages, skills, stages, trust
from image.build.cloudinit import RenderInputs, render
from image.errors import ImageError
from tests.fixtures.stagescripts import commands as _commands
from tests.fixtures.stagescripts import heredocs as _heredocs
from tests.fixtures.stagescripts import stage as _stage

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ1aWxkLWtleS1mb3ItdGVzdHM build@host"
SAMPLE_SKILLS = cloudinit.PROJECT_ROOT / "tests" / "fixtures" / "skills"


def _doc(inputs: RenderInputs, name: str = "user-data") -> Any:
    return yaml.safe_load(render(inputs)[name])


def _write_files(doc: Any) -> dict[str, dict[str, Any]]:
    return {entry["path"]: entry for entry in doc["write_files"]}


def _runcmd_text(doc: Any) -> list[str]:
    return [item if isinstance(item, str) else " ".join(item) for item in doc["runcmd"]]


SMOKE = RenderInputs(profile="smoke", arch="amd64", distro="debian", build_ssh_public_key=KEY)
FULL = RenderInputs(profile="full", arch="arm64", build_ssh_public_key=KEY)


def test_render_returns_the_three_files_and_is_deterministic() -> None:
    first = render(FULL)
    assert sorted(first) == ["meta-data", "network-config", "user-data"]
    assert all(isinstance(v, bytes) for v in first.values())
    assert render(FULL) == first
    assert first["user-data"].startswith(b"#cloud-config\n")


def test_users_agent_without_sudo_and_build_with_key() -> None:
    users = {u["name"]: u for u in _doc(SMOKE)["users"]}
    assert set(users) == {"agent", "build"}  # no 'default': no ubuntu/debian user
    agent = users["agent"]
    assert agent["uid"] == 1001
    assert "sudo" not in agent and "groups" not in agent
    assert agent["lock_passwd"] is True
    build = users["build"]
    assert build["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert build["ssh_authorized_keys"] == [KEY]
    assert build["lock_passwd"] is True


def test_no_key_means_no_build_user() -> None:
    doc = _doc(dataclasses.replace(SMOKE, build_ssh_public_key=""))
    assert [u["name"] for u in doc["users"]] == ["agent"]
    assert doc["ssh_pwauth"] is False


def test_packages_are_exactly_the_profile() -> None:
    for inputs in (SMOKE, FULL):
        profile = packages.load_profile(inputs.profile)
        doc = _doc(inputs)
        assert doc["packages"] == list(profile.apt_packages)
        listed = _write_files(doc)[cloudinit.APT_LIST_PATH]
        assert base64.b64decode(listed["content"]).decode().split() == list(profile.apt_packages)


def test_full_has_nodesource_pip_and_npm() -> None:
    doc = _doc(FULL)
    source = doc["apt"]["sources"]["nodesource"]
    # No key, keyid or keyserver for cloud-init: bootcmd puts the checked key in place.
    assert source == {
        "source": "deb [signed-by=/etc/apt/keyrings/sandbox-image-nodesource.gpg] "
        "https://deb.nodesource.com/node_22.x nodistro main"
    }
    # pip and npm are the "libraries" stage's, not the seed's.
    assert "pip" not in " ".join(_runcmd_text(doc)) and "npm" not in " ".join(_runcmd_text(doc))
    profile = packages.load_profile("full")
    commands = _commands(_stage(FULL, "libraries"))
    pip = next(c for c in commands if c[:3] == ["python3", "-m", "pip"])
    assert pip[-len(profile.pip_packages) :] == list(profile.pip_packages)
    assert "--ignore-installed" in pip  # apt's Python packages are never uninstalled
    constraint = pip.index("--constraint")
    assert pip[constraint + 1] == cloudinit.PIP_CONSTRAINTS_PATH
    pins = next(c for c in commands if c[0] == "printf" and c[-1] == cloudinit.PIP_CONSTRAINTS_PATH)
    assert base64.b64decode(pins[2]).decode().split() == list(profile.pip_constraints)
    npm = next(c for c in commands if c[0] == "npm")
    assert npm[-len(profile.npm_packages) :] == list(profile.npm_packages)


def test_smoke_asks_for_nothing_the_profile_does_not() -> None:
    doc = _doc(SMOKE)
    assert "sources" not in doc["apt"]
    assert cloudinit.PIP_CONSTRAINTS_PATH not in _write_files(doc)
    text = " ".join(_runcmd_text(doc))
    assert "pip" not in text and "npm" not in text and "/opt/skills" not in text
    # No pip, no npm: no "libraries" stage (and no layer of its own).
    assert [s.name for s in cloudinit.render_stages(SMOKE)] == ["config"]


def test_runcmd_stops_on_error_and_ends_with_the_system_marker() -> None:
    runcmd = _doc(SMOKE)["runcmd"]
    assert runcmd[0] == "set -eu"
    last = runcmd[-1]
    assert isinstance(last, str)
    assert last.endswith(f"mv {cloudinit.SYSTEM_MARKER}.tmp {cloudinit.SYSTEM_MARKER}")
    assert "profile=smoke" in last and "arch=amd64" in last and "distro=debian" in last
    texts = _runcmd_text({"runcmd": runcmd})
    # the build-time dpkg shortcut is gone before the marker is written
    unsafe = texts.index(f"rm -f {cloudinit.UNSAFE_IO_PATH}")
    assert unsafe < len(texts) - 1
    assert any("systemctl start qemu-guest-agent" in t for t in texts)
    assert "systemctl enable qemu-guest-agent" in texts
    # The last stage writes the image's own marker, as its very last command.
    for inputs in (SMOKE, FULL):
        stages = cloudinit.render_stages(inputs)
        config = stages[-1]
        assert config.name == "config"
        lines = [x for x in config.script.decode().splitlines() if x and not x.startswith("#")]
        assert lines[0] == "set -eu"
        assert lines[-1].endswith(f"mv {cloudinit.MARKER_PATH}.tmp {cloudinit.MARKER_PATH}")
        assert all(s.script.decode().count("\nset -eu\n") == 1 for s in stages)


def test_fast_apt_settings() -> None:
    doc = _doc(SMOKE)
    assert 'APT::Install-Recommends "false";' in doc["apt"]["conf"]
    assert doc["apt"]["debconf_selections"]["man-db"].endswith("auto-update boolean false")
    unsafe = _write_files(doc)[cloudinit.UNSAFE_IO_PATH]
    assert unsafe["content"] == "force-unsafe-io\n"


def test_keeps_the_image_sources_by_default() -> None:
    apt = _doc(SMOKE)["apt"]
    assert apt["preserve_sources_list"] is True
    assert "primary" not in apt and "security" not in apt and "proxy" not in apt


def test_mirror_and_proxy_override() -> None:
    apt = _doc(
        dataclasses.replace(
            FULL, apt_mirror="http://mirror.example/ubuntu-ports", apt_proxy="http://10.0.2.2:3142"
        )
    )["apt"]
    assert apt["preserve_sources_list"] is False
    assert apt["primary"] == [{"arches": ["default"], "uri": "http://mirror.example/ubuntu-ports"}]
    assert apt["security"] == apt["primary"]
    assert "sources_list" not in apt  # cloud-init's Ubuntu template: all pockets
    assert apt["proxy"] == "http://10.0.2.2:3142"


def test_debian_mirror_leaves_security_alone() -> None:
    apt = _doc(dataclasses.replace(SMOKE, apt_mirror="http://deb.example/debian"))["apt"]
    assert apt["primary"][0]["uri"] == "http://deb.example/debian"
    assert "security" not in apt
    # cloud-init's own Debian template would ask the mirror for RELEASE-security
    assert apt["sources_list"] == "deb $MIRROR $RELEASE main\n"


@pytest.mark.parametrize(("arch", "archive"), [("amd64", "ubuntu"), ("arm64", "ubuntu-ports")])
def test_snapshot_pin(arch: str, archive: str) -> None:
    inputs = dataclasses.replace(FULL, arch=arch, apt_snapshot="20240301T000000Z")
    apt = _doc(inputs)["apt"]
    uri = f"https://snapshot.ubuntu.com/{archive}/20240301T000000Z"
    assert apt["primary"][0]["uri"] == uri
    assert apt["security"][0]["uri"] == uri


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"apt_snapshot": "2024-03-01"}, "not a snapshot timestamp"),
        ({"apt_snapshot": "20240301T000000Z", "apt_mirror": "http://m/ubuntu"}, "not both"),
        ({"apt_mirror": "ftp://m/ubuntu"}, "not a mirror URL"),
        ({"apt_proxy": "squid:3128"}, "not a proxy URL"),
        ({"hostname": "Sand_box"}, "not a host name"),
        ({"build_ssh_public_key": "not a key"}, "not an OpenSSH public key"),
        ({"arch": "riscv64"}, "unknown arch"),
        ({"distro": "fedora"}, "unknown distro 'fedora'"),
        ({"mac_address": "52-54-00-12-34-56"}, "not a MAC address"),
        ({"agent_uid": 0}, "outside the regular user range"),
        ({"interface": "eth0: x"}, "not a network interface name"),
    ],
)
def test_bad_inputs_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ImageError, match=message):
        render(dataclasses.replace(FULL, **change))


def test_snapshot_on_debian_is_refused() -> None:
    with pytest.raises(ImageError, match="needs the Ubuntu image"):
        render(dataclasses.replace(SMOKE, apt_snapshot="20240301T000000Z"))


def test_proxy_environment_points_at_the_forwarded_proxy() -> None:
    env = _write_files(_doc(SMOKE))["/etc/environment"]
    assert env["append"] is True and "defer" not in env
    lines = env["content"].splitlines()
    for line in (
        "HTTP_PROXY=http://10.0.2.100:3128",
        "HTTPS_PROXY=http://10.0.2.100:3128",
        "ALL_PROXY=socks5h://10.0.2.100:1080",
        "http_proxy=http://10.0.2.100:3128",
        "NO_PROXY=localhost,127.0.0.1,::1",
    ):
        assert line in lines


def test_the_libraries_stage_exports_the_proxy_before_pip_and_npm() -> None:
    commands = _commands(_stage(FULL, "libraries"))
    export = next(i for i, c in enumerate(commands) if c[0] == "export")
    assert "https_proxy=http://10.0.2.100:3128" in commands[export]
    pip = next(i for i, c in enumerate(commands) if c[:3] == ["python3", "-m", "pip"])
    npm = next(i for i, c in enumerate(commands) if c[0] == "npm")
    assert export < pip and export < npm


def test_source_keys_come_through_the_proxy_before_apt_and_no_dirmngr() -> None:
    proxied = dataclasses.replace(FULL, apt_proxy="http://10.0.2.100:3128")
    doc = _doc(proxied)
    scripts = [c for c in doc["bootcmd"] if isinstance(c, str) and "apt source" in c]
    assert len(scripts) == 1
    script = scripts[0]
    assert "--proxy http://10.0.2.100:3128" in script
    assert "https://deb.nodesource.com/gpgkey/nodesource-repo.gpg.key" in script
    assert "fpr=6F71F525282841EEDAF851B42F59B5F99B1BE0B4" in script
    assert "ring=/etc/apt/keyrings/sandbox-image-nodesource.gpg" in script
    assert script.rstrip().endswith("|| exit 1")  # a refused key stops bootcmd
    assert "dirmngr" not in json.dumps(doc) and "keyserver" not in json.dumps(doc)
    assert "bootcmd" not in _doc(dataclasses.replace(SMOKE, package_cache=False))


def test_guest_files_modes_and_exact_bytes() -> None:
    files = {
        "/usr/local/bin/sandbox-run": b"#!/usr/bin/python3\nprint('x')\n",
        "/etc/sandbox/seccomp-x86_64.bpf": bytes(range(256)) * 3,
        "/etc/sandbox/profile.json": b"{}\n",
    }
    inputs = dataclasses.replace(
        SMOKE, guest_files=files, guest_file_modes={"/etc/sandbox/profile.json": 0o600}
    )
    # The sandbox's files are the "config" stage's: a change to them keeps the packages' layers.
    assert not any(f["path"] in files for f in _doc(inputs)["write_files"])
    config = _stage(inputs, "config")
    assert _heredocs(config) == files
    commands = _commands(config)
    modes = {c[2].removesuffix(".tmp"): c[1] for c in commands if c[0] == "chmod"}
    assert modes == {"/usr/local/bin/sandbox-run": "0755",
                     "/etc/sandbox/seccomp-x86_64.bpf": "0644",
                     "/etc/sandbox/profile.json": "0600"}  # fmt: skip
    owners = {c[2].removesuffix(".tmp") for c in commands if c[:2] == ["chown", "root:root"]}
    assert owners == set(files)
    moved = [c[1:] for c in commands if c[0] == "mv" and c[1].endswith(".tmp")]
    assert sorted(moved) == sorted([f"{p}.tmp", p] for p in files)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"etc/x": b""}, "absolute and normalized"),
        ({"/etc/../x": b""}, "absolute and normalized"),
        ({"/etc/environment": b""}, "collides"),
        ({"/opt/skills/x": b""}, "collides"),
        ({"/a": b"x" * (cloudinit.MAX_GUEST_FILES + 1)}, "more than a seed carries"),
    ],
)
def test_bad_guest_files(files: dict[str, bytes], message: str) -> None:
    with pytest.raises(ImageError, match=message):
        render(dataclasses.replace(SMOKE, guest_files=files))


def test_mode_for_a_file_that_is_not_there() -> None:
    with pytest.raises(ImageError, match="not guest files"):
        render(dataclasses.replace(SMOKE, guest_file_modes={"/x": 0o600}))


def test_yaml_special_characters_cannot_break_the_document() -> None:
    key = KEY.replace("build@host", "a: b # {c} [d] 'e\" \\f")
    doc = _doc(dataclasses.replace(SMOKE, build_ssh_public_key=key))
    assert doc["users"][1]["ssh_authorized_keys"] == [key]


# --- skills -------------------------------------------------------------------


def _members(archive: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def test_skills_archive_is_deterministic_normalized_and_indexed(tmp_path: Path) -> None:
    src = tmp_path / "skills"
    shutil.copytree(SAMPLE_SKILLS, src)
    (src / "alpha" / "SKILL.md").chmod(0o600)
    (src / "alpha" / "scripts" / "count.py").chmod(0o700)
    (src / "alpha" / "scripts" / "__pycache__").mkdir()  # left by running it: not shipped
    first = skills.pack(src)
    assert skills.pack(src) == first
    members = _members(first)
    assert sorted(members) == [
        "INDEX.md", "_lib", "_lib/shared.py", "alpha", "alpha/SKILL.md", "alpha/scripts",
        "alpha/scripts/count.py", "beta", "beta/SKILL.md", "index.json",
    ]  # fmt: skip
    modes = {name: (m.mode, m.uid, m.gid, m.uname, m.mtime) for name, m in members.items()}
    assert modes["alpha"] == (0o755, 0, 0, "root", 0)
    assert modes["alpha/SKILL.md"] == (0o644, 0, 0, "root", 0)
    assert modes["alpha/scripts/count.py"] == (0o755, 0, 0, "root", 0)
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    assert index == {"skills_dir": "/opt/skills", "skills": [
        {"name": "alpha",
         "description": "A sample skill for the tests; counts the lines of a file.",
         "path": "/opt/skills/alpha", "skill_md": "/opt/skills/alpha/SKILL.md"},
        {"name": "beta", "description": "A second sample skill, with a folded description over "
         "two lines.", "path": "/opt/skills/beta", "skill_md": "/opt/skills/beta/SKILL.md"},
    ]}  # fmt: skip


def test_a_later_skills_folder_adds_and_replaces(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    (mine / "alpha").mkdir(parents=True)
    (mine / "alpha" / "SKILL.md").write_text("---\nname: alpha\ndescription: Mine.\n---\n")
    (mine / "gamma").mkdir()
    (mine / "gamma" / "SKILL.md").write_text("---\nname: gamma\ndescription: New.\n---\n")
    found = {s.name: s for s in skills.describe([SAMPLE_SKILLS, mine])}
    assert sorted(found) == ["alpha", "beta", "gamma"]
    assert found["alpha"].description == "Mine." and found["alpha"].files == 1
    members = _members(skills.pack([SAMPLE_SKILLS, mine]))
    assert "alpha/scripts/count.py" not in members  # the whole folder was replaced
    assert found["beta"].sha256 == skills.describe([SAMPLE_SKILLS])[1].sha256


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"x/SKILL.md": "no front matter\n"}, "no front matter"),
        ({"x/SKILL.md": "---\nname: y\ndescription: d\n---\n"}, "name is 'y', the folder 'x'"),
        ({"x/SKILL.md": "---\nname: x\n---\n"}, "no description"),
        ({"x/run.py": "print(1)\n"}, "every skill folder needs a SKILL.md"),
        ({"README.md": "hi\n"}, "holds only folders"),
        ({"Bad Name/SKILL.md": "x"}, "not a skill name"),
    ],
)
def test_a_malformed_skill_is_refused_naming_it(
    tmp_path: Path, layout: dict[str, str], message: str
) -> None:
    for name, text in layout.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    with pytest.raises(ImageError) as err:
        skills.pack(tmp_path)
    assert message in f"{err.value.message} {err.value.hint}"


def test_skills_refuse_symlinks(tmp_path: Path) -> None:
    shutil.copytree(SAMPLE_SKILLS, tmp_path / "s")
    (tmp_path / "s" / "alpha" / "link").symlink_to("/etc/shadow")
    with pytest.raises(ImageError, match=r"not a file or directory: .*link"):
        skills.pack(tmp_path / "s")


def test_skills_too_large(tmp_path: Path) -> None:
    shutil.copytree(SAMPLE_SKILLS, tmp_path / "s")
    (tmp_path / "s" / "alpha" / "blob").write_bytes(random.Random(1).randbytes(16384))
    with pytest.raises(ImageError, match="too large"):
        skills.pack(tmp_path / "s", limit=1024)


def test_skills_dir_missing(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is not a directory"):
        skills.pack(tmp_path / "absent")


def test_skills_travel_beside_the_config_stage_checked_and_unpacked_read_only() -> None:
    inputs = dataclasses.replace(SMOKE, skills_dirs=(SAMPLE_SKILLS,))
    files = render(inputs)
    assert sorted(files) == ["meta-data", "network-config", "user-data"]  # not on the seed
    config = _stage(inputs, "config")
    archive = config.payload[cloudinit.SKILLS_PAYLOAD_FILE]
    assert archive == skills.pack([SAMPLE_SKILLS])
    texts = [" ".join(c) for c in _commands(config)]
    digest = hashlib.sha256(archive).hexdigest()
    check = next(t for t in texts if "sha256sum --check" in t)
    assert f"{digest}  skills.tar.gz" in check
    extract = next(t for t in texts if t.startswith("tar --extract"))
    assert texts.index(check) < texts.index(extract) < len(texts) - 1
    assert "--directory /opt/skills" in extract and "--same-owner" in extract
    environment = next(f for f in _doc(inputs)["write_files"] if f["path"] == "/etc/environment")
    assert "SKILLS_DIR=/opt/skills" in environment["content"].split()
    assert "NODE_PATH=/usr/lib/node_modules" in environment["content"].split()
    assert _stage(SMOKE, "config").payload == {}
    assert not any(
        "/opt/skills" in arg for cmd in _commands(_stage(SMOKE, "config")) for arg in cmd
    )
    # The payload is part of the stage's key: another skill, another layer.
    keys = [stages.plan({}, [s], locked=True)[1].key
            for s in (config, dataclasses.replace(config, payload={}))]  # fmt: skip
    assert keys[0] != keys[1]


# --- meta-data and network-config -------------------------------------------------


def test_meta_data_instance_id_follows_user_data() -> None:
    meta = _doc(SMOKE, "meta-data")
    assert meta["local-hostname"] == "sandbox"
    assert meta["instance-id"].startswith("sandbox-")
    other = _doc(dataclasses.replace(SMOKE, hostname="box2"), "meta-data")
    assert other["local-hostname"] == "box2"
    changed = _doc(dataclasses.replace(SMOKE, apt_proxy="http://p:1"), "meta-data")
    assert changed["instance-id"] != meta["instance-id"]


def test_network_config_matches_the_nic_by_mac() -> None:
    net = _doc(SMOKE, "network-config")
    assert net == {
        "version": 2,
        "ethernets": {
            "eth0": {
                "match": {"macaddress": "52:54:00:12:34:56"},
                "set-name": "eth0",
                "dhcp4": True,
                "dhcp6": False,
            }
        },
    }


# --- templates --------------------------------------------------------------------


def test_missing_template_variable_names_template_line_and_variable(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(cloudinit.TEMPLATES_DIR, templates)
    meta = templates / "meta-data.j2"
    meta.write_text(meta.read_text() + "region: {{ region }}\n")
    with pytest.raises(ImageError) as err:
        render(dataclasses.replace(SMOKE, templates_dir=templates))
    assert err.value.message == "template meta-data.j2:3: 'region' is undefined"


def test_template_that_renders_bad_yaml(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(cloudinit.TEMPLATES_DIR, templates)
    (templates / "network-config.j2").write_text("version: [2\n")
    with pytest.raises(ImageError, match="rendered network-config is not valid YAML"):
        render(dataclasses.replace(SMOKE, templates_dir=templates))


# --- seed ISO (pure checks; read-back is in the integration tier) ---------------------


def test_seed_refuses_unknown_or_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not a NoCloud seed file: notes"):
        cloudinit.write_seed_iso(
            {"user-data": b"", "meta-data": b"", "notes": b""}, tmp_path / "s.iso"
        )
    with pytest.raises(ImageError, match="needs meta-data"):
        cloudinit.write_seed_iso({"user-data": b""}, tmp_path / "s.iso")
    assert list(tmp_path.iterdir()) == []


def test_seed_failure_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    out = tmp_path / "seed.iso"
    out.write_bytes(b"old")
    bad: Any = {"user-data": "text, not bytes", "meta-data": b"x"}
    with pytest.raises(TypeError):
        cloudinit.write_seed_iso(bad, out)
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["seed.iso"]


def test_seed_roundtrip_in_process(tmp_path: Path) -> None:
    files = render(SMOKE)
    out = tmp_path / "seed.iso"
    cloudinit.write_seed_iso(files, out)
    assert cloudinit.read_seed_iso(out) == files


def test_user_data_top_level_keys_are_exactly_these() -> None:
    """A new key must be a decision (and known to cloud-init: see the integration tier)."""
    assert set(_doc(FULL)) == {
        "users",
        "ssh_pwauth",
        "disable_root",
        "locale",
        "manage_etc_hosts",
        "apt",
        "bootcmd",  # the NodeSource key, fetched and checked
        "package_update",
        "package_upgrade",
        "package_reboot_if_required",
        "packages",
        "write_files",
        "runcmd",
    }


def test_seeded_ssh_host_key_is_rendered_verbatim() -> None:
    from image.vm.ssh import KeyPair

    host = KeyPair.generate("host@test")
    doc = _doc(dataclasses.replace(SMOKE, ssh_host_ed25519=(host.private_openssh,
                                                            host.public_openssh)))  # fmt: skip
    assert doc["ssh_keys"]["ed25519_private"] == host.private_openssh
    assert doc["ssh_keys"]["ed25519_public"] == host.public_openssh
    assert "ssh_keys" not in _doc(SMOKE)


def test_a_host_key_that_is_not_ed25519_openssh_is_refused() -> None:
    with pytest.raises(ImageError, match="ed25519"):
        render(dataclasses.replace(SMOKE, ssh_host_ed25519=("not a key", "ssh-rsa AAAA")))


def test_imagemagick_may_read_pdf_and_pip_may_install_beside_a_managed_python() -> None:
    runcmd = _doc(FULL)["runcmd"]
    policy = next(c for c in runcmd if isinstance(c, str) and "ImageMagick" in c)
    assert 'pattern="(PDF|PS|EPS|XPS)"' in policy and "read|write" in policy
    commands = _commands(_stage(FULL, "libraries"))
    allow = commands.index(["export", "PIP_BREAK_SYSTEM_PACKAGES=1"])
    pip = next(i for i, c in enumerate(commands) if c[:3] == ["python3", "-m", "pip"])
    assert allow < pip


def test_a_profile_builds_only_on_its_distros(tmp_path: Path) -> None:
    lists = tmp_path / "package-lists"
    shutil.copytree(packages.PACKAGE_LISTS, lists)
    profile = lists / "profiles" / "full.profile"
    profile.write_text(profile.read_text().replace("distros: ubuntu debian", "distros: ubuntu"))
    inputs = dataclasses.replace(FULL, distro="debian", package_lists=lists)
    with pytest.raises(ImageError, match="profile 'full' is for ubuntu, not debian"):
        render(inputs)


TEST_CA = cloudinit.PROJECT_ROOT / "tests" / "fixtures" / "test-ca.pem"


def test_ca_certificates_are_trusted_before_anything_is_downloaded(tmp_path: Path) -> None:
    certs = trust.load([TEST_CA])
    assert [c.name for c in certs] == ["sandbox-image-1-test-ca.crt"]
    # what `openssl x509 -fingerprint -sha256` prints for the file, without the colons
    assert certs[0].sha256 == hashlib.sha256(
        ssl.PEM_cert_to_DER_cert(TEST_CA.read_text())).hexdigest()  # fmt: skip
    doc = _doc(dataclasses.replace(FULL, ca_certs=certs))
    script = doc["bootcmd"][0]  # first: the key script may need it already
    assert "update-ca-certificates" in script and script.endswith(") || exit 1")
    encoded = base64.b64encode(certs[0].pem.encode()).decode()
    assert (
        f"echo {encoded} | base64 -d > /usr/local/share/ca-certificates/{certs[0].name}" in script
    )
    commands = _commands(_stage(dataclasses.replace(FULL, ca_certs=certs), "libraries"))
    export = ["export", "PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
              "NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt"]  # fmt: skip
    pip = next(i for i, c in enumerate(commands) if c[:3] == ["python3", "-m", "pip"])
    assert commands.index(export) < pip
    assert "PIP_CERT" not in _stage(FULL, "libraries").script.decode()
    folder = tmp_path / "cas"
    folder.mkdir()
    (folder / "a.crt").write_text(TEST_CA.read_text() * 2)  # a bundle of two
    assert [c.name for c in trust.load([folder])] == [
        "sandbox-image-1-a.crt",
        "sandbox-image-2-a.crt",
    ]


@pytest.mark.parametrize(("text", "message"), [
    ("not a certificate\n", "no PEM certificate"),
    ("-----BEGIN CERTIFICATE-----\nAAAA!!\n-----END CERTIFICATE-----\n", "no PEM certificate"),
    ("-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n", "not valid PEM"),
])  # fmt: skip
def test_a_ca_file_that_holds_no_certificate_is_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "x.pem"
    path.write_text(text)
    with pytest.raises(ImageError, match=message):
        trust.load([path])
    with pytest.raises(ImageError, match="no CA certificate at"):
        trust.load([tmp_path / "absent.pem"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.pem").write_text(text)  # not *.crt: the folder gives nothing
    with pytest.raises(ImageError, match=r"no \*\.crt file in"):
        trust.load([empty])


def _full_lock(**versions: str) -> lockfile.Lock:
    """A lock of every package the full profile names (at 1.0 unless given), plus
    one pip dependency the profile does not name."""
    profile = packages.resolve_profile("full", packages.PACKAGE_LISTS, "ubuntu")
    pin = lockfile.Pin
    pip = [e.name for g in profile.groups_of("pip") for e in g.entries] + ["six"]
    npm = [e.name for g in profile.groups_of("npm") for e in g.entries]
    return lockfile.Lock(
        distro="ubuntu", release="jammy", arch="arm64", profile="full", base_serial="20990101",
        base_sha256="0" * 64, apt=tuple(pin(n, "1.0", "arm64") for n in profile.apt_packages),
        pip=tuple(pin(n, versions.get(n, "1.0")) for n in pip),
        npm=tuple(pin(n, versions.get(n, "1.0")) for n in npm),
    )  # fmt: skip


def test_a_locked_libraries_stage_has_a_rerun_form_the_same_for_every_lock() -> None:
    one = _stage(dataclasses.replace(FULL, lock=_full_lock()), "libraries")
    other = _stage(dataclasses.replace(FULL, lock=_full_lock(six="1.15.0", docx="2.0")),
                   "libraries")  # fmt: skip
    assert one.script != other.script  # the cold form names the versions
    assert one.rerun is not None and other.rerun is not None
    # The re-run form does not: the lists ride beside it, so an equal script is
    # what says a layer of the other lock may be brought to this one.
    assert one.rerun.script == other.rerun.script
    assert b"six" not in one.rerun.script and b"1.0" not in one.rerun.script
    pins = other.rerun.payload[cloudinit.RERUN_PIP_FILE].decode().splitlines()
    assert "six==1.15.0" in pins and len(pins) == len(_full_lock().pip)
    assert "docx@2.0" in other.rerun.payload[cloudinit.RERUN_NPM_FILE].decode().splitlines()
    # It removes before it adds, and adds with the lock as constraints, as the cold form.
    text = one.rerun.script.decode()
    assert text.index("-m pip uninstall") < text.index("-m pip install")
    assert text.index("npm uninstall") < text.index("npm install --global")
    pip = next(c for c in _commands(one.rerun) if c[:4] == ["python3", "-m", "pip", "install"])
    assert pip[pip.index("--constraint") + 1] == cloudinit.PIP_CONSTRAINTS_PATH
    assert "--ignore-installed" in pip
    # The cold form records the npm packages it installed, for a later re-run.
    assert cloudinit.NPM_RECORD_PATH in one.script.decode()
    # Another index is another script: no re-run across it.
    elsewhere = dataclasses.replace(FULL, lock=_full_lock(), pip_index="https://pypi.corp/simple/")
    assert _stage(elsewhere, "libraries").rerun.script != one.rerun.script  # type: ignore[union-attr]


def test_an_unlocked_build_and_the_config_stage_have_no_rerun_form() -> None:
    assert all(s.rerun is None for s in cloudinit.render_stages(FULL))
    locked = cloudinit.render_stages(dataclasses.replace(FULL, lock=_full_lock()))
    assert [s.name for s in locked if s.rerun is not None] == ["libraries"]
