"""The fetch cache: images by content, signed sums by where they came from.

    <cache>/images/sha256/<hash>.img       the verified image (read-only)
    <cache>/images/sha256/<hash>.json      where it came from (every source seen)
    <cache>/images/partial/<hash>.part     an unfinished download (+ .part.json validator)
    <cache>/images/locks/<hash>.lock       flock: one fetch of an image at a time
    <cache>/sums/<mirror>/<release>/<dir>/ SHA256SUMS, SHA256SUMS.gpg, source.json
    <cache>/sums/<mirror>/<release>/latest.json   the serial 'latest' last resolved to

Images are keyed by the hash the signed sums name, so a cache hit needs no
network for the image and a damaged file is found by hashing it again.
Everything lands by rename from a temporary file in the same directory: an
interrupted run leaves a .part at most, never a half image under its hash name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from image.errors import ImageError
from image.files import atomic_write_bytes, fsync_dir, sha256_file

log = logging.getLogger(__name__)

LOCK_TIMEOUT = 3 * 3600.0  # a slow link may take long; a stuck peer must not hang us forever
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def mirror_key(mirror: str) -> str:
    """A directory name for a mirror URL: readable, and unique by a hash of the URL."""
    readable = re.sub(r"[^A-Za-z0-9.-]+", "_", re.sub(r"^[a-z]+://", "", mirror)).strip("_")
    return f"{readable[:48]}-{hashlib.sha256(mirror.encode()).hexdigest()[:12]}"


class ImageCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.images = root / "images" / "sha256"
        self.partial = root / "images" / "partial"
        self.locks = root / "images" / "locks"
        self.sums = root / "sums"

    # --- images ---

    def image_path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.images / f"{sha256}.img"

    def provenance_path(self, sha256: str) -> Path:
        return self.image_path(sha256).with_suffix(".json")

    def part_path(self, sha256: str) -> Path:
        self.partial.mkdir(parents=True, exist_ok=True)
        return self.partial / f"{sha256}.part"

    @contextlib.contextmanager
    def lock(self, sha256: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        """Hold the image's flock: a second fetch of it waits, then finds it cached."""
        self.locks.mkdir(parents=True, exist_ok=True)
        path = self.locks / f"{sha256}.lock"
        with path.open("a+") as fh:
            deadline = time.monotonic() + timeout
            waited = False
            while True:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if not waited:
                    log.info("another fetch of %s… is running; waiting for it", sha256[:12])
                    waited = True
                if time.monotonic() > deadline:
                    raise ImageError(
                        f"waited {timeout:.0f} s for the lock {path}",
                        hint="another fetch of the same image still holds it; is it stuck?",
                    )
                time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def cached_image(self, sha256: str) -> Path | None:
        """The cached image if its bytes still hash to ``sha256``; a damaged one is removed."""
        path = self.image_path(sha256)
        if not path.is_file():
            return None
        actual = sha256_file(path)
        if actual == sha256:
            return path
        log.warning("cached %s is damaged (hashes to %s); removing it", path, actual)
        path.unlink(missing_ok=True)
        return None

    def store(self, part: Path, sha256: str, source: Mapping[str, Any]) -> Path:
        """Move a verified .part into place (read-only) and record where it came from."""
        path = self.image_path(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        part.chmod(0o444)  # the pipeline reads it as a backing file; nothing writes it
        part.replace(path)
        fsync_dir(path.parent)
        part.with_name(part.name + ".json").unlink(missing_ok=True)
        self.record_source(sha256, source)
        return path

    def record_source(self, sha256: str, source: Mapping[str, Any]) -> None:
        """Add ``source`` to the image's provenance JSON (once per URL and serial)."""
        path = self.provenance_path(sha256)
        try:
            data = json.loads(path.read_text())
            sources = [s for s in data.get("sources", []) if isinstance(s, dict)]
        except (OSError, ValueError):
            sources = []
        key = (source.get("url"), source.get("serial"), source.get("signer"))
        if any((s.get("url"), s.get("serial"), s.get("signer")) == key for s in sources):
            return
        sources.append(dict(source))
        doc = {"sha256": sha256, "size": self.image_path(sha256).stat().st_size, "sources": sources}
        atomic_write_bytes(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())

    # --- signed sums, per (mirror, release, directory) ---

    def sums_dir(self, mirror: str, release: str, directory: str) -> Path:
        return self.sums / mirror_key(mirror) / release / directory

    def save_sums(
        self,
        mirror: str,
        release: str,
        directory: str,
        sums: bytes,
        signature: bytes,
        source: Mapping[str, Any],
    ) -> None:
        where = self.sums_dir(mirror, release, directory)
        # Signature before sums: a reader that finds SHA256SUMS finds its signature
        # (a stale pair still fails verification, which is re-done on every use).
        atomic_write_bytes(where / "SHA256SUMS.gpg", signature)
        atomic_write_bytes(where / "SHA256SUMS", sums)
        atomic_write_bytes(
            where / "source.json",
            (json.dumps(dict(source), indent=2, sort_keys=True) + "\n").encode(),
        )

    def cached_sums(self, mirror: str, release: str, directory: str) -> tuple[Path, Path] | None:
        where = self.sums_dir(mirror, release, directory)
        sums, signature = where / "SHA256SUMS", where / "SHA256SUMS.gpg"
        return (sums, signature) if sums.is_file() and signature.is_file() else None

    def remember_latest(self, mirror: str, release: str, serial: str) -> None:
        path = self.sums / mirror_key(mirror) / release / "latest.json"
        atomic_write_bytes(path, (json.dumps({"serial": serial}) + "\n").encode())

    def latest_serial(self, mirror: str, release: str) -> str | None:
        path = self.sums / mirror_key(mirror) / release / "latest.json"
        try:
            serial = json.loads(path.read_text()).get("serial")
        except (OSError, ValueError, AttributeError):
            return None
        return serial if isinstance(serial, str) else None
