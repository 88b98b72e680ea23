"""The stand-in for NodeSource and the key script a build runs for every apt source.

Real tools on loopback: the repository is built with dpkg-deb and apt-ftparchive
and signed with gpg; the host's apt reads it over HTTP from the mirror; the key
script (the very text bootcmd runs in the guest) runs here with curl and gpg,
through the project's egress proxy, as it does in the build VM.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from image import config
from image.build import cloudinit, packages
from image.egress import proxy
from image.source import mirror, thirdparty
from tests.hosttools import need

PINNED = "6F71F525282841EEDAF851B42F59B5F99B1BE0B4"  # NodeSource's, not the stand-in's


@pytest.fixture(scope="module")
def repo() -> thirdparty.Repository:
    """Built in the user's cache (the npm tarballs are 50 MB): once per machine."""
    need("dpkg-deb", "apt-ftparchive", "gpg", "curl")
    cache = config.resolve({}, os.environ, {}).config.cache_dir
    return thirdparty.ensure(cache, ("amd64",))


@pytest.fixture(scope="module")
def served(repo: thirdparty.Repository, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[mirror.Mirror]:  # fmt: skip
    image = tmp_path_factory.mktemp("img") / "fake.qcow2"
    image.write_bytes(b"not an image, the mirror only serves it")
    cache = tmp_path_factory.mktemp("mirror-cache")
    with mirror.serve_mirror({"amd64": image}, cache, repo=repo) as running:
        yield running


def _source(served: mirror.Mirror) -> packages.AptSource:
    assert served.source_file is not None
    return packages.load_source_file(served.source_file)


def _run_key_script(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip


@pytest.fixture
def egress(served: mirror.Mirror, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The project's proxy on loopback, admitting only the mirror's address and port."""
    port = served.url.rsplit(":", 1)[1]
    policy = proxy.parse_policy(f"allow-address 127.0.0.1/32\nallow-port {port}\n", "test")
    audit = tmp_path / "audit.jsonl"
    with proxy.serve_proxy(policy, audit_log=audit) as running:
        yield running.http_url, audit


def test_the_source_file_names_the_served_repository(served: mirror.Mirror) -> None:
    source = _source(served)
    assert source.name == "nodesource"
    assert source.uri == f"{served.url}/nodesource/node_22.x"
    assert (source.suite, source.components) == ("nodistro", ("main",))
    assert source.key_url == f"{served.url}/nodesource/gpgkey/nodesource-repo.gpg.key"
    assert source.fingerprint != PINNED
    assert f"--source-file {served.source_file}" in served.build_args()


def test_the_key_script_keeps_the_pinned_key_fetched_through_the_proxy(
    served: mirror.Mirror, egress: tuple[str, Path], tmp_path: Path
) -> None:
    proxy_url, audit = egress
    source = _source(served)
    ring = tmp_path / "keyrings" / "sandbox-image-nodesource.gpg"
    script = cloudinit.source_key_script(source, proxy_url, keyring=str(ring))
    done = _run_key_script(script)
    assert done.returncode == 0, done.stderr
    assert "apt source nodesource: key" in done.stdout
    shown = subprocess.run(["gpg", "--show-keys", "--with-colons", str(ring)],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    primaries = [line.split(":")[9] for line in shown.splitlines() if line.startswith("fpr:")]
    assert primaries[0] == source.fingerprint
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    opened = [r for r in records if r.get("event") == "open"]
    assert [(r["decision"], r.get("path")) for r in opened] == [
        ("allow", "/nodesource/gpgkey/nodesource-repo.gpg.key")
    ]
    # A second boot finds the keyring and fetches nothing.
    assert _run_key_script(script).returncode == 0
    assert len(audit.read_text().splitlines()) == len(records)


def test_a_key_with_another_fingerprint_is_refused_naming_the_source(
    served: mirror.Mirror, egress: tuple[str, Path], tmp_path: Path
) -> None:
    source = replace(_source(served), fingerprint=PINNED)
    ring = tmp_path / "ring.gpg"
    done = _run_key_script(cloudinit.source_key_script(source, egress[0], keyring=str(ring)))
    assert done.returncode == 1
    assert "apt source nodesource:" in done.stderr
    assert f"is {_source(served).fingerprint} , not the pinned {PINNED}: refused" in done.stderr
    assert not ring.exists() and not ring.with_name(ring.name + ".new").exists()


def test_a_key_url_that_is_no_key_or_missing_is_refused(
    served: mirror.Mirror, egress: tuple[str, Path], tmp_path: Path
) -> None:
    ring = tmp_path / "ring.gpg"
    not_a_key = replace(_source(served), key_url=f"{served.url}/jammy/release/SHA256SUMS")
    done = _run_key_script(cloudinit.source_key_script(not_a_key, egress[0], keyring=str(ring)))
    assert done.returncode == 1
    assert "is not an OpenPGP key, not the pinned" in done.stderr
    missing = replace(_source(served), key_url=f"{served.url}/nodesource/gpgkey/nope.key")
    done = _run_key_script(cloudinit.source_key_script(missing, egress[0], keyring=str(ring)))
    assert done.returncode == 1
    assert f"cannot download its key from {missing.key_url}" in done.stderr
    assert not ring.exists()


def test_apt_installs_a_working_node_22_from_the_served_repository(
    served: mirror.Mirror, tmp_path: Path
) -> None:
    """The host's own apt (its own state dirs) against the repository over HTTP:
    signatures checked with the key the script kept, the package unpacked and run."""
    source = _source(served)
    ring = tmp_path / "ring.gpg"
    assert _run_key_script(cloudinit.source_key_script(source, None, keyring=str(ring))
                           ).returncode == 0  # fmt: skip
    state = tmp_path / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "etc/sources.list.d",
                "etc/preferences.d"):  # fmt: skip
        (state / sub).mkdir(parents=True)
    (state / "etc" / "sources.list").write_text(
        f"deb [signed-by={ring}] {source.uri} {source.suite} {' '.join(source.components)}\n"
    )
    options = [
        f"-oDir::State={state}", f"-oDir::State::Lists={state}/lists",
        f"-oDir::Cache={state}/cache", f"-oDir::Etc::SourceList={state}/etc/sources.list",
        f"-oDir::Etc::SourceParts={state}/etc/sources.list.d",
        f"-oDir::Etc::PreferencesParts={state}/etc/preferences.d",
        "-oDebug::NoLocking=1", "-oAPT::Sandbox::User=root", "-oAcquire::Languages=none",
    ]  # fmt: skip
    update = subprocess.run(["apt-get", *options, "update"], capture_output=True, text=True,
                            timeout=120, check=False)  # fmt: skip
    assert update.returncode == 0, update.stdout + update.stderr
    assert "NO_PUBKEY" not in update.stderr and "not signed" not in update.stderr
    subprocess.run(["apt-get", *options, "download", f"nodejs={thirdparty.DEB_VERSION}"],
                   cwd=tmp_path, capture_output=True, check=True, timeout=120)  # fmt: skip
    deb = tmp_path / thirdparty.deb_name("amd64")
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    node = root / "usr" / "bin" / "node"
    version = subprocess.run([str(node), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"v{thirdparty.NODE_VERSION}"
    npm = subprocess.run(
        [str(node), str(root / "usr/lib/node_modules/npm/bin/npm-cli.js"), "--version"],
        capture_output=True, text=True, check=True, env={"HOME": str(tmp_path), "PATH": "/usr/bin"},
    )  # fmt: skip
    assert npm.stdout.strip() == thirdparty.NPM_VERSION
    assert (root / "usr/bin/npm").readlink() == Path("../lib/node_modules/npm/bin/npm-cli.js")


def test_a_tarball_that_does_not_match_its_integrity_is_not_kept(tmp_path: Path) -> None:
    pinned = thirdparty.NPM_TARBALL
    wrong = replace(pinned, integrity="sha512-" + "A" * 86 + "==")
    with pytest.raises(Exception, match="does not match its pinned integrity"):
        thirdparty.fetch_tarball(tmp_path, wrong)
    assert not any(p.is_file() for p in (tmp_path / "thirdparty").rglob("*"))
