"""`./inv cache`: every folder of the cache is listed; only build caches and logs are pruned."""

from __future__ import annotations

import os
from pathlib import Path

from image.build import caches

OLD = 1_000_000_000.0  # 2001: older than any policy
NOW = 2_000_000_000.0


def _file(path: Path, size: int = 4096, mtime: float = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))
    return path


def _cache(root: Path) -> Path:
    _file(root / "packages" / "ubuntu-jammy-amd64" / "apt" / "jq_1.6_amd64.deb")
    _file(root / "layers" / "ubuntu-jammy-amd64-full" / "system" / "k1" / "disk.qcow2")
    _file(root / "layers" / "ubuntu-jammy-amd64-full" / "config" / "k2" / "disk.qcow2")
    _file(root / "images" / "sha256" / "aa.img", 8192)
    _file(root / "images" / "sha256" / "aa.json", 10)
    _file(root / "standin" / "amd64-bb.qcow2", 8192)
    _file(root / "standin" / "amd64-bb.json", 10)
    _file(root / "thirdparty" / "node-22.23.5-npm-10.9.9-amd64" / "nodejs.deb")
    _file(root / "thirdparty" / "node-22.23.6-npm-10.9.9-amd64" / "nodejs.deb")
    _file(root / "logs" / "20261204T174126-735589" / "serial.log")
    _file(root / "logs" / "20261205T000000-aaaaaa" / "serial.log", mtime=NOW)
    _file(root / "audit" / "launch-1.jsonl")
    _file(root / "skills-venv" / "bin" / "python")
    return root


def test_stats_lists_every_cache(tmp_path: Path) -> None:
    rows = {(r.key, r.kind): r.files for r in caches.stats(_cache(tmp_path))}
    assert rows == {
        ("ubuntu-jammy-amd64", "apt"): 1,
        ("ubuntu-jammy-amd64-full/system", "layer"): 1,  # layers per stage
        ("ubuntu-jammy-amd64-full/config", "layer"): 1,
        ("images", "image"): 1,  # the .img and its .json are one image
        ("standin", "standin"): 1,
        ("thirdparty", "thirdparty"): 2,  # two versions, not one "node-22"
        ("logs", "log"): 2,
        ("audit", "audit"): 1,
        ("skills-venv", "other"): 1,
    }
    image = next(r for r in caches.stats(tmp_path) if r.kind == "image")
    assert image.bytes >= 8192


def test_prune_takes_old_logs_and_build_caches_but_keeps_images_and_standins(
    tmp_path: Path,
) -> None:
    root = _cache(tmp_path)
    pruned = caches.prune(root, None, "30d", now=NOW)
    assert {i.kind for i in pruned.items} == {"apt", "layer", "log", "audit"}
    assert not (root / "logs" / "20261204T174126-735589").exists()
    assert (root / "logs" / "20261205T000000-aaaaaa").exists()  # recent: kept
    assert not (root / "audit" / "launch-1.jsonl").exists()
    for kept in ("images/sha256/aa.img", "standin/amd64-bb.qcow2", "skills-venv/bin/python",
                 "thirdparty/node-22.23.5-npm-10.9.9-amd64/nodejs.deb"):  # fmt: skip
        assert (root / kept).exists(), kept
    assert {r.kind for r in caches.stats(root)} == {"image", "standin", "thirdparty", "log",
                                                    "other"}  # fmt: skip
