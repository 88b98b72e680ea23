"""The build caches as one: apt, pip and npm downloads (packagecache) and provisioned
layers (layercache), listed, measured and pruned by one policy.

The policy (``packagecache.select_prune``): what no build used for ``older_than`` goes
first; then, least recently used first, until at most ``max_size`` bytes remain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from image import config
from image.build import layercache, packagecache
from image.errors import ImageError


@dataclass(frozen=True)
class Pruned:
    items: list[packagecache.Item] = field(default_factory=list)
    bytes: int = 0


def all_items(cache_dir: Path) -> list[packagecache.Item]:
    return packagecache.items(cache_dir) + layercache.items(cache_dir)


def stats(cache_dir: Path) -> list[packagecache.KindStats]:
    return packagecache.stats(all_items(cache_dir))


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
        all_items(cache_dir), max_size=limit, older_than=age, now=now
    )
    layers = [item for item in removed if item.kind == "layer"]
    freed = packagecache.prune(cache_dir, [i for i in removed if i not in layers])
    freed += layercache.prune(layers)
    return Pruned(removed, freed)
