"""arm64 under TCG: boot-to-ready of CPU models and TCG options, against the current default.

    .venv/bin/python bench/arm64_boot.py [--rounds 2] [--variants a,b]

Each run boots the cached arm64 stand-in through AAVMF on ``-machine virt`` with
the project's own argv (``image.vm.qemu.qemu_argv``), changing only ``-cpu`` or
``-accel``, and a NoCloud seed whose ``runcmd`` writes a mark on the serial
console. Ready = QEMU start to that mark (host clock): firmware, GRUB, kernel,
systemd and cloud-init's four stages, all emulated. SSH host keys, growpart and
resizefs are switched off in the seed: they vary from boot to boot and measure
entropy and disk, not the CPU emulation this bench compares.

Rounds interleave the variants (the order rotates each round) so that load from
other work on the machine spreads over all of them; each variant's figure is its
median, and its ratio is that median over the default's (below 1 = faster).
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image import config, console, run
from image.build import cloudinit
from image.errors import ImageError
from image.source import standin
from image.vm import qemu
from image.vm.firmware import find_firmware

MARK = b"BENCH-READY"
TIMEOUT = 1200.0
USER_DATA = b"""\
#cloud-config
ssh_genkeytypes: []
growpart: {mode: "off"}
resize_rootfs: false
runcmd:
  - echo "BENCH-READY $(cut -d ' ' -f 1 /proc/uptime)" > /dev/console
"""
META_DATA = b"instance-id: bench-arm64\nlocal-hostname: bench\n"


@dataclass(frozen=True)
class Variant:
    name: str
    cpu: str | None = None  # replaces -cpu's value
    accel: str | None = None  # replaces -accel's value
    what: str = ""


DEFAULT = Variant("default", what="the project's argv as it is (machine_args + accel_argv)")
VARIANTS = (
    DEFAULT,
    Variant("max", cpu="max", what="architected pointer auth (QARMA5)"),
    Variant("max-pauth-off", cpu="max,pauth=off", what="no pointer auth at all"),
    Variant("cortex-a72", cpu="cortex-a72", what="ARMv8.0: no pauth, no SVE, no MTE"),
    Variant("neoverse-n1", cpu="neoverse-n1", what="ARMv8.2: no pauth, no SVE"),
    Variant("thread-single", accel="tcg,thread=single", what="one host thread for all vCPUs"),
)


def variant_argv(argv: list[str], variant: Variant) -> list[str]:
    """The default argv with only -cpu / -accel replaced."""
    out = list(argv)
    for flag, value in (("-cpu", variant.cpu), ("-accel", variant.accel)):
        if value is not None:
            out[out.index(flag) + 1] = value
    return out


def boot_once(image: Path, variant: Variant, cpus: int, memory: int, cache: Path) -> float:
    fw = find_firmware("arm64")
    with tempfile.TemporaryDirectory(prefix="bench-arm64-", dir=cache) as tmp:
        work = Path(tmp)
        disk = work / "disk.qcow2"
        qemu.create_overlay(image, disk)
        seed = work / "seed.iso"
        cloudinit.write_seed_iso({"user-data": USER_DATA, "meta-data": META_DATA}, seed)
        spec = qemu.VMSpec(
            arch="arm64", cpus=cpus, memory=memory, disk=disk, firmware_code=fw.code,
            firmware_vars=qemu.copy_vars(fw.vars_template, work / "VARS.fd"),
            accel=("-accel", "tcg,thread=multi"), serial_log=work / "serial.log",
            qmp_socket=work / "qmp.sock", seed_iso=seed, disk_cache="unsafe",
        )  # fmt: skip
        argv = variant_argv(qemu.qemu_argv(spec), variant)
        start = time.monotonic()
        with run.background(argv, stdout=work / "qemu.log", terminate_timeout=5) as proc:
            while time.monotonic() - start < TIMEOUT:
                if spec.serial_log.exists() and MARK in spec.serial_log.read_bytes():
                    return time.monotonic() - start
                if proc.poll() is not None:
                    log = (work / "qemu.log").read_text(errors="replace")[-500:]
                    raise ImageError(f"{variant.name}: QEMU exited ({proc.returncode}): {log}")
                time.sleep(0.2)
        raise ImageError(
            f"{variant.name}: no ready mark within {TIMEOUT:g} s",
            hint=qemu.serial_tail(spec.serial_log),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--memory", default="2G")
    parser.add_argument("--variants", help="comma-separated names (default: all)")
    args = parser.parse_args()
    console.setup_logging()
    cfg = config.resolve({"arch": "arm64", "cpus": args.cpus, "memory": args.memory}, {}, {})
    cache = cfg.config.cache_dir
    image = standin.ensure(cache, "arm64").path
    chosen = [v for v in VARIANTS if not args.variants or v.name in args.variants.split(",")]
    if DEFAULT not in chosen:
        chosen.insert(0, DEFAULT)
    times: dict[str, list[float]] = {v.name: [] for v in chosen}
    for r in range(args.rounds):
        order = chosen[r % len(chosen) :] + chosen[: r % len(chosen)]
        for variant in order:
            seconds = boot_once(image, variant, args.cpus, cfg.config.memory, cache)
            times[variant.name].append(round(seconds, 1))
            print(f"round {r + 1}: {variant.name:14} {seconds:7.1f} s", flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    figures: dict[str, Any] = {"cpus": args.cpus, "memory": args.memory, "rounds": args.rounds,
                               "variants": {}}  # fmt: skip
    print(f"\n{'variant':14} {'median s':>9} {'vs default':>10}  runs")
    for variant in chosen:
        ratio = medians[variant.name] / medians[DEFAULT.name]
        figures["variants"][variant.name] = {
            "cpu": variant.cpu, "accel": variant.accel, "what": variant.what,
            "ready_s": times[variant.name], "median_s": round(medians[variant.name], 1),
            "ratio_vs_default": round(ratio, 3),
        }  # fmt: skip
        print(f"{variant.name:14} {medians[variant.name]:9.1f} {ratio:10.3f}  "
              f"{times[variant.name]}")  # fmt: skip
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
