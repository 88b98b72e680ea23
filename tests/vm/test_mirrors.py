"""A build through private mirrors, the public archives denied (build-image
--apt-mirror --apt-mirror-key --pip-index).

Two builds of a small profile (the smoke set, python3-pip, and one pip package
only a local index has). The first fills the package cache from Debian's archive
(guest traffic, the one kind allowed to leave) and takes the pip package from a
PEP 503 index on loopback. The second, with no cache, installs everything from an
apt-ftparchive archive made of what the first downloaded, signed by its own key,
and the index: every connection it made went to those two servers, and the records
say so without credentials. Then locked builds of the same profile: a pip pin
changed re-runs only the libraries stage on the earlier lock's layer, and equals
a cold build of the changed lock.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from image import config
from image.build import lockfile, mirrors, pipeline
from image.build.packages import PACKAGE_LISTS
from image.source import fetch, mirror, standin
from tests.fixtures import localrepos
from tests.vm.conftest import attach_logs, package_changes

PROFILE = """\
description: the smoke set, pip, and a package from a local index (a test)
distros: ubuntu debian
apt: guest sandbox smoke pip
pip: probe
expected_installed: 250
tolerance: 15%
"""
CHECKS = """\
probe | ^probe [12]\\.0$ | python3 -c 'import sandbox_image_probe as p; print("probe", p.VERSION)'
"""


@pytest.fixture(scope="module")
def lists(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lists") / "package-lists"
    shutil.copytree(PACKAGE_LISTS, root)
    (root / "apt" / "pip.list").write_text("# pip itself, for the probe package\npython3-pip\n")
    (root / "pip" / "probe.list").write_text("# only the local index has it\n"
                                             "sandbox-image-probe==1.0\n")  # fmt: skip
    (root / "profiles" / "mirrored.profile").write_text(PROFILE)
    (root / "profiles" / "mirrored.checks").write_text(CHECKS)
    return root


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localrepos.Served]:
    work = tmp_path_factory.mktemp("index")
    wheels = [("sandbox-image-probe", localrepos.pure_wheel(
        work, "sandbox-image-probe", version, f'VERSION = "{version}"\n'))
        for version in ("1.0", "2.0")]  # fmt: skip
    localrepos.simple_index(work / "root", wheels)
    with localrepos.serve(work / "root") as served:
        yield served


# The first build's output, for the lock the re-run test starts from.
OUTPUTS: dict[str, Path] = {}


def _records(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_a_build_installs_through_a_local_apt_mirror_and_pip_index(
    vm_config: config.BuildConfig, lists: Path, index: localrepos.Served,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:  # fmt: skip
    base = standin.ensure(vm_config.cache_dir, "amd64")
    pip_url = f"{index.url}/simple/"
    with mirror.serve_mirror({"amd64": base.path}, vm_config.cache_dir) as served:
        cfg = dataclasses.replace(
            vm_config, mirror=served.url, keyring=served.keyring,
            fingerprints=(served.fingerprint,), profile="mirrored",
        )  # fmt: skip
        # 1: apt from Debian (filling the cache), pip from the local index.
        first_out = tmp_path_factory.mktemp("first")
        attach_logs(first_out / "logs" / "cloud-init-output.log")
        first = pipeline.build_image(
            dataclasses.replace(cfg, output_dir=first_out), distro="debian",
            package_lists=lists, mirrors=mirrors.Mirrors.given(pip=pip_url),
        )  # fmt: skip
        assert "/files/sandbox_image_probe-1.0-py3-none-any.whl" in index.requests
        OUTPUTS["first"] = first.image.parent
        first_hosts = {r["host"] for r in _records(first.egress_log) if r["decision"] == "allow"}
        assert "pypi.org" not in first_hosts and "files.pythonhosted.org" not in first_hosts

        # 2: no cache; apt from a signed local archive of what build 1 downloaded.
        debs = sorted(
            (vm_config.cache_dir / "packages" / "debian-jammy-amd64" / "apt").glob("*.deb")
        )
        assert any(d.name.startswith("python3-pip_") for d in debs), debs
        work = tmp_path_factory.mktemp("apt")
        key = localrepos.apt_archive(debs, work / "root", "trixie", "amd64",
                                     tmp_path_factory.mktemp("g"))  # fmt: skip
        index.requests.clear()
        with localrepos.serve(work / "root") as archive:
            second_out = tmp_path_factory.mktemp("second")
            attach_logs(second_out / "logs" / "cloud-init-output.log")
            second = pipeline.build_image(
                dataclasses.replace(cfg, output_dir=second_out), distro="debian",
                package_lists=lists, package_cache=False,
                mirrors=mirrors.Mirrors.given(apt=archive.url, apt_key_file=key, pip=pip_url),
            )  # fmt: skip
    assert "/dists/trixie/InRelease" in archive.requests
    assert any(p.startswith("/pool/main/python3-pip_") for p in archive.requests)
    assert "/files/sandbox_image_probe-1.0-py3-none-any.whl" in index.requests
    info = json.loads(second.build_info.read_text())
    assert info["mirrors"] == {"apt": archive.url, "apt_key": True, "apt_snapshot": None,
                               "pip": pip_url, "npm": None}  # fmt: skip
    assert info["verify"]["probe"]["output"] == "probe 1.0"
    manifest = json.loads(second.manifest.read_text())
    assert {"name": "sandbox-image-probe", "version": "1.0"}.items() <= next(
        p for p in manifest["pip"] if p["name"] == "sandbox-image-probe"
    ).items()
    # Every connection the second build made went to the two local servers.
    opened = [r for r in _records(second.egress_log) if r["event"] == "open"]
    allowed = {(r["host"], r["port"]) for r in opened if r["decision"] == "allow"}
    ports = {int(archive.url.rsplit(":", 1)[1]), int(index.url.rsplit(":", 1)[1])}
    assert allowed and {h for h, _ in allowed} == {localrepos.HOST}
    assert {p for _, p in allowed} <= ports
    assert not [r for r in opened if r["host"] in ("deb.debian.org", "pypi.org")
                and r["decision"] == "allow"]  # fmt: skip
    # The lock records where the packages came from.
    lock = lockfile.from_output(second.image.parent)
    assert (lock.mirrors.apt, lock.mirrors.pip) == (archive.url, pip_url)


def test_a_pip_pin_changed_re_runs_only_the_libraries_stage_and_equals_a_cold_build(
    vm_config: config.BuildConfig, lists: Path, index: localrepos.Served,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:  # fmt: skip
    """Locked builds: the probe at 1.0, then at 2.0. The second resumes the first's
    system layer and re-runs "libraries" on the first's libraries layer (only the
    probe taken out and put in); a cold build of the 2.0 lock in an empty cache
    gives the same packages."""
    if "first" not in OUTPUTS:
        pytest.skip("needs the first build of test_a_build_installs_through_a_local_apt_mirror…")
    lock_one = lockfile.from_output(OUTPUTS["first"])
    assert lock_one.pip_version("sandbox-image-probe") == "1.0"
    lock_two = dataclasses.replace(lock_one, pip=tuple(
        dataclasses.replace(p, version="2.0") if p.name == "sandbox-image-probe" else p
        for p in lock_one.pip))  # fmt: skip
    pip_url = f"{index.url}/simple/"
    base = standin.ensure(vm_config.cache_dir, "amd64")
    with mirror.serve_mirror({"amd64": base.path}, vm_config.cache_dir) as served:
        cfg = dataclasses.replace(
            vm_config, mirror=served.url, keyring=served.keyring,
            fingerprints=(served.fingerprint,), profile="mirrored",
        )  # fmt: skip

        def build(name: str, lock: lockfile.Lock, cache: Path) -> pipeline.BuildResult:
            out = tmp_path_factory.mktemp(name)
            attach_logs(out / "logs" / "serial.log")
            return pipeline.build_image(
                dataclasses.replace(cfg, output_dir=out, cache_dir=cache), distro="debian",
                package_lists=lists, lock=lock, mirrors=mirrors.Mirrors.given(pip=pip_url),
            )  # fmt: skip

        one = build("one", lock_one, vm_config.cache_dir)
        index.requests.clear()
        two = build("two", lock_two, vm_config.cache_dir)
        fetched_by_two = [r for r in index.requests if r.startswith("/files/")]
        cold_cache = tmp_path_factory.mktemp("cold-cache")
        fetch.fetch(dataclasses.replace(cfg, cache_dir=cold_cache))  # the base image only
        cold = build("cold", lock_two, cold_cache)
    infos = [json.loads(b.build_info.read_text()) for b in (one, two, cold)]
    libraries_one = next(s for s in infos[0]["stages"] if s["stage"] == "libraries")
    assert [(s["stage"], s["ran"]) for s in infos[1]["stages"]] == [
        ("system", False), ("libraries", True), ("config", True)]  # fmt: skip
    rerun = next(s for s in infos[1]["stages"] if s["stage"] == "libraries")
    assert rerun["rerun_of"] == {"stage": "libraries", "key": libraries_one["key"],
                                 "build_id": infos[0]["build_id"]}  # fmt: skip
    assert infos[1]["verify"]["probe"]["output"] == "probe 2.0"
    # Only the one wheel was fetched: the re-run touched nothing else.
    assert fetched_by_two == ["/files/sandbox_image_probe-2.0-py3-none-any.whl"]
    serial = (two.image.parent / "logs" / "serial.log").read_text(errors="replace")
    assert "pip: removing 1, adding 1" in serial
    # The cold build ran every stage, none re-run, and made the same libraries key.
    assert [(s["stage"], s["ran"], s["rerun_of"]) for s in infos[2]["stages"]] == [
        ("system", True, None), ("libraries", True, None), ("config", True, None)]  # fmt: skip
    assert [s["key"] for s in infos[2]["stages"]] == [s["key"] for s in infos[1]["stages"]]
    assert package_changes(two.image.parent, cold.image.parent) == {
        "added": [], "removed": [], "changed": []}  # fmt: skip
    assert package_changes(one.image.parent, two.image.parent)["changed"] == [
        {"type": "pip", "name": "sandbox-image-probe", "old": "1.0", "new": "2.0"}]  # fmt: skip
