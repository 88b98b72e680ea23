"""Which accelerator QEMU can really use here.

/dev/kvm existing proves nothing: on some nested hosts a KVM guest stops with
"KVM internal error ... emulation failure" as soon as the UEFI firmware runs,
and QEMU then sits paused forever. So the probe boots the very firmware a build
boots (OVMF on q35, AAVMF on virt) with no disk, under a timeout, and decides
by QMP ``query-status`` and the firmware's first bytes on the serial console.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from qemu.qmp.legacy import QEMUMonitorProtocol

from image import run
from image.files import atomic_write_text
from image.vm.firmware import find_firmware

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 8.0  # a working KVM prints in well under a second; TCG OVMF in ~3 s here
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "amd64": "amd64"}
QEMU_BINARY = {"amd64": "qemu-system-x86_64", "arm64": "qemu-system-aarch64"}


class Verdict(str, enum.Enum):
    USABLE = "usable"
    BROKEN = "present but unusable"
    ABSENT = "absent"


@dataclass(frozen=True)
class ProbeResult:
    accel: str  # what was probed: kvm (or tcg when the probe itself is under test)
    verdict: Verdict
    detail: str
    seconds: float

    def summary(self) -> str:
        if self.verdict is Verdict.USABLE:
            return f"{self.accel.upper()} usable ({self.detail})"
        return f"{self.accel.upper()} {self.verdict.value} — using TCG ({self.detail})"


def host_arch() -> str:
    return HOST_ARCH.get(platform.machine(), platform.machine())


def probe_argv(arch: str, accel: str, firmware_code: Path, serial: Path, qmp: Path) -> list[str]:
    """The probe guest: the build's machine type and firmware, nothing else."""
    machine = ["-machine", "q35"] if arch == "amd64" else ["-machine", "virt", "-cpu", "max"]
    if arch == "arm64" and accel == "kvm":
        machine = ["-machine", "virt", "-cpu", "host"]
    return [
        QEMU_BINARY[arch], *machine, "-accel", accel,
        "-nodefaults", "-display", "none", "-m", "256",
        "-drive", f"if=pflash,format=raw,readonly=on,file={firmware_code}",
        "-serial", f"file:{serial}",
        "-qmp", f"unix:{qmp}",
    ]  # fmt: skip


def probe(
    arch: str, accel: str = "kvm", device: Path = Path("/dev/kvm"), timeout: float = PROBE_TIMEOUT
) -> ProbeResult:
    """Start the probe guest under ``accel``; the process is gone when this returns."""
    start = time.monotonic()
    if accel == "kvm":
        if not device.exists():
            return ProbeResult(accel, Verdict.ABSENT, f"no {device}", 0.0)
        if not os.access(device, os.R_OK | os.W_OK):
            return ProbeResult(accel, Verdict.BROKEN, f"{device} not accessible", 0.0)
        if arch != host_arch():
            return ProbeResult(accel, Verdict.ABSENT, f"{arch} guest on {host_arch()} host", 0.0)
    firmware = find_firmware(arch)
    with tempfile.TemporaryDirectory(prefix="accel-probe-") as tmp:
        serial, qmp_path = Path(tmp) / "serial.log", Path(tmp) / "qmp.sock"
        qmp = QEMUMonitorProtocol(str(qmp_path), server=True)
        try:
            argv = probe_argv(arch, accel, firmware.code, serial, qmp_path)
            with run.background(argv, stdout=Path(tmp) / "qemu.log", terminate_timeout=2) as proc:
                qmp.accept(timeout)
                while (elapsed := time.monotonic() - start) < timeout:
                    status = qmp.cmd("query-status")
                    state = status["status"] if isinstance(status, dict) else "?"
                    if state == "internal-error":
                        return ProbeResult(
                            accel, Verdict.BROKEN, "guest stopped with an internal error", elapsed
                        )
                    if serial.exists() and serial.stat().st_size > 0:
                        return ProbeResult(
                            accel, Verdict.USABLE, f"firmware ran in {elapsed:.1f} s", elapsed
                        )
                    if proc.poll() is not None:
                        reason = (Path(tmp) / "qemu.log").read_text(errors="replace").strip()
                        return ProbeResult(
                            accel, Verdict.BROKEN, f"qemu exited: {reason[-200:]}", elapsed
                        )
                    time.sleep(0.1)
                return ProbeResult(
                    accel,
                    Verdict.BROKEN,
                    f"no firmware output within {timeout:g} s (hangs)",
                    timeout,
                )
        except TimeoutError:
            # QEMU did not even connect its monitor in time: as hung as a silent guest.
            elapsed = time.monotonic() - start
            return ProbeResult(
                accel, Verdict.BROKEN, f"no monitor answer within {timeout:g} s (hangs)", elapsed
            )
        except OSError as exc:
            elapsed = time.monotonic() - start
            return ProbeResult(accel, Verdict.BROKEN, f"probe failed: {exc}", elapsed)
        finally:
            with contextlib.suppress(Exception):
                qmp.close()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def probe_cached(arch: str, cache_dir: Path) -> ProbeResult:
    """The KVM verdict, remembered for this host boot (it cannot change before a reboot)."""
    path = cache_dir / "accel" / f"{arch}-{_boot_id()}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads(path.read_text())
        return ProbeResult(data["accel"], Verdict(data["verdict"]), data["detail"], data["seconds"])
    result = probe(arch)
    atomic_write_text(path, json.dumps(asdict(result)))
    return result


# What a build or snapshot waits when not told (seconds): (boot, provisioning).
# Under TCG every guest instruction is emulated: the full profile's provisioning
# took 17-25 min here on amd64 with 2 cores, and an arm64 guest on an x86_64
# host is several times slower again; KVM and HVF run it at native speed.
DEFAULT_TIMEOUTS = {"hardware": (900.0, 5400.0), "tcg": (2700.0, 21600.0)}


def is_tcg(accel_args: Sequence[str]) -> bool:
    return any(a.startswith("tcg") for a in accel_args)


def timeouts(
    accel_args: Sequence[str], boot: float | None, provision: float | None
) -> tuple[float, float]:
    """The (boot, provisioning) timeouts: those given, else the accelerator's defaults."""
    default_boot, default_provision = DEFAULT_TIMEOUTS["tcg" if is_tcg(accel_args) else "hardware"]
    return (boot or default_boot, provision or default_provision)


def accel_argv(choice: str, arch: str, cache_dir: Path) -> tuple[list[str], str]:
    """-accel arguments for a guest of ``arch`` and a human-readable reason."""
    if choice == "tcg":
        return ["-accel", "tcg,thread=multi"], "TCG (asked for)"
    if choice in ("kvm", "hvf"):
        return ["-accel", choice], f"{choice.upper()} (asked for)"
    if platform.system() == "Darwin" and arch == host_arch():
        return ["-accel", "hvf"], "HVF (macOS host)"
    result = probe_cached(arch, cache_dir)
    if result.verdict is Verdict.USABLE:
        return ["-accel", "kvm"], result.summary()
    return ["-accel", "tcg,thread=multi"], result.summary()
