"""File primitives the whole toolkit shares: hash a file, replace one atomically, show a size.

``sha256_file`` streams, so a multi-GiB image never sits in memory.

``atomic_path`` is the one atomic write: a temporary file in the target's
directory that the caller fills; on success it is fsynced, given ``mode`` and
renamed over the target, and the directory is fsynced so the rename survives a
crash. Readers see the old file or the whole new one, never a torn one; on any
exception the temporary file is removed and the target is left as it was.
Writers that publish a whole directory, copy through file descriptors, or keep a
resumable ``.part`` are other patterns and do not use it.

``format_size`` shows a byte count to people ("1.5 GiB"). The configuration's
own notation ("4G", the inverse of parsing a size) is ``image.config.format_size``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

HASH_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str], chunk: int = HASH_CHUNK) -> str:
    """The hex SHA-256 of a file's bytes, read ``chunk`` bytes at a time."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename or a new entry in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[Path]:
    """A temporary path beside ``path`` that becomes ``path`` when the block succeeds.

    The parent directory is created if missing. Write the yielded path (by name:
    ``write_bytes``, ``open("wb")``, a tool's output); when the block ends without
    an exception it is fsynced, chmod-ed to ``mode`` (whatever the umask) and
    renamed over ``path``. On any exception it is deleted and ``path`` untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_file(tmp)
        tmp.chmod(mode)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically (see ``atomic_path``)."""
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically (see ``atomic_path``)."""
    atomic_write_bytes(path, text.encode("utf-8"), mode)


_FACTORS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_AUTO = ("GiB", "MiB", "KiB")


def format_size(
    n_bytes: float, unit: str | None = None, *, precision: int = 1, signed: bool = False
) -> str:
    """A byte count for people, in binary units: '1.5 GiB', '512.0 KiB', '100 B'.

    Without ``unit`` the largest of GiB, MiB and KiB that ``n_bytes`` reaches is
    used, and whole bytes below 1 KiB. ``unit`` (B, KiB, MiB, GiB, TiB) fixes the
    unit, so a column of sizes compares: format_size(5 << 30, "MiB") is
    '5120.0 MiB'. ``precision``: digits after the point; ``signed``: always show
    the sign, for a change ('+2.0 MiB').
    """
    sign = "+" if signed else ""
    if unit is None:
        unit = next((u for u in _AUTO if abs(n_bytes) >= _FACTORS[u]), None)
        if unit is None:
            return f"{n_bytes:{sign}} B"
    if unit not in _FACTORS:
        raise ValueError(f"unknown size unit {unit!r} (use one of {', '.join(_FACTORS)})")
    return f"{n_bytes / _FACTORS[unit]:{sign}.{precision}f} {unit}"
