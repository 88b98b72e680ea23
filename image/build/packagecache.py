"""Package caches that survive builds: apt archives, pip wheels, npm's cache.

    <cache>/packages/<distro>-<release>-<arch>/apt/<name>_<version>_<arch>.deb
    <cache>/packages/<distro>-<release>-<arch>/pip/<wheel or sdist>
    <cache>/packages/<distro>-<release>-<arch>/npm/   npm's own cache (cacache)

The key is what decides which files are right for a guest: the distro and
release fix the archive and the Python and Node ABIs (jammy: CPython 3.10,
NodeSource 22), the arch the binaries. Within a key a file's name says what
it is (Debian's name_version_arch, a wheel's tags), and each installer checks
what it takes: apt verifies a .deb against its signed index, npm verifies
cacache content by its integrity hash, pip only takes wheels whose tags fit.

How the build VM gets them (no network involved, so the build's egress rules
are untouched): the key's directory is shared read-only over 9p, and a fresh
per-build directory read-write. The guest links the cached .debs into
/var/cache/apt/archives, gives pip and npm the cache as a source, and copies
what it downloaded into the read-write share. Only after the build has
succeeded does ``fill_back`` move those files into the cache, each one
atomically (temp file, fsync, rename); a failed build's downloads are thrown
away with its scratch directory and never reach the cache. The outbox is the
guest's to write, so the host follows nothing in it and copies only content:
a symlink, FIFO, socket, device node or hardlink anywhere in it, and none of
it enters the cache (see "filling back" below).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from image.build import manifest
from image.vm import qemu

log = logging.getLogger(__name__)

KINDS = ("apt", "pip", "npm")
CACHE_TAG = "pkgcache"  # read-only: the cache itself
NEW_TAG = "pkgnew"  # read-write: what this build downloaded
# Where the guest mounts the two shares (a tmpfs: gone at the next boot).
GUEST_CACHE = "/run/sandbox-image/package-cache"
GUEST_NEW = "/run/sandbox-image/package-cache-new"

_KEY_PART = re.compile(r"^[a-z0-9]+$")
# What fill_back accepts from the guest; anything else is ignored (and logged).
_DEB_FILE = re.compile(r"^[a-z0-9][a-z0-9+.-]*_[A-Za-z0-9.+~%-]+_[a-z0-9-]+\.deb$")
_PIP_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+!-]*\.(whl|tar\.gz|zip)$")


def key(distro: str, release: str, arch: str) -> str:
    for part in (distro, release, arch):
        if not _KEY_PART.fullmatch(part):
            raise ValueError(f"not a cache key part: {part!r}")
    return f"{distro}-{release}-{arch}"


def key_dir(cache_dir: Path, cache_key: str) -> Path:
    return cache_dir / "packages" / cache_key


@dataclass(frozen=True)
class BuildShares:
    """The two 9p shares of one build: the cache (read-only) and its new downloads."""

    cache: qemu.Share
    new: qemu.Share

    @property
    def new_dir(self) -> Path:
        return self.new.path


def prepare(cache_dir: Path, cache_key: str, work: Path) -> BuildShares:
    """Make the key's directories and a fresh outbox in the build's scratch directory."""
    root = key_dir(cache_dir, cache_key)
    new = work / "package-cache-new"
    for kind in KINDS:
        (root / kind).mkdir(parents=True, exist_ok=True)
        (new / kind).mkdir(parents=True, exist_ok=True)
    return BuildShares(
        qemu.Share(root.resolve(), CACHE_TAG, readonly=True), qemu.Share(new.resolve(), NEW_TAG)
    )


# --- filling back (after a successful build only) ---------------------------------
#
# Everything under the outbox was written by the guest, so nothing there is
# followed or trusted: the tree is read through directory file descriptors
# (openat with O_NOFOLLOW, never a path the kernel resolves again), and only
# directories and single-link regular files are accepted, at every level,
# the outbox itself included. One entry of any other kind (a symlink, a FIFO,
# a socket, a device node, a hardlinked file) and the whole fill-back is
# refused: a guest that plants one is hostile, so none of its downloads enter
# the cache. Content is copied into new files with a fixed mode (0644 files,
# 0755 directories): no set-id bit, owner or timestamp comes from the guest.

_MAX_DEPTH = 32  # npm's cacache is 5 levels deep; a guest's deeper tree is refused
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_MODE = 0o644
_DIR_MODE = 0o755


class RefusedOutbox(OSError):
    """The guest left something in its outbox that the host does not follow or copy.

    An OSError because callers treat it like a cache that cannot be written: the
    build stands, the cache stays as it was (see pipeline._fill_cache).
    """


@dataclass(frozen=True)
class FillResult:
    added: dict[str, int]  # kind -> files added
    bytes_added: int
    ignored: tuple[str, ...]  # names that are not what the kind holds


@contextlib.contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    """One fill-back or prune at a time per cache (builds may run side by side)."""
    path = cache_dir / "packages" / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):  # fmt: skip
        if test(mode):
            return name
    return f"file of type {stat.S_IFMT(mode):o}"


def _refusal(shown: str, mode: int) -> str:
    return f"{shown}: a {_kind_of(mode)} (only directories and regular files are taken)"


def _open_dir(name: str, dir_fd: int | None, shown: str) -> int:
    """A directory the guest wrote, opened without following a symlink in its place."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            raise RefusedOutbox(_refusal(shown, st.st_mode)) from None
        raise


