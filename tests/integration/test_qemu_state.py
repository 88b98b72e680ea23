"""qemu.VM.save_state / resume_from with a real QEMU: RAM in the stream or in a file,
and a state QEMU cannot load reported as an ImageError (QEMU exits on it).

The guest is only the firmware (no disk to boot): enough for QEMU to have
device state and RAM to save, and quick under TCG.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from image.errors import ImageError
from image.vm import qemu
from image.vm.firmware import find_firmware
from tests.hosttools import need

MEMORY = 256 << 20


def _spec(work: Path, memory_file: Path | None = None) -> qemu.VMSpec:
    need("qemu-system-x86_64", "qemu-img", "OVMF")
    firmware = find_firmware("amd64")
    work.mkdir(parents=True, exist_ok=True)
    disk = work / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    shutil.copyfile(firmware.vars_template, work / "vars.fd")
    return qemu.VMSpec(
        arch="amd64", cpus=1, memory=MEMORY, disk=disk, firmware_code=firmware.code,
        firmware_vars=work / "vars.fd", accel=("-accel", "tcg"), serial_log=work / "serial.log",
        qmp_socket=work / "qmp.sock", memory_file=memory_file,
    )  # fmt: skip


@pytest.mark.parametrize("ram_in_file", [False, True], ids=["ram-in-stream", "ram-in-file"])
def test_a_saved_vm_resumes_running(tmp_path: Path, ram_in_file: bool) -> None:
    memory = tmp_path / "memory" if ram_in_file else None
    spec = _spec(tmp_path / "one", memory)
    state = tmp_path / "state"
    with qemu.VM(spec, tmp_path / "one.log") as vm:
        assert vm.status() == "running"
        vm.save_state(state)
        vm.quit()
    size = state.stat().st_size
    # RAM in a file stays out of the stream; otherwise the stream carries it.
    assert size < 8 << 20 if ram_in_file else size > 1 << 20
    resumed = replace(_spec(tmp_path / "two", memory), incoming="defer",
                      memory_private=ram_in_file)  # fmt: skip
    with qemu.VM(resumed, tmp_path / "two.log") as vm:
        vm.resume_from(state)
        assert vm.status() == "running"


def test_a_state_qemu_cannot_load_is_an_error_with_qemus_words(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_bytes(b"QEVM not a device state")
    spec = replace(_spec(tmp_path / "vm"), incoming="defer")
    with qemu.VM(spec, tmp_path / "qemu.log") as vm:
        with pytest.raises(ImageError) as info:
            vm.resume_from(state)
        assert not vm.alive()  # QEMU exits when an incoming migration fails
    assert "QEMU exited" in info.value.message
    assert "load of migration failed" in (info.value.hint or "")  # QEMU's own words


def test_a_vm_starts_where_a_dead_qemu_left_its_socket_files(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "vm")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(spec.qmp_socket))  # bound, never listening, file left behind
    stale.close()
    assert spec.qmp_socket.exists()
    with qemu.VM(spec, tmp_path / "qemu.log") as vm:
        assert vm.status() == "running"


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_qemu_runs_under_its_seccomp_filter_with_a_writable_mapped_share(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    spec = replace(_spec(tmp_path / "vm"), shares=(qemu.Share(share, "rw"),
                   qemu.Share(tmp_path, "ro", readonly=True)))  # fmt: skip
    assert "security_model=mapped-xattr" in " ".join(qemu.qemu_argv(spec))
    with qemu.VM(spec, tmp_path / "qemu.log") as vm:
        assert vm.status() == "running"
        status = _proc_status(vm.proc.pid)
        assert status["Seccomp"] == "2"  # filter mode: QEMU's -sandbox is in force
        assert int(status["Seccomp_filters"]) >= 1
        assert status["Uid"].split()[0] == str(os.geteuid())


def test_a_writable_share_without_user_xattrs_is_refused_before_qemu_starts(
    tmp_path: Path,
) -> None:
    spec = replace(_spec(tmp_path / "vm"), shares=(qemu.Share(Path("/proc"), "rw"),))
    with pytest.raises(ImageError, match="no user xattrs"), qemu.VM(spec, tmp_path / "qemu.log"):
        pass
    assert not (tmp_path / "qemu.log").exists()
