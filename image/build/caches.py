"""Everything under the cache directory, listed and measured; the build caches and the
logs pruned by one policy.

Pruned: apt, pip and npm downloads (packagecache), provisioned layers (layercache),
the logs of failed builds (``logs/<build id>``) and launches' egress audit logs
(``audit/``). Listed, never pruned: fetched cloud images, stand-in base images, the
NodeSource stand-in and the rest (signing keys, the skills test venv, a local
registry's storage): each is remade on demand, but slowly (a download, or minutes
of mmdebstrap), so deleting one is a decision for a person (``rm -r`` the path).

The policy (``packagecache.select_prune``): what no build used for ``older_than`` goes
first; then, least recently used first, until at most ``max_size`` bytes remain.
"""

from __future__ import annotations

import contextlib
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from image import config
from image.build import layercache, packagecache
from image.build.packagecache import Item
from image.errors import ImageError


@dataclass(frozen=True)
class Pruned:
    items: list[packagecache.Item] = field(default_factory=list)
    bytes: int = 0


# Top-level folders and what one item in each is; "kept" kinds are listed, not pruned.
PRUNED_LOGS = {"logs": "log", "audit": "audit"}
KEPT = {"images": "image", "standin": "standin", "thirdparty": "thirdparty"}
BUILD_CACHES = ("packages", "layers")


def _allocated(path: Path) -> tuple[int, float]:
    """Bytes on disk (sparse qcow2 files count what they hold) and the newest mtime."""
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    size, newest = 0, 0.0
    for sub in paths:
        with contextlib.suppress(OSError):
            st = sub.lstat()
            newest = max(newest, st.st_mtime)
            if stat.S_ISREG(st.st_mode):
                size += st.st_blocks * 512
    return size, newest


def _entries(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def other_items(cache_dir: Path) -> list[Item]:
    """Logs (prunable), then images, stand-ins and every other top-level folder (kept)."""
    found: list[Item] = []
    for folder, kind in {**PRUNED_LOGS, **KEPT}.items():
        if folder == "images":  # images/sha256/<hash>.img and .json: one item per image
            groups: dict[str, list[Path]] = {}
            for p in _entries(cache_dir / folder / "sha256"):
                groups.setdefault(p.name.split(".")[0], []).append(p)
        else:  # standin/<arch>-<hash>.qcow2 and .json alike; logs/<id>/, audit/<file>
            groups = {}
            for p in _entries(cache_dir / folder):
                groups.setdefault(p.name if p.is_dir() else p.name.split(".")[0], []).append(p)
        for _name, paths in sorted(groups.items()):
            sizes = [_allocated(p) for p in paths]
            found.append(Item(paths[0], folder, kind, sum(b for b, _ in sizes),
                              max(t for _, t in sizes)))  # fmt: skip
    known = {*PRUNED_LOGS, *KEPT, *BUILD_CACHES}
    for path in _entries(cache_dir):
        if path.name not in known:
            size, newest = _allocated(path)
            found.append(Item(path, path.name, "other", size, newest))
    return found


def prunable_items(cache_dir: Path) -> list[Item]:
    logs = [i for i in other_items(cache_dir) if i.kind in PRUNED_LOGS.values()]
    return packagecache.items(cache_dir) + layercache.items(cache_dir) + logs


def stats(cache_dir: Path) -> list[packagecache.KindStats]:
    """One row per cache and kind: the build caches, logs, images, stand-ins, the rest."""
    return packagecache.stats(
        packagecache.items(cache_dir) + layercache.items(cache_dir) + other_items(cache_dir)
    )


def is_pruned(kind: str) -> bool:
    return kind not in (*KEPT.values(), "other")


def prune(cache_dir: Path, max_size: str | None, older_than: str | None, now: float) -> Pruned:
    """Delete by the policy above; ``max_size`` like 5G, ``older_than`` like 30d or 12h."""
    if max_size is None and older_than is None:
        raise ImageError(
            "--prune needs --max-size and/or --older-than",
            hint="e.g. ./inv cache --prune --older-than 30d --max-size 5G",
        )
    try:
        limit = config.parse_size(max_size) if max_size is not None else None
        age = packagecache.parse_duration(older_than) if older_than is not None else None
    except ValueError as exc:
        raise ImageError(str(exc), hint="e.g. --max-size 5G --older-than 30d") from None
    removed = packagecache.select_prune(
        prunable_items(cache_dir), max_size=limit, older_than=age, now=now
    )
    layers = [item for item in removed if item.kind == "layer"]
    logs = [item for item in removed if item.kind in PRUNED_LOGS.values()]
    freed = packagecache.prune(cache_dir, [i for i in removed if i not in layers + logs])
    freed += layercache.prune(layers, cache_dir)
    for item in logs:
        if item.path.is_dir():
            shutil.rmtree(item.path, ignore_errors=True)
        else:
            item.path.unlink(missing_ok=True)
        freed += item.size
    return Pruned(removed, freed)
