"""A third-party apt source in a real build: the path jammy's NodeSource takes.

The mirror serves the NodeSource stand-in (nodejs 22, signed by its own key);
a build of a small profile naming the `nodesource` source, pointed at it with
--source-file, fetches the key through the egress proxy, checks its fingerprint,
adds the source and installs nodejs from it. A pin that does not match fails
the build naming the source, before any package is installed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from image import config
from image.build import packages, pipeline
from image.build.packages import PACKAGE_LISTS
from image.errors import ImageError
from image.source import mirror, standin, thirdparty
from tests.vm.conftest import attach_logs, qemu_processes

PROFILE = """\
description: the sandbox plumbing and Node.js 22 from the nodesource source (a test)
distros: ubuntu debian
apt: guest sandbox nodejs
sources: nodesource
expected_installed: 260
tolerance: 40%
"""
CHECKS = """\
node | ^v22\\.        | node --version
npm  | ^10\\.         | npm --version
"""


@pytest.fixture(scope="module")
def lists(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lists") / "package-lists"
    shutil.copytree(PACKAGE_LISTS, root)
    (root / "profiles" / "node.profile").write_text(PROFILE)
    (root / "profiles" / "node.checks").write_text(CHECKS)
    return root


@pytest.fixture(scope="module")
def served(vm_config: config.BuildConfig) -> Iterator[mirror.Mirror]:
    user_cache = config.resolve({}, os.environ, {}).config.cache_dir
    repo = thirdparty.ensure(user_cache, ("amd64",))
    base = standin.ensure(vm_config.cache_dir, "amd64")
    with mirror.serve_mirror({"amd64": base.path}, vm_config.cache_dir, repo=repo) as running:
        yield running


def _build(cfg: config.BuildConfig, served: mirror.Mirror, lists: Path, out: Path,
           source: packages.AptSource) -> pipeline.BuildResult:  # fmt: skip
    build_cfg = dataclasses.replace(
        cfg, mirror=served.url, keyring=served.keyring, fingerprints=(served.fingerprint,),
        serial="latest", profile="node", output_dir=out,
    )  # fmt: skip
    attach_logs(out / "logs" / "cloud-init-output.log")
    return pipeline.build_image(build_cfg, distro="debian", package_lists=lists,
                                sources=(source,), package_cache=False)  # fmt: skip


def test_nodejs_22_installs_from_the_pinned_third_party_source(
    vm_config: config.BuildConfig, served: mirror.Mirror, lists: Path, tmp_path: Path
) -> None:
    assert served.source_file is not None
    source = packages.load_source_file(served.source_file)
    result = _build(vm_config, served, lists, tmp_path / "out", source)
    info = json.loads(result.build_info.read_text())
    assert [c["output"] for c in (info["verify"]["node"], info["verify"]["npm"])] == [
        f"v{thirdparty.NODE_VERSION}", thirdparty.NPM_VERSION,
    ]  # fmt: skip
    assert info["apt_sources"] == [source.to_json()]
    assert info["guest"]["cloud_init"].startswith("25.")
    manifest = json.loads(result.manifest.read_text())
    nodejs = next(p for p in manifest["dpkg"] if p["name"] == "nodejs")
    assert nodejs["version"] == thirdparty.DEB_VERSION
    # The key and the repository came through the build's proxy, admitted by name of
    # the source file only (the policy itself allows no loopback address).
    records = [json.loads(line) for line in result.egress_log.read_text().splitlines()]
    paths = {r.get("path") for r in records if r.get("event") == "open" and
             r["decision"] == "allow"}  # fmt: skip
    assert "/nodesource/gpgkey/nodesource-repo.gpg.key" in paths
    assert any(str(p).startswith("/nodesource/node_22.x/pool/main/n/nodejs/") for p in paths)
    output = (tmp_path / "out" / "logs" / "cloud-init-output.log").read_text()
    assert f"apt source nodesource: key {source.fingerprint}" in output


def test_a_key_that_is_not_the_pinned_one_fails_the_build_naming_the_source(
    vm_config: config.BuildConfig, served: mirror.Mirror, lists: Path, tmp_path: Path
) -> None:
    assert served.source_file is not None
    real = packages.load_source_file(served.source_file)
    pinned = "6F71F525282841EEDAF851B42F59B5F99B1BE0B4"  # NodeSource's own: not this key
    out = tmp_path / "out"
    with pytest.raises(ImageError) as err:
        _build(vm_config, served, lists, out, dataclasses.replace(real, fingerprint=pinned))
    message = err.value.message
    assert "bootcmd" in message
    assert f"apt source nodesource: the key at {real.key_url} is {real.fingerprint}" in message
    assert f"not the pinned {pinned}: refused" in message
    assert not out.exists() or not any(out.glob("*.qcow2"))
    assert qemu_processes() == []
