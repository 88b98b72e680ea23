"""Skills by URL + SHA-256, served from 127.0.0.1: checked, unpacked safely, cached."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from image.build import skills
from image.errors import ImageError


class _Server:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: list[str] = []


@pytest.fixture
def server() -> Iterator[tuple[_Server, str]]:
    state = _Server()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits.append(self.path)
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _tarball(members: dict[str, bytes], symlink: tuple[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o664
            tar.addfile(info, io.BytesIO(content))
        if symlink:
            info = tarfile.TarInfo(symlink[0])
            info.type = tarfile.SYMTYPE
            info.linkname = symlink[1]
            tar.addfile(info)
    return buffer.getvalue()


def test_fetch_checks_unpacks_and_caches(server: tuple[_Server, str], tmp_path: Path) -> None:
    state, base = server
    skill_md = b"---\nname: pdf\ndescription: PDFs.\n---\n# pdf\n"
    data = _tarball({"pdf/SKILL.md": skill_md, "pdf/run.py": b"print(1)\n"})
    state.files["/skills.tar.gz"] = data
    digest = hashlib.sha256(data).hexdigest()
    folder = skills.fetch(f"{base}/skills.tar.gz", digest, tmp_path)
    assert folder == tmp_path / "skills" / digest
    assert (folder / "pdf" / "SKILL.md").read_bytes() == skill_md
    assert skills.fetch(f"{base}/skills.tar.gz", digest.upper(), tmp_path) == folder
    assert state.hits == ["/skills.tar.gz"]  # the second call came from the cache
    # and what the seed carries is normalized whatever the tarball said
    with tarfile.open(fileobj=io.BytesIO(skills.pack(folder)), mode="r:gz") as packed:
        modes = {m.name: m.mode for m in packed.getmembers()}
    assert modes == {
        "INDEX.md": 0o644,
        "index.json": 0o644,
        "pdf": 0o755,
        "pdf/SKILL.md": 0o644,
        "pdf/run.py": 0o644,
    }


def test_wrong_checksum_is_refused_and_nothing_cached(
    server: tuple[_Server, str], tmp_path: Path
) -> None:
    state, base = server
    state.files["/s.tgz"] = _tarball({"a": b"x"})
    with pytest.raises(ImageError, match=r"has SHA-256 .*, expected 0{64}"):
        skills.fetch(f"{base}/s.tgz", "0" * 64, tmp_path)
    assert not (tmp_path / "skills").exists()


def test_path_traversal_is_refused(server: tuple[_Server, str], tmp_path: Path) -> None:
    state, base = server
    data = _tarball({"../escape": b"x"})
    state.files["/evil.tgz"] = data
    with pytest.raises(ImageError, match="cannot unpack the skills tarball"):
        skills.fetch(f"{base}/evil.tgz", hashlib.sha256(data).hexdigest(), tmp_path / "c")
    assert not (tmp_path / "escape").exists()
    assert list((tmp_path / "c" / "skills").iterdir()) == []  # no half folder left


def test_link_out_of_the_folder_is_refused(server: tuple[_Server, str], tmp_path: Path) -> None:
    state, base = server
    data = _tarball({"a": b"x"}, symlink=("passwd", "/etc/passwd"))
    state.files["/link.tgz"] = data
    with pytest.raises(ImageError, match="cannot unpack"):
        skills.fetch(f"{base}/link.tgz", hashlib.sha256(data).hexdigest(), tmp_path)


def test_http_errors_and_bad_arguments(server: tuple[_Server, str], tmp_path: Path) -> None:
    _, base = server
    with pytest.raises(ImageError, match=r"cannot download the skills tarball .*404"):
        skills.fetch(f"{base}/absent.tgz", "a" * 64, tmp_path)
    with pytest.raises(ImageError, match="not a SHA-256 checksum"):
        skills.fetch(f"{base}/x.tgz", "abc", tmp_path)
    with pytest.raises(ImageError, match="must be http:// or https://"):
        skills.fetch("ftp://example.org/x.tgz", "a" * 64, tmp_path)
