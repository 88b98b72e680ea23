"""The lock: format round trip, parse errors with file:line, pinned rendering, comparisons."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from image.build import cloudinit, lockfile, manifest, packages
from image.build.lockfile import Lock, LockError, Pin
from image.errors import ImageError

SHA = "7243a88c190dd8fb6636b7d75c6eadbde7665121893e928e36667fbe8c64eb3e"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ1aWxkLWtleS1mb3ItdGVzdHM build@host"
SMOKE_APT = ("qemu-guest-agent", "python3", "bubblewrap", "socat", "ca-certificates", "jq", "curl")


def _manifest_json() -> dict[str, Any]:
    dpkg = [{"name": n, "version": f"1.{i}-1", "arch": "amd64"} for i, n in enumerate(SMOKE_APT)]
    dpkg += [{"name": "adduser", "version": "3.134", "arch": "all"},
             {"name": "bsdutils", "version": "1:2.38.1-5+deb12u3", "arch": "amd64"}]  # fmt: skip
    return {"distro": "debian", "arch": "amd64", "dpkg": dpkg,
            "pip": [{"name": "pdfminer.six", "version": "20260107"}],
            "npm": [{"name": "@scope/pkg", "version": "1.2.3"}]}  # fmt: skip


def _build_info(serial: str = "20990101") -> dict[str, Any]:
    return {"base": {"serial": serial, "sha256": SHA},
            "config": {"release": "jammy", "profile": "smoke", "arch": "amd64"}}  # fmt: skip


LOCK = lockfile.from_build(_manifest_json(), _build_info())


def test_from_build_locks_every_installed_package_sorted() -> None:
    assert LOCK.distro == "debian" and LOCK.arch == "amd64" and LOCK.release == "jammy"
    assert (LOCK.profile, LOCK.base_serial, LOCK.base_sha256) == ("smoke", "20990101", SHA)
    assert [p.name for p in LOCK.apt] == sorted([*SMOKE_APT, "adduser", "bsdutils"])
    assert Pin("bsdutils", "1:2.38.1-5+deb12u3", "amd64") in LOCK.apt
    assert LOCK.pip == (Pin("pdfminer.six", "20260107"),)
    assert LOCK.npm == (Pin("@scope/pkg", "1.2.3"),)


def test_rendered_text_is_exact_and_round_trips() -> None:
    small = Lock("ubuntu", "jammy", "arm64", "full", "20240912", SHA,
                 apt=(Pin("adduser", "3.118ubuntu5", "all"), Pin("bash", "5.1-6ubuntu1", "arm64")),
                 pip=(Pin("pypdf", "7.1.1"),), npm=(Pin("docx", "9.15.2"),),
                 snapshot="20240301T000000Z")  # fmt: skip
    text = lockfile.render(small)
    assert text.splitlines()[2:] == [
        "format: 1", "distro: ubuntu", "release: jammy", "arch: arm64", "profile: full",
        "base-serial: 20240912", f"base-sha256: {SHA}", "snapshot: 20240301T000000Z",
        "", "[apt]", "adduser:all=3.118ubuntu5", "bash:arm64=5.1-6ubuntu1",
        "", "[pip]", "pypdf==7.1.1", "", "[npm]", "docx@9.15.2",
    ]  # fmt: skip
    assert lockfile.parse(text, Path("x.lock")) == small


def test_comments_and_blank_lines_are_ignored() -> None:
    text = lockfile.render(LOCK).replace("[apt]", "# a note\n\n[apt]   # packages")
    assert lockfile.parse(text, Path("x.lock")) == LOCK


def test_a_build_without_a_serial_cannot_be_locked() -> None:
    with pytest.raises(ImageError, match="did not record a base image serial"):
        lockfile.from_build(_manifest_json(), _build_info("latest"))


def test_a_directory_that_is_not_a_build_output() -> None:
    with pytest.raises(ImageError, match="does not describe a build"):
        lockfile.from_build({"distro": "debian"}, _build_info())


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("jq:amd64=1.5-1", "jq=1.5-1", "not an apt pin: 'jq=1.5-1'"),
        ("jq:amd64=1.5-1", "jq:amd64=abc", "not an apt pin"),
        ("pdfminer.six==20260107", "pdfminer.six>=1", "not a pip pin"),
        ("@scope/pkg@1.2.3", "@scope/pkg@^1.2", "not an npm pin"),
        ("[npm]", "[gem]", "unknown section [gem]"),
        ("format: 1", "format: 2", "format: '2' is not valid"),
        ("arch: amd64", "arch: riscv64", "arch: 'riscv64' is not valid"),
        (f"base-sha256: {SHA}", "base-sha256: abc", "base-sha256: 'abc' is not valid"),
        ("profile: smoke", "flavour: smoke", "unknown header line 'flavour: smoke'"),
        ("adduser:all=3.134", "adduser:all=3.134\nadduser:all=3.135", "'adduser' is locked twice"),
    ],
)
def test_parse_errors_name_file_and_line(old: str, new: str, message: str) -> None:
    text = lockfile.render(LOCK)
    assert old in text
    broken = text.replace(old, new, 1)
    line = _line_of(broken, new.splitlines()[-1])
    with pytest.raises(LockError) as info:
        lockfile.parse(broken, Path("ci/image.lock"))
    assert info.value.message.startswith(f"ci/image.lock:{line}: ")
    assert message in info.value.message
    assert info.value.hint or "twice" in message


def test_pip_names_are_compared_normalised() -> None:
    text = lockfile.render(LOCK).replace("[npm]", "Pdfminer_Six==1\n[npm]")
    with pytest.raises(LockError, match="'Pdfminer_Six' is locked twice"):
        lockfile.parse(text, Path("x.lock"))


def test_missing_header_and_empty_apt_are_errors_without_a_line() -> None:
    text = lockfile.render(LOCK)
    with pytest.raises(LockError, match=r"^x\.lock: missing header key\(s\): base-sha256"):
        lockfile.parse(text.replace(f"base-sha256: {SHA}\n", ""), Path("x.lock"))
    apt_lines = "".join(f"{p.name}:{p.arch}={p.version}\n" for p in LOCK.apt)
    with pytest.raises(LockError, match="locks no package"):
        lockfile.parse(text.replace(apt_lines, ""), Path("x.lock"))


def test_a_snapshot_needs_ubuntu_and_a_timestamp() -> None:
    with pytest.raises(ImageError, match="needs an Ubuntu build; this one is debian"):
        lockfile.from_build(_manifest_json(), _build_info(), snapshot="20240301T000000Z")
    jammy = {**_manifest_json(), "distro": "ubuntu"}
    assert lockfile.from_build(jammy, _build_info(), "20240301T000000Z").snapshot == (
        "20240301T000000Z"
    )
    with pytest.raises(ImageError, match="not a snapshot timestamp: '2024-03-01'"):
        lockfile.from_build(jammy, _build_info(), snapshot="2024-03-01")
    text = lockfile.render(LOCK).replace("[apt]", "snapshot: 20240301T000000Z\n[apt]")
    with pytest.raises(LockError, match="snapshot pin needs distro ubuntu"):
        lockfile.parse(text, Path("x.lock"))


def test_a_lock_is_for_one_build_shape() -> None:
    lockfile.check_build_matches(LOCK, distro="debian", release="jammy", arch="amd64",
                                 profile="smoke")  # fmt: skip
    with pytest.raises(ImageError, match="lock is for arch amd64, this build is for arm64") as e:
        lockfile.check_build_matches(LOCK, distro="debian", release="jammy", arch="arm64",
                                     profile="smoke")  # fmt: skip
    assert e.value.hint == "build with --arch amd64, or make a lock from a build with arch arm64"


def test_a_base_image_with_other_bytes_is_refused() -> None:
    lockfile.check_base(LOCK, SHA)
    with pytest.raises(ImageError, match=f"has sha256 {'0' * 64}, the lock expects {SHA}"):
        lockfile.check_base(LOCK, "0" * 64)


def test_pinned_specs_use_the_lock_versions_for_the_profile_packages() -> None:
    smoke = packages.load_profile("smoke")
    pinned = lockfile.pinned_specs(LOCK, smoke)
    versions = {p.name: p.version for p in LOCK.apt}
    assert pinned["apt"] == tuple(f"{n}={versions[n]}" for n in smoke.apt_packages)
    assert pinned["pip"] == () and pinned["npm"] == ()


def test_pinned_specs_refuse_a_profile_package_the_lock_lacks() -> None:
    smoke = packages.load_profile("smoke")
    thin = dataclasses.replace(LOCK, apt=tuple(p for p in LOCK.apt if p.name != "jq"))
    with pytest.raises(ImageError, match="no version for: apt jq") as info:
        lockfile.pinned_specs(thin, smoke)
    assert "make a new lock" in (info.value.hint or "")


def test_pinned_pip_keeps_extras_and_takes_the_lock_version() -> None:
    full = packages.load_profile("full")
    lock = dataclasses.replace(
        LOCK,
        pip=tuple(Pin(e.name, "9.9") for g in full.groups_of("pip") for e in g.entries),
        npm=tuple(Pin(e.name, "9.9.9") for g in full.groups_of("npm") for e in g.entries),
        apt=tuple(Pin(n, "1", "arm64") for n in full.apt_packages),
    )
    pinned = lockfile.pinned_specs(lock, full)
    assert "markitdown[docx,pdf,pptx,xlsx]==9.9" in pinned["pip"]
    assert "pypdf==9.9" in pinned["pip"]
    assert "docx@9.9.9" in pinned["npm"]


def test_apt_preferences_hold_every_locked_package() -> None:
    lock = dataclasses.replace(LOCK, apt=(Pin("adduser", "3.134", "all"),
                                          Pin("bsdutils", "1:2.38.1-5", "amd64")))  # fmt: skip
    assert lockfile.apt_preferences(lock) == (
        "Package: adduser\nPin: version 3.134\nPin-Priority: 1001\n\n"
        "Package: bsdutils\nPin: version 1:2.38.1-5\nPin-Priority: 1001\n"
    )


def _manifest(dpkg: Sequence[tuple[str, str, str]],
              pip: Sequence[tuple[str, str]] = ()) -> manifest.Manifest:  # fmt: skip
    return manifest.Manifest(
        "debian", "amd64", tuple(manifest.Package(*p) for p in dpkg),
        tuple(manifest.Package(*p) for p in pip), (),
    )  # fmt: skip


def test_differences_name_each_package() -> None:
    lock = Lock("debian", "jammy", "amd64", "smoke", "20990101", SHA,
                apt=(Pin("jq", "1.6-2", "amd64"), Pin("libonig5", "6.9.8-1", "amd64"),
                     Pin("curl", "7.88", "amd64")),
                pip=(Pin("Pdfminer.Six", "1"),))  # fmt: skip
    same = _manifest([("jq", "1.6-2", "amd64"), ("libonig5", "6.9.8-1", "amd64"),
                      ("curl", "7.88", "amd64")], [("pdfminer-six", "1")])  # fmt: skip
    assert lockfile.differences(lock, same) == []
    other = _manifest([("jq", "1.6-2", "amd64"), ("libonig5", "6.9.9-1", "amd64"),
                       ("wget", "1.21", "amd64")], [("pdfminer.six", "2")])  # fmt: skip
    assert lockfile.differences(lock, other) == [
        "apt curl: locked 7.88, not installed",
        "apt libonig5: locked 6.9.8-1, installed 6.9.9-1",
        "apt wget: installed 1.21, not in the lock",
        "pip Pdfminer.Six: locked 1, installed 2",
    ]


def test_unavailable_versions_from_apt_output() -> None:
    output = (
        "Reading package lists...\n"
        "E: Version '9.9-bogus' for 'jq' was not found\n"
        "E: Version '1:2' for 'bsdutils' was not found\n"
        "E: Version '9.9-bogus' for 'jq' was not found\n"
    )
    assert lockfile.unavailable_versions(output) == ["jq=9.9-bogus", "bsdutils=1:2"]
    assert lockfile.unavailable_versions("E: Unable to locate package nope") == []


# --- rendering a locked build ------------------------------------------------------


SMOKE = cloudinit.RenderInputs(profile="smoke", arch="amd64", distro="debian",
                               build_ssh_public_key=KEY)  # fmt: skip


def test_locked_render_pins_packages_and_holds_dependencies() -> None:
    doc = yaml.safe_load(cloudinit.render(dataclasses.replace(SMOKE, lock=LOCK))["user-data"])
    versions = {p.name: p.version for p in LOCK.apt}
    assert doc["packages"] == [f"{n}={versions[n]}" for n in SMOKE_APT]
    files = {f["path"]: f for f in doc["write_files"]}
    prefs = files[cloudinit.APT_LOCK_PREFERENCES_PATH]
    assert prefs["content"] == lockfile.apt_preferences(LOCK)
    # dpkg-query checks names: the list the guest checks holds no versions.
    listed = files[cloudinit.APT_LIST_PATH]
    assert "=" not in base64.b64decode(listed["content"]).decode()
    runcmd = doc["runcmd"]
    assert ["rm", "-f", cloudinit.APT_LOCK_PREFERENCES_PATH] in runcmd
    assert runcmd.index(["rm", "-f", cloudinit.APT_LOCK_PREFERENCES_PATH]) < len(runcmd) - 1


def test_unlocked_render_has_no_preferences() -> None:
    text = cloudinit.render(SMOKE)["user-data"].decode()
    assert "preferences.d" not in text
    assert "jq=" not in text
