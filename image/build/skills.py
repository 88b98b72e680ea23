"""The skills folder: packed for the seed, or fetched by URL and checksum first.

The guest gets the folder at /opt/skills, root-owned, directories and
executables 0755, files 0644: ``pack()`` makes a deterministic tar.gz of it
that the user-data carries; ``fetch()`` turns a published tarball (URL +
SHA-256) into such a folder, cached by its checksum.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import requests

from image.errors import ImageError

# The seed travels inside user-data as base64 (4/3 of its size) and cloud-init
# holds all of it in memory: keep it to something a seed can reasonably carry.
MAX_ARCHIVE = 4 << 20
# A published tarball may carry more than the seed will take (pack() then
# says so); this only bounds what a wrong URL can make us download.
MAX_DOWNLOAD = 64 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def pack(skills_dir: Path, limit: int = MAX_ARCHIVE) -> bytes:
    """A deterministic tar.gz of the skills folder: sorted, mtime 0, root-owned, 0755/0644.

    Symlinks and special files are refused: the folder is data the sandbox
    reads, and a link could point it anywhere in the guest.
    """
    if not skills_dir.is_dir():
        raise ImageError(
            f"skills folder {skills_dir} is not a directory",
            hint="pass --skills DIR with an existing folder",
        )
    buffer = io.BytesIO()
    # mtime=0 and no file name in the gzip header: same input, same bytes.
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for path in _walk_sorted(skills_dir):
            rel = path.relative_to(skills_dir).as_posix()
            st = path.lstat()
            info = tarfile.TarInfo(rel)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.mode = 0o755 if st.st_mode & 0o111 else 0o644
                info.size = st.st_size
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                raise ImageError(
                    f"skills folder holds something that is not a file or directory: {path}",
                    hint="replace symlinks and special files by plain files",
                )
            if buffer.tell() > limit:
                raise _too_large(skills_dir, f"more than {limit} bytes compressed")
    data = buffer.getvalue()
    if len(data) > limit:
        raise _too_large(skills_dir, f"{len(data)} bytes compressed, limit {limit}")
    return data


def _too_large(skills_dir: Path, detail: str) -> ImageError:
    return ImageError(
        f"skills folder {skills_dir} is too large for the seed ({detail})",
        hint="keep large assets out of the skills folder, or install them from a package",
    )


def _walk_sorted(root: Path) -> Iterator[Path]:
    for child in sorted(root.iterdir(), key=lambda p: p.name):
        yield child
        if child.is_dir() and not child.is_symlink():
            yield from _walk_sorted(child)


def fetch(url: str, sha256: str, cache_dir: Path, timeout: float = 60.0) -> Path:
    """Download a skills tarball, check its SHA-256, unpack it; return the folder.

    Cached under ``cache_dir/skills/<sha256>``: the same checksum is never
    downloaded twice. The folder appears only complete (unpacked next to it,
    then renamed), so an interrupted run leaves no half folder in the cache.
    """
    want = sha256.strip().lower()
    if not _SHA256.fullmatch(want):
        raise ImageError(
            f"not a SHA-256 checksum: {sha256!r}", hint="give the 64 hex digits of sha256sum"
        )
    if not re.fullmatch(r"https?://\S+", url):
        raise ImageError(
            f"skills URL must be http:// or https://, got {url!r}",
            hint="for a local folder use --skills DIR",
        )
    target = cache_dir / "skills" / want
    if target.is_dir():
        return target
    data = _download(url, timeout)
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise ImageError(
            f"skills tarball from {url} has SHA-256 {got}, expected {want}",
            hint="the file changed or the checksum is wrong; check where it is published",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{want[:12]}.", dir=target.parent))
    try:
        _unpack(data, url, staging)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _download(url: str, timeout: float) -> bytes:
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            response.raise_for_status()
            chunks, size = [], 0
            for chunk in response.iter_content(1 << 16):
                size += len(chunk)
                if size > MAX_DOWNLOAD:
                    raise ImageError(
                        f"skills tarball at {url} is larger than {MAX_DOWNLOAD} bytes",
                        hint="a skills folder travels in the seed; keep it small",
                    )
                chunks.append(chunk)
    except requests.RequestException as exc:
        raise ImageError(
            f"cannot download the skills tarball {url}: {exc}",
            hint="check the URL and the network (or proxy) of this host",
        ) from None
    return b"".join(chunks)


def _unpack(data: bytes, url: str, into: Path) -> None:
    if not hasattr(tarfile, "data_filter"):
        raise ImageError(
            "this Python cannot unpack archives safely (tarfile has no 'data' filter)",
            hint="use Python 3.10.12, 3.11.4 or newer",
        )
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            # The 'data' filter refuses absolute paths, '..', links leaving the
            # folder and device files: a tarball from a URL is untrusted.
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ImageError(
            f"cannot unpack the skills tarball from {url}: {exc}",
            hint="publish a .tar.gz (or .tar) holding the skills folder's contents",
        ) from None
