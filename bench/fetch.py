#!/usr/bin/env python3
"""Benchmark: fetch's download+hash path vs curl, and a verified cache hit vs plain hashing.

A file (1 GiB by default) is served from 127.0.0.1 by the test file server,
in its own process (sendfile, so the server is not the bottleneck), in the
mirror layout, with a SHA256SUMS signed by a throwaway key. In the same run,
curl and fetch take turns (dirty pages flushed before each turn, so that one
run's writeback does not slow the next; the order of the download turns
rotates from round to round), and it measures:

  curl              curl -o FILE of the image (no hashing)
  curl_then_sha256  curl -o, then SHA-256 of the file: fetch's work, in two passes
  fetch             image.source.fetch.fetch() into an empty cache: sums + gpgv +
                    download with SHA-256 in the same pass + rename
  cache_hit         fetch() again: sums + gpgv + re-hash of the cached image
  sha256            hashlib over the cached image (the floor for a verified hit)

Goals: fetch >= 0.9 x curl throughput; cache hit close to sha256. CPU seconds
(user + system, all threads and finished children) are printed too: on a
shared host they vary less than wall time.
Figures are the best of --repeat turns (fetch vs curl also by median).
The last line is one JSON object.

    .venv/bin/python bench/fetch.py [--size-mib 1024] [--repeat 5]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from image import run  # noqa: E402
from image.config import BuildConfig  # noqa: E402
from image.files import sha256_file  # noqa: E402
from image.source import signing  # noqa: E402
from image.source.fetch import fetch, image_name  # noqa: E402

SERIAL = "20240912"
RELEASE = "jammy"
ARCH = "arm64"


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (curl, gpgv)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(run: Callable[[], object], cpu: list[float]) -> float:
    """Wall seconds of run(); its CPU seconds go to ``cpu`` (steadier on a busy host)."""
    os.sync()  # start every turn with no dirty pages from the previous one
    cpu_start, start = _cpu_seconds(), time.perf_counter()
    run()
    wall = time.perf_counter() - start
    cpu.append(_cpu_seconds() - cpu_start)
    return wall


@contextlib.contextmanager
def server_process(root: Path, log: Path) -> Iterator[str]:
    """The test file server in its own process; yields its base URL."""
    argv = [sys.executable, "-m", "tests.fixtures.httpserver", str(root)]
    with run.background(argv, stdout=log, cwd=ROOT) as proc:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            lines = log.read_text().split()
            if lines and lines[0].startswith("http://"):
                yield lines[0]
                return
            time.sleep(0.05)
        raise RuntimeError(f"the file server did not start: {log.read_text()[-500:]}")


def make_mirror(root: Path, size: int, key: signing.SigningKey) -> tuple[Path, str]:
    directory = root / RELEASE / f"release-{SERIAL}"
    directory.mkdir(parents=True)
    image = directory / image_name(RELEASE, ARCH)
    hasher = hashlib.sha256()
    with image.open("wb") as fh:
        left = size
        while left:
            block = os.urandom(min(16 << 20, left))
            fh.write(block)
            hasher.update(block)
            left -= len(block)
    digest = hasher.hexdigest()
    (directory / "SHA256SUMS").write_text(f"{digest} *{image.name}\n")
    signing.sign_detached(key, directory / "SHA256SUMS")
    return image, digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: TMP)")
    args = parser.parse_args()
    size = args.size_mib << 20
    if shutil.which("curl") is None:
        sys.exit("bench/fetch.py needs curl for its baseline (apt-get install curl)")

    with tempfile.TemporaryDirectory(prefix="bench-fetch-", dir=args.dir) as tmp:
        work = Path(tmp)
        key = signing.create_key(work / "gnupg")
        image, digest = make_mirror(work / "mirror", size, key)
        cache = work / "cache"
        with server_process(work / "mirror", work / "server.log") as base_url:
            url = f"{base_url}/{RELEASE}/release-{SERIAL}/{image.name}"
            cfg = BuildConfig(
                arch=ARCH,
                release=RELEASE,
                serial=SERIAL,
                mirror=base_url,
                keyring=key.public_keyring,
                fingerprints=(key.fingerprint,),
                cache_dir=cache,
            )
            target = work / "curl.img"
            cached = cache / "images" / "sha256" / f"{digest}.img"

            def curl() -> None:
                subprocess.run(["curl", "-sS", "-f", "-o", str(target), url], check=True)

            def curl_then_sha256() -> None:
                curl()
                assert sha256_file(target) == digest

            def fresh_fetch() -> None:
                result = fetch(cfg, progress=False)
                assert result.sha256 == digest and not result.from_cache

            def cached_fetch() -> None:
                assert fetch(cfg, progress=False).from_cache

            def hash_only() -> None:
                assert sha256_file(cached) == digest

            turns = {
                "curl": curl,
                "curl_then_sha256": curl_then_sha256,
                "fetch": fresh_fetch,
                "cache_hit": cached_fetch,
                "sha256": hash_only,
            }
            times: dict[str, list[float]] = {name: [] for name in turns}
            cpu: dict[str, list[float]] = {name: [] for name in turns}
            downloads = ["curl", "curl_then_sha256", "fetch"]
            for round_ in range(args.repeat):
                shutil.rmtree(cache, ignore_errors=True)
                # The download turns rotate: on a shared host the turn right after
                # another download was measurably slower, whoever took it.
                shift = round_ % len(downloads)
                order = [*downloads[shift:], *downloads[:shift], "cache_hit", "sha256"]
                for name in order:
                    target.unlink(missing_ok=True)
                    times[name].append(timed(turns[name], cpu[name]))
            load = os.getloadavg()[0]

    best = {name: min(values) for name, values in times.items()}
    median = {name: statistics.median(values) for name, values in times.items()}
    mib = size / (1 << 20)
    figures: dict[str, object] = {
        "size_mib": args.size_mib,
        "repeat": args.repeat,
        "load_average_1m": round(load, 2),
        **{f"{name}_s": round(value, 3) for name, value in best.items()},
        **{f"{name}_cpu_s": round(min(values), 3) for name, values in cpu.items()},
        "curl_mib_s": round(mib / best["curl"], 1),
        "fetch_mib_s": round(mib / best["fetch"], 1),
        "fetch_vs_curl": round(best["curl"] / best["fetch"], 3),
        "fetch_vs_curl_median": round(median["curl"] / median["fetch"], 3),
        "fetch_vs_curl_then_sha256": round(best["curl_then_sha256"] / best["fetch"], 3),
        "cache_hit_vs_sha256": round(best["cache_hit"] / best["sha256"], 3),
        "fetch_cpu_vs_curl_then_sha256_cpu": round(
            min(cpu["fetch"]) / min(cpu["curl_then_sha256"]), 3
        ),
    }
    for name, values in times.items():
        shown = " ".join(f"{v:6.3f}" for v in values)
        print(
            f"{name:18s} best {best[name]:6.3f} s  {mib / best[name]:7.1f} MiB/s  "
            f"median {median[name]:6.3f} s  "
            f"cpu {min(cpu[name]):6.3f} s  turns: {shown}"
        )
    print(
        f"fetch vs curl: {figures['fetch_vs_curl']} best, "
        f"{figures['fetch_vs_curl_median']} median (goal >= 0.9); "
        f"vs curl + sha256: {figures['fetch_vs_curl_then_sha256']}; "
        f"cache hit vs sha256 alone: {figures['cache_hit_vs_sha256']}; "
        f"load average {load:.2f} on {os.cpu_count()} CPUs"
    )
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
