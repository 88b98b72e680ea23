"""Cold boot vs a launch resumed from a snapshot, through the exec channel.

    .venv/bin/python bench/resume.py --image out/demo/image/sandbox-image-jammy-amd64-smoke.qcow2

Measured in one run, each against the cold boot of the same run:
- cold: a full `snapshot` (boot until the exec agent has run a command: "ready");
- resume: `api.launch` until the first byte of a sandboxed `echo`, and until it
  has ended (bwrap, both filters, the agent user), for 4 GiB and 1 GiB of RAM;
- streaming: a sandboxed `echo a; sleep 2; echo b`: when `a` arrives and the end;
- memory: the PSS (shared pages divided among their users) of the QEMU processes
  of 1 and of 4 concurrent launches, each having run some Python, split into the
  snapshot's RAM file (guest pages), TCG's translation cache and the rest;
- QEMU's own ways beside ours (same image, device set, readiness and command): a
  `migrate` with RAM in the stream to a file and `-incoming` from it; and `savevm`
  into the qcow2 images (the UEFI vars and the session disk in qcow2 too, as savevm
  needs), each launch copying them and starting with `-loadvm` (what Lima offers);
- tb-size: the same launch and work with TCG's cache at QEMU's default and capped
  (how much memory it saves, what it costs in time);
- 8 launches from one snapshot at once on this host: all answer, and how long
  until all have run a sandboxed command.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from image import config, console
from image.runtime import api, snapshot

WORK = ["python3", "-c", "import json, email.parser, http.client; print(sum(range(10**6)))"]


def pss_split_kib(pid: int, memory_file: Path) -> dict[str, int]:
    """PSS of one process from /proc/PID/smaps: the snapshot's RAM file (guest
    pages), anonymous executable mappings (TCG's translation cache), the rest."""
    split = {"guest": 0, "tcg": 0, "other": 0}
    where = "other"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
            path = fields[5] if len(fields) > 5 else ""
            if path == str(memory_file):
                where = "guest"
            elif not path and "x" in fields[1]:
                where = "tcg"
            else:
                where = "other"
        elif fields[:1] == ["Pss:"]:
            split[where] += int(fields[1])
    return split


def cold(cfg: config.BuildConfig, image: Path, where: Path, runs: int,
         ram_in_file: bool = True, internal: bool = False) -> tuple[list[float], Path]:  # fmt: skip
    times, keep = [], where / "snap-0"
    for i in range(runs):
        out = where / f"snap-{i}"
        _, meta = snapshot.snapshot(cfg, image, out, ram_in_file=ram_in_file, internal=internal)
        times.append(meta.ready_seconds)
        if i:
            shutil.rmtree(out)
    return times, keep


def first_byte_and_end(sandbox: api.Sandbox, argv: list[str], since: float) -> tuple[float, float]:
    proc = sandbox.spawn(argv)
    proc.close_stdin()
    first = None
    for _stream, _chunk in proc.output(300):
        first = first or time.monotonic() - since
    assert proc.exit and proc.exit.get("code") == 0, proc.exit
    return first or float("nan"), time.monotonic() - since


def resume(
    cfg: config.BuildConfig, snapdir: Path, runs: int
) -> list[tuple[float, float, float, float]]:
    """(first byte, end) of a sandboxed echo, when the launch was ready and how long
    preparing its files took, in seconds from the start of the launch."""
    times = []
    for _ in range(runs):
        start = time.monotonic()
        with api.open_sandbox(snapdir, cfg, snapshot.LaunchOptions()) as sandbox:
            first, end = first_byte_and_end(sandbox, ["echo", "ready"], start)
            times.append((first, end, sandbox.timings["ready"], sandbox.timings["prepare"]))
    return times


def streaming(cfg: config.BuildConfig, snapdir: Path) -> tuple[float, float]:
    with api.open_sandbox(snapdir, cfg, snapshot.LaunchOptions()) as sandbox:
        return first_byte_and_end(sandbox, ["sh", "-c", "echo a; sleep 2; echo b"],
                                  time.monotonic())  # fmt: skip


def concurrent_pss(cfg: config.BuildConfig, snapdir: Path, count: int,
                   tb_size_mib: int | None = snapshot.TB_SIZE_MIB) -> dict[str, Any]:  # fmt: skip
    """Total and split PSS (KiB) of COUNT launches that each ran WORK, and its time."""
    options = snapshot.LaunchOptions(tb_size_mib=tb_size_mib)
    with ExitStack() as stack:
        launches = [stack.enter_context(api.open_sandbox(snapdir, cfg, options))
                    for _ in range(count)]  # fmt: skip
        seconds = []
        for sandbox in launches:  # each does some work, as a session would
            start = time.monotonic()
            assert sandbox.run(WORK, timeout=300).ok
            seconds.append(time.monotonic() - start)
        time.sleep(1)
        split = {"guest": 0, "tcg": 0, "other": 0}
        for sandbox in launches:
            for key, kib in pss_split_kib(sandbox.vm.vm.proc.pid, snapdir / "memory").items():
                split[key] += kib
    return {"total": sum(split.values()), **split, "work_s": statistics.median(seconds)}


def eight_at_once(cfg: config.BuildConfig, snapdir: Path, count: int = 8) -> dict[str, Any]:
    """COUNT launches started together; each runs a sandboxed `true` and stays up until
    all have, so all are alive at once."""
    barrier = threading.Barrier(count)
    start = time.monotonic()

    def one() -> float:
        with api.open_sandbox(snapdir, cfg, snapshot.LaunchOptions()) as sandbox:
            assert sandbox.run(["true"], timeout=600).ok
            done = time.monotonic() - start
            barrier.wait(timeout=900)
            return done

    with ThreadPoolExecutor(count) as pool:
        done = list(pool.map(lambda _: one(), range(count)))
    return {"answered": len(done), "first_s": round(min(done), 2),
            "all_s": round(max(done), 2)}  # fmt: skip


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
    mib = 1024
    with tempfile.TemporaryDirectory(prefix="bench-resume-", dir=base.cache_dir) as tmp:
        where = Path(tmp)
        (where / "4g").mkdir()
        (where / "1g").mkdir()
        cold_4g, snap_4g = cold(large, args.image.resolve(), where / "4g", args.runs)
        _, snap_1g = cold(small, args.image.resolve(), where / "1g", 1)
        resume_4g = resume(large, snap_4g, args.runs)
        resume_1g = resume(small, snap_1g, args.runs)
        # QEMU's own way, same image, same readiness: RAM in the migration stream.
        (where / "plain").mkdir()
        _, snap_plain = cold(large, args.image.resolve(), where / "plain", 1, ram_in_file=False)
        plain_state_mib = (snap_plain / "state").stat().st_size / (1 << 20)
        resume_plain = resume(large, snap_plain, args.runs)
        (where / "internal").mkdir()
        _, snap_internal = cold(large, args.image.resolve(), where / "internal", 1,
                                internal=True)  # fmt: skip
        # savevm writes RAM into the first snapshot-capable image (the UEFI vars here):
        # what each launch copies.
        internal_meta = snapshot.load_meta(snap_internal)
        copied = sum((snap_internal / n).stat().st_size for n in internal_meta.files)
        internal_disk_mib = copied / (1 << 20)
        resume_internal = resume(large, snap_internal, args.runs)
        stream_first, stream_end = streaming(large, snap_4g)
        one = concurrent_pss(large, snap_4g, 1)
        four = concurrent_pss(large, snap_4g, 4)
        uncapped = concurrent_pss(large, snap_4g, 1, tb_size_mib=None)
        eight = eight_at_once(large, snap_4g)
    cold_s = statistics.median(cold_4g)
    first_4g = statistics.median(t[0] for t in resume_4g)
    end_4g = statistics.median(t[1] for t in resume_4g)
    end_1g = statistics.median(t[1] for t in resume_1g)
    end_plain = statistics.median(t[1] for t in resume_plain)
    end_internal = statistics.median(t[1] for t in resume_internal)
    copy_internal = statistics.median(t[3] for t in resume_internal)
    marginal_mib = {
        k: round((four[k] - one[k]) / 3 / mib, 1) for k in ("total", "guest", "tcg", "other")
    }
    figures: dict[str, Any] = {
        "cold_ready_s": [round(t, 2) for t in cold_4g],
        "cold_median_s": round(cold_s, 2),
        "resume_first_byte_4g_s": [round(t[0], 3) for t in resume_4g],
        "resume_end_4g_s": [round(t[1], 3) for t in resume_4g],
        "resume_ready_4g_s": [round(t[2], 3) for t in resume_4g],
        "resume_end_1g_s": [round(t[1], 3) for t in resume_1g],
        "resume_first_byte_over_cold": round(first_4g / cold_s, 4),
        "resume_end_over_cold": round(end_4g / cold_s, 4),
        "resume_4g_over_1g": round(end_4g / end_1g, 3),
        "plain_migrate_end_s": [round(t[1], 3) for t in resume_plain],
        "plain_migrate_state_mib": round(plain_state_mib, 1),
        "plain_migrate_over_ours": round(end_plain / end_4g, 3),
        "savevm_loadvm_end_s": [round(t[1], 3) for t in resume_internal],
        "savevm_loadvm_copy_s": [round(t[3], 3) for t in resume_internal],
        "savevm_images_mib": round(internal_disk_mib, 1),
        "savevm_loadvm_over_ours": round(end_internal / end_4g, 3),
        "stream_first_byte_s": round(stream_first, 3),
        "stream_end_s": round(stream_end, 3),
        "pss_1_launch_mib": round(one["total"] / mib, 1),
        "pss_4_launches_mib": round(four["total"] / mib, 1),
        "pss_4_over_1": round(four["total"] / one["total"], 3),
        "pss_marginal_mib": marginal_mib,
        "tb_size_mib": snapshot.TB_SIZE_MIB,
        "tcg_cache_capped_mib": round(one["tcg"] / mib, 1),
        "tcg_cache_default_mib": round(uncapped["tcg"] / mib, 1),
        "pss_1_launch_default_tb_mib": round(uncapped["total"] / mib, 1),
        "work_capped_s": round(one["work_s"], 3),
        "work_default_tb_s": round(uncapped["work_s"], 3),
        "work_capped_over_default": round(one["work_s"] / uncapped["work_s"], 3),
        "eight_launches": eight,
    }
    f = figures
    print(f"cold boot to ready            {cold_s:8.2f} s  (median of {args.runs})")
    ready_4g = statistics.median(t[2] for t in resume_4g)
    print(f"resume to ready (4 GiB)       {ready_4g:8.3f} s  (resumed, personalized)")
    print(f"resume to first byte (4 GiB)  {first_4g:8.3f} s  "
          f"= {100 * f['resume_first_byte_over_cold']:.2f} % of cold")  # fmt: skip
    print(f"resume to its end (4 GiB)     {end_4g:8.3f} s  "
          f"= {100 * f['resume_end_over_cold']:.2f} % of cold")  # fmt: skip
    print(f"resume to its end (1 GiB)     {end_1g:8.3f} s  4 GiB / 1 GiB = "
          f"{f['resume_4g_over_1g']:.2f}")  # fmt: skip
    print(f"plain migrate + -incoming     {end_plain:8.3f} s  = {f['plain_migrate_over_ours']:.2f}"
          f" x ours (state file {plain_state_mib:.0f} MiB: RAM in the stream)")  # fmt: skip
    print(f"savevm + -loadvm              {end_internal:8.3f} s  = "
          f"{f['savevm_loadvm_over_ours']:.2f} x ours (of it {copy_internal:.2f} s copying the "
          f"{internal_disk_mib:.0f} MiB of images holding the state)")  # fmt: skip
    print(f"streaming: first line         {stream_first:8.3f} s  end {stream_end:.3f} s")
    print(f"host PSS, 1 launch            {f['pss_1_launch_mib']:8.1f} MiB")
    print(f"host PSS, 4 launches          {f['pss_4_launches_mib']:8.1f} MiB  "
          f"= {f['pss_4_over_1']:.2f} x one")  # fmt: skip
    m = marginal_mib
    print(f"per extra launch              {m['total']:8.1f} MiB  (guest pages "
          f"{m['guest']}, TCG cache {m['tcg']}, other {m['other']})")  # fmt: skip
    print(f"TCG cache, tb-size {snapshot.TB_SIZE_MIB} MiB     {f['tcg_cache_capped_mib']:8.1f} MiB"
          f"  (QEMU's default: {f['tcg_cache_default_mib']} MiB); the work took "
          f"{f['work_capped_over_default']:.2f} x as long")  # fmt: skip
    print(f"8 launches at once            {eight['all_s']:8.2f} s  until all "
          f"{eight['answered']} had run a command (first {eight['first_s']} s)")  # fmt: skip
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
