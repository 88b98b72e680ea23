from __future__ import annotations

import tracemalloc
from dataclasses import replace
from pathlib import Path

import pytest

from image.errors import ImageError
from image.vm.qemu import (
    SERIAL_TAIL_BYTES,
    Share,
    VMSpec,
    check_share_dir,
    machine_args,
    netdev_arg,
    qemu_argv,
    serial_tail,
)

TCG = ("-accel", "tcg,thread=multi")


def spec(**kw: object) -> VMSpec:
    base = VMSpec(
        arch="amd64", cpus=2, memory=1 << 30, disk=Path("/w/disk.qcow2"),
        firmware_code=Path("/fw/CODE.fd"), firmware_vars=Path("/w/VARS.fd"), accel=TCG,
        serial_log=Path("/w/serial.log"), qmp_socket=Path("/w/qmp.sock"),
    )  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


def test_minimal_amd64_build_vm() -> None:
    assert qemu_argv(spec()) == [
        "qemu-system-x86_64", "-machine", "q35,smm=off", "-cpu", "max",
        "-accel", "tcg,thread=multi", "-smp", "2", "-nodefaults", "-display", "none",
        "-no-user-config",
        "-sandbox", "on,obsolete=deny,elevateprivileges=allow,spawn=allow,resourcecontrol=deny",
        "-m", "1024M",
        "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd",
        "-drive", "if=pflash,format=raw,unit=1,file=/w/VARS.fd",
        "-drive", "if=none,id=root,format=qcow2,discard=unmap,cache=writeback,"
                  "file=/w/disk.qcow2",
        "-device", "virtio-blk-pci,drive=root,bootindex=0",
        "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0",
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-pci,rng=rng0",
        "-chardev", "file,id=serial0,path=/w/serial.log", "-serial", "chardev:serial0",
        "-chardev", "socket,id=qmp,path=/w/qmp.sock,server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
    ]  # fmt: skip


def test_arm64_uses_virt_and_fast_pauth_under_tcg() -> None:
    argv = qemu_argv(spec(arch="arm64"))
    assert argv[:5] == ["qemu-system-aarch64", "-machine", "virt", "-cpu", "max,pauth-impdef=on"]


def test_kvm_uses_the_host_cpu() -> None:
    assert machine_args("amd64", ("-accel", "kvm")) == ["-machine", "q35,smm=off", "-cpu", "host"]
    assert machine_args("arm64", ("-accel", "kvm")) == ["-machine", "virt", "-cpu", "host"]


def test_seed_ssh_and_guest_agent() -> None:
    argv = qemu_argv(spec(seed_iso=Path("/w/seed.iso"), ssh_port=2222,
                          qga_socket=Path("/w/qga.sock")))  # fmt: skip
    joined = " ".join(argv)
    assert "if=none,id=seed,format=raw,readonly=on,file=/w/seed.iso" in argv
    assert "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22" in argv
    assert "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0" in argv
    assert "socket,id=qga0,path=/w/qga.sock,server=on,wait=off" in joined


def test_restricted_network_with_guestfwd() -> None:
    s = spec(net_restrict=True, guestfwd=(("10.0.2.100:3128", "cmd:socat - TCP:127.0.0.1:1"),))
    assert netdev_arg(s) == (
        "user,id=net0,restrict=on,guestfwd=tcp:10.0.2.100:3128-cmd:socat - TCP:127.0.0.1:1"
    )


def test_snapshot_shape_memory_file_share_session_incoming() -> None:
    argv = qemu_argv(spec(
        memory_file=Path("/s/mem"), share=Share(Path("/h/share"), readonly=True),
        session_disk=Path("/w/session.qcow2"), incoming="defer",
    ))  # fmt: skip
    assert "memory-backend-file,id=ram0,size=1073741824,mem-path=/s/mem,share=on" in argv
    assert argv[argv.index("memory-backend=ram0") - 1] == "-machine"
    assert "local,id=fs0,path=/h/share,security_model=none,readonly=on" in argv
    assert "virtio-blk-pci,drive=session,serial=session" in argv
    assert argv[-2:] == ["-incoming", "defer"]


