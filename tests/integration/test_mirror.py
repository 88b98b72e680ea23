"""The offline mirror, served for real on 127.0.0.1: layout, Range, signature, the task."""

from __future__ import annotations

import hashlib
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from image import run
from image.source import mirror, standin
from tests.hosttools import need

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "ubuntu-22.04-server-cloudimg-amd64.img"


@pytest.fixture(scope="module")
def payloads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    # Not real images: the mirror serves bytes, and odd sizes find off-by-one errors.
    work = tmp_path_factory.mktemp("images")
    out = {}
    for arch, size in (("amd64", 3 * (1 << 20) + 7), ("arm64", 1 << 20)):
        path = work / f"{arch}.qcow2"
        path.write_bytes(os.urandom(size))
        out[arch] = path
    return out


@pytest.fixture(scope="module")
def served(
    payloads: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[mirror.Mirror]:
    need("gpg", "gpgv")
    cache = tmp_path_factory.mktemp("cache")
    with mirror.serve_mirror(payloads, cache) as m:
        yield m


def get(m: mirror.Mirror, path: str, **headers: str) -> requests.Response:
    return requests.get(f"{m.url}/{path}", headers=headers, timeout=30, allow_redirects=False)


def test_sha256sums_lists_every_image_and_matches_its_bytes(
    served: mirror.Mirror, payloads: dict[str, Path]
) -> None:
    sums = get(served, "jammy/release-20990101/SHA256SUMS")
    assert sums.status_code == 200
    lines = sums.text.splitlines()
    assert lines == [
        f"{hashlib.sha256(payloads['amd64'].read_bytes()).hexdigest()} *{IMAGE}",
        f"{hashlib.sha256(payloads['arm64'].read_bytes()).hexdigest()} "
        "*ubuntu-22.04-server-cloudimg-arm64.img",
    ]
    assert get(served, "jammy/release/SHA256SUMS").content == sums.content


def test_signature_verifies_with_gpgv_and_only_for_these_sums(
    served: mirror.Mirror, tmp_path: Path
) -> None:
    (tmp_path / "SHA256SUMS").write_bytes(get(served, "jammy/release/SHA256SUMS").content)
    (tmp_path / "SHA256SUMS.gpg").write_bytes(get(served, "jammy/release/SHA256SUMS.gpg").content)
    argv = ["gpgv", "--keyring", str(served.keyring), "SHA256SUMS.gpg", "SHA256SUMS"]
    ok = run.run(argv, cwd=tmp_path, check=False)
    assert ok.returncode == 0, ok.stderr.decode()
    assert served.fingerprint in ok.stderr.decode().replace(" ", "")
    (tmp_path / "SHA256SUMS").write_bytes(b"0" * 64 + b" *evil.img\n")
    assert run.run(argv, cwd=tmp_path, check=False).returncode != 0


def test_whole_image_download(served: mirror.Mirror, payloads: dict[str, Path]) -> None:
    whole = get(served, f"jammy/release-20990101/{IMAGE}")
    assert whole.status_code == 200
    assert whole.headers["Accept-Ranges"] == "bytes"
    assert whole.content == payloads["amd64"].read_bytes()


def test_range_resumes_a_download(served: mirror.Mirror, payloads: dict[str, Path]) -> None:
    data = payloads["amd64"].read_bytes()
    part = get(served, f"jammy/release/{IMAGE}", Range="bytes=1048577-")
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 1048577-{len(data) - 1}/{len(data)}"
    assert part.content == data[1048577:]
    middle = get(served, f"jammy/release/{IMAGE}", Range="bytes=10-19")
    assert (middle.status_code, middle.content) == (206, data[10:20])
    tail = get(served, f"jammy/release/{IMAGE}", Range="bytes=-5")
    assert (tail.status_code, tail.content) == (206, data[-5:])


def test_range_past_the_end_is_416(served: mirror.Mirror, payloads: dict[str, Path]) -> None:
    size = payloads["amd64"].stat().st_size
    past = get(served, f"jammy/release/{IMAGE}", Range=f"bytes={size}-")
    assert past.status_code == 416
    assert past.headers["Content-Range"] == f"bytes */{size}"


def test_head_gives_the_size_without_a_body(
    served: mirror.Mirror, payloads: dict[str, Path]
) -> None:
    head = requests.head(f"{served.url}/jammy/release/{IMAGE}", timeout=30)
    assert head.status_code == 200
    assert int(head.headers["Content-Length"]) == payloads["amd64"].stat().st_size
    assert head.content == b""


def test_build_info_names_the_serial(served: mirror.Mirror) -> None:
    info = get(served, "jammy/release/unpacked/build-info.txt")
    assert (info.status_code, info.text) == (200, "serial=20990101\n")


def test_folders_are_listed_and_nothing_else_is_served(served: mirror.Mirror) -> None:
    index = get(served, "jammy/")
    assert index.status_code == 200
    assert 'href="release-20990101/"' in index.text and 'href="release/"' in index.text
    assert get(served, "jammy").status_code == 301
    assert get(served, "jammy/release-20990102/SHA256SUMS").status_code == 404
    assert get(served, "../../etc/passwd").status_code == 404


def test_the_key_is_kept_in_the_cache_and_reused(tmp_path: Path) -> None:
    need("gpg")
    first = mirror.mirror_key(tmp_path)
    assert first.home == tmp_path / "mirror-key"
    assert mirror.mirror_key(tmp_path) == first
    assert [p.name for p in tmp_path.iterdir()] == ["mirror-key"]  # no staging dir left
    assert _processes_mentioning(str(first.home)) == []  # no gpg-agent left running


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(cmdline)
    return found


def _fake_cached_standin(cache: Path) -> Path:
    qcow2, info = standin.cache_paths(cache, "amd64", standin.recipe("amd64").digest())
    qcow2.parent.mkdir(parents=True)
    qcow2.write_bytes(b"not really a qcow2\n")
    info.write_text("{}")
    return qcow2


def test_mirror_task_prints_one_line_and_stops_on_sigterm(tmp_path: Path) -> None:
    need("gpg", "gpgv")
    # Short: gpg-agent's socket goes in the key's home, and socket paths are limited.
    cache = Path(tempfile.mkdtemp(prefix="mt-"))
    image = _fake_cached_standin(cache)
    env = {**os.environ, "SANDBOX_IMAGE_CACHE_DIR": str(cache)}
    errors = tmp_path / "stderr.log"
    proc = subprocess.Popen(
        [str(ROOT / "inv"), "mirror", "--port", "0", "--no-thirdparty"],
        stdout=subprocess.PIPE,
        stderr=errors.open("wb"),
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout=120), "./inv mirror printed nothing within 120 s"
        line = proc.stdout.readline().decode()
        words = line.split()
        if not words:
            proc.wait(30)
            pytest.fail(f"./inv mirror exited {proc.returncode}: {errors.read_text()}")
        # The whole build-image line: the stand-in is Debian, so --distro debian too.
        assert words[0::2] == ["--mirror", "--keyring", "--fingerprint", "--distro"], line
        url, keyring, fingerprint, distro = words[1::2]
        assert distro == "debian"
        assert url.startswith("http://127.0.0.1:")
        assert Path(keyring) == cache / "mirror-key" / "public.gpg"
        assert len(fingerprint) == 40
        served = requests.get(f"{url}/jammy/release/{IMAGE}", timeout=30)
        assert served.content == image.read_bytes()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read() == b""  # exactly one line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(cache)
