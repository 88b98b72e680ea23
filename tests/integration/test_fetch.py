"""Fetch against a real HTTP server on 127.0.0.1, real gpg/gpgv, a real cache directory."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from image.config import PINNED_FINGERPRINTS, SHIPPED_KEYRING, BuildConfig
from image.errors import ImageError
from image.source import checksums, signing
from image.source.fetch import FetchResult, fetch
from tests.fixtures.cloudmirror import CloudMirror, random_bytes, sums_text
from tests.fixtures.httpserver import FileServer, write_file
from tests.hosttools import need

ROOT = Path(__file__).resolve().parents[2]
SIZE = 3 << 20  # big enough for several 1 MiB chunks, small enough to be instant
CUT = 1 << 20


@pytest.fixture(scope="session")
def key(tmp_path_factory: pytest.TempPathFactory) -> signing.SigningKey:
    need("gpg", "gpgv")
    return signing.create_key(tmp_path_factory.mktemp("gnupg-pinned"))


@pytest.fixture(scope="session")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> signing.SigningKey:
    return signing.create_key(tmp_path_factory.mktemp("gnupg-stranger"), "unpinned key")


@pytest.fixture
def image() -> bytes:
    return random_bytes(SIZE, seed=1)


@pytest.fixture
def mirror(tmp_path: Path, key: signing.SigningKey, image: bytes) -> CloudMirror:
    m = CloudMirror(tmp_path / "mirror", key)
    m.publish(image)
    return m


@pytest.fixture
def server(mirror: CloudMirror) -> Iterator[FileServer]:
    with FileServer(mirror.root) as s:
        yield s


@pytest.fixture
def cfg(tmp_path: Path, key: signing.SigningKey, server: FileServer) -> BuildConfig:
    return BuildConfig(
        mirror=server.base_url,
        keyring=key.public_keyring,
        fingerprints=(key.fingerprint,),
        cache_dir=tmp_path / "cache",
    )


def image_url_path(mirror: CloudMirror, latest: bool = False) -> str:
    sub = "release" if latest else f"release-{mirror.serial}"
    return f"/{mirror.release}/{sub}/{mirror.name}"


def cache_files(cfg: BuildConfig) -> list[str]:
    images = cfg.cache_dir / "images"
    return (
        sorted(
            str(p.relative_to(images))
            for p in images.rglob("*")
            if p.is_file() and "locks" not in p.parts
        )
        if images.exists()
        else []
    )


# --- the happy path and the layout ---


def test_latest_resolves_serial_and_caches_verified_image(
    cfg: BuildConfig,
    mirror: CloudMirror,
    server: FileServer,
    image: bytes,
    key: signing.SigningKey,
) -> None:
    result = fetch(cfg, progress=False)
    digest = hashlib.sha256(image).hexdigest()
    assert result == FetchResult(
        path=cfg.cache_dir / "images" / "sha256" / f"{digest}.img",
        sha256=digest,
        serial=mirror.serial,
        url=server.url(image_url_path(mirror)),
        bytes_downloaded=SIZE,
        from_cache=False,
        signer=key.fingerprint,
        sums=result.sums,
    )
    assert result.path.read_bytes() == image
    assert not result.path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    provenance = json.loads(result.path.with_suffix(".json").read_text())
    assert provenance["sha256"] == digest
    assert provenance["sources"][0]["serial"] == mirror.serial
    assert provenance["sources"][0]["signer"] == key.fingerprint
    assert cache_files(cfg) == [f"sha256/{digest}.img", f"sha256/{digest}.json"]
    # Everything but build-info.txt comes from the serial's own directory.
    assert [r.path for r in server.requests] == [
        f"/{mirror.release}/release/unpacked/build-info.txt",
        f"/{mirror.release}/release-{mirror.serial}/SHA256SUMS",
        f"/{mirror.release}/release-{mirror.serial}/SHA256SUMS.gpg",
        image_url_path(mirror),
    ]
    assert result.to_json()["serial"] == mirror.serial
    # The SHA256SUMS that vouched for it, and its signature, as the mirror serves them.
    assert result.sums is not None
    assert result.sums.url == server.url(image_url_path(mirror)).rsplit("/", 1)[0] + "/SHA256SUMS"
    assert result.sums.signature_url == result.sums.url + ".gpg"
    served = [requests.get(u, timeout=10).content
              for u in (result.sums.url, result.sums.signature_url)]  # fmt: skip
    assert [result.sums.sha256, result.sums.signature_sha256] == [
        hashlib.sha256(b).hexdigest() for b in served]  # fmt: skip


def test_pinned_serial_reads_its_directory(
    cfg: BuildConfig, mirror: CloudMirror, server: FileServer
) -> None:
    result = fetch(dataclasses.replace(cfg, serial=mirror.serial), progress=False)
    assert result.serial == mirror.serial
    assert not any("build-info" in r.path for r in server.requests)


def test_latest_without_build_info_records_latest(
    cfg: BuildConfig, mirror: CloudMirror, server: FileServer, image: bytes
) -> None:
    mirror.publish(image, build_info=False)
    result = fetch(cfg, progress=False)
    assert result.serial == "latest"
    assert result.url == server.url(image_url_path(mirror, latest=True))
    assert result.path.read_bytes() == image


def test_build_info_naming_a_missing_directory_falls_back_to_release(
    cfg: BuildConfig, mirror: CloudMirror, server: FileServer, image: bytes
) -> None:
    shutil.rmtree(mirror.dir())
    result = fetch(cfg, progress=False)
    assert (result.serial, result.url) == ("latest", server.url(image_url_path(mirror, True)))
    assert result.path.read_bytes() == image


def test_progress_bar_path_downloads_the_same(cfg: BuildConfig, image: bytes) -> None:
    assert fetch(cfg, progress=True).path.read_bytes() == image


# --- signature first ---


def test_bad_signature_is_refused_before_any_image_byte(
    cfg: BuildConfig, mirror: CloudMirror, server: FileServer
) -> None:
    sums = mirror.dir() / "SHA256SUMS"
    sums.write_bytes(sums.read_bytes() + b"0" * 64 + b" *evil.img\n")  # signed before this
    with pytest.raises(ImageError, match="BAD signature"):
        fetch(cfg, progress=False)
    assert server.bytes_served.get(image_url_path(mirror), 0) == 0
    assert cache_files(cfg) == []


def test_signature_by_valid_but_unpinned_key_is_refused(
    cfg: BuildConfig,
    mirror: CloudMirror,
    server: FileServer,
    key: signing.SigningKey,
    stranger: signing.SigningKey,
    tmp_path: Path,
) -> None:
    both = tmp_path / "both.gpg"  # binary keyrings concatenate
    both.write_bytes(key.public_keyring.read_bytes() + stranger.public_keyring.read_bytes())
    mirror.resign(stranger)
    with pytest.raises(ImageError, match=f"signed by {stranger.fingerprint}.*not an accepted"):
        fetch(dataclasses.replace(cfg, keyring=both), progress=False)
    assert server.bytes_served.get(image_url_path(mirror), 0) == 0


def test_signer_missing_from_keyring_is_refused(
    cfg: BuildConfig, mirror: CloudMirror, stranger: signing.SigningKey
) -> None:
    mirror.resign(stranger)
    with pytest.raises(ImageError, match=r"no good signature.*ERRSIG"):
        fetch(cfg, progress=False)


def test_unsigned_sums_are_refused(cfg: BuildConfig, mirror: CloudMirror) -> None:
    (mirror.dir() / "SHA256SUMS.gpg").unlink()
    with pytest.raises(ImageError, match="SHA256SUMS is unsigned"):
        fetch(cfg, progress=False)


def test_armored_keyring_is_dearmored(
    cfg: BuildConfig, key: signing.SigningKey, tmp_path: Path, image: bytes
) -> None:
    armored = tmp_path / "key.asc"
    armored.write_bytes(
        subprocess.run(
            ["gpg", "--homedir", str(key.home), "--batch", "--armor", "--export", key.fingerprint],
            check=True,
            capture_output=True,
        ).stdout
    )
    assert armored.read_bytes().startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert fetch(dataclasses.replace(cfg, keyring=armored), progress=False).signer == (
        key.fingerprint
    )


def test_insecure_skip_signature_is_loud_and_recorded(
    cfg: BuildConfig, mirror: CloudMirror, image: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (mirror.dir() / "SHA256SUMS.gpg").unlink()
    result = fetch(cfg, insecure_skip_signature=True, progress=False)
    assert result.signer is None and result.path.read_bytes() == image
    assert "INSECURE" in caplog.text
    source = json.loads(result.path.with_suffix(".json").read_text())["sources"][0]
    assert source["insecure_skip_signature"] is True and source["signer"] is None
    # Unchecked sums are not cached, so a checked offline run cannot use them.
    with pytest.raises(ImageError, match="no cached SHA256SUMS"):
        fetch(cfg, offline=True, progress=False)


def test_shipped_keyring_holds_exactly_the_pinned_keys() -> None:
    need("gpg")
    listing = subprocess.run(
        ["gpg", "--show-keys", "--with-colons", str(SHIPPED_KEYRING)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    primaries, in_primary = [], False
    for line in listing.splitlines():
        fields = line.split(":")
        in_primary = {"pub": True, "sub": False}.get(fields[0], in_primary)
        if fields[0] == "fpr" and in_primary:
            primaries.append(fields[9])
    assert sorted(primaries) == sorted(PINNED_FINGERPRINTS)


def test_shipped_keyring_rejects_a_throwaway_signature(
    mirror: CloudMirror, key: signing.SigningKey
) -> None:
    # The armored shipped keyring goes through the dearmor path and gpgv really reads it.
    with pytest.raises(ImageError, match="ERRSIG"):
        checksums.verify_signature(
            mirror.dir() / "SHA256SUMS",
            mirror.dir() / "SHA256SUMS.gpg",
            SHIPPED_KEYRING,
            PINNED_FINGERPRINTS,
        )


# --- image second ---


def test_image_missing_from_sums(
    cfg: BuildConfig, mirror: CloudMirror, server: FileServer, image: bytes
) -> None:
    sums = mirror.dir() / "SHA256SUMS"
    sums.write_bytes(sums_text({"ubuntu-22.04-server-cloudimg-amd64.img": image}))
    signing.sign_detached(mirror.key, sums)
    with pytest.raises(ImageError, match=r"ubuntu-22.04-server-cloudimg-arm64.img is not listed"):
        fetch(cfg, progress=False)
    assert not [r for r in server.requests if r.path.endswith(".img")]


def test_checksum_mismatch_names_hashes_and_leaves_cache_untouched(
    cfg: BuildConfig, mirror: CloudMirror, image: bytes
) -> None:
    fetch(cfg, progress=False)  # something already in the cache must stay
    before = cache_files(cfg)
    listed = random_bytes(SIZE, seed=2)
    mirror.publish(image, listed=listed)
    with pytest.raises(ImageError) as info:
        fetch(cfg, progress=False)
    message = info.value.message
    assert mirror.name in message
    assert f"expected sha256 {hashlib.sha256(listed).hexdigest()}" in message
    assert f"actual {hashlib.sha256(image).hexdigest()}" in message
    assert cache_files(cfg) == before  # no .part, no new image


def test_404_is_final_and_names_the_url(cfg: BuildConfig, server: FileServer) -> None:
    missing = dataclasses.replace(cfg, serial="20990101")
    with pytest.raises(ImageError, match=r"release-20990101/SHA256SUMS: HTTP 404"):
        fetch(missing, progress=False)
    assert len(server.requests) == 1  # not retried


def test_403_is_final_and_names_the_url(
    cfg: BuildConfig, mirror: CloudMirror, server: FileServer
) -> None:
    server.fail(image_url_path(mirror), 403, times=3)
    with pytest.raises(ImageError, match=f"{mirror.name}: HTTP 403"):
        fetch(cfg, progress=False)
    assert len(server.requests_for(image_url_path(mirror))) == 1


# --- resumable ---


def test_cut_connection_resumes_with_range(
    cfg: BuildConfig, mirror: CloudMirror, server: FileServer, image: bytes
) -> None:
    server.cut_after(image_url_path(mirror), CUT)
    result = fetch(cfg, progress=False)
    assert result.path.read_bytes() == image
    _, second = server.requests_for(image_url_path(mirror))
    assert second.range == f"bytes={CUT}-" and second.if_range and second.status == 206
    assert server.bytes_served[image_url_path(mirror)] == SIZE  # nothing sent twice


def test_interrupted_run_resumes_in_the_next_run(
    cfg: BuildConfig, mirror: CloudMirror, server: FileServer, image: bytes
) -> None:
    path = image_url_path(mirror)
    server.cut_after(path, CUT)
    server.fail(path, 503, times=6, retry_after="0")  # the first run gives up
    with pytest.raises(ImageError, match="resumes from"):
        fetch(cfg, progress=False)
    assert [p for p in cache_files(cfg) if p.endswith(".img")] == []
    server.reset_counters()
    result = fetch(cfg, progress=False)
    assert result.path.read_bytes() == image
    assert result.bytes_downloaded == SIZE - CUT
    assert server.bytes_served[path] == SIZE - CUT
    assert [r.status for r in server.requests_for(path)] == [206]


def test_500_once_is_retried(
    cfg: BuildConfig, mirror: CloudMirror, server: FileServer, image: bytes
) -> None:
    server.fail(image_url_path(mirror), 500)
    assert fetch(cfg, progress=False).path.read_bytes() == image
    assert [r.status for r in server.requests_for(image_url_path(mirror))] == [500, 200]
    assert server.bytes_served[image_url_path(mirror)] == SIZE


def test_file_changed_on_server_restarts_cleanly(
    cfg: BuildConfig, mirror: CloudMirror, server: FileServer, image: bytes
) -> None:
    # The server first has other bytes of the same length; a client that glued
    # them to the new file's tail would fail the checksum.
    served = mirror.image_path()
    write_file(served, random_bytes(SIZE, seed=3))
    server.cut_after(image_url_path(mirror), CUT, then=lambda: write_file(served, image))
    result = fetch(cfg, progress=False)
    assert result.path.read_bytes() == image
    _, second = server.requests_for(image_url_path(mirror))
    assert second.range == f"bytes={CUT}-" and second.status == 200  # If-Range said: changed
    assert server.bytes_served[image_url_path(mirror)] == CUT + SIZE


def test_changed_file_detected_by_last_modified_alone(
    cfg: BuildConfig, mirror: CloudMirror, server: FileServer, image: bytes
) -> None:
    server.set(etag=False)
    served = mirror.image_path()
    write_file(served, random_bytes(SIZE, seed=3), mtime=1_000_000_000)
    server.cut_after(
        image_url_path(mirror), CUT, then=lambda: write_file(served, image, mtime=1_000_000_100)
    )
    assert fetch(cfg, progress=False).path.read_bytes() == image
    assert server.requests_for(image_url_path(mirror))[1].status == 200


def test_no_validators_no_resume(
    cfg: BuildConfig, mirror: CloudMirror, server: FileServer, image: bytes
) -> None:
    server.set(etag=False, last_modified=False)
    server.cut_after(image_url_path(mirror), CUT)
    assert fetch(cfg, progress=False).path.read_bytes() == image
    assert server.requests_for(image_url_path(mirror))[1].range is None
    assert server.bytes_served[image_url_path(mirror)] == CUT + SIZE


# --- cache ---


def test_cache_hit_transfers_zero_image_bytes(
    cfg: BuildConfig, mirror: CloudMirror, server: FileServer
) -> None:
    first = fetch(cfg, progress=False)
    server.reset_counters()
    second = fetch(cfg, progress=False)
    assert second == dataclasses.replace(first, bytes_downloaded=0, from_cache=True)
    assert server.requests_for(image_url_path(mirror)) == []
    assert server.bytes_served.get(image_url_path(mirror), 0) == 0


def test_damaged_cached_image_is_replaced(cfg: BuildConfig, image: bytes) -> None:
    first = fetch(cfg, progress=False)
    first.path.chmod(0o644)
    first.path.write_bytes(b"bit rot" + image[7:])
    second = fetch(cfg, progress=False)
    assert second.from_cache is False and second.path.read_bytes() == image


def _fetch_cli(cfg: BuildConfig, *extra: str) -> subprocess.Popen[str]:
    argv = [
        sys.executable,
        "-m",
        "invoke",
        "fetch",
        "--mirror",
        cfg.mirror,
        "--keyring",
        str(cfg.keyring),
        "--fingerprint",
        ",".join(cfg.fingerprints),
        "--cache-dir",
        str(cfg.cache_dir),
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_IMAGE_")}
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_two_concurrent_fetches_download_once(
    cfg: BuildConfig, mirror: CloudMirror, server: FileServer, image: bytes
) -> None:
    server.set(rate=SIZE / 1.5)  # both processes start while the first still downloads
    procs = [_fetch_cli(cfg, "--json") for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["from_cache"] for r in results) == [False, True]
    assert {r["path"] for r in results} == {str(fetch(cfg, offline=True).path)}
    assert server.bytes_served[image_url_path(mirror)] == SIZE
    assert Path(results[0]["path"]).read_bytes() == image


def test_cli_prints_the_path_last(cfg: BuildConfig, image: bytes) -> None:
    proc = _fetch_cli(cfg)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert Path(out.strip().splitlines()[-1]).read_bytes() == image


def test_cli_error_exits_1_with_hint(cfg: BuildConfig, mirror: CloudMirror) -> None:
    proc = _fetch_cli(cfg, "--serial", "20990101")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "HTTP 404" in err and "hint:" in err and "Traceback" not in err


# --- file:// and --offline ---


def test_file_mirror(cfg: BuildConfig, mirror: CloudMirror, image: bytes) -> None:
    local = dataclasses.replace(cfg, mirror=mirror.root.as_uri())
    result = fetch(local, progress=False)
    assert result.serial == mirror.serial
    assert result.url == f"{mirror.root.as_uri()}{image_url_path(mirror)}"
    assert result.path.read_bytes() == image and result.bytes_downloaded == SIZE
    assert fetch(local, progress=False).from_cache is True


def test_offline_with_cache_uses_no_network(
    cfg: BuildConfig, mirror: CloudMirror, server: FileServer, image: bytes
) -> None:
    online = fetch(cfg, progress=False)
    server.stop()
    for serial in ("latest", mirror.serial):
        result = fetch(dataclasses.replace(cfg, serial=serial), offline=True, progress=False)
        assert result == dataclasses.replace(online, bytes_downloaded=0, from_cache=True)


def test_offline_rechecks_the_signature_with_the_current_keys(
    cfg: BuildConfig, stranger: signing.SigningKey
) -> None:
    fetch(cfg, progress=False)
    distrusting = dataclasses.replace(
        cfg, keyring=stranger.public_keyring, fingerprints=(stranger.fingerprint,)
    )
    with pytest.raises(ImageError, match="no good signature"):
        fetch(distrusting, offline=True, progress=False)


def test_offline_without_cache(cfg: BuildConfig, server: FileServer) -> None:
    with pytest.raises(ImageError, match="--offline: no cached fetch of jammy 'latest'"):
        fetch(cfg, offline=True, progress=False)
    with pytest.raises(ImageError, match="--offline: no cached SHA256SUMS"):
        fetch(dataclasses.replace(cfg, serial="20240912"), offline=True, progress=False)
    assert server.requests == []


def test_offline_with_sums_but_no_image(cfg: BuildConfig) -> None:
    result = fetch(cfg, progress=False)
    result.path.unlink()
    with pytest.raises(ImageError, match="is not in the cache"):
        fetch(cfg, offline=True, progress=False)
