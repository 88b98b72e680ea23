"""Resumable, hashing downloads over HTTP(S) and from file:// mirrors.

A ``.part`` file keeps what arrived so far, and a ``.part.json`` next to it the
validator (URL, ETag, Last-Modified) of the response that produced those bytes.
A later request asks for the rest with ``Range`` *and* ``If-Range``: the server
itself then answers 206 only if the file is unchanged and sends the whole new
file (200) otherwise, so a changed file restarts cleanly in the same request.

The decisions (what to ask for, what a response means) are pure functions;
``download()`` is the small loop that executes them.
"""

from __future__ import annotations

import contextlib
import email.utils
import enum
import hashlib
import json
import logging
import os
import queue
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import requests
import urllib3.exceptions

from image.errors import ImageError
from image.files import atomic_write_text

log = logging.getLogger(__name__)

CHUNK = 1 << 20
# write(2) of 1 MiB at once cost the kernel twice as much per byte as 256 KiB
# pieces (Linux 6.18, ext4; strace: ~1.8 ms per 1 MiB write vs curl's 8 KiB
# writes at a third of that), so blocks go to the file in slices.
WRITE_SLICE = 256 << 10
TIMEOUT = (30.0, 60.0)  # connect, read (seconds without a byte)
USER_AGENT = "sandbox-image-fetch/1"


