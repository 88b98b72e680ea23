"""The stand-in base image: a Debian 13 cloud image laid out like Ubuntu's, for offline runs.

Ubuntu's servers are not always reachable (CI, air-gapped hosts, this project's own
tests), so the pipeline runs against a local mirror serving this image instead. It is
what matters about the real image, not a copy of it: a GPT disk whose EFI system
partition holds a standalone GRUB EFI binary and whose ext4 root is labelled
``cloudimg-rootfs``, booting through UEFI firmware, running cloud-init with NoCloud,
growing its root on first boot, with a working apt.

Built without loop mounts or privileges beyond what mmdebstrap needs: the root file
system is made from a directory (``mkfs.ext4 -d``), the ESP with mtools, the
partition table with sfdisk on a plain file, and the pieces are placed with
``dd conv=notrunc``. The result is cached by the SHA-256 of its recipe.

Debian 13 (trixie), not 12: its cloud-init (25.1) is of the generation today's
jammy images ship (24.x and later: gpg with a throwaway home, a stricter
schema, deprecation warnings as "degraded" status), so the stand-in exercises
what a jammy build meets. Its Python is 3.13 and its GCC 14; the full profile's
names that differ are mapped in package-lists/distros/debian.map.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from image import hosttools, run
from image.errors import ImageError

log = logging.getLogger(__name__)

# Bump when the build changes in a way the recipe fields below do not capture.
RECIPE_VERSION = 2

SUITE = "trixie"
ARCHIVE_HOST = "deb.debian.org"  # what the stand-in's apt (and so the build VM) downloads from
SOURCES = (
    "deb http://deb.debian.org/debian trixie main",
    "deb http://deb.debian.org/debian trixie-updates main",
    "deb http://deb.debian.org/debian-security trixie-security main",
)
ROOT_LABEL = "cloudimg-rootfs"
ESP_LABEL = "UEFI"

# What a cloud image needs to boot, be reached and be provisioned, plus what the
# in-guest sandbox launcher runs on. netplan.io + systemd-resolved because that is
# how Ubuntu turns cloud-init's network config into a working network (and DNS).
COMMON_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "systemd-resolved",
    "udev",
    "dbus",
    "kmod",
    "procps",
    "iproute2",
    "netplan.io",
    "cloud-init",
    "cloud-guest-utils",  # growpart: cloud-init grows the root partition on first boot
    "fdisk",
    "e2fsprogs",
    "openssh-server",
    "qemu-guest-agent",
    "sudo",
    "locales",  # for cloud-init's locale module
    "ca-certificates",
    # In every jammy cloud image, and what a build needs before its packages: the
    # key script of a third-party apt source downloads with curl and checks with gpg.
    "curl",
    "gpg",
    "python3",
    "bubblewrap",
    "socat",
    "eatmydata",
)


@dataclass(frozen=True)
class ArchSpec:
    kernel: str  # Debian kernel package with virtio, EFI and the serial console built in
    grub_package: str  # installed in the rootfs: its modules make the EFI binary
    grub_target: str
    efi_binary: str  # the removable-media path firmware boots without NVRAM entries
    console: str


# The generic flavours, like the kernel of Ubuntu's cloud images: Debian's cloud
# flavours leave out 9p, which the sandbox's shared folder needs (and, on arm64,
# the PL011 UART that -machine virt's serial console is).
ARCHES: dict[str, ArchSpec] = {
    "amd64": ArchSpec(
        "linux-image-amd64", "grub-efi-amd64-bin", "x86_64-efi", "BOOTX64.EFI", "ttyS0"
    ),
    "arm64": ArchSpec(
        "linux-image-arm64", "grub-efi-arm64-bin", "arm64-efi", "BOOTAA64.EFI", "ttyAMA0"
    ),
}

GRUB_CFG = """\
# Embedded in the stand-in's standalone GRUB EFI binary: no menu, no NVRAM.
set timeout=0
insmod part_gpt
insmod ext2
search --no-floppy --label {label} --set=root
linux /vmlinuz root=LABEL={label} ro console=tty1 console={console}
initrd /initrd.img
boot
"""

# Our own mke2fs.conf so the file system does not depend on the host's e2fsprogs
# defaults (newer ones enable features such as orphan_file that older GRUBs reject).
MKE2FS_CONF = """\
[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
"""

# Runs on the host after the packages are in, with the rootfs as $1.
CUSTOMIZE_SH = """\
#!/bin/sh
set -eu
root="$1"

cat > "$root/etc/fstab" <<'EOF'
LABEL=cloudimg-rootfs	/	ext4	discard,errors=remount-ro	0 1
LABEL=UEFI	/boot/efi	vfat	umask=0077,nofail	0 1
EOF
mkdir -p "$root/boot/efi"

cat > "$root/etc/cloud/cloud.cfg.d/90_standin.cfg" <<'EOF'
# The stand-in is provisioned from a NoCloud seed (a CIDATA disk), like the
# pipeline's Ubuntu image; None keeps a seedless boot quiet instead of hanging.
datasource_list: [ NoCloud, None ]
system_info:
  default_user:
    name: ubuntu
    lock_passwd: true
    gecos: Ubuntu
    groups: [adm, sudo]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
  network:
    renderers: [netplan]
EOF

# Debian's locale-gen ignores its arguments (Ubuntu's does not), so cloud-init's
# locale module could not make en_US.UTF-8 itself: have it ready, as the default.
sed -i 's/^# *\\(en_US.UTF-8 UTF-8\\)/\\1/' "$root/etc/locale.gen"
chroot "$root" locale-gen
printf 'LANG=en_US.UTF-8\\n' > "$root/etc/default/locale"

printf 'localhost\\n' > "$root/etc/hostname"
printf '127.0.0.1 localhost\\n::1 localhost ip6-localhost ip6-loopback\\n' > "$root/etc/hosts"
# DNS from DHCP reaches programs through resolved's stub, as on Ubuntu.
ln -sfn ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
chroot "$root" systemctl enable systemd-networkd.service systemd-resolved.service

# First boot must look like a first boot: a fresh machine-id, fresh SSH host keys.
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
rm -f "$root"/etc/ssh/ssh_host_*
rm -rf "$root"/var/cache/apt/*.bin "$root"/var/log/apt/* "$root"/var/log/dpkg.log
"""

SECTOR = 512
MIB = 1 << 20
ESP_SIZE = 106 * MIB  # as Ubuntu's jammy cloud image
ESP_START = 1 * MIB
# Room for first-boot writes (SSH keys, logs, apt lists) before growpart runs.
ROOT_HEADROOM = 512 * MIB
GPT_BACKUP = 1 * MIB
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
# Ubuntu's numbering: the root is partition 1 (growpart grows it in place as the
# last partition on the disk), the ESP is 15.
ROOT_PARTNO = 1
ESP_PARTNO = 15
BUILD_TIMEOUT = 3 * 3600.0  # arm64 under qemu-user is slow; a hang must still end


@dataclass(frozen=True)
class Recipe:
    """Everything that decides what the image contains; its hash names the cache entry."""

    version: int
    arch: str
    suite: str
    sources: tuple[str, ...]
    packages: tuple[str, ...]
    customize_sh: str
    grub_cfg: str
    mke2fs_conf: str
    esp_size: int
    root_headroom: int

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def arch_spec(arch: str) -> ArchSpec:
    try:
        return ARCHES[arch]
    except KeyError:
        raise ImageError(
            f"no stand-in for architecture {arch!r}", hint=f"use one of: {', '.join(ARCHES)}"
        ) from None


def grub_cfg(arch: str) -> str:
    return GRUB_CFG.format(label=ROOT_LABEL, console=arch_spec(arch).console)


def recipe(arch: str) -> Recipe:
    spec = arch_spec(arch)
    return Recipe(
        version=RECIPE_VERSION,
        arch=arch,
        suite=SUITE,
        sources=SOURCES,
        packages=(*COMMON_PACKAGES, spec.kernel, spec.grub_package),
        customize_sh=CUSTOMIZE_SH,
        grub_cfg=grub_cfg(arch),
        mke2fs_conf=MKE2FS_CONF,
        esp_size=ESP_SIZE,
        root_headroom=ROOT_HEADROOM,
    )


# --- pure argv and document builders ---------------------------------------------------


def mmdebstrap_argv(rec: Recipe, rootfs: Path, customize: Path) -> list[str]:
    return [
        "mmdebstrap",
        "--mode=root",
        "--variant=apt",
        f"--arch={rec.arch}",
        "--components=main",
        f"--include={','.join(rec.packages)}",
        # No fsync per file: a half-written rootfs is thrown away anyway.
        "--dpkgopt=force-unsafe-io",
        f"--customize-hook={customize}",
        rec.suite,
        str(rootfs),
        *rec.sources,
    ]


def grub_mkstandalone_argv(arch: str, rootfs: Path, cfg: Path, output: Path) -> list[str]:
    target = arch_spec(arch).grub_target
    return [
        "grub-mkstandalone",
        "-O",
        target,
        "-d",
        str(rootfs / "usr/lib/grub" / target),
        "--fonts=",
        "--locales=",
        "--themes=",
        "-o",
        str(output),
        f"boot/grub/grub.cfg={cfg}",
    ]


@dataclass(frozen=True)
class Layout:
    """Byte offsets of the GPT disk: [1 MiB gap][ESP][root][GPT backup]."""

    esp_start: int
    esp_size: int
    root_start: int
    root_size: int
    disk_size: int


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def root_size_for(content_bytes: int, headroom: int = ROOT_HEADROOM) -> int:
    # ext4 metadata (inode tables, journal) takes ~5-10 % of a small fs; 25 % is safe.
    return _round_up(content_bytes + content_bytes // 4 + headroom, MIB)


def disk_layout(root_size: int, esp_size: int = ESP_SIZE) -> Layout:
    if root_size % MIB or esp_size % MIB:
        raise ValueError("partition sizes must be whole MiB")
    root_start = ESP_START + esp_size
    return Layout(ESP_START, esp_size, root_start, root_size, root_start + root_size + GPT_BACKUP)


def sfdisk_script(layout: Layout, device: str) -> str:
    """sfdisk input; ``device`` is the disk's file name, whose suffix numbers each line."""

    def line(partno: int, start: int, size: int, type_: str, name: str) -> str:
        return (
            f"{device}{partno} : start={start // SECTOR}, size={size // SECTOR}, "
            f'type={type_}, name="{name}"\n'
        )

    return (
        "label: gpt\nunit: sectors\nfirst-lba: 2048\n\n"
        + line(ESP_PARTNO, layout.esp_start, layout.esp_size, ESP_TYPE, ESP_LABEL)
        + line(ROOT_PARTNO, layout.root_start, layout.root_size, LINUX_TYPE, ROOT_LABEL)
    )


def dd_argv(source: Path, disk: Path, offset: int) -> list[str]:
    if offset % MIB:
        raise ValueError("partitions start on MiB boundaries")
    return [
        "dd",
        f"if={source}",
        f"of={disk}",
        "bs=1M",
        f"seek={offset // MIB}",
        "conv=notrunc,sparse",
        "status=none",
    ]


def mkfs_ext4_argv(rootfs: Path, image: Path) -> list[str]:
    return ["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-d", str(rootfs), str(image)]


def mkfs_vfat_argv(image: Path) -> list[str]:
    return ["mkfs.vfat", "-F", "32", "-n", ESP_LABEL, str(image)]


def esp_copy_argvs(esp: Path, efi_binary: Path, name: str) -> list[list[str]]:
    return [
        ["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"],
        ["mcopy", "-i", str(esp), str(efi_binary), f"::/EFI/BOOT/{name}"],
    ]


# --- the cache ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StandinImage:
    arch: str
    path: Path  # the qcow2
    recipe_hash: str
    info: dict[str, object]  # build-time figures, from the JSON next to the image


def cache_paths(cache_dir: Path, arch: str, recipe_hash: str) -> tuple[Path, Path]:
    base = cache_dir / "standin" / f"{arch}-{recipe_hash}"
    return base.with_suffix(".qcow2"), base.with_suffix(".json")


def cached(cache_dir: Path, arch: str) -> StandinImage | None:
    rec = recipe(arch)
    digest = rec.digest()
    qcow2, info = cache_paths(cache_dir, arch, digest)
    if not (qcow2.is_file() and info.is_file()):
        return None
    return StandinImage(arch, qcow2, digest, json.loads(info.read_text()))


def ensure(cache_dir: Path, arch: str, *, timeout: float = BUILD_TIMEOUT) -> StandinImage:
    """The cached stand-in for this recipe, building it first if there is none."""
    hit = cached(cache_dir, arch)
    if hit is not None:
        log.info("stand-in %s: cached %s", arch, hit.path)
        return hit
    return build(cache_dir, arch, timeout=timeout)


def images_for(cache_dir: Path, arches: Sequence[str] | None) -> dict[str, Path]:
    """Stand-ins to serve: the named arches (built if missing), or every cached one."""
    if arches:
        return {a.strip(): ensure(cache_dir, a.strip()).path for a in arches if a.strip()}
    found = {a: hit.path for a in ARCHES if (hit := cached(cache_dir, a)) is not None}
    if not found:
        raise ImageError(
            f"no stand-in image is cached in {cache_dir / 'standin'}",
            hint="build one: sudo ./inv standin --arch amd64 "
            "(or name it: ./inv mirror --arch amd64)",
        )
    return found


# --- the build ---------------------------------------------------------------------------

TOOLS = ("mmdebstrap", "grub-mkstandalone", "sfdisk", "mkfs.ext4", "mkfs.vfat", "mcopy", "qemu-img")
FOREIGN_TOOLS = ("qemu-aarch64-static", "binfmt aarch64", "arch-test")


# Long on purpose: the stand-in recipe as one readable sequence of tool calls.
def build(cache_dir: Path, arch: str, *, timeout: float = BUILD_TIMEOUT) -> StandinImage:
    rec = recipe(arch)
    spec = arch_spec(arch)
    if os.geteuid() != 0:
        raise ImageError(
            "building the stand-in image needs root (mmdebstrap --mode=root "
            "installs packages owned by many users)",
            hint=f"sudo ./inv standin --arch {arch}",
        )
    hosttools.require(TOOLS, "the stand-in image")
    if arch != _host_dpkg_arch():
        if not hosttools.BY_NAME["binfmt aarch64"].found():
            hosttools.enable_binfmt()
        hosttools.require(FOREIGN_TOOLS, f"the {arch} stand-in on this host")

    digest = rec.digest()
    final, info_path = cache_paths(cache_dir, arch, digest)
    final.parent.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.monotonic()
    with _build_dir(final.parent, f".build-{arch}-") as work:
        rootfs = work / "rootfs"
        customize = work / "customize.sh"
        customize.write_text(rec.customize_sh)
        customize.chmod(0o755)
        log_path = final.parent / f"{arch}-{digest}.build.log"
        with _timed("rootfs", timings):
            _run_logged(mmdebstrap_argv(rec, rootfs, customize), log_path, timeout)

        cfg = work / "grub.cfg"
        cfg.write_text(rec.grub_cfg)
        efi = work / spec.efi_binary
        with _timed("efi", timings):
            run.run(grub_mkstandalone_argv(arch, rootfs, cfg, efi))
            esp = work / "esp.img"
            _allocate(esp, rec.esp_size)
            run.run(mkfs_vfat_argv(esp))
            for argv in esp_copy_argvs(esp, efi, spec.efi_binary):
                run.run(argv)

        with _timed("root-fs", timings):
            root_img = work / "root.img"
            _allocate(root_img, root_size_for(tree_size(rootfs), rec.root_headroom))
            conf = work / "mke2fs.conf"
            conf.write_text(rec.mke2fs_conf)
            run.run(mkfs_ext4_argv(rootfs, root_img), env={"MKE2FS_CONFIG": str(conf)})

        with _timed("disk", timings):
            layout = disk_layout(root_img.stat().st_size, esp.stat().st_size)
            disk = work / "disk.img"
            _allocate(disk, layout.disk_size)
            run.run(
                ["sfdisk", "--no-reread", "--no-tell-kernel", "--quiet", str(disk)],
                input=sfdisk_script(layout, disk.name).encode(),
            )
            run.run(dd_argv(esp, disk, layout.esp_start))
            run.run(dd_argv(root_img, disk, layout.root_start))
            staged = work / final.name
            run.run(["qemu-img", "convert", "-q", "-O", "qcow2", "-c", str(disk), str(staged)])
            _fsync(staged)

        info = {
            "arch": arch,
            "recipe_hash": digest,
            "recipe_version": rec.version,
            "suite": rec.suite,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - started, 1),
            "step_seconds": timings,
            "virtual_size": layout.disk_size,
            "file_size": staged.stat().st_size,
            "packages": list(rec.packages),
        }
        staged_info = work / info_path.name
        staged_info.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        _fsync(staged_info)
        # The image first, its JSON last: cached() needs both, so a crash in
        # between leaves an entry that is simply rebuilt.
        staged.replace(final)
        staged_info.replace(info_path)
        log_path.unlink(missing_ok=True)
    log.info(
        "stand-in %s built in %.0f s: %s (%d MiB)",
        arch,
        info["build_seconds"],
        final,
        final.stat().st_size // MIB,
    )
    return StandinImage(arch, final, digest, info)


def _host_dpkg_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)


@contextlib.contextmanager
def _timed(name: str, timings: dict[str, float]) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        timings[name] = round(time.monotonic() - start, 1)


def _run_logged(argv: list[str], log_path: Path, timeout: float) -> None:
    """A long, chatty command: its output goes to a log file named in any failure."""
    log_path.unlink(missing_ok=True)
    log.info("  (output in %s)", log_path)
    with run.background(argv, stdout=log_path) as proc:
        try:
            code = proc.wait(timeout)
        except Exception:  # TimeoutExpired; background() kills it on the way out
            code = None
    if code != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise run.CommandError(argv, code, tail, hint=f"full log: {log_path}")


def tree_size(root: Path) -> int:
    """Bytes the files under ``root`` occupy (hard links once), as du would say."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            st = (Path(dirpath) / name).lstat()
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def _allocate(path: Path, size: int) -> None:
    with path.open("wb") as f:
        f.truncate(size)


def _fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def _build_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A scratch directory next to the cache entry (same file system: rename is atomic).

    mmdebstrap mounts /proc, /sys and /dev inside the rootfs while it works; if it
    was killed before unmounting them, they are unmounted before anything is deleted,
    so removing the scratch tree can never reach into the host's /dev.
    """
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield work
    finally:
        for mountpoint in mounts_under(work, Path("/proc/self/mountinfo").read_text()):
            run.run(["umount", "--lazy", str(mountpoint)], check=False)
        if not mounts_under(work, Path("/proc/self/mountinfo").read_text()):
            shutil.rmtree(work, ignore_errors=True)
        else:
            log.warning("left %s in place: something is still mounted inside it", work)


def mounts_under(root: Path, mountinfo: str) -> list[Path]:
    """Mount points at or below ``root``, deepest first (the order to unmount them)."""
    found = []
    prefix = str(root).rstrip("/") + "/"
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        # mountinfo escapes spaces and such as octal: \\040
        point = fields[4].encode().decode("unicode_escape")
        if point == str(root) or point.startswith(prefix):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)
