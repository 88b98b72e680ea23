"""What root in a guest can leave on the host through a writable 9p share.

QEMU runs as root here, as the toolkit does. With 9p's security_model=none a
guest's chmod 4755 and mknod would be carried out on the host as asked;
with mapped-xattr (every writable share) the host gets plain files and
directories, and what the guest asked for is kept in user.virtfs.* xattrs.
The guest still sees its own modes and file types, and the host still reads
the content: the package cache fill-back reads the build's outbox that way.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from image import config
from image.runtime import snapshot

GUEST_SCRIPT = " && ".join([
    f"cd {snapshot.SHARE_MOUNT}",
    "echo content > suid", "chown 0:0 suid", "chmod 6755 suid",
    "mknod null c 1 3", "mknod disk b 8 0", "mkfifo fifo", "ln -s /etc/shadow link",
    "mkdir dir", "chmod 3777 dir",
    "stat -c '%n|%F|%a|%u' suid null disk fifo link dir",
])  # fmt: skip


def test_guest_root_makes_no_setuid_file_or_device_node_on_the_host(
    built: dict[str, Path], vm_config: config.BuildConfig, tmp_path: Path
) -> None:
    share = tmp_path / "share"
    share.mkdir()
    options = snapshot.LaunchOptions(share=share)  # read-write
    with snapshot.launch(built["snapshot"], vm_config, options) as sandbox:
        result = sandbox.exec(["/bin/sh", "-c", GUEST_SCRIPT], timeout=120)  # as root
        assert result.exit_code == 0, result.stderr.decode(errors="replace")
        guest_view = result.stdout.decode().splitlines()
    # Inside, the guest has what it asked for...
    seen = {n: (kind, mode, uid) for n, kind, mode, uid in (ln.split("|") for ln in guest_view)}
    assert seen["suid"] == ("regular file", "6755", "0"), seen
    assert seen["dir"] == ("directory", "3777", "0"), seen
    assert [seen[n][0] for n in ("null", "disk", "fifo", "link")] == [
        "character special file", "block special file", "fifo", "symbolic link"], seen  # fmt: skip
    # ...on the host there are only regular files and directories, without set-id bits.
    found = {p.name: p.lstat() for p in share.iterdir()}
    assert sorted(found) == ["dir", "disk", "fifo", "link", "null", "suid"]
    for name, st in found.items():
        kind = stat.S_IFMT(st.st_mode)
        assert kind == (stat.S_IFDIR if name == "dir" else stat.S_IFREG), (name, oct(st.st_mode))
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX), (
            name,
            oct(st.st_mode),
        )
        assert st.st_uid == os.geteuid()
    assert (share / "suid").read_bytes() == b"content\n"  # the host reads what was written
    # The mode the guest asked for is metadata in an xattr, not the host's mode.
    mode = int.from_bytes(os.getxattr(share / "suid", "user.virtfs.mode"), "little")
    assert stat.S_IMODE(mode) == 0o6755


def test_the_build_filled_the_package_cache_through_its_mapped_share(
    demo_run: dict[str, Any], vm_config: config.BuildConfig
) -> None:
    # The demo's build wrote its .debs into pkgnew (mapped-xattr); fill_back read them.
    packages = vm_config.cache_dir / "packages"
    debs = sorted(packages.glob("debian-*-amd64/apt/*.deb"))
    assert debs, sorted(str(p.relative_to(packages)) for p in packages.rglob("*"))[:20]
    for deb in debs:
        st = deb.lstat()
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644, deb
        assert deb.read_bytes()[:8] == b"!<arch>\n", deb  # a whole Debian archive
