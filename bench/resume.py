"""Cold boot vs snapshot resume, RAM-size independence, and memory of concurrent launches.

    .venv/bin/python bench/resume.py --image out/demo/image/sandbox-image-jammy-amd64-smoke.qcow2

"Ready" is the same for both: the guest agent answers and the sandbox launcher
runs `true` as the agent user. A cold run is a full `snapshot` (boot to ready);
a resume is a `launch` until a sandboxed `true` has run. Host memory is the sum
of PSS (proportional set size: shared pages divided among their users) of the
QEMU processes, so pages of the snapshot's RAM file that launches share count once.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from image import config, console
from image.runtime import snapshot


def pss_kib(pid: int) -> int:
    """PSS of a process and its threads, from /proc/PID/smaps_rollup."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def cold(cfg: config.BuildConfig, image: Path, where: Path, runs: int) -> tuple[list[float], Path]:
    times, keep = [], where / "snap-0"
    for i in range(runs):
        out = where / f"snap-{i}"
        _, meta = snapshot.snapshot(cfg, image, out)
        times.append(meta.ready_seconds)
        if i:
            shutil.rmtree(out)
    return times, keep


def resume(cfg: config.BuildConfig, snapdir: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.monotonic()
        with snapshot.launch(snapdir, cfg, snapshot.LaunchOptions()) as sandbox:
            assert sandbox.sandboxed(["true"], timeout=120).exit_code == 0
            times.append(time.monotonic() - start)
    return times


def concurrent_pss(cfg: config.BuildConfig, snapdir: Path, count: int) -> int:
    with ExitStack() as stack:
        launches = [stack.enter_context(snapshot.launch(snapdir, cfg, snapshot.LaunchOptions()))
                    for _ in range(count)]  # fmt: skip
        for sandbox in launches:  # each does some work, as a session would
            sandbox.sandboxed(["python3", "-c", "print(sum(range(10**6)))"], timeout=120)
        time.sleep(1)
        return sum(pss_kib(s.vm.proc.pid) for s in launches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, required=True, help="a built qcow2 image")
    parser.add_argument("--arch", default="amd64")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    console.setup_logging()
    base = config.resolve({"arch": args.arch, "cpus": args.cpus}, {}, {}).config
    small = dataclasses.replace(base, memory=1 << 30)
    large = dataclasses.replace(base, memory=4 << 30)
    with tempfile.TemporaryDirectory(prefix="bench-resume-", dir=base.cache_dir) as tmp:
        where = Path(tmp)
        (where / "4g").mkdir()
        (where / "1g").mkdir()
        cold_4g, snap_4g = cold(large, args.image.resolve(), where / "4g", args.runs)
        _, snap_1g = cold(small, args.image.resolve(), where / "1g", 1)
        resume_4g = resume(large, snap_4g, args.runs)
        resume_1g = resume(small, snap_1g, args.runs)
        pss_1 = concurrent_pss(large, snap_4g, 1)
        pss_4 = concurrent_pss(large, snap_4g, 4)
    figures: dict[str, Any] = {
        "cold_ready_s": [round(t, 2) for t in cold_4g],
        "resume_ready_4g_s": [round(t, 3) for t in resume_4g],
        "resume_ready_1g_s": [round(t, 3) for t in resume_1g],
        "cold_median_s": round(statistics.median(cold_4g), 2),
        "resume_4g_median_s": round(statistics.median(resume_4g), 3),
        "resume_1g_median_s": round(statistics.median(resume_1g), 3),
        "pss_1_launch_mib": round(pss_1 / 1024, 1),
        "pss_4_launches_mib": round(pss_4 / 1024, 1),
    }
    figures["resume_over_cold"] = round(figures["resume_4g_median_s"] / figures["cold_median_s"], 4)
    figures["resume_4g_over_1g"] = round(
        figures["resume_4g_median_s"] / figures["resume_1g_median_s"], 3
    )
    figures["pss_4_over_1"] = round(pss_4 / pss_1, 3)
    print(f"cold boot to ready      {figures['cold_median_s']:8.2f} s  (median of {args.runs})")
    print(f"resume to ready (4 GiB) {figures['resume_4g_median_s']:8.3f} s  "
          f"= {100 * figures['resume_over_cold']:.2f} % of cold")  # fmt: skip
    print(f"resume to ready (1 GiB) {figures['resume_1g_median_s']:8.3f} s  "
          f"4 GiB / 1 GiB = {figures['resume_4g_over_1g']:.2f}")  # fmt: skip
    print(f"host PSS, 1 launch      {figures['pss_1_launch_mib']:8.1f} MiB")
    print(f"host PSS, 4 launches    {figures['pss_4_launches_mib']:8.1f} MiB  "
          f"= {figures['pss_4_over_1']:.2f} x one")  # fmt: skip
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
