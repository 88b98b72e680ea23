"""The stand-in's pure parts: recipe, its hash, the disk layout and every argv."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from image.errors import ImageError
from image.source import standin

MIB = 1 << 20


def test_grub_cfg_finds_the_root_by_label_and_uses_the_arch_console() -> None:
    assert standin.grub_cfg("amd64") == (
        "# Embedded in the stand-in's standalone GRUB EFI binary: no menu, no NVRAM.\n"
        "set timeout=0\n"
        "insmod part_gpt\n"
        "insmod ext2\n"
        "search --no-floppy --label cloudimg-rootfs --set=root\n"
        "linux /vmlinuz root=LABEL=cloudimg-rootfs ro console=tty1 console=ttyS0\n"
        "initrd /initrd.img\n"
        "boot\n"
    )
    assert "console=tty1 console=ttyAMA0\n" in standin.grub_cfg("arm64")


def test_unknown_arch_is_a_user_error() -> None:
    with pytest.raises(ImageError, match="riscv64"):
        standin.recipe("riscv64")


def test_recipe_packages_have_the_arch_kernel_and_grub_modules() -> None:
    amd64 = standin.recipe("amd64").packages
    arm64 = standin.recipe("arm64").packages
    assert amd64[-2:] == ("linux-image-amd64", "grub-efi-amd64-bin")
    assert arm64[-2:] == ("linux-image-arm64", "grub-efi-arm64-bin")
    for needed in ("cloud-init", "openssh-server", "qemu-guest-agent", "python3", "bubblewrap"):
        assert needed in amd64 and needed in arm64


def test_recipe_hash_is_stable_and_covers_every_field() -> None:
    rec = standin.recipe("amd64")
    assert rec.digest() == standin.recipe("amd64").digest()
    assert len(rec.digest()) == 64
    assert rec.digest() != standin.recipe("arm64").digest()
    changes: dict[str, Any] = {
        "version": rec.version + 1,
        "suite": "forky",
        "sources": rec.sources[:1],
        "packages": (*rec.packages, "vim"),
        "customize_sh": rec.customize_sh + "true\n",
        "grub_cfg": rec.grub_cfg.replace("ro ", "rw "),
        "mke2fs_conf": rec.mke2fs_conf + "\n",
        "esp_size": rec.esp_size * 2,
        "root_headroom": rec.root_headroom * 2,
    }
    assert set(changes) | {"arch"} == {f.name for f in dataclasses.fields(rec)}
    digests = {dataclasses.replace(rec, **{k: v}).digest() for k, v in changes.items()}
    assert len(digests) == len(changes)
    assert rec.digest() not in digests


def test_customize_script_makes_a_first_boot_image() -> None:
    script = standin.CUSTOMIZE_SH
    assert script.startswith("#!/bin/sh\nset -eu\n")
    assert ': > "$root/etc/machine-id"' in script
    assert 'rm -f "$root"/etc/ssh/ssh_host_*' in script
    assert "datasource_list: [ NoCloud, None ]" in script
    assert "LABEL=cloudimg-rootfs\t/\text4" in script


def test_disk_layout_is_esp_then_root_then_gpt_backup() -> None:
    layout = standin.disk_layout(1024 * MIB)
    assert layout == standin.Layout(
        esp_start=1 * MIB,
        esp_size=106 * MIB,
        root_start=107 * MIB,
        root_size=1024 * MIB,
        disk_size=(107 + 1024 + 1) * MIB,
    )


def test_disk_layout_refuses_sizes_that_are_not_whole_mib() -> None:
    with pytest.raises(ValueError):
        standin.disk_layout(1024 * MIB + 512)


def test_root_size_leaves_room_and_is_whole_mib() -> None:
    assert standin.root_size_for(400 * MIB, 512 * MIB) == (400 + 100 + 512) * MIB
    assert standin.root_size_for(1, 0) % MIB == 0


def test_sfdisk_script_numbers_partitions_like_ubuntu() -> None:
    layout = standin.disk_layout(1024 * MIB)
    assert standin.sfdisk_script(layout, "disk.img") == (
        "label: gpt\n"
        "unit: sectors\n"
        "first-lba: 2048\n"
        "\n"
        "disk.img15 : start=2048, size=217088, "
        'type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="UEFI"\n'
        "disk.img1 : start=219136, size=2097152, "
        'type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="cloudimg-rootfs"\n'
    )


def test_mmdebstrap_argv() -> None:
    rec = standin.recipe("arm64")
    argv = standin.mmdebstrap_argv(rec, Path("/w/rootfs"), Path("/w/customize.sh"))
    assert argv == [
        "mmdebstrap",
        "--mode=root",
        "--variant=apt",
        "--arch=arm64",
        "--components=main",
        "--include=" + ",".join(rec.packages),
        "--dpkgopt=force-unsafe-io",
        "--customize-hook=/w/customize.sh",
        "trixie",
        "/w/rootfs",
        "deb http://deb.debian.org/debian trixie main",
        "deb http://deb.debian.org/debian trixie-updates main",
        "deb http://deb.debian.org/debian-security trixie-security main",
    ]


def test_grub_mkstandalone_uses_the_rootfs_modules() -> None:
    argv = standin.grub_mkstandalone_argv(
        "arm64", Path("/w/rootfs"), Path("/w/grub.cfg"), Path("/w/BOOTAA64.EFI")
    )
    assert argv == [
        "grub-mkstandalone",
        "-O",
        "arm64-efi",
        "-d",
        "/w/rootfs/usr/lib/grub/arm64-efi",
        "--fonts=",
        "--locales=",
        "--themes=",
        "-o",
        "/w/BOOTAA64.EFI",
        "boot/grub/grub.cfg=/w/grub.cfg",
    ]


def test_file_system_and_placement_argvs() -> None:
    assert standin.mkfs_ext4_argv(Path("/w/rootfs"), Path("/w/root.img")) == [
        "mkfs.ext4", "-q", "-F", "-L", "cloudimg-rootfs", "-d", "/w/rootfs", "/w/root.img",
    ]  # fmt: skip
    assert standin.mkfs_vfat_argv(Path("/w/esp.img")) == [
        "mkfs.vfat", "-F", "32", "-n", "UEFI", "/w/esp.img",
    ]  # fmt: skip
    assert standin.esp_copy_argvs(Path("/w/esp.img"), Path("/w/X.EFI"), "BOOTX64.EFI") == [
        ["mmd", "-i", "/w/esp.img", "::/EFI", "::/EFI/BOOT"],
        ["mcopy", "-i", "/w/esp.img", "/w/X.EFI", "::/EFI/BOOT/BOOTX64.EFI"],
    ]
    assert standin.dd_argv(Path("/w/root.img"), Path("/w/disk.img"), 107 * MIB) == [
        "dd", "if=/w/root.img", "of=/w/disk.img", "bs=1M", "seek=107",
        "conv=notrunc,sparse", "status=none",
    ]  # fmt: skip
    with pytest.raises(ValueError):
        standin.dd_argv(Path("a"), Path("b"), 4096)


MOUNTINFO = """\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
301 22 0:60 / /c/standin/.build-x/rootfs/proc rw,relatime - proc proc rw
302 22 0:61 / /c/standin/.build-x/rootfs/sys rw,relatime - sysfs sysfs rw
303 302 0:62 / /c/standin/.build-x/rootfs/sys/fs/binfmt_misc rw - binfmt_misc b rw
304 22 0:63 / /c/standin/.build-x/with\\040space rw - tmpfs t rw
305 22 0:64 / /c/standin/.build-xy/rootfs/proc rw - proc proc rw
"""


def test_mounts_under_lists_deepest_first_and_only_inside_the_build_dir() -> None:
    found = standin.mounts_under(Path("/c/standin/.build-x"), MOUNTINFO)
    assert found[0] == Path("/c/standin/.build-x/rootfs/sys/fs/binfmt_misc")
    assert set(found) == {
        Path("/c/standin/.build-x/rootfs/proc"),
        Path("/c/standin/.build-x/rootfs/sys"),
        Path("/c/standin/.build-x/rootfs/sys/fs/binfmt_misc"),
        Path("/c/standin/.build-x/with space"),
    }


def test_cache_paths_are_named_by_arch_and_recipe_hash() -> None:
    qcow2, info = standin.cache_paths(Path("/c"), "amd64", "ab" * 32)
    assert qcow2 == Path("/c/standin/amd64-" + "ab" * 32 + ".qcow2")
    assert info == Path("/c/standin/amd64-" + "ab" * 32 + ".json")


def test_cached_needs_both_the_image_and_its_info(tmp_path: Path) -> None:
    qcow2, info = standin.cache_paths(tmp_path, "amd64", standin.recipe("amd64").digest())
    qcow2.parent.mkdir(parents=True)
    qcow2.write_bytes(b"qcow")
    assert standin.cached(tmp_path, "amd64") is None
    info.write_text('{"build_seconds": 60}')
    hit = standin.cached(tmp_path, "amd64")
    assert hit is not None and hit.path == qcow2 and hit.info == {"build_seconds": 60}


def test_images_for_without_a_cached_image_says_how_to_build_one(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as caught:
        standin.images_for(tmp_path, None)
    assert caught.value.hint is not None and "./inv standin --arch amd64" in caught.value.hint


def test_building_without_root_says_to_use_sudo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ImageError) as caught:
        standin.ensure(tmp_path, "amd64")
    assert caught.value.hint == "sudo ./inv standin --arch amd64"
    assert not (tmp_path / "standin").exists()
