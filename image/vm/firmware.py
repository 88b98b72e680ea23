"""Where the UEFI firmware files live (Debian/Ubuntu packaging, then other distros)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from image.errors import ImageError

# (code, vars template) pairs in order of preference. The 4M OVMF build is the
# one with a VARS store large enough for secure boot keys and snapshot-friendly
# pflash sizing; AAVMF images are padded to 64 MiB as -machine virt requires.
_CANDIDATES: dict[str, tuple[tuple[str, str], ...]] = {
    "amd64": (
        ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
        ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
        ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
    ),
    "arm64": (
        ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
        (
            "/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw",
            "/usr/share/edk2/aarch64/vars-template-pflash.raw",
        ),
    ),
}
PACKAGE = {"amd64": "ovmf", "arm64": "qemu-efi-aarch64"}


@dataclass(frozen=True)
class Firmware:
    code: Path
    vars_template: Path


def find_firmware(arch: str) -> Firmware:
    for code, vars_template in _CANDIDATES[arch]:
        if Path(code).is_file() and Path(vars_template).is_file():
            return Firmware(Path(code), Path(vars_template))
    raise ImageError(
        f"no UEFI firmware for {arch} found (looked for {_CANDIDATES[arch][0][0]})",
        hint=f"apt-get install {PACKAGE[arch]}   (or run ./inv doctor --install as root)",
    )
