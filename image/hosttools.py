"""The host tools the pipeline uses: how to find each, its version, how to install it."""

from __future__ import annotations

import ctypes.util
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from image import run
from image.errors import ImageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tool:
    name: str
    package: str  # Debian/Ubuntu package that provides it
    used_for: str
    command: str | None = None  # found on PATH
    path: str | None = None  # or: a file that must exist
    library: str | None = None  # or: a shared library ctypes can find
    version_argv: tuple[str, ...] = ("--version",)
    check: Callable[[], bool] | None = None  # or: a custom presence check
    fix: str | None = None  # how to fix it when missing, if not "apt-get install <package>"

    def found(self) -> bool:
        if self.check is not None:
            return self.check()
        if self.command:
            return shutil.which(self.command) is not None
        if self.path:
            return Path(self.path).exists()
        if self.library:
            return ctypes.util.find_library(self.library) is not None
        return False

    def version(self) -> str:
        if not self.found():
            return ""
        if self.command and self.version_argv:
            try:
                # Not image.run.run: a version query is not a pipeline step worth logging.
                proc = subprocess.run(
                    [self.command, *self.version_argv],
                    capture_output=True,
                    timeout=10,
                    stdin=subprocess.DEVNULL,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired):
                return "?"
            text = (proc.stdout or proc.stderr).decode(errors="replace")
            m = _VERSION.search(text)
            return m.group(0) if m else "?"
        return _dpkg_version(self.package)


_VERSION = re.compile(r"\d+\.\d+[\w.+~:-]*")


def _dpkg_version(package: str) -> str:
    try:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return proc.stdout.decode().strip() or "?"


def _binfmt_aarch64() -> bool:
    return Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists()


