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
away with its scratch directory and never reach the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from image import manifest, qemu

log = logging.getLogger("image.packagecache")

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


def _copy_atomic(src: Path, dest: Path) -> int:
    """Copy a regular file so that ``dest`` is absent or whole; returns its size."""
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        tmp.chmod(0o644)
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest.stat().st_size


def _regular_files(directory: Path) -> Iterator[Path]:
    """Regular files directly in ``directory``; symlinks (a guest could point them
    anywhere on the host) and everything else are skipped."""
    if not directory.is_dir():
        return
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.is_file(follow_symlinks=False):
            yield Path(entry.path)


def _copy_tree_regular(src: Path, dest: Path) -> int:
    """A copy of ``src`` with only directories and regular files (no symlinks, no devices)."""
    total = 0
    dest.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(src):
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            total += _copy_tree_regular(path, dest / entry.name)
        elif entry.is_file(follow_symlinks=False):
            shutil.copyfile(path, dest / entry.name, follow_symlinks=False)
            total += (dest / entry.name).stat().st_size
    return total


def _fsync_tree(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fill_back(cache_dir: Path, cache_key: str, new_dir: Path) -> FillResult:
    """Move what a successful build downloaded into the cache."""
    root = key_dir(cache_dir, cache_key)
    added = dict.fromkeys(KINDS, 0)
    total = 0
    ignored: list[str] = []
    with _locked(cache_dir):
        for kind, pattern in (("apt", _DEB_FILE), ("pip", _PIP_FILE)):
            (root / kind).mkdir(parents=True, exist_ok=True)
            for src in _regular_files(new_dir / kind):
                if not pattern.fullmatch(src.name):
                    ignored.append(f"{kind}/{src.name}")
                    continue
                dest = root / kind / src.name
                if dest.is_file() and dest.stat().st_size == src.stat().st_size:
                    continue
                total += _copy_atomic(src, dest)
                added[kind] += 1
        npm_new = new_dir / "npm"
        if npm_new.is_dir() and any(npm_new.iterdir()):
            # npm's cache is a database (index + content by hash), not a set of
            # files: the guest started from a copy of ours, so its cache is a
            # superset. It replaces ours whole, by rename.
            staged = root / f".npm-{uuid.uuid4().hex[:8]}"
            total += _copy_tree_regular(npm_new, staged)
            _fsync_tree(staged)
            old = root / f".npm-old-{uuid.uuid4().hex[:8]}"
            if (root / "npm").exists():
                (root / "npm").rename(old)
            staged.rename(root / "npm")
            shutil.rmtree(old, ignore_errors=True)
            added["npm"] = 1
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