def test_savevm_shape_keeps_vars_and_session_in_qcow2_and_starts_from_loadvm() -> None:
    plain = qemu_argv(spec(session_disk=Path("/w/session.raw")))
    assert "if=pflash,format=raw,unit=1,file=/w/VARS.fd" in plain
    assert "if=none,id=session,format=raw,discard=unmap,file=/w/session.raw" in plain
    assert "-loadvm" not in plain
    internal = qemu_argv(spec(session_disk=Path("/w/session.qcow2"), internal_snapshots=True,
                              loadvm="ready"))  # fmt: skip
    assert "if=pflash,format=qcow2,unit=1,file=/w/VARS.fd" in internal
    assert "if=none,id=session,format=qcow2,discard=unmap,file=/w/session.qcow2" in internal
    assert internal[-2:] == ["-loadvm", "ready"]


def test_serial_tail_strips_terminal_noise(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(b"\x1b[2J\x1b[01;01Hfirmware\r\n\r\n" + b"".join(
        f"line {i}\r\n".encode() for i in range(100)))  # fmt: skip
    tail = serial_tail(log, lines=3)
    assert tail == "line 97\nline 98\nline 99"
    assert serial_tail(tmp_path / "missing") == "(no serial log)"


def test_two_more_shares_follow_the_first_with_their_own_ids() -> None:
    argv = qemu_argv(spec(
        share=Share(Path("/h/share")),
        shares=(Share(Path("/c/pkg"), "pkgcache", readonly=True), Share(Path("/w/new"), "pkgnew")),
    ))  # fmt: skip
    start = argv.index("-fsdev")
    assert argv[start : start + 12] == [
        "-fsdev", "local,id=fs0,path=/h/share,security_model=mapped-xattr",
        "-device", "virtio-9p-pci,fsdev=fs0,mount_tag=share",
        "-fsdev", "local,id=fs1,path=/c/pkg,security_model=none,readonly=on",
        "-device", "virtio-9p-pci,fsdev=fs1,mount_tag=pkgcache",
        "-fsdev", "local,id=fs2,path=/w/new,security_model=mapped-xattr",
        "-device", "virtio-9p-pci,fsdev=fs2,mount_tag=pkgnew",
    ]  # fmt: skip


def test_every_vm_runs_under_qemus_seccomp_filter_that_still_lets_guestfwd_spawn() -> None:
    for arch in ("amd64", "arm64"):
        forward = (("10.0.2.100:3128", "cmd:socat - UNIX-CONNECT:/s"),)
        argv = qemu_argv(spec(arch=arch, net_restrict=True, guestfwd=forward))
        options = argv[argv.index("-sandbox") + 1].split(",")
        assert options[0] == "on"
        assert {"obsolete=deny", "resourcecontrol=deny"} <= set(options)
        # guestfwd's cmd: and migration's exec: fork and exec (spawn=deny would kill
        # QEMU), and the guestfwd child calls setsid() first: elevateprivileges=deny
        # (or children) kills it, and with it every connection through the proxy.
        assert "spawn=allow" in options and "elevateprivileges=allow" in options
        assert argv.count("-sandbox") == 1
        assert "-runas" not in argv


def test_a_writable_share_keeps_guest_ownership_and_modes_in_xattrs() -> None:
    rw = qemu_argv(spec(share=Share(Path("/h/rw"))))
    ro = qemu_argv(spec(share=Share(Path("/h/ro"), readonly=True)))
    assert "local,id=fs0,path=/h/rw,security_model=mapped-xattr" in rw
    assert "local,id=fs0,path=/h/ro,security_model=none,readonly=on" in ro
    assert not any("security_model=none" in a and "readonly" not in a for a in rw + ro)


def test_a_writable_share_needs_user_xattrs_on_the_host(tmp_path: Path) -> None:
    check_share_dir(Share(tmp_path))  # ext4 or tmpfs here: fine
    check_share_dir(Share(Path("/proc"), readonly=True))  # read-only: no xattrs needed
    with pytest.raises(ImageError, match="no user xattrs") as info:
        check_share_dir(Share(Path("/proc")))  # procfs has none
    assert "read-only" in (info.value.hint or "")


def test_serial_tail_reads_only_the_end_of_a_huge_log(tmp_path: Path) -> None:
    # The guest writes the serial log, as much as it likes: 4 GiB here (sparse).
    log = tmp_path / "serial.log"
    with log.open("wb") as f:
        f.truncate(4 << 30)
        f.seek(0, 2)
        f.write(b"".join(f"line {i}\r\n".encode() for i in range(100)))
    tracemalloc.start()
    try:
        tail = serial_tail(log, lines=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert tail == "line 98\nline 99"
    assert peak < 4 * SERIAL_TAIL_BYTES