TOOLS: tuple[Tool, ...] = (
    Tool("qemu-system-x86_64", "qemu-system-x86", "amd64 VMs", command="qemu-system-x86_64"),
    Tool("qemu-system-aarch64", "qemu-system-arm", "arm64 VMs", command="qemu-system-aarch64"),
    Tool("qemu-img", "qemu-utils", "disks", command="qemu-img"),
    Tool("OVMF", "ovmf", "amd64 UEFI", path="/usr/share/OVMF/OVMF_CODE_4M.fd"),
    Tool("AAVMF", "qemu-efi-aarch64", "arm64 UEFI", path="/usr/share/AAVMF/AAVMF_CODE.fd"),
    Tool("bwrap", "bubblewrap", "sandbox", command="bwrap"),
    Tool("socat", "socat", "proxy bridge", command="socat", version_argv=("-V",)),
    Tool("gpg", "gnupg", "keys", command="gpg"),
    Tool("gpgv", "gpgv", "SHA256SUMS signature", command="gpgv"),
    Tool("libseccomp", "libseccomp2", "seccomp BPF", library="seccomp"),
    Tool("gcc", "gcc", "escape-suite probes", command="gcc"),
    Tool(
        "aarch64-linux-gnu-gcc",
        "gcc-aarch64-linux-gnu",
        "arm64 escape-suite probe (cross-compiled, run in the guest)",
        command="aarch64-linux-gnu-gcc",
    ),
    # --no-install-recommends leaves out the C library gcc recommends: the static
    # aarch64 probe links against its libc.a.
    Tool(
        "aarch64 libc.a",
        "libc6-dev-arm64-cross",
        "arm64 escape-suite probe (static link)",
        path="/usr/aarch64-linux-gnu/lib/libc.a",
    ),
    Tool(
        "arm-linux-gnueabihf-gcc",
        "gcc-arm-linux-gnueabihf",
        "arm32 probe: the compat ABI refused in arm64 guests",
        command="arm-linux-gnueabihf-gcc",
    ),
    Tool("cloud-init", "cloud-init", "schema validation", command="cloud-init"),
    Tool(
        "isoinfo",
        "genisoimage",
        "seed ISO read-back",
        command="isoinfo",
        version_argv=("-version",),
    ),
    Tool("mmdebstrap", "mmdebstrap", "stand-in image", command="mmdebstrap"),
    Tool(
        "grub-mkstandalone", "grub-efi-amd64-bin", "stand-in EFI boot", command="grub-mkstandalone"
    ),
    Tool(
        "grub x86_64-efi",
        "grub-efi-amd64-bin",
        "stand-in EFI boot",
        path="/usr/lib/grub/x86_64-efi/modinfo.sh",
    ),
    Tool("sfdisk", "fdisk", "stand-in GPT", command="sfdisk"),
    Tool("mkfs.ext4", "e2fsprogs", "stand-in root fs", command="mkfs.ext4", version_argv=("-V",)),
    Tool("mkfs.vfat", "dosfstools", "stand-in ESP", command="mkfs.vfat", version_argv=()),
    Tool("mcopy", "mtools", "stand-in ESP", command="mcopy"),
    Tool(
        "qemu-aarch64-static",
        "qemu-user-static",
        "arm64 stand-in",
        command="qemu-aarch64-static",
        version_argv=("--version",),
    ),
    Tool(
        "arch-test",
        "arch-test",
        "arm64 stand-in (mmdebstrap's foreign-arch check)",
        command="arch-test",
        version_argv=(),
    ),
    Tool(
        "docker-registry",
        "docker-registry",
        "publish/pull tests (a local OCI registry)",
        command="docker-registry",
    ),
    Tool("chromium", "chromium", "report rendering test (headless)", command="chromium"),
    Tool("curl", "curl", "apt-source key script tests (it runs as in the guest)", command="curl"),
    # The skills' scripts run on the host in the integration tier with the image's tools.
    Tool(
        "swriter",
        "libreoffice-writer",
        "skills tests (LibreOffice Writer)",
        path="/usr/lib/libreoffice/program/swriter",
    ),
    Tool(
        "scalc",
        "libreoffice-calc",
        "skills tests (LibreOffice Calc)",
        path="/usr/lib/libreoffice/program/scalc",
    ),
    Tool(
        "simpress",
        "libreoffice-impress",
        "skills tests (LibreOffice Impress)",
        path="/usr/lib/libreoffice/program/simpress",
    ),
    Tool(
        "pdftoppm",
        "poppler-utils",
        "skills tests (PDF to PNG, text)",
        command="pdftoppm",
        version_argv=("-v",),
    ),
    Tool("qpdf", "qpdf", "skills tests (PDF pages)", command="qpdf"),
    Tool("tesseract", "tesseract-ocr", "skills tests (OCR)", command="tesseract"),
    Tool(
        "tesseract eng",
        "tesseract-ocr-eng",
        "skills tests (OCR, English)",
        path="/usr/share/tesseract-ocr/5/tessdata/eng.traineddata",
    ),
    Tool("gs", "ghostscript", "skills tests (PDF rendering)", command="gs"),
    Tool("convert", "imagemagick", "skills tests (images)", command="convert"),
    Tool("pandoc", "pandoc", "skills tests (Markdown)", command="pandoc"),
    Tool("rsvg-convert", "librsvg2-bin", "skills tests (SVG)", command="rsvg-convert"),
    Tool(
        "DejaVu fonts",
        "fonts-dejavu-core",
        "skills tests (rendered text)",
        path="/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    ),
    Tool(
        "Liberation fonts",
        "fonts-liberation2",
        "skills tests (the design skill's pinned fonts, as the image has them)",
        path="/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
    ),
    Tool("dpkg-deb", "dpkg", "offline third-party repository (nodejs .deb)", command="dpkg-deb"),
    Tool(
        "apt-ftparchive",
        "apt-utils",
        "offline third-party repository (Packages, Release)",
        command="apt-ftparchive",
        version_argv=(),
    ),
    Tool(
        "binfmt aarch64",
        "binfmt-support",
        "arm64 stand-in",
        check=_binfmt_aarch64,
        fix="./inv doctor --install (mounts binfmt_misc, update-binfmts --enable)",
    ),
)
BY_NAME = {t.name: t for t in TOOLS}


def missing(names: Iterable[str] | None = None) -> list[Tool]:
    chosen = TOOLS if names is None else tuple(BY_NAME[n] for n in names)
    return [t for t in chosen if not t.found()]


def fix_for(tool: Tool) -> str:
    return tool.fix or f"apt-get install {tool.package}"


def install_command(tools: Sequence[Tool]) -> list[str]:
    packages = sorted({t.package for t in tools})
    return ["apt-get", "install", "-y", "--no-install-recommends", *packages]


def require(names: Iterable[str], for_what: str) -> None:
    """Make sure these tools are here: as root, apt-get install what is missing (as
    ``./inv test`` does, so ``./inv demo`` works on a fresh machine); otherwise raise
    with the exact install command."""
    names = list(names)
    absent = missing(names)
    if absent and os.geteuid() == 0 and shutil.which("apt-get"):
        log.info("%s needs %s: installing (as root)", for_what, ", ".join(t.name for t in absent))
        install_missing(names)
        absent = missing(names)
    if absent:
        raise ImageError(
            f"{for_what} needs host tools that are missing: {', '.join(t.name for t in absent)}",
            hint=" ".join(install_command(absent)) + "   (or, as root: ./inv doctor --install)",
        )


def vm_tools(arch: str) -> list[str]:
    """What booting a guest of ``arch`` (arm64, amd64) needs on this host."""
    if arch == "arm64":
        return ["qemu-system-aarch64", "qemu-img", "AAVMF", "socat"]
    return ["qemu-system-x86_64", "qemu-img", "OVMF", "socat"]


def enable_binfmt() -> None:
    """Register qemu-user binfmt handlers so arm64 chroots run on an x86_64 host."""
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "register").exists():
        run.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)])
    run.run(["update-binfmts", "--enable"], check=False)


def install_missing(names: Iterable[str] | None = None) -> list[Tool]:
    """apt-get install what is missing of ``names`` (default: every tool; root only).
    Returns what was installed."""
    absent = missing(names)
    if not absent:
        return []
    if os.geteuid() != 0:
        raise ImageError(
            "installing host tools needs root",
            hint="sudo " + " ".join(install_command(absent)),
        )
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    run.run(["apt-get", "update"], env=env, timeout=900)
    # binfmt "missing" often only means binfmt_misc is not mounted: no package needed.
    packages = [t for t in absent if t.check is None or not shutil.which("update-binfmts")]
    if packages:
        run.run(install_command(packages), env=env, timeout=1800)
    if any(t.name == "binfmt aarch64" for t in absent) and not _binfmt_aarch64():
        enable_binfmt()
    return absent
