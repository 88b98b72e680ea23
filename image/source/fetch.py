"""Fetch: the pipeline's first stage and its trust root.

1. Resolve the source directory. ``--serial latest`` is resolved to a real
   serial through ``release/unpacked/build-info.txt`` (``serial=YYYYMMDD``), and
   everything is then read from ``release-<serial>/``: the serial we record is
   by construction the name of the directory whose signed sums we verified.
   A mirror without build-info.txt (or without that directory) is read from
   ``release/`` and the serial is recorded as 'latest' - honest, not guessed.
2. Signature first: SHA256SUMS must carry a good signature (gpgv) by a key in
   the keyring whose primary fingerprint is pinned.
3. Image second: the signed sums name the image's SHA-256, which is also its
   cache key. Cached and still hashing right -> no image bytes move. Otherwise
   download (resumable, hashed in the same pass) and move into place only if
   the hash matches.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import requests

from image import console
from image.config import BuildConfig
from image.errors import ImageError
from image.source import checksums, download
from image.source.imagecache import ImageCache

log = logging.getLogger(__name__)

# The version in Canonical's file names under releases/<code name>/.
RELEASE_VERSIONS = {"focal": "20.04", "jammy": "22.04", "noble": "24.04"}
LATEST = "latest"
_SERIAL = re.compile(r"^\d{8}(\.\d+)?$")


def image_name(release: str, arch: str) -> str:
    version = RELEASE_VERSIONS.get(release)
    if version is None:
        raise ImageError(
            f"no known cloud image name for release {release!r}",
            hint=f"known releases: {', '.join(sorted(RELEASE_VERSIONS))}",
        )
    return f"ubuntu-{version}-server-cloudimg-{arch}.img"


@dataclass(frozen=True)
class Source:
    """One directory on a mirror, laid out like cloud-images.ubuntu.com/releases."""

    mirror: str
    release: str
    serial: str  # YYYYMMDD, or 'latest' for release/ when no serial could be learned
    arch: str

    @property
    def directory(self) -> str:
        return "release" if self.serial == LATEST else f"release-{self.serial}"

    @property
    def base(self) -> str:
        return f"{self.mirror.rstrip('/')}/{self.release}/{self.directory}"

    @property
    def sums_url(self) -> str:
        return f"{self.base}/SHA256SUMS"

    @property
    def signature_url(self) -> str:
        return f"{self.base}/SHA256SUMS.gpg"

    @property
    def image_name(self) -> str:
        return image_name(self.release, self.arch)

    @property
    def image_url(self) -> str:
        return f"{self.base}/{self.image_name}"


def build_info_url(mirror: str, release: str) -> str:
    return f"{mirror.rstrip('/')}/{release}/release/unpacked/build-info.txt"


def parse_build_info(text: str) -> str | None:
    """The ``serial=`` of a build-info.txt, if it is a well-formed serial."""
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "serial":
            value = value.strip().strip("'\"")
            return value if _SERIAL.match(value) else None
    return None


@dataclass(frozen=True)
class FetchResult:
    path: Path  # the verified image in the cache (<cache>/images/sha256/<hash>.img)
    sha256: str
    serial: str  # the serial actually used (resolved from 'latest' if needed)
    url: str
    bytes_downloaded: int
    from_cache: bool
    signer: str | None  # fingerprint that signed SHA256SUMS, None if --insecure-skip-signature
    # The SHA256SUMS that vouched for the image, and its signature: what a provenance names.
    sums: SumsRecord | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "serial": self.serial,
            "url": self.url,
            "bytes_downloaded": self.bytes_downloaded,
            "from_cache": self.from_cache,
            "signer": self.signer,
            **({"sums": self.sums.to_json()} if self.sums else {}),
        }


@dataclass(frozen=True)
class SumsRecord:
    url: str
    sha256: str
    signature_url: str
    signature_sha256: str | None  # None: no signature (--insecure-skip-signature)

    def to_json(self) -> dict[str, object]:
        return {"url": self.url, "sha256": self.sha256, "signature_url": self.signature_url,
                "signature_sha256": self.signature_sha256}  # fmt: skip

    @classmethod
    def of(cls, source: Source, sums: bytes, signature: bytes | None) -> SumsRecord:
        return cls(source.sums_url, hashlib.sha256(sums).hexdigest(), source.signature_url,
                   hashlib.sha256(signature).hexdigest() if signature else None)  # fmt: skip


@dataclass(frozen=True)
class VerifiedSums:
    source: Source
    table: dict[str, str]
    signer: str | None
    record: SumsRecord


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_signature(cfg: BuildConfig, sums: Path, signature: Path, insecure: bool) -> str | None:
    if insecure:
        log.warning(
            "INSECURE: the signature of SHA256SUMS is NOT checked "
            "(--insecure-skip-signature); the image is only as good as the mirror"
        )
        return None
    signer = checksums.verify_signature(sums, signature, cfg.keyring, cfg.fingerprints)
    log.info("SHA256SUMS: good signature by pinned key %s", signer)
    return signer


def _parse_sums(data: bytes, where: str) -> dict[str, str]:
    try:
        return checksums.parse_sha256sums(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ImageError(
            f"{where} is not a SHA256SUMS file: {exc}",
            hint="the mirror serves something else under that name",
        ) from None


def resolve_source(session: requests.Session, cfg: BuildConfig) -> Source:
    """Turn --serial latest into a real serial when the mirror says which one it is."""
    if cfg.serial != LATEST:
        return Source(cfg.mirror, cfg.release, cfg.serial, cfg.arch)
    url = build_info_url(cfg.mirror, cfg.release)
    try:
        serial = parse_build_info(download.get_small(session, url).decode(errors="replace"))
    except download.RemoteMissing:
        serial = None
    if serial is None:
        log.info("%s names no serial: reading release/ and recording the serial as 'latest'", url)
        return Source(cfg.mirror, cfg.release, LATEST, cfg.arch)
    log.info("latest %s is serial %s (from %s)", cfg.release, serial, url)
    return Source(cfg.mirror, cfg.release, serial, cfg.arch)


def _online_sums(
    session: requests.Session, cfg: BuildConfig, cache: ImageCache, source: Source, insecure: bool
) -> VerifiedSums:
    try:
        sums = download.get_small(session, source.sums_url)
    except download.RemoteMissing:
        if cfg.serial != LATEST or source.serial == LATEST:
            raise
        log.warning(
            "%s is missing although build-info.txt names serial %s; "
            "using release/ and recording the serial as 'latest'",
            source.sums_url,
            source.serial,
        )
        source = Source(source.mirror, source.release, LATEST, source.arch)
        sums = download.get_small(session, source.sums_url)
    signature: bytes | None = None
    try:
        signature = download.get_small(session, source.signature_url)
    except download.RemoteMissing:
        if not insecure:
            raise ImageError(
                f"{source.signature_url} does not exist: SHA256SUMS is unsigned",
                hint="an unsigned checksum list proves nothing; use a mirror that "
                "publishes SHA256SUMS.gpg",
            ) from None
    with tempfile.TemporaryDirectory(prefix="sandbox-image-sums-") as tmp:
        sums_path, sig_path = Path(tmp) / "SHA256SUMS", Path(tmp) / "SHA256SUMS.gpg"
        sums_path.write_bytes(sums)
        sig_path.write_bytes(signature or b"")
        signer = _check_signature(cfg, sums_path, sig_path, insecure)
    table = _parse_sums(sums, source.sums_url)
    if signer is not None and signature is not None:
        # Only verified sums are cached: --offline re-verifies them anyway, but an
        # unchecked file must never replace a checked one.
        cache.save_sums(
            source.mirror,
            source.release,
            source.directory,
            sums,
            signature,
            {"url": source.sums_url, "signer": signer, "fetched_at": _now()},
        )
    if cfg.serial == LATEST:
        cache.remember_latest(source.mirror, source.release, source.serial)
    return VerifiedSums(source, table, signer, SumsRecord.of(source, sums, signature))


def _offline_sums(cfg: BuildConfig, cache: ImageCache, insecure: bool) -> VerifiedSums:
    serial = cfg.serial
    if serial == LATEST:
        serial = cache.latest_serial(cfg.mirror, cfg.release) or ""
        if not serial:
            raise ImageError(
                f"--offline: no cached fetch of {cfg.release} 'latest' from {cfg.mirror}",
                hint="run ./inv fetch once online with this mirror, or pass --serial",
            )
    source = Source(cfg.mirror, cfg.release, serial, cfg.arch)
    cached = cache.cached_sums(cfg.mirror, cfg.release, source.directory)
    if cached is None:
        raise ImageError(
            f"--offline: no cached SHA256SUMS for {source.base}",
            hint="run ./inv fetch once online with the same --mirror, --release and --serial",
        )
    sums_path, sig_path = cached
    signer = _check_signature(cfg, sums_path, sig_path, insecure)
    data, signature = sums_path.read_bytes(), sig_path.read_bytes()
    return VerifiedSums(source, _parse_sums(data, str(sums_path)), signer,
                        SumsRecord.of(source, data, signature))  # fmt: skip


class _RichProgress:
    """Bytes, rate and ETA on the terminal (stderr); a no-op elsewhere."""

    def __init__(self, description: str) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console.err,
            transient=True,
        )
        self._task = self._bar.add_task(description, total=None)

    def start(self, total: int | None, completed: int) -> None:
        self._bar.update(self._task, total=total, completed=completed)

    def advance(self, n: int) -> None:
        self._bar.advance(self._task, n)

    @contextlib.contextmanager
    def shown(self) -> Iterator[_RichProgress]:
        with self._bar:
            yield self


@contextlib.contextmanager
def _progress(enabled: bool, name: str) -> Iterator[download.Progress]:
    if not enabled:
        yield download.NoProgress()
        return
    with _RichProgress(name).shown() as bar:
        yield bar


def fetch(
    cfg: BuildConfig,
    *,
    offline: bool = False,
    insecure_skip_signature: bool = False,
    progress: bool | None = None,
) -> FetchResult:
    """The verified cloud image for ``cfg``, from the cache or the mirror."""
    cache = ImageCache(cfg.cache_dir)
    session = requests.Session()
    with session:
        if offline:
            verified = _offline_sums(cfg, cache, insecure_skip_signature)
        else:
            source = resolve_source(session, cfg)
            verified = _online_sums(session, cfg, cache, source, insecure_skip_signature)
        source = verified.source
        expected = checksums.lookup(verified.table, source.image_name, source.sums_url)
        provenance = {
            "url": source.image_url,
            "mirror": source.mirror,
            "release": source.release,
            "serial": source.serial,
            "arch": source.arch,
            "signer": verified.signer,
            "insecure_skip_signature": insecure_skip_signature,
            "fetched_at": _now(),
        }
        result = FetchResult(
            path=cache.image_path(expected),
            sha256=expected,
            serial=source.serial,
            url=source.image_url,
            bytes_downloaded=0,
            from_cache=True,
            signer=verified.signer,
            sums=verified.record,
        )
        with cache.lock(expected):
            if cache.cached_image(expected) is not None:
                log.info("cache hit: %s (sha256 %s)", result.path, expected)
                cache.record_source(expected, provenance)
                return result
            if offline:
                raise ImageError(
                    f"--offline: {source.image_name} (sha256 {expected}) is not in the cache "
                    f"{cfg.cache_dir}",
                    hint="run ./inv fetch once online with the same settings",
                )
            part = cache.part_path(expected)
            enabled = console.progress_enabled() if progress is None else progress
            started = time.monotonic()
            with _progress(enabled, source.image_name) as bar:
                got = download.download(session, source.image_url, part, progress=bar)
            if got.sha256 != expected:
                download.discard_part(part)
                raise ImageError(
                    f"checksum mismatch for {source.image_name} from {source.image_url}: "
                    f"expected sha256 {expected}, actual {got.sha256}",
                    hint="the partial download was deleted and the cache left as it was; "
                    "retry, and if it persists the mirror serves a corrupt file",
                )
            seconds = max(time.monotonic() - started, 1e-6)
            log.info(
                "downloaded %.1f MiB in %.1f s (%.1f MiB/s)",
                got.bytes_transferred / 2**20,
                seconds,
                got.bytes_transferred / 2**20 / seconds,
            )
            path = cache.store(part, expected, provenance)
        return FetchResult(
            path=path,
            sha256=expected,
            serial=source.serial,
            url=source.image_url,
            bytes_downloaded=got.bytes_transferred,
            from_cache=False,
            signer=verified.signer,
            sums=verified.record,
        )
