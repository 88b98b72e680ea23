"""Incremental rebuilds against a cold build, in one run: identical inputs, one
pip pin changed, one skill file changed, one apt package added.

    .venv/bin/python bench/rebuild.py [--profile smoke|full] [--no-apt] [--keep]

Every build runs against the offline stand-in (the Debian base image served by
the local signed mirror) in one fresh cache directory; the base image is
fetched into it before any clock starts. The inputs are the profile's own plus
what the changes need: a copy of the package lists with one pip package
(``six``, pure Python, and ``python3-pip`` to install it with) and an extra
skills folder (a copy of the test skill). The full profile also gets the
stand-in of NodeSource and 4 GiB of guest memory, as its vm-tier test does.
Builds are locked, as a release
engineer's are (an unlocked build keeps no layer above "system": PyPI may move
on); the lock comes from a first, unmeasured build.

Then, in order, each build with the caches the ones before it left:
  cold       no layer and no package cache (both emptied first)
  identical  the same inputs                    goal <= 0.10 of cold
  pip pin    six 1.16.0 -> 1.15.0 in the lock   goal <= 0.35
             (full: its constraints' 1.17.0 -> 1.16.0)
  skill      one line added to a SKILL.md       goal <= 0.20
  apt        one apt package added (unlocked: a new package needs a new lock;
             every stage runs, so it costs about a cold build: --no-apt skips it)

Prints each build's steps, which stage it resumed and which ran, the package
changes against the build before it, and last one JSON object with every
figure and ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from image import config, console
from image.build import lockfile, output, packages, pipeline, skills, trust
from image.source import fetch, mirror, standin, thirdparty

GOALS = {"identical": 0.10, "pip pin": 0.35, "skill": 0.20}
# six, pure Python: at the version the profile's constraints give it, else 1.16.0;
# the pin build moves it to the other of 1.16.0 / 1.15.0.
SIX_DEFAULT, SIX_OTHER = "1.16.0", "1.15.0"
TEST_SKILLS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "skills"


def package_sets(manifest_path: Path) -> dict[str, set[tuple[str, ...]]]:
    data = json.loads(manifest_path.read_text())
    return {
        "dpkg": {(p["name"], p["arch"], p["version"]) for p in data["dpkg"]},
        "pip": {(p["name"], p["version"]) for p in data["pip"]},
        "npm": {(p["name"], p["version"]) for p in data["npm"]},
    }


def changes(old: Path, new: Path) -> list[str]:
    a, b = package_sets(old), package_sets(new)
    lines = []
    for kind in a:
        lines += [f"{kind} - {' '.join(p)}" for p in sorted(a[kind] - b[kind])]
        lines += [f"{kind} + {' '.join(p)}" for p in sorted(b[kind] - a[kind])]
    return lines


def add_list(lists: Path, profile: str, kind: str, names: list[str]) -> None:
    """Write package-lists/KIND/bench.list and name it on the profile's KIND: line."""
    (lists / kind / "bench.list").write_text("".join(f"{n}\n" for n in names))
    path = lists / "profiles" / f"{profile}.profile"
    lines = path.read_text().splitlines()
    found = [i for i, line in enumerate(lines) if line.startswith(f"{kind}:")]
    if not found:
        lines.append(f"{kind}: bench")
    elif "bench" not in lines[found[0]].split():
        lines[found[0]] += " bench"
    path.write_text("\n".join(lines) + "\n")


def six_versions(resolved: packages.Profile) -> tuple[str, str]:
    """(six's version for the builds, the one the pin build moves it to)."""
    pinned = [c.split("==", 1)[1] for c in resolved.pip_constraints
              if lockfile.pip_key(c.split("==", 1)[0]) == "six"]  # fmt: skip
    start = pinned[0] if pinned else SIX_DEFAULT
    return start, SIX_OTHER if start == SIX_DEFAULT else SIX_DEFAULT