class RemoteMissing(ImageError):
    """404/410 (or a missing file:// path): final, and sometimes expected by the caller."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # consecutive failed requests that made no progress
    first_delay: float = 0.5  # seconds; doubles after each failure
    max_delay: float = 8.0
    max_retry_after: float = 60.0  # never sleep longer than this on a server's say-so
    max_requests: int = 200  # hard bound on the loop, progress or not

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait before the next request after ``failures`` failures in a row."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return min(self.first_delay * (2.0 ** max(failures - 1, 0)), self.max_delay)


DEFAULT_RETRY = RetryPolicy()


# --- the validator: which server file the bytes of a .part came from ---


@dataclass(frozen=True)
class Validator:
    url: str
    etag: str | None = None  # strong ETags only: If-Range may not use a weak one
    last_modified: str | None = None

    @classmethod
    def from_headers(cls, url: str, headers: Mapping[str, str]) -> Validator:
        etag = headers.get("ETag")
        if etag is not None and (etag.startswith("W/") or not etag.strip()):
            etag = None
        return cls(url, etag, headers.get("Last-Modified") or None)

    @property
    def if_range(self) -> str | None:
        return self.etag or self.last_modified

    def matches(self, headers: Mapping[str, str]) -> bool:
        """Does a response come from the same file version (as far as it says)?"""
        etag = headers.get("ETag")
        if self.etag and etag and etag != self.etag:
            return False
        last_modified = headers.get("Last-Modified")
        return not (self.last_modified and last_modified and last_modified != self.last_modified)

    def to_json(self) -> dict[str, str | None]:
        return {"url": self.url, "etag": self.etag, "last_modified": self.last_modified}

    @classmethod
    def from_json(cls, data: object) -> Validator | None:
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            return None
        etag, modified = data.get("etag"), data.get("last_modified")
        return cls(
            data["url"],
            etag if isinstance(etag, str) else None,
            modified if isinstance(modified, str) else None,
        )


@dataclass(frozen=True)
class RequestPlan:
    offset: int  # bytes of the .part kept; 0 = start over
    headers: dict[str, str]


def plan_request(url: str, part_size: int, saved: Validator | None) -> RequestPlan:
    """Resume only when the .part came from this URL and a validator guards it."""
    headers = {"Accept-Encoding": "identity", "User-Agent": USER_AGENT}
    if part_size > 0 and saved is not None and saved.url == url and saved.if_range:
        headers["Range"] = f"bytes={part_size}-"
        headers["If-Range"] = saved.if_range
        return RequestPlan(part_size, headers)
    return RequestPlan(0, headers)


class Action(enum.Enum):
    APPEND = "append"  # 206 for the bytes we asked for: keep the .part, add the body
    FULL = "full"  # 200: the body is the whole file; the .part starts over
    COMPLETE = "complete"  # 416 and the .part already holds the whole file
    DISCARD = "discard"  # the .part cannot be trusted: drop it and ask again from 0
    RETRY = "retry"  # transient server trouble: wait and ask again
    FAIL = "fail"  # final: retrying cannot help


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""
    retry_after: float | None = None


_CONTENT_RANGE = re.compile(r"^bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)$")
_TRANSIENT = {408, 425, 429, 500, 502, 503, 504}


def parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """'bytes 5-9/10' -> (5, 9, 10); 'bytes */10' -> (None, None, 10); junk -> Nones."""
    m = _CONTENT_RANGE.match((value or "").strip())
    if not m:
        return None, None, None
    first, last, total = m.groups()
    return (
        int(first) if first else None,
        int(last) if last else None,
        int(total) if total and total != "*" else None,
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value).timestamp()
        return max(0.0, when - (time.time() if now is None else now))
    return None


def decide(
    status: int, headers: Mapping[str, str], offset: int, saved: Validator | None
) -> Decision:
    """What a response to ``plan_request`` means for the .part."""
    if status == 206:
        first, _, _ = parse_content_range(headers.get("Content-Range"))
        if offset == 0 or first != offset:
            return Decision(
                Action.DISCARD,
                f"server sent range {headers.get('Content-Range')!r} "
                f"for a request from byte {offset}",
            )
        # If-Range should make this impossible; a server that ignores it must
        # not get to glue two versions of a file together.
        if saved is None or not saved.matches(headers):
            return Decision(Action.DISCARD, "the file changed on the server (validator differs)")
        return Decision(Action.APPEND)
    if status == 200:
        if offset:
            return Decision(Action.FULL, "the server sent the whole file (changed, or no Range)")
        return Decision(Action.FULL)
    if status == 416:
        _, _, total = parse_content_range(headers.get("Content-Range"))
        if offset and total == offset:
            return Decision(Action.COMPLETE, "the partial file is already complete")
        return Decision(Action.DISCARD, "the server cannot serve the rest of the partial file")
    if status in (404, 410):
        return Decision(Action.FAIL, "not found")
    if status in (401, 403):
        return Decision(Action.FAIL, "access denied")
    if status in _TRANSIENT:
        return Decision(
            Action.RETRY, f"HTTP {status}", parse_retry_after(headers.get("Retry-After"))
        )
    return Decision(Action.FAIL, f"unexpected HTTP {status}")


# --- progress: rich on a terminal, nothing otherwise ---


class Progress(Protocol):
    def start(self, total: int | None, completed: int) -> None: ...
    def advance(self, n: int) -> None: ...


class NoProgress:
    def start(self, total: int | None, completed: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass


# --- the executors ---


@dataclass(frozen=True)
class Downloaded:
    sha256: str
    size: int
    bytes_transferred: int  # body bytes that came over the wire (or were copied) this run


def is_file_url(url: str) -> bool:
    return url.startswith("file://")


def file_url_path(url: str) -> Path:
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise ImageError(f"{url}: file:// URLs must be local (file:///path)")
    return Path(urllib.request.url2pathname(parsed.path))


def _final_error(url: str, status: int, reason: str) -> ImageError:
    if status in (404, 410):
        return RemoteMissing(
            f"{url}: HTTP {status} ({reason})",
            hint="check --mirror, --release, --serial and --arch",
        )
    return ImageError(
        f"{url}: HTTP {status} ({reason})",
        hint="the mirror refused the request; check the URL and its access rules",
    )


class _Transient(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


_TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    _Transient,
)
# resp.raw.stream() bypasses requests' exception wrapping: urllib3's own errors too.
_STREAM_ERRORS = (
    *_TRANSIENT_ERRORS,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.ReadTimeoutError,
    ConnectionError,
)


def get_small(
    session: requests.Session,
    url: str,
    *,
    policy: RetryPolicy = DEFAULT_RETRY,
    limit: int = 16 << 20,
) -> bytes:
    """A small file (SHA256SUMS, its signature, build-info.txt), with the same retries."""
    if is_file_url(url):
        path = file_url_path(url)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise RemoteMissing(
                f"{url}: no such file", hint="check --mirror, --release and --serial"
            ) from None
    failures = 0
    for _ in range(policy.max_requests):
        try:
            with session.get(
                url, timeout=TIMEOUT, stream=True, headers={"User-Agent": USER_AGENT}
            ) as resp:
                decision = decide(resp.status_code, resp.headers, 0, None)
                if decision.action is Action.FAIL:
                    raise _final_error(url, resp.status_code, decision.reason)
                if decision.action is not Action.FULL:
                    raise _Transient(
                        decision.reason or f"HTTP {resp.status_code}", decision.retry_after
                    )
                body = resp.raw.read(limit + 1, decode_content=True)
                if len(body) > limit:
                    raise ImageError(f"{url} is larger than {limit} bytes; it is not a sums file")
                return bytes(body)
        except _TRANSIENT_ERRORS as exc:
            failures += 1
            if failures >= policy.attempts:
                raise ImageError(
                    f"{url}: failed {failures} times, last: {exc}",
                    hint="the mirror is unreachable or failing; try again later, "
                    "or use --offline with a filled cache",
                ) from None
            delay = policy.delay(failures, getattr(exc, "retry_after", None))
            log.warning("%s: %s; retrying in %.1f s", url, exc, delay)
            time.sleep(delay)
    raise ImageError(f"{url}: gave up after {policy.max_requests} requests")


def _meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _load_validator(part: Path) -> Validator | None:
    try:
        return Validator.from_json(json.loads(_meta_path(part).read_text()))
    except (OSError, ValueError):
        return None


def _save_validator(part: Path, validator: Validator | None) -> None:
    meta = _meta_path(part)
    if validator is None or not validator.if_range:
        meta.unlink(missing_ok=True)
        return
    atomic_write_text(meta, json.dumps(validator.to_json()))


def discard_part(part: Path) -> None:
    part.unlink(missing_ok=True)
    _meta_path(part).unlink(missing_ok=True)


class _BackgroundHash:
    """SHA-256 on a second thread, fed in order through a short queue.

    hashlib releases the GIL on large blocks, so with a free CPU hashing runs
    while the main thread waits on the socket and the disk. Measured with
    bench/fetch.py on a busy 2-CPU host: best turn 1.43-1.47 s vs 1.57-1.59 s
    in line, at the same CPU time; on an idle multi-core host the overlap is
    larger (hashing is about as slow as receiving and writing together).
    """

    def __init__(self, hasher: hashlib._Hash) -> None:
        self._hasher = hasher
        self._error: BaseException | None = None
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)  # 8 MiB in flight
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (block := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._hasher.update(block)
                except BaseException as exc:  # keep draining: update() must never block
                    self._error = exc

    def update(self, block: bytes) -> None:
        self._queue.put(block)

    def close(self) -> None:
        """Return once every block given to update() is hashed."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