def _open_file(name: str, dir_fd: int, shown: str) -> int:
    """A regular file the guest wrote, for reading: never a symlink, FIFO or device.

    O_PATH first (it neither follows the last symlink, nor blocks on a FIFO, nor
    runs a device's open), then the very inode it names is reopened for reading.
    """
    path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(path_fd)
        _check_regular(st, shown)
        fd = os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(path_fd)
    again = os.fstat(fd)
    if (again.st_ino, again.st_dev) != (st.st_ino, st.st_dev):  # not expected: same inode
        os.close(fd)
        raise RefusedOutbox(f"{shown}: changed while it was opened")
    return fd


def _check_regular(st: os.stat_result, shown: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise RefusedOutbox(_refusal(shown, st.st_mode))
    if st.st_nlink != 1:
        raise RefusedOutbox(f"{shown}: a file with {st.st_nlink} names (a hardlink)")


@dataclass(frozen=True)
class _Entry:
    rel: tuple[str, ...]  # path below the outbox
    is_dir: bool
    size: int


def _survey(top_fd: int, rel: tuple[str, ...] = ()) -> list[_Entry]:
    """Everything below ``top_fd``, checked; raises RefusedOutbox on the first bad entry."""
    if len(rel) > _MAX_DEPTH:
        raise RefusedOutbox(f"{'/'.join(rel)}: deeper than {_MAX_DEPTH} levels")
    found: list[_Entry] = []
    for name in sorted(os.listdir(top_fd)):
        sub = (*rel, name)
        shown = "/".join(sub)
        st = os.stat(name, dir_fd=top_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            found.append(_Entry(sub, True, 0))
            fd = _open_dir(name, top_fd, shown)
            try:
                found += _survey(fd, sub)
            finally:
                os.close(fd)
        else:
            _check_regular(st, shown)
            found.append(_Entry(sub, False, st.st_size))
    return found


@contextlib.contextmanager
def _dir_fd(top_fd: int, rel: Iterable[str], shown: str = "") -> Iterator[int]:
    """Open a directory below ``top_fd`` one component at a time, following nothing."""
    fds = [os.dup(top_fd)]
    try:
        for name in rel:
            fds.append(_open_dir(name, fds[-1], shown or name))
        yield fds[-1]
    finally:
        for fd in fds:
            os.close(fd)


def _copy_fd(inp: int, out: int) -> int:
    total = 0
    while chunk := os.read(inp, 1 << 20):
        view = memoryview(chunk)
        while view:
            written = os.write(out, view)
            view = view[written:]
        total += len(chunk)
    return total


def _copy_in(src_dir: int, name: str, shown: str, dest_dir: int, dest_name: str) -> int:
    """Content of one guest file into a new file ``dest_name`` (mode 0644); its size."""
    inp = _open_file(name, src_dir, shown)
    try:
        out = os.open(dest_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                      | os.O_CLOEXEC, _FILE_MODE, dir_fd=dest_dir)  # fmt: skip
        try:
            os.fchmod(out, _FILE_MODE)  # whatever the umask
            size = _copy_fd(inp, out)
            os.fsync(out)
        finally:
            os.close(out)
    finally:
        os.close(inp)
    return size


def _copy_atomic(src_dir: int, name: str, shown: str, dest: Path) -> int:
    """Copy a guest file so that ``dest`` is absent or whole; returns its size."""
    tmp_name = f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp"
    dest_dir = os.open(dest.parent, _DIR_FLAGS)
    try:
        try:
            size = _copy_in(src_dir, name, shown, dest_dir, tmp_name)
            os.rename(tmp_name, dest.name, src_dir_fd=dest_dir, dst_dir_fd=dest_dir)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name, dir_fd=dest_dir)
            raise
    finally:
        os.close(dest_dir)
    return size


def _copy_tree(top_fd: int, entries: list[_Entry], prefix: tuple[str, ...], dest: Path) -> int:
    """A fresh copy at ``dest`` of the surveyed entries under ``prefix``; bytes copied."""
    total = 0
    dest.mkdir(mode=_DIR_MODE)
    dest.chmod(_DIR_MODE)
    out_root = os.open(dest, _DIR_FLAGS)
    try:
        for entry in entries:
            if entry.rel[: len(prefix)] != prefix or entry.rel == prefix:
                continue
            below = entry.rel[len(prefix) :]
            with _dir_fd(out_root, below[:-1]) as out_dir:
                if entry.is_dir:
                    os.mkdir(below[-1], _DIR_MODE, dir_fd=out_dir)
                    os.chmod(below[-1], _DIR_MODE, dir_fd=out_dir, follow_symlinks=False)
                    continue
                with _dir_fd(top_fd, entry.rel[:-1], "/".join(entry.rel[:-1])) as src_dir:
                    total += _copy_in(src_dir, entry.rel[-1], "/".join(entry.rel), out_dir,
                                      below[-1])  # fmt: skip
        _fsync_dirs(out_root, entries, prefix)
    finally:
        os.close(out_root)
    return total


def _fsync_dirs(out_root: int, entries: list[_Entry], prefix: tuple[str, ...]) -> None:
    os.fsync(out_root)
    for entry in entries:
        if entry.is_dir and entry.rel[: len(prefix)] == prefix and entry.rel != prefix:
            with _dir_fd(out_root, entry.rel[len(prefix) :]) as fd:
                os.fsync(fd)


def _regular_files(directory: Path) -> Iterator[Path]:
    """Regular files directly in a cache directory (the host's own, not the guest's)."""
    if not directory.is_dir():
        return
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.is_file(follow_symlinks=False):
            yield Path(entry.path)


def fill_back(cache_dir: Path, cache_key: str, new_dir: Path) -> FillResult:
    """Move what a successful build downloaded into the cache.

    Raises RefusedOutbox (nothing added) if the outbox holds anything but
    directories and regular files; names a kind does not hold are ignored.
    """
    root = key_dir(cache_dir, cache_key)
    added = dict.fromkeys(KINDS, 0)
    total = 0
    ignored: list[str] = []
    top = _open_dir(str(new_dir), None, str(new_dir))
    try:
        # First the whole outbox is checked: a refusal leaves the cache untouched.
        entries = _survey(top)
        files = {e.rel: e for e in entries if not e.is_dir}
        with _locked(cache_dir):
            for kind, pattern in (("apt", _DEB_FILE), ("pip", _PIP_FILE)):
                (root / kind).mkdir(parents=True, exist_ok=True)
                wanted = sorted(r for r in files if len(r) == 2 and r[0] == kind)
                ignored += [f"{kind}/{r[1]}" for r in wanted if not pattern.fullmatch(r[1])]
                if not wanted:
                    continue
                with _dir_fd(top, (kind,)) as src_dir:
                    for rel in wanted:
                        if not pattern.fullmatch(rel[1]):
                            continue
                        dest = root / kind / rel[1]
                        if dest.is_file() and dest.stat().st_size == files[rel].size:
                            continue
                        total += _copy_atomic(src_dir, rel[1], "/".join(rel), dest)
                        added[kind] += 1
            if any(e.rel[0] == "npm" and len(e.rel) > 1 for e in entries):
                # npm's cache is a database (index + content by hash), not a set of
                # files: the guest started from a copy of ours, so its cache is a
                # superset. It replaces ours whole, by rename.
                staged = root / f".npm-{uuid.uuid4().hex[:8]}"
                try:
                    total += _copy_tree(top, entries, ("npm",), staged)
                except BaseException:
                    shutil.rmtree(staged, ignore_errors=True)
                    raise
                old = root / f".npm-old-{uuid.uuid4().hex[:8]}"
                if (root / "npm").exists():
                    (root / "npm").rename(old)
                staged.rename(root / "npm")
                shutil.rmtree(old, ignore_errors=True)
                added["npm"] = 1
    finally:
        os.close(top)
    if ignored:
        log.warning("not cached (unexpected names): %s", ", ".join(ignored[:10]))
    return FillResult(added, total, tuple(ignored))


def deb_filename(package: manifest.Package) -> str:
    """The archive name apt gives a .deb: an epoch's ':' is written %3a."""
    return f"{package.name}_{package.version.replace(':', '%3a')}_{package.arch}.deb"


def mark_used(
    cache_dir: Path, cache_key: str, found: manifest.Manifest, now: float | None = None
) -> int:
    """Touch the cached files this build installed, so pruning keeps what is in use."""
    root = key_dir(cache_dir, cache_key)
    stamp = time.time() if now is None else now
    touched = 0
    names = [root / "apt" / deb_filename(p) for p in found.dpkg]
    wheel_prefixes = {f"{_wheel_name(p.name)}-{p.version}-" for p in found.pip}
    names += [
        path
        for path in _regular_files(root / "pip")
        if any(path.name.startswith(prefix) for prefix in wheel_prefixes)
    ]
    if found.npm and (root / "npm").is_dir():
        names.append(root / "npm")
    for path in names:
        with contextlib.suppress(FileNotFoundError):
            os.utime(path, (stamp, stamp))
            touched += 1
    return touched


def _wheel_name(name: str) -> str:
    # Wheel and sdist file names spell the project with '_' for any run of -_. .
    return re.sub(r"[-_.]+", "_", name)


# --- stats and pruning -----------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One prunable unit: a .deb, a wheel, or a key's whole npm cache."""

    path: Path
    key: str
    kind: str
    size: int
    mtime: float


def _tree_size(path: Path) -> tuple[int, float]:
    size, newest = 0, path.stat().st_mtime
    for sub in path.rglob("*"):
        st = sub.lstat()
        if sub.is_file() and not sub.is_symlink():
            size += st.st_size
        newest = max(newest, st.st_mtime)
    return size, newest


def items(cache_dir: Path) -> list[Item]:
    found: list[Item] = []
    packages_dir = cache_dir / "packages"
    if not packages_dir.is_dir():
        return found
    for key_path in sorted(p for p in packages_dir.iterdir() if p.is_dir()):
        for kind in ("apt", "pip"):
            for path in _regular_files(key_path / kind):
                if path.name.startswith("."):
                    continue  # an unfinished copy of someone else's fill-back
                st = path.stat()
                found.append(Item(path, key_path.name, kind, st.st_size, st.st_mtime))
        npm = key_path / "npm"
        if npm.is_dir() and any(npm.iterdir()):
            size, newest = _tree_size(npm)
            found.append(Item(npm, key_path.name, "npm", size, newest))
    return found


@dataclass
class KindStats:
    key: str
    kind: str
    files: int = 0
    bytes: int = 0
    oldest: float = float("inf")  # mtime: when a build last used (or added) it
    newest: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "kind": self.kind,
            "files": self.files,
            "bytes": self.bytes,
            "oldest": self.oldest,
            "newest": self.newest,
        }


