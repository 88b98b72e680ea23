"""A local stand-in for cloud-images.ubuntu.com/releases, served on 127.0.0.1.

It serves stand-in images in Canonical's layout, so the fetch code runs unchanged
against it::

    {release}/release-{serial}/ubuntu-22.04-server-cloudimg-{arch}.img
    {release}/release-{serial}/SHA256SUMS        "<sha256> *<name>" lines
    {release}/release-{serial}/SHA256SUMS.gpg    binary detached signature
    {release}/release-{serial}/unpacked/build-info.txt   "serial=<serial>"
    {release}/release/...                        the same files (Canonical's "latest")

SHA256SUMS is signed by a throwaway key kept in the cache (never a key anyone
trusts for anything else). The stdlib's file handler knows no Range requests, and
the fetcher resumes with them, so a small handler serves a fixed table of files
(and nothing else from the disk) with single-range support.
"""

from __future__ import annotations

import contextlib
import email.utils
import html
import logging
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType

from image.errors import ImageError
from image.files import atomic_write_text, sha256_file
from image.source import signing, thirdparty
from image.source.fetch import image_name  # the names the pipeline fetches

log = logging.getLogger(__name__)

DEFAULT_RELEASE = "jammy"
# Far in the future so it is plainly not a real Canonical serial.
DEFAULT_SERIAL = "20990101"
KEY_DIR = "mirror-key"
# Where the stand-in for NodeSource lives under the mirror URL.
THIRDPARTY_PREFIX = "nodesource"
CHUNK = 1 << 20

Content = Path | bytes  # a file to stream, or a small document held in memory


# --- pure builders -------------------------------------------------------------------------


def sha256sums(digests: Mapping[str, str]) -> bytes:
    """SHA256SUMS as Canonical writes it: '<hex> *<name>' (binary mode), sorted by name."""
    return "".join(f"{digests[name]} *{name}\n" for name in sorted(digests)).encode()


def build_info(serial: str) -> bytes:
    return f"serial={serial}\n".encode()


def mirror_files(
    release: str, serial: str, images: Mapping[str, Path], sums: bytes, signature: bytes
) -> dict[str, Content]:
    """Every file the mirror serves, by its path under the mirror URL."""
    files: dict[str, Content] = {}
    for folder in (f"{release}/release-{serial}", f"{release}/release"):
        for arch, path in sorted(images.items()):
            files[f"{folder}/{image_name(release, arch)}"] = path
        files[f"{folder}/SHA256SUMS"] = sums
        files[f"{folder}/SHA256SUMS.gpg"] = signature
        files[f"{folder}/unpacked/build-info.txt"] = build_info(serial)
    return files


def listing(files: Mapping[str, Content], folder: str) -> list[str] | None:
    """Names directly under ``folder`` ('' is the top; sub-folders end in '/'), or None."""
    prefix = f"{folder}/" if folder else ""
    names = {
        p[len(prefix) :].split("/", 1)[0] + ("/" if "/" in p[len(prefix) :] else "")
        for p in files
        if p.startswith(prefix)
    }
    return sorted(names) if names else None


class RangeNotSatisfiable(Exception):
    pass


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """One 'bytes=' range of a file of ``size`` bytes; None means send it whole.

    A server may ignore what it does not support (RFC 9110 14.2): several ranges
    or a malformed header get the whole file. A range that starts past the end
    is unsatisfiable (416).
    """
    if not header or not header.startswith("bytes="):
        return None
    spec = header[len("bytes=") :].strip()
    if "," in spec or "-" not in spec:
        return None
    first, last = (part.strip() for part in spec.split("-", 1))
    if not first:  # suffix range: the last N bytes
        if not last.isdigit():
            return None
        count = int(last)
        if count == 0 or size == 0:
            raise RangeNotSatisfiable
        return ByteRange(max(0, size - count), size - 1)
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable
    return ByteRange(start, end)


# --- signing -------------------------------------------------------------------------------


def mirror_key(cache_dir: Path) -> signing.SigningKey:
    """The mirror's throwaway key in the cache, made on first use."""
    return signing.cached_key(cache_dir / KEY_DIR, "sandbox-image offline mirror (throwaway)")


def sign(key: signing.SigningKey, document: bytes) -> bytes:
    with tempfile.TemporaryDirectory(prefix="mirror-sign-") as tmp:
        path = Path(tmp) / "SHA256SUMS"
        path.write_bytes(document)
        return signing.sign_detached(key, path).read_bytes()


