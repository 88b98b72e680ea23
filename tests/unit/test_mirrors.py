"""Private mirrors: checked flags, the policy that admits exactly them, what the guest
is told, what the records and the lock keep (never credentials)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from image.build import cloudinit, lockfile
from image.build.cloudinit import RenderInputs
from image.build.mirrors import Mirrors, redacted
from image.egress import guestnet
from image.errors import ImageError
from tests.fixtures.stagescripts import commands, stage

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE3Cm0nY2ZzZmZzZmZzZmZzZmZzZmZzZmZzZmZzZmZz test"
ARMORED = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBF\n-----END PGP PUBLIC KEY BLOCK-----\n"


def _user_data(inputs: RenderInputs) -> Any:
    return yaml.safe_load(cloudinit.render(inputs)["user-data"])


def test_policy_admits_the_mirrors_and_denies_what_they_replace() -> None:
    mirrors = Mirrors.given(apt="http://127.0.0.2:8001/debian",
                            pip="http://127.0.0.2:8002/simple/",
                            npm="https://npm.corp.example:8443/")  # fmt: skip
    policy = mirrors.policy(guestnet.DEFAULT_BUILD).load()
    assert "127.0.0.2/32" in {str(n) for n in policy.addresses}
    assert {8001, 8002, 8443} <= policy.ports
    assert "npm.corp.example" in policy.allow
    for public in ("deb.debian.org", "archive.ubuntu.com", "pypi.org",
                   "files.pythonhosted.org", "registry.npmjs.org"):  # fmt: skip
        assert public in policy.deny, public
    # NodeSource is not a mirror's business: still allowed.
    assert "deb.nodesource.com" in policy.allow and "deb.nodesource.com" not in policy.deny


def test_only_the_replaced_archives_are_denied() -> None:
    policy = (
        Mirrors.given(pip="https://pypi.corp.example/simple/").policy(guestnet.DEFAULT_BUILD).load()
    )
    assert "pypi.org" in policy.deny and "deb.debian.org" not in policy.deny


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"apt": "ftp://m/ubuntu"}, "--apt-mirror"),
        ({"pip": "pypi.corp/simple"}, "--pip-index"),
        ({"npm": "file:///srv/npm"}, "--npm-registry"),
        ({"apt": "http://m/u", "apt_snapshot": "20240301T000000Z"}, "both name the archive"),
        ({"apt_snapshot": "yesterday"}, "not a timestamp"),
    ],
)
def test_bad_mirror_flags(kwargs: dict[str, str], says: str) -> None:
    with pytest.raises(ImageError, match=says) as info:
        Mirrors.given(**kwargs)  # type: ignore[arg-type]
    assert info.value.hint


def test_a_key_needs_its_mirror_and_must_be_armored(tmp_path: Path) -> None:
    key = tmp_path / "key.asc"
    key.write_text(ARMORED)
    with pytest.raises(ImageError, match="without --apt-mirror"):
        Mirrors.given(apt_key_file=key)
    key.write_text("not a key")
    with pytest.raises(ImageError, match="not an armored public key"):
        Mirrors.given(apt="http://m/debian", apt_key_file=key)


def test_records_never_hold_credentials() -> None:
    mirrors = Mirrors.given(pip="https://ci:s3cret@pypi.corp.example:8443/simple/")
    assert mirrors.to_json()["pip"] == "https://pypi.corp.example:8443/simple/"
    assert redacted("http://u@h/x") == "http://h/x"
    assert redacted("http://h/x") == "http://h/x"


def test_the_guest_gets_the_index_registry_and_the_mirror_key() -> None:
    inputs = RenderInputs(profile="smoke", arch="amd64", distro="debian",
                          build_ssh_public_key=KEY, apt_mirror="http://127.0.0.2:8001/debian",
                          apt_mirror_key=ARMORED, pip_index="http://127.0.0.2:8002/simple/",
                          npm_registry="https://npm.corp.example/")  # fmt: skip
    doc = _user_data(inputs)
    assert doc["apt"]["sources_list"] == (
        f"deb [signed-by={cloudinit.APT_MIRROR_KEYRING}] $MIRROR $RELEASE main\n"
    )
    assert doc["apt"]["primary"][0]["uri"] == "http://127.0.0.2:8001/debian"
    written = {f["path"]: f for f in doc["write_files"]}
    assert written[cloudinit.APT_MIRROR_KEYRING]["content"] == ARMORED
    # pip and npm run in the "libraries" stage: the index and registry are exported there.
    full = dataclasses.replace(inputs, profile="full", arch="arm64", distro="ubuntu",
                               apt_mirror="http://127.0.0.2:8001/ubuntu-ports")  # fmt: skip
    assert ["export", "PIP_INDEX_URL=http://127.0.0.2:8002/simple/",
            "NPM_CONFIG_REGISTRY=https://npm.corp.example/"] in commands(
        stage(full, "libraries"))  # fmt: skip


def test_ubuntu_mirror_with_its_own_key_signs_every_pocket() -> None:
    inputs = RenderInputs(profile="smoke", arch="arm64", build_ssh_public_key=KEY,
                          apt_mirror="http://m/ubuntu-ports", apt_mirror_key=ARMORED)  # fmt: skip
    lines = _user_data(inputs)["apt"]["sources_list"].splitlines()
    assert [line.split()[3] for line in lines] == [
        "$RELEASE", "$RELEASE-updates", "$RELEASE-security", "$RELEASE-backports"
    ]  # fmt: skip
    assert all(line.startswith(f"deb [signed-by={cloudinit.APT_MIRROR_KEYRING}] $MIRROR ")
               for line in lines)  # fmt: skip


def test_without_mirrors_nothing_changes() -> None:
    inputs = RenderInputs(profile="smoke", arch="amd64", distro="debian", build_ssh_public_key=KEY)
    doc = _user_data(inputs)
    assert not any("PIP_INDEX_URL" in str(c) for c in doc["runcmd"])
    assert cloudinit.APT_MIRROR_KEYRING not in {f["path"] for f in doc["write_files"]}


def test_a_lock_records_the_mirrors_and_reads_them_back() -> None:
    lock = lockfile.Lock(
        distro="debian", release="jammy", arch="amd64", profile="smoke", base_serial="20990101",
        base_sha256="0" * 64, apt=(lockfile.Pin("jq", "1.7", "amd64"),),
        mirrors=Mirrors(apt="http://127.0.0.2:8001/debian", pip="https://pypi.corp/simple/"),
    )  # fmt: skip
    text = lockfile.render(lock)
    assert "apt-mirror: http://127.0.0.2:8001/debian\n" in text
    back = lockfile.parse(text, Path("x.lock"))
    assert back.mirrors == dataclasses.replace(lock.mirrors)
    with pytest.raises(lockfile.LockError, match="pip-index"):
        lockfile.parse(text.replace("https://pypi.corp/simple/", "https://u:p@pypi.corp/"),
                       Path("x.lock"))  # fmt: skip


def test_flags_win_over_what_a_lock_recorded() -> None:
    recorded = Mirrors(apt="http://old/debian", pip="http://old/simple/")
    assert Mirrors(pip="http://new/simple/").or_from(recorded) == Mirrors(
        apt="http://old/debian", pip="http://new/simple/"
    )
    assert Mirrors(apt_snapshot="20240301T000000Z").or_from(recorded).apt is None