def stats(all_items: Iterable[Item]) -> list[KindStats]:
    """Per key and kind: files, bytes, oldest and newest use."""
    rows: dict[tuple[str, str], KindStats] = {}
    for item in all_items:
        row = rows.setdefault((item.key, item.kind), KindStats(item.key, item.kind))
        row.files += 1
        row.bytes += item.size
        row.oldest = min(row.oldest, item.mtime)
        row.newest = max(row.newest, item.mtime)
    return [rows[k] for k in sorted(rows)]


def select_prune(
    all_items: Iterable[Item],
    *,
    max_size: int | None = None,
    older_than: float | None = None,
    now: float,
) -> list[Item]:
    """What to delete: everything unused for ``older_than`` seconds, then the least
    recently used until the rest fits in ``max_size`` bytes. Pure."""
    remaining = sorted(all_items, key=lambda i: (i.mtime, str(i.path)))
    chosen: list[Item] = []
    if older_than is not None:
        chosen = [i for i in remaining if i.mtime < now - older_than]
        remaining = [i for i in remaining if i.mtime >= now - older_than]
    if max_size is not None:
        total = sum(i.size for i in remaining)
        for item in list(remaining):
            if total <= max_size:
                break
            chosen.append(item)
            total -= item.size
    return chosen


def prune(cache_dir: Path, chosen: Iterable[Item]) -> int:
    freed = 0
    with _locked(cache_dir):
        for item in chosen:
            if item.kind == "npm":
                shutil.rmtree(item.path, ignore_errors=True)
            else:
                item.path.unlink(missing_ok=True)
            freed += item.size
    return freed


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_DURATION_UNITS = {"": 86400, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """'30d', '12h', '2w', '90m', '45s' (a bare number is days) -> seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30d, 12h, 2w)")
    return float(m[1]) * _DURATION_UNITS[m[2]]