# --- the server ----------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _MirrorServer
    protocol_version = "HTTP/1.1"

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def do_GET(self) -> None:
        self._respond(body=True)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("mirror: %s " + format, self.address_string(), *args)

    def _respond(self, body: bool) -> None:
        path = self.path.split("?", 1)[0].strip("/")
        content = self.server.files.get(path)
        if content is None:
            names = listing(self.server.files, path)
            if names is None:
                self.send_error(HTTPStatus.NOT_FOUND)
                return
            if not self.path.split("?", 1)[0].endswith("/") and path:
                self.send_response(HTTPStatus.MOVED_PERMANENTLY)
                self.send_header("Location", f"/{path}/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            content = _index_page(path, names)
        size = content.stat().st_size if isinstance(content, Path) else len(content)
        try:
            wanted = parse_range(self.headers.get("Range"), size)
        except RangeNotSatisfiable:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, length = (wanted.start, wanted.length) if wanted else (0, size)
        self.send_response(HTTPStatus.PARTIAL_CONTENT if wanted else HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", email.utils.formatdate(self.server.started, usegmt=True))
        if wanted:
            self.send_header("Content-Range", f"bytes {wanted.start}-{wanted.end}/{size}")
        self.end_headers()
        if not body:
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if isinstance(content, bytes):
                self.wfile.write(content[start : start + length])
                return
            with content.open("rb") as f:
                f.seek(start)
                left = length
                while left > 0:
                    chunk = f.read(min(CHUNK, left))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    left -= len(chunk)


def _index_page(folder: str, names: list[str]) -> bytes:
    title = html.escape(f"Index of /{folder}")
    links = "".join(f'<a href="{html.escape(n)}">{html.escape(n)}</a>\n' for n in names)
    return (
        f"<html><head><title>{title}</title></head><body><h1>{title}</h1><pre>\n{links}"
        f"</pre></body></html>\n".encode()
    )


class _MirrorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, files: dict[str, Content]) -> None:
        import time

        self.files = files
        self.started = time.time()
        super().__init__(("127.0.0.1", port), _Handler)


@dataclass(frozen=True)
class Mirror:
    url: str  # pass as --mirror
    keyring: Path  # binary public keyring: --keyring
    fingerprint: str  # --fingerprint
    release: str
    serial: str
    # The third-party repository's .source (--source-file), when one is served.
    source_file: Path | None = None

    def cli_args(self) -> str:
        return f"--mirror {self.url} --keyring {self.keyring} --fingerprint {self.fingerprint}"

    def build_args(self) -> str:
        """What ``./inv build-image`` needs to build from this mirror: the stand-ins it
        serves are Debian, so the line says --distro debian too, and it names the
        stand-in for NodeSource when the mirror serves one."""
        line = f"{self.cli_args()} --distro debian"
        return f"{line} --source-file {self.source_file}" if self.source_file else line


def thirdparty_files(repo: thirdparty.Repository) -> dict[str, Content]:
    """The repository's files under THIRDPARTY_PREFIX (its .complete stamp aside)."""
    files: dict[str, Content] = {}
    for path in sorted(repo.root.rglob("*")):
        if path.is_file() and path.name != ".complete":
            files[f"{THIRDPARTY_PREFIX}/{path.relative_to(repo.root).as_posix()}"] = path
    return files


@contextlib.contextmanager
def serve_mirror(
    images: Mapping[str, Path],
    cache_dir: Path,
    release: str = DEFAULT_RELEASE,
    serial: str = DEFAULT_SERIAL,
    port: int = 0,
    repo: thirdparty.Repository | None = None,
) -> Iterator[Mirror]:
    """Serve ``images`` ({arch: qcow2}) on 127.0.0.1 in a thread until the block ends,
    and ``repo``, the stand-in for NodeSource, with a .source file pointing at it."""
    if not images:
        raise ImageError(
            "the mirror has no image to serve",
            hint="build one first: sudo ./inv standin --arch amd64",
        )
    for path in images.values():
        if not path.is_file():
            raise ImageError(f"no image at {path}", hint="sudo ./inv standin --arch amd64")
    key = mirror_key(cache_dir)
    digests = {image_name(release, arch): sha256_file(path) for arch, path in images.items()}
    sums = sha256sums(digests)
    files = mirror_files(release, serial, images, sums, sign(key, sums))
    if repo is not None:
        files.update(thirdparty_files(repo))
    try:
        server = _MirrorServer(port, files)
    except OSError as exc:
        raise ImageError(
            f"cannot listen on 127.0.0.1:{port}: {exc.strerror}",
            hint="pick another --port, or 0 for any free port",
        ) from None
    thread = threading.Thread(target=server.serve_forever, name="mirror", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    log.info("mirror: serving %s on %s", ", ".join(sorted(images)), url)
    source_file = None
    try:
        if repo is not None:
            source_file = cache_dir / "mirror-sources" / str(server.server_address[1])
            source_file /= f"{thirdparty.NAME}.source"
            text = thirdparty.source_file_text(f"{url}/{THIRDPARTY_PREFIX}", repo.fingerprint)
            atomic_write_text(source_file, text)
            log.info("mirror: serving the %s stand-in (%s)", thirdparty.NAME, source_file)
        yield Mirror(url, key.public_keyring, key.fingerprint, release, serial, source_file)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        if source_file is not None:
            shutil.rmtree(source_file.parent, ignore_errors=True)


def wait_for_stop_signal(poll: float = 1.0) -> None:
    """Block until SIGTERM or SIGINT (the mirror's normal end, not an error)."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(poll):
            pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
