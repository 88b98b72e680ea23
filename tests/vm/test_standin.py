"""The stand-in boots through UEFI under TCG and cloud-init provisions it from NoCloud.

amd64 boots with OVMF on q35 (every run); arm64 with AAVMF on -machine virt
(``./inv test --arm64``: it is much slower under TCG).

One boot proves what the offline pipeline relies on: UEFI finds the standalone GRUB,
GRUB finds the root by label, cloud-init reads a CIDATA disk, makes SSH host keys,
grows the root partition to the disk, brings the network up with DNS, apt reaches
Debian's mirror, and the guest powers off when told to.
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pycdlib
import pytest

from image import config, run
from image.source import standin
from image.vm import firmware
from tests.hosttools import need

# TCG on a shared 2-core host; typical times are far less (docs/standin.md).
BOOT_TIMEOUT = {"amd64": 900.0, "arm64": 2400.0}
DISK_SIZE = 10 << 30
MARK = "STANDIN-"

USER_DATA = b"""\
#cloud-config
runcmd:
  - |
    {
      echo "STANDIN-UPTIME $(cut -d ' ' -f 1 /proc/uptime)"
      echo "STANDIN-ROOT-BYTES $(df -B1 --output=size / | tail -n 1 | tr -d ' ')"
      echo "STANDIN-MACHINE-ID $(cat /etc/machine-id)"
      echo "STANDIN-HOSTKEY $(test -s /etc/ssh/ssh_host_ed25519_key.pub && echo yes || echo no)"
      echo "STANDIN-APT $(apt-get -q update >/dev/null 2>&1 && echo ok || echo failed)"
      grep -E -A8 'WARNING|Traceback' /var/log/cloud-init.log | sed 's/^/STANDIN-LOG /'
      echo "STANDIN-READY"
    } > /dev/console 2>&1
power_state:
  mode: poweroff
  delay: now
  condition: true
"""
META_DATA = b"instance-id: standin-test-1\nlocal-hostname: standin\n"
NETWORK_CONFIG = b"""\
version: 2
ethernets:
  nics:
    match:
      name: "e*"
    dhcp4: true
"""


def seed_iso(path: Path, files: dict[str, bytes]) -> None:
    """A NoCloud seed: ISO 9660 labelled CIDATA, long names through Rock Ridge and Joliet."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="CIDATA")
    for name, data in files.items():
        short = name.replace("-", "").upper()[:8]
        iso.add_fp(
            io.BytesIO(data), len(data), f"/{short}.;1", rr_name=name, joliet_path=f"/{name}"
        )
    iso.write(str(path))
    iso.close()


def qemu_argv(
    arch: str, fw: firmware.Firmware, vars_file: Path, disk: Path, seed: Path, serial: Path
) -> list[str]:
    machine = {
        "amd64": ["qemu-system-x86_64", "-machine", "q35", "-cpu", "max"],
        # pauth-impdef: TCG's architected pointer-auth is very slow; the guest cannot tell.
        "arm64": ["qemu-system-aarch64", "-machine", "virt", "-cpu", "max,pauth-impdef=on"],
    }[arch]
    return [
        *machine,
        "-accel", "tcg,thread=multi", "-smp", "2", "-m", "2048",
        "-nodefaults", "-display", "none", "-no-reboot",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={fw.code}",
        "-drive", f"if=pflash,format=raw,unit=1,file={vars_file}",
        "-drive", f"if=virtio,format=qcow2,file={disk}",
        # The cloud kernel has no AHCI: the seed is a virtio disk, not -cdrom.
        "-drive", f"if=virtio,format=raw,readonly=on,file={seed}",
        "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0",
        "-serial", f"file:{serial}",
    ]  # fmt: skip


@dataclass
class Boot:
    serial: str
    seconds_to_ready: float
    exit_code: int | None

    def marks(self, key: str) -> list[str]:
        prefix = f"{MARK}{key}"
        return [
            line.split(prefix, 1)[1].strip() for line in self.serial.splitlines() if prefix in line
        ]


QEMU_TOOL = {"amd64": ("qemu-system-x86_64", "OVMF"), "arm64": ("qemu-system-aarch64", "AAVMF")}


@pytest.fixture(scope="module", params=["amd64", pytest.param("arm64", marks=pytest.mark.arm64)])
def image(request: pytest.FixtureRequest) -> standin.StandinImage:
    arch: str = request.param
    need(*QEMU_TOOL[arch], "qemu-img", "mmdebstrap", "grub-mkstandalone", "sfdisk",
         "mkfs.ext4", "mkfs.vfat", "mcopy")  # fmt: skip
    cache = config.load({}, None).config.cache_dir
    return standin.ensure(cache, arch)


@pytest.fixture(scope="module")
def boot(image: standin.StandinImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Boot]:
    work = tmp_path_factory.mktemp("standin-boot")
    fw = firmware.find_firmware(image.arch)
    vars_file = work / "OVMF_VARS.fd"
    shutil.copyfile(fw.vars_template, vars_file)
    disk = work / "disk.qcow2"
    run.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            str(image.path),
            str(disk),
            str(DISK_SIZE),
        ]
    )
    seed = work / "seed.iso"
    seed_iso(
        seed, {"user-data": USER_DATA, "meta-data": META_DATA, "network-config": NETWORK_CONFIG}
    )
    serial = work / "serial.log"
    serial.touch()
    ready_at: float | None = None
    start = time.monotonic()
    with run.background(
        qemu_argv(image.arch, fw, vars_file, disk, seed, serial), stdout=work / "qemu.log"
    ) as proc:
        deadline = start + BOOT_TIMEOUT[image.arch]
        while proc.poll() is None and time.monotonic() < deadline:
            if ready_at is None and f"{MARK}READY" in serial.read_text(errors="replace"):
                ready_at = time.monotonic()
            time.sleep(1)
        exit_code = proc.poll()
    text = serial.read_text(errors="replace")
    if ready_at is None and f"{MARK}READY" in text:
        ready_at = time.monotonic()
    tail = "\n".join(text.splitlines()[-40:])
    if ready_at is None:
        pytest.fail(
            f"the stand-in did not finish cloud-init within {BOOT_TIMEOUT[image.arch]:.0f} s "
            f"(qemu exit {exit_code}); serial tail:\n{tail}\n(log: {serial})"
        )
    result = Boot(text, ready_at - start, exit_code)
    print(
        f"\nstand-in {image.arch}: boot to cloud-init runcmd "
        f"{result.seconds_to_ready:.0f} s (TCG, host clock, incl. apt-get update), "
        f"guest uptime at runcmd {result.marks('UPTIME')} s, "
        f"image {image.path.stat().st_size / (1 << 20):.0f} MiB"
    )
    yield result


def test_cloud_init_runs_from_the_nocloud_seed(boot: Boot) -> None:
    assert boot.marks("READY") == [""]


def test_cloud_init_log_has_no_warnings_or_tracebacks(boot: Boot) -> None:
    assert boot.marks("LOG") == []


def test_first_boot_makes_identity(boot: Boot) -> None:
    (machine_id,) = boot.marks("MACHINE-ID")
    assert len(machine_id) == 32
    assert boot.marks("HOSTKEY") == ["yes"]


def test_root_grows_to_the_disk(boot: Boot) -> None:
    (size,) = boot.marks("ROOT-BYTES")
    assert int(size) > DISK_SIZE * 0.9


def test_apt_reaches_debian_through_user_networking(boot: Boot) -> None:
    assert boot.marks("APT") == ["ok"]


def test_guest_powers_off_when_cloud_init_is_done(boot: Boot) -> None:
    assert boot.exit_code == 0
