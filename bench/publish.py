#!/usr/bin/env python3
"""Benchmark: publish and pull of a build output to a local registry vs copying its files.

A real registry (Debian's docker-registry) is started on 127.0.0.1 with its
storage in a temp directory. Each round measures:

  copy          copy the output's files to a fresh directory (the floor for any transfer)
  copy_sha256   copy, then SHA-256 of every file (the floor for a verified transfer)
  publish       ./inv publish's work into a new repository (every blob uploaded)
  republish     publish again to the same repository (blobs exist: hashing + HEADs)
  pull          pull into a fresh directory (digests checked while writing, then SHA256SUMS)

Figures are the best of --repeat rounds; ratios are against copy_sha256 from
the same run. The last line is one JSON object.

    .venv/bin/python bench/publish.py --out out/demo/image [--snapshot out/demo/snapshot]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from image.release import oci  # noqa: E402
from tests.fixtures.registry import serve_registry  # noqa: E402


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "demo" / "image")
    parser.add_argument("--snapshot", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the registry stores (default: /tmp)")
    args = parser.parse_args()
    files = oci.output_files(args.out, args.snapshot)
    size = sum(path.stat().st_size for _, path in files)
    best: dict[str, float] = {}

    with tempfile.TemporaryDirectory(prefix="bench-publish-", dir=args.dir) as tmp:
        work = Path(tmp)
        with serve_registry(work / "registry") as registry:
            for round_ in range(max(args.repeat, 1)):
                copy_dir = work / f"copy-{round_}"

                def copy(dest: Path = copy_dir) -> None:
                    for title, path in files:
                        (dest / title).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(path, dest / title)

                def copy_sha256(dest: Path = work / f"copyh-{round_}") -> None:
                    copy(dest)
                    for title, _ in files:
                        digest = hashlib.sha256()
                        with (dest / title).open("rb") as f:
                            while chunk := f.read(1 << 20):
                                digest.update(chunk)

                ref = f"{registry.host}/bench{round_}:v1"
                push = partial(oci.publish, args.out, ref, snapshot=args.snapshot)
                figures = {
                    "copy": _timed(copy),
                    "copy_sha256": _timed(copy_sha256),
                    "publish": _timed(push),
                    "republish": _timed(push),
                    "pull": _timed(partial(oci.pull, ref, work / f"pull-{round_}")),
                }
                for name, seconds in figures.items():
                    best[name] = min(best.get(name, seconds), seconds)
                for name in ("copy-", "copyh-", "pull-"):
                    shutil.rmtree(work / f"{name}{round_}", ignore_errors=True)

    mib = size / (1 << 20)
    print(f"build output: {args.out} ({len(files)} files, {mib:.1f} MiB)")
    for name, seconds in best.items():
        print(f"{name:<12} {seconds:7.2f} s  {mib / seconds:8.1f} MiB/s")
    floor = best["copy_sha256"]
    result = {
        "files": len(files),
        "bytes": size,
        **{f"{k}_seconds": round(v, 3) for k, v in best.items()},
        "publish_vs_copy_sha256": round(best["publish"] / floor, 2),
        "pull_vs_copy_sha256": round(best["pull"] / floor, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