def bench_inputs(tmp: Path, profile: str) -> tuple[Path, Path, list[str], tuple[str, str]]:
    """A copy of the package lists with one pip package, an extra skills folder,
    the apt packages added for pip (none if the profile has pip already), and
    six's two versions."""
    lists = tmp / "package-lists"
    shutil.copytree(packages.PACKAGE_LISTS, lists)
    resolved = packages.resolve_profile(profile, lists, "debian")
    apt = [] if "python3-pip" in resolved.apt_packages else ["python3-pip"]
    if apt:
        add_list(lists, profile, "apt", apt)
    six = six_versions(resolved)
    add_list(lists, profile, "pip", [f"six=={six[0]}"])
    skills_dir = tmp / "skills"
    shutil.copytree(TEST_SKILLS, skills_dir)
    return lists, skills_dir, apt, six


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="amd64")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--memory", default="2G")
    parser.add_argument("--keep", action="store_true", help="keep the temporary cache and outputs")
    parser.add_argument("--no-apt", action="store_true", help="skip the apt-package build")
    parser.add_argument("--ca-cert", type=Path, action="append",
                        help=f"CAs the VM trusts (default: {trust.HOST_CA_DIR})")  # fmt: skip
    args = parser.parse_args()
    ca_certs = trust.load(args.ca_cert) if args.ca_cert else trust.host_cas()
    console.setup_logging()
    base_cfg = config.resolve(
        {"arch": args.arch, "profile": args.profile, "cpus": args.cpus, "memory": args.memory},
        os.environ,
        {},
    ).config
    image = standin.ensure(base_cfg.cache_dir, args.arch)
    full = args.profile == "full"
    repo = thirdparty.ensure(base_cfg.cache_dir, (args.arch,)) if full else None
    tmp = Path(tempfile.mkdtemp(prefix="bench-rebuild-", dir=base_cfg.cache_dir))
    lists, skills_dir, bench_apt, (_, six_to) = bench_inputs(tmp, args.profile)
    builds: list[dict[str, Any]] = []
    try:
        with mirror.serve_mirror({args.arch: image.path}, base_cfg.cache_dir,
                                 repo=repo) as served:  # fmt: skip
            cfg = dataclasses.replace(
                base_cfg, mirror=served.url, keyring=served.keyring,
                fingerprints=(served.fingerprint,), cache_dir=tmp / "cache", skills=skills_dir,
            )  # fmt: skip
            if full:
                cfg = dataclasses.replace(cfg, memory=max(cfg.memory, 4 << 30),
                                          provision_timeout=6 * 3600)  # fmt: skip
            sources = (packages.load_source_file(served.source_file),) if served.source_file else ()
            fetch.fetch(cfg)  # the base image: cached before any clock starts

            def build(name: str, lock: lockfile.Lock | None) -> pipeline.BuildResult:
                start = time.monotonic()
                result = pipeline.build_image(
                    dataclasses.replace(cfg, output_dir=tmp / name), distro="debian",
                    package_lists=lists, lock=lock, ca_certs=ca_certs, sources=sources,
                )  # fmt: skip
                seconds = time.monotonic() - start
                info = output.BuildOutput.read(result.build_info.parent).info.raw
                ran = [s["stage"] for s in info["stages"] if s["ran"]]
                diff = changes(Path(builds[-1]["manifest"]), result.manifest) if builds else []
                console.print_summary(name, result.timings)
                print(f"{name}: {seconds:.1f} s; resumed {info['resumed_stage'] or 'nothing'}, "
                      f"ran {', '.join(ran) or 'no stage'}; "
                      f"package changes: {diff or 'none'}")  # fmt: skip
                builds.append({"build": name, "seconds": round(seconds, 1),
                               "resumed_stage": info["resumed_stage"], "stages_ran": ran,
                               "package_changes": diff, "steps": result.timings,
                               "manifest": str(result.manifest)})  # fmt: skip
                return result

            first = build("lock-source", None)
            lock = lockfile.from_output(first.build_info.parent)
            for cache in ("packages", "layers"):
                shutil.rmtree(cfg.cache_dir / cache, ignore_errors=True)
            build("cold", lock)
            build("identical", lock)
            pinned = dataclasses.replace(lock, pip=tuple(
                dataclasses.replace(p, version=six_to) if p.name == "six" else p
                for p in lock.pip))  # fmt: skip
            build("pip pin", pinned)
            skill_md = next(p for p in sorted(skills_dir.rglob("SKILL.md")))
            skill_md.write_text(skill_md.read_text(encoding="utf-8") + "\nOne more line.\n",
                                encoding="utf-8")  # fmt: skip
            skills.describe([skills_dir])  # still a valid skill
            build("skill", pinned)
            if not args.no_apt:
                have = packages.resolve_profile(args.profile, lists, "debian").apt_packages
                added = next(n for n in ("tree", "figlet") if n not in have)  # in both distros
                add_list(lists, args.profile, "apt", [*bench_apt, added])
                build("apt", None)
    finally:
        if args.keep:
            print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    cold = next(b["seconds"] for b in builds if b["build"] == "cold")
    result: dict[str, Any] = {"profile": args.profile, "arch": args.arch, "cold_s": cold}
    for b in builds:
        if b["build"] in ("lock-source", "cold"):
            continue
        ratio = round(b["seconds"] / cold, 3)
        goal = GOALS.get(b["build"])
        print(f"{b['build']:>10}: {b['seconds']:7.1f} s = {ratio:.3f} of cold"
              + (f" (goal <= {goal})" if goal else ""))  # fmt: skip
        result[b["build"]] = {"seconds": b["seconds"], "over_cold": ratio, "goal": goal,
                              "goal_met": None if goal is None else ratio <= goal}  # fmt: skip
    result["builds"] = builds
    console.print_json(result)


if __name__ == "__main__":
    main()
