"""Where a sandboxed command's start goes, inside a launched guest.

    .venv/bin/python bench/sandbox_start.py --snapshot out/demo/snapshot [--runs 5]

One launch from SNAPSHOT. Through the exec channel: its first sandboxed `true`, which
runs in the standby sandbox the snapshot saved (docs/exec.md); then each of these
timed RUNS times in a row (medians):
- the host's round trip of an unsandboxed `true` (the baseline);
- a sandboxed `true` the way every launch runs one (the agent's prepared sandbox:
  the outer bridges, bwrap, the inner stage, its bridges, Landlock, both filters);
and inside the guest, by a timing script the agent runs as root, what that start is
made of, each piece started alone: a bare interpreter (`python3 -I -S -c pass`), the
inner stage run to exec `true` without bridges, the inner stage's imports as the
launcher had them before it became a module of its own (for comparison), `socat -V`,
and bwrap making its namespaces around `true`.
Ratios are to the unsandboxed round trip. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from image.runtime import api

LIB = "/usr/local/lib/sandbox-image"

# Runs in the guest as root. Each piece alone, RUNS times; medians in seconds.
PIECES = r"""
import json, statistics, subprocess, sys, time
runs = int(sys.argv[1])
lib = sys.argv[2]
pieces = {
    "python3 -I -S -c pass": ["python3", "-I", "-S", "-c", "pass"],
    "inner stage, no bridges, exec true": [
        "python3", "-I", "-S", lib + "/sandbox_inner.py", "--", "true"],
    "launcher module imported (the old inner stage's imports)": [
        "python3", "-I", "-c", "import sys; sys.path.insert(0, %r); import sandbox_exec" % lib],
    "socat -V": ["socat", "-V"],
    "bwrap --unshare-all around true": [
        "bwrap", "--unshare-all", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
        "--cap-drop", "ALL", "true"],
}
out = {}
for name, argv in pieces.items():
    times = []
    for _ in range(runs):
        t = time.monotonic()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.monotonic() - t)
    out[name] = statistics.median(times)
print(json.dumps(out))
"""


def _median_run(sandbox: api.Sandbox, runs: int, *, sandboxed: bool) -> float:
    times = []
    for _ in range(runs):
        start = time.monotonic()
        result = sandbox.run(["true"]) if sandboxed else sandbox.session.run(["true"])
        times.append(time.monotonic() - start)
        if result.code != 0:
            raise SystemExit(f"`true` failed in the guest: {result}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", required=True, type=Path)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with api.launch(args.snapshot) as sandbox:
        ready = sandbox.timings.get("ready")
        start = time.monotonic()
        first = sandbox.spawn(["true"])
        first.close_stdin()
        first_result = first.wait(600)
        first_s = time.monotonic() - start
        if first_result.code != 0:
            raise SystemExit(f"a sandboxed `true` failed: {first_result}")
        plain = _median_run(sandbox, args.runs, sandboxed=False)
        boxed = _median_run(sandbox, args.runs, sandboxed=True)
        result = sandbox.session.run(["python3", "-I", "-c", PIECES, str(args.runs), LIB])
        if result.code != 0:
            raise SystemExit(f"the timing script failed: {result.stderr.decode()[-2000:]}")
        pieces: dict[str, float] = json.loads(result.stdout.decode().splitlines()[-1])
    figures: dict[str, Any] = {
        "runs": args.runs,
        "launch_ready_s": ready,
        "first_sandboxed_true_s": round(first_s, 3),
        "first_ran_in_the_standby": first.standby,
        "unsandboxed_true_s": round(plain, 3),
        "sandboxed_true_s": round(boxed, 3),
        "sandboxed_over_unsandboxed": round(boxed / plain, 2),
        "pieces_s": {k: round(v, 3) for k, v in pieces.items()},
    }
    print(f"launch ready                        {ready:7.3f} s" if ready else "launch ready: -")
    print(f"first sandboxed `true`              {first_s:7.3f} s"
          f"{'  (the standby)' if first.standby else '  (no standby: started)'}")  # fmt: skip
    print(f"unsandboxed `true` (median)         {plain:7.3f} s")
    print(
        f"sandboxed `true` (median)           {boxed:7.3f} s  = {boxed / plain:.1f} x unsandboxed"
    )
    print("inside the guest, each piece alone (median):")
    for name, seconds in pieces.items():
        print(f"  {name:58s} {seconds:7.3f} s  = {seconds / plain:.1f} x")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