class _HashedFile:
    """The .part and a SHA-256 that always covers exactly the bytes written to it."""

    def __init__(self, part: Path) -> None:
        self.part = part
        self.hasher = hashlib.sha256()
        self.size = 0

    def rewind_to(self, offset: int) -> None:
        """Make the hash cover part[:offset]; only a resume from an earlier run rereads."""
        if offset == self.size:
            return
        self.hasher = hashlib.sha256()
        self.size = 0
        if offset == 0:
            return
        with self.part.open("rb") as fh:
            while self.size < offset:
                block = fh.read(min(CHUNK, offset - self.size))
                if not block:
                    raise ImageError(f"{self.part} shrank while resuming")
                self.hasher.update(block)
                self.size += len(block)

    @contextlib.contextmanager
    def writer(self, offset: int) -> Iterator[_Writer]:
        self.rewind_to(offset)
        # No fsync before the rename into the cache: every use of a cached image
        # hashes it again, so a file torn by a power cut is found and replaced;
        # an fsync would add a flush of the whole image to every download.
        fh: IO[bytes]
        if offset:
            fh = self.part.open("r+b")
            fh.truncate(offset)
            fh.seek(offset)
        else:
            # A new file, not truncate(0)/O_TRUNC: ext4 flushes a file truncated to
            # zero when it is closed (auto_da_alloc), which costs seconds per GiB.
            self.part.unlink(missing_ok=True)
            fh = self.part.open("wb")
        with fh:
            hashing = _BackgroundHash(self.hasher)
            try:
                yield _Writer(self, fh, hashing)
            finally:
                hashing.close()  # also on errors: the hash must cover what was written


class _Writer:
    def __init__(self, target: _HashedFile, fh: IO[bytes], hashing: _BackgroundHash) -> None:
        self.target = target
        self.fh = fh
        self.hashing = hashing

    def write(self, block: bytes) -> None:
        view = memoryview(block)
        for start in range(0, len(block), WRITE_SLICE):
            self.fh.write(view[start : start + WRITE_SLICE])
        self.hashing.update(block)
        self.target.size += len(block)


def download(
    session: requests.Session,
    url: str,
    part: Path,
    *,
    progress: Progress | None = None,
    policy: RetryPolicy = DEFAULT_RETRY,
) -> Downloaded:
    """Bring ``url`` into ``part`` (resuming what is there) and hash it on the way.

    Transient failures (reset, timeout, 5xx, 429) are retried with backoff, each
    retry resuming; 403/404 and friends are final and name the URL.
    """
    progress = progress or NoProgress()
    if is_file_url(url):
        return _copy_file(file_url_path(url), part, progress)
    target = _HashedFile(part)
    transferred = 0
    failures = 0
    for _ in range(policy.max_requests):
        saved = _load_validator(part)
        size = part.stat().st_size if part.exists() else 0
        plan = plan_request(url, size, saved)
        if plan.offset:
            log.info("resuming %s at byte %d", url, plan.offset)
        before = transferred
        try:
            with session.get(url, headers=plan.headers, stream=True, timeout=TIMEOUT) as resp:
                decision = decide(resp.status_code, resp.headers, plan.offset, saved)
                if decision.reason:
                    log.info("%s: %s", url, decision.reason)
                if decision.action is Action.FAIL:
                    raise _final_error(url, resp.status_code, decision.reason)
                if decision.action is Action.RETRY:
                    raise _Transient(decision.reason, decision.retry_after)
                if decision.action is Action.DISCARD:
                    discard_part(part)
                    failures += 1
                    if failures >= policy.attempts:
                        raise ImageError(f"{url}: {decision.reason}, {failures} times in a row")
                    continue
                if decision.action is Action.COMPLETE:
                    target.rewind_to(size)
                    break
                offset = plan.offset if decision.action is Action.APPEND else 0
                _save_validator(part, Validator.from_headers(url, resp.headers))
                length = resp.headers.get("Content-Length")
                total = offset + int(length) if length and length.isdigit() else None
                progress.start(total, offset)
                with target.writer(offset) as out:
                    # raw.stream: urllib3 enforces Content-Length, so a cut
                    # connection raises instead of passing as a short file.
                    for block in resp.raw.stream(CHUNK, decode_content=False):
                        out.write(block)
                        transferred += len(block)
                        progress.advance(len(block))
                break
        except _STREAM_ERRORS as exc:
            failures = 0 if transferred > before else failures + 1
            if failures >= policy.attempts:
                raise ImageError(
                    f"download of {url} failed {failures} times in a row, last: {exc}",
                    hint=f"run the fetch again: it resumes from {part}",
                ) from None
            delay = policy.delay(max(failures, 1), getattr(exc, "retry_after", None))
            log.warning(
                "%s: %s after %d bytes; retrying in %.1f s",
                url,
                _short(exc),
                transferred - before,
                delay,
            )
            time.sleep(delay)
    else:
        raise ImageError(
            f"{url}: gave up after {policy.max_requests} requests",
            hint=f"run the fetch again: it resumes from {part}",
        )
    return Downloaded(target.hasher.hexdigest(), target.size, transferred)


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 160 else text[:157] + "..."


def _copy_file(source: Path, part: Path, progress: Progress) -> Downloaded:
    """A file:// mirror: copy into the .part with the same one-pass hash."""
    try:
        src = source.open("rb")
    except FileNotFoundError:
        raise RemoteMissing(
            f"{source.as_uri()}: no such file",
            hint="check --mirror, --release, --serial and --arch",
        ) from None
    target = _HashedFile(part)
    with src:
        progress.start(os.fstat(src.fileno()).st_size, 0)
        with target.writer(0) as out:
            while block := src.read(CHUNK):
                out.write(block)
                progress.advance(len(block))
    _meta_path(part).unlink(missing_ok=True)
    return Downloaded(target.hasher.hexdigest(), target.size, target.size)
