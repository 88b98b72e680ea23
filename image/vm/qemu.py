"""QEMU: pure argv builders, and a running VM driven through QMP (qemu.qmp).

Argv is built only by ``qemu_argv(spec)`` from a frozen ``VMSpec``, so that each
device decision is visible in one place and unit-tested as an exact list.
``VM`` is the one side-effecting part: it starts QEMU, talks QMP, and makes sure
QEMU is gone when the ``with`` block ends, however it ends.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shlex
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from image import run
from image.console import visible
from image.contract.guest import EXEC_PORT_NAME as GUEST_EXEC_PORT
from image.errors import ImageError

log = logging.getLogger(__name__)

QEMU_BINARY = {"amd64": "qemu-system-x86_64", "arm64": "qemu-system-aarch64"}
QGA_PORT_NAME = "org.qemu.guest_agent.0"
EXEC_PORT_NAME = GUEST_EXEC_PORT
SERIAL_TAIL_LINES = 40
SERIAL_TAIL_BYTES = 256 << 10  # what serial_tail reads of the log's end, at most
SAVE_BANDWIDTH = 64 << 30  # bytes/s: no limit in practice
# The host's vsock device: with it, a VM gets a vhost-vsock-pci device and the host
# reaches the guest's exec agent over AF_VSOCK (VMSpec.vsock_cid).
VHOST_VSOCK = Path("/dev/vhost-vsock")


# QEMU's seccomp filter, on for every VM. QEMU runs as root when the toolkit
# does: with this a compromised QEMU still cannot mount, reboot, kexec, swap or
# read the kernel log (QEMU's default set), reach obsolete syscalls, or change
# scheduling, priorities or NUMA policy (resourcecontrol). Two parts stay
# allowed, because the VMs need them (a real boot shows it):
# - spawn: guestfwd's cmd: form (the egress bridge, see image/egress/guestnet.py) forks
#   and execs one socat per guest connection, and save_state/resume_from
#   migrate through exec: (cat).
# - elevateprivileges: libslirp's guestfwd child calls setsid() before it execs
#   the command, and "deny" kills it (SIGSYS; the kernel's audit log shows
#   syscall 112), so every egress connection fails. "children" is "deny" plus
#   no_new_privs in QEMU 7.2, so it fails the same way.
# -runas (QEMU 7.2; -run-with user= from 9.1) is not used: see docs/sandbox.md,
# "The host side".
SANDBOX = "on,obsolete=deny,elevateprivileges=allow,spawn=allow,resourcecontrol=deny"
# 9p for shares the guest may write: file content is stored as is, but the
# owner, mode and file type the guest asks for live in user.virtfs.* xattrs,
# so guest root makes no setuid-root file, device node, FIFO or symlink on
# the host (files are 0600, directories 0700, owned by QEMU's user). Read-only
# shares keep "none": the guest cannot create anything there, and sees the
# host's own owners and modes.
WRITABLE_SECURITY_MODEL = "mapped-xattr"
READONLY_SECURITY_MODEL = "none"


@dataclass(frozen=True)
class Share:
    """A host directory shared with the guest over 9p (virtiofs needs virtiofsd)."""

    path: Path
    tag: str = "share"
    readonly: bool = False

    @property
    def security_model(self) -> str:
        return READONLY_SECURITY_MODEL if self.readonly else WRITABLE_SECURITY_MODEL


def check_share_dir(share: Share) -> None:
    """A writable share needs user xattrs on the host (where mapped-xattr keeps metadata)."""
    if share.readonly:
        return
    try:
        os.getxattr(share.path, "user.virtfs.uid", follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return  # supported, and not set: what a host-made directory looks like
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise ImageError(
                f"{share.path}: the filesystem has no user xattrs, which a writable "
                "guest share needs (9p security_model=mapped-xattr)",
                hint="use a directory on ext4, xfs, btrfs or tmpfs (Linux >= 6.6), "
                "or share it read-only (--share DIR:ro)",
            ) from None
        raise ImageError(f"{share.path}: cannot share it with the guest: {exc}") from None


@dataclass(frozen=True)
class VMSpec:
    arch: str
    cpus: int
    memory: int  # bytes
    disk: Path  # qcow2 overlay the VM may write
    firmware_code: Path
    firmware_vars: Path  # a writable copy; snapshot-able pflash
    accel: tuple[str, ...]  # e.g. ("-accel", "tcg,thread=multi")
    serial_log: Path
    qmp_socket: Path
    qga_socket: Path | None = None
    exec_socket: Path | None = None  # the exec agent's virtio-serial port (runtime shape)
    seed_iso: Path | None = None
    ssh_port: int | None = None  # host 127.0.0.1 port forwarded to guest 22
    net_restrict: bool = False  # user net with restrict=on: no route out but guestfwd
    guestfwd: tuple[tuple[str, str], ...] = ()  # (guest "ip:port", host "cmd:..." or chardev)
    share: Share | None = None
    shares: tuple[Share, ...] = ()  # more 9p shares, after ``share`` (tags must differ)
    session_disk: Path | None = None  # raw (a host-made ext4, see snapshot.make_session_disk)
    memory_file: Path | None = None  # RAM in a file (snapshot/launch)
    memory_private: bool = False  # map memory_file MAP_PRIVATE: copy-on-write, file untouched
    incoming: str | None = None  # migration URI to resume from
    # QEMU's own savevm/loadvm (bench/resume.py's comparison): the VARS pflash and the
    # session disk are qcow2 too, as savevm needs of every writable disk.
    internal_snapshots: bool = False
    loadvm: str | None = None  # the internal snapshot to start from (-loadvm)
    disk_cache: str = "writeback"
    # A vhost-vsock-pci device with this guest CID (>= 3; unique on the host while
    # the VM runs). Guest-visible, but each launch gives its own: see vmstate.device_hash.
    vsock_cid: int | None = None
    extra: tuple[str, ...] = field(default=())


def vsock_available(device: Path | None = None) -> str | None:
    """None if this host can give a VM a vsock device, else why not (the probe
    that picks the exec channel's transport for a snapshot)."""
    device = device or VHOST_VSOCK
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"{device}: {exc.strerror}"
    os.close(fd)
    return None


def machine_args(arch: str, accel: Sequence[str]) -> list[str]:
    kvm = any(a.startswith(("kvm", "hvf")) for a in accel[1::2])
    if arch == "amd64":
        # SMM off: OVMF_CODE_4M (non-secboot) does not need it, and without it
        # the pflash VARS stay plain writable memory that migration can save.
        return ["-machine", "q35,smm=off", "-cpu", "host" if kvm else "max"]
    # pauth-impdef: QEMU's own pointer-auth algorithm; the architected QARMA is
    # several times slower to emulate under TCG and no guest can tell.
    return ["-machine", "virt", "-cpu", "host" if kvm else "max,pauth-impdef=on"]


def netdev_arg(spec: VMSpec) -> str:
    parts = ["user", "id=net0"]
    if spec.net_restrict:
        parts.append("restrict=on")
    if spec.ssh_port is not None:
        parts.append(f"hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22")
    for guest, target in spec.guestfwd:
        parts.append(f"guestfwd=tcp:{guest}-{target}")
    return ",".join(parts)


def qemu_argv(spec: VMSpec) -> list[str]:
    argv = [QEMU_BINARY[spec.arch], *machine_args(spec.arch, spec.accel), *spec.accel]
    argv += ["-smp", str(spec.cpus), "-nodefaults", "-display", "none", "-no-user-config"]
    argv += ["-sandbox", SANDBOX]
    if spec.memory_file is not None:
        # share=on: RAM lives in the file, so a snapshot is the file itself and a
        # launch maps it privately (copy-on-write) instead of reading it back.
        share = "off" if spec.memory_private else "on"
        argv += [
            "-object",
            f"memory-backend-file,id=ram0,size={spec.memory},mem-path={spec.memory_file},"
            f"share={share}",
            "-machine", "memory-backend=ram0", "-m", f"{spec.memory // (1 << 20)}M",
        ]  # fmt: skip
    else:
        argv += ["-m", f"{spec.memory // (1 << 20)}M"]
    writable = "qcow2" if spec.internal_snapshots else "raw"
    argv += [
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={spec.firmware_code}",
        "-drive", f"if=pflash,format={writable},unit=1,file={spec.firmware_vars}",
        "-drive", f"if=none,id=root,format=qcow2,discard=unmap,cache={spec.disk_cache},"
                  f"file={spec.disk}",
        "-device", "virtio-blk-pci,drive=root,bootindex=0",
    ]  # fmt: skip
    if spec.seed_iso is not None:
        argv += [
            "-drive", f"if=none,id=seed,format=raw,readonly=on,file={spec.seed_iso}",
            "-device", "virtio-blk-pci,drive=seed",
        ]  # fmt: skip
    if spec.session_disk is not None:
        argv += [
            "-drive", f"if=none,id=session,format={writable},discard=unmap,"
                      f"file={spec.session_disk}",
            "-device", "virtio-blk-pci,drive=session,serial=session",
        ]  # fmt: skip
    argv += ["-netdev", netdev_arg(spec), "-device", "virtio-net-pci,netdev=net0"]
    # A virtio RNG: early boot (sshd, cloud-init) would otherwise wait for
    # entropy under TCG, and launches need fresh randomness from the host.
    argv += ["-object", "rng-random,id=rng0,filename=/dev/urandom",
             "-device", "virtio-rng-pci,rng=rng0"]  # fmt: skip
    argv += ["-chardev", f"file,id=serial0,path={spec.serial_log}", "-serial", "chardev:serial0"]
    argv += [
        "-chardev", f"socket,id=qmp,path={spec.qmp_socket},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
    ]  # fmt: skip
    if spec.qga_socket is not None or spec.exec_socket is not None:
        argv += ["-device", "virtio-serial-pci,id=vser0"]
    if spec.qga_socket is not None:
        argv += [
            "-chardev", f"socket,id=qga0,path={spec.qga_socket},server=on,wait=off",
            "-device", f"virtserialport,bus=vser0.0,chardev=qga0,name={QGA_PORT_NAME}",
        ]  # fmt: skip
    if spec.exec_socket is not None:
        argv += [
            "-chardev", f"socket,id=exec0,path={spec.exec_socket},server=on,wait=off",
            "-device", f"virtserialport,bus=vser0.0,chardev=exec0,name={EXEC_PORT_NAME}",
        ]  # fmt: skip
    if spec.vsock_cid is not None:
        argv += ["-device", f"vhost-vsock-pci,id=vsock0,guest-cid={spec.vsock_cid}"]
    shares = ([spec.share] if spec.share is not None else []) + list(spec.shares)
    for number, shared in enumerate(shares):
        ro = ",readonly=on" if shared.readonly else ""
        model = shared.security_model
        argv += [
            "-fsdev", f"local,id=fs{number},path={shared.path},security_model={model}{ro}",
            "-device", f"virtio-9p-pci,fsdev=fs{number},mount_tag={shared.tag}",
        ]  # fmt: skip
    if spec.incoming is not None:
        argv += ["-incoming", spec.incoming]
    if spec.loadvm is not None:
        argv += ["-loadvm", spec.loadvm]
    return argv + list(spec.extra)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (QEMU binds it right after; the race is harmless here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serial_tail(path: Path, lines: int = SERIAL_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            # The guest decides how big the log grows: read only its end.
            f.seek(max(0, f.seek(0, 2) - SERIAL_TAIL_BYTES))
            text = f.read(SERIAL_TAIL_BYTES).decode(errors="replace")
    except OSError:
        return "(no serial log)"
    # Firmware and GRUB paint the screen with ANSI sequences: drop them. The
    # guest writes this log: any other control character is shown, not kept.
    text = re.sub(r"\x1b\[[0-9;?=]*[A-Za-z]", "", text).replace("\r", "")
    return "\n".join(visible(ln) for ln in [ln for ln in text.splitlines() if ln.strip()][-lines:])


def create_overlay(base: Path, overlay: Path, size: int | None = None) -> None:
    """A qcow2 overlay on ``base`` (never written to), optionally grown to ``size``."""
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base.resolve()),
            str(overlay)]  # fmt: skip
    if size is not None:
        argv.append(str(size))
    run.run(argv)


def rebase_overlay(overlay: Path, base: Path, *, copy: bool = False) -> None:
    """Point ``overlay`` at ``base``. By default the same content, moved: metadata
    only. ``copy``: another backing file; every block where the two differ is
    copied into ``overlay`` first, so what the guest reads stays the same."""
    run.run(["qemu-img", "rebase", *([] if copy else ["-u"]), "-f", "qcow2", "-F", "qcow2",
             "-b", str(base.resolve()), str(overlay)])  # fmt: skip


def copy_vars(template: Path, dest: Path) -> Path:
    shutil.copyfile(template, dest)
    return dest


class VM:
    """A running QEMU. Use as a context manager; QEMU is gone after the block."""

    def __init__(self, spec: VMSpec, log_path: Path) -> None:
        self.spec = spec
        self.log_path = log_path
        self._stack = contextlib.ExitStack()
        self._qmp: QEMUMonitorProtocol | None = None
        self.proc: Any = None

    def __enter__(self) -> VM:
        # A QEMU that died (e.g. on a failed incoming migration) leaves its
        # socket files behind; the next VM on the same paths must not find them.
        for path in (self.spec.qmp_socket, self.spec.qga_socket, self.spec.exec_socket):
            if path is not None:
                path.unlink(missing_ok=True)
        for shared in ([self.spec.share] if self.spec.share else []) + list(self.spec.shares):
            check_share_dir(shared)
        try:
            self.proc = self._stack.enter_context(
                run.background(qemu_argv(self.spec), stdout=self.log_path, terminate_timeout=5)
            )
            self._qmp = self._connect_qmp()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._qmp is not None:
            with contextlib.suppress(Exception):
                self._qmp.close()
            self._qmp = None
        self._stack.close()

    def _connect_qmp(self, timeout: float = 30.0) -> QEMUMonitorProtocol:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ImageError(
                    f"QEMU exited at start (code {self.proc.returncode}): {self.qemu_log_tail()}",
                    hint=f"the full QEMU log is {self.log_path}",
                )
            if self.spec.qmp_socket.exists():
                qmp = QEMUMonitorProtocol(str(self.spec.qmp_socket))
                try:
                    qmp.connect()
                    return qmp
                except (OSError, QMPError):  # not listening yet
                    qmp.close()
            time.sleep(0.05)
        raise ImageError(f"QEMU's QMP socket did not appear within {timeout:g} s")

    def qemu_log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip()[-800:]
        except OSError:
            return ""

    def qmp(self, command: str, **args: object) -> Any:
        if self._qmp is None:
            raise ImageError("QMP is not connected")
        try:
            reply = self._qmp.cmd_raw(command, args or None)
        except (QMPError, OSError, EOFError) as exc:
            # QEMU went away mid-command: e.g. it exits when an incoming
            # migration fails. Say so, with what QEMU last said.
            self.wait_exit(2)
            state = "exited" if not self.alive() else "stopped answering"
            raise ImageError(
                f"QMP {command}: QEMU {state} ({type(exc).__name__}: {exc})",
                hint=f"QEMU said: {self.qemu_log_tail() or 'nothing'}",
            ) from exc
        if "error" in reply:
            raise ImageError(f"QMP {command} failed: {reply['error'].get('desc', reply)}")
        return reply.get("return")

    def alive(self) -> bool:
        return bool(self.proc is not None and self.proc.poll() is None)

    def status(self) -> str:
        return str(self.qmp("query-status")["status"])

    def wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return True
            time.sleep(0.2)
        return False

    def save_state(self, path: Path, timeout: float = 300.0) -> None:
        """Stop the guest and write its state to ``path``.

        RAM kept in a shared memory file stays out of the stream
        (``x-ignore-shared``): the file is the saved RAM once QEMU has quit.
        Other RAM goes into the stream (pages of zeros as one flag each).
        """
        self.qmp("stop")
        self.qmp("migrate-set-capabilities", capabilities=[
            {"capability": "x-ignore-shared", "state": self._ram_in_file()}])  # fmt: skip
        # Migration is rate-limited (128 MiB/s by default): nothing to share
        # bandwidth with when the source is stopped and the target a local file.
        self.qmp("migrate-set-parameters", **{"max-bandwidth": SAVE_BANDWIDTH})
        self.qmp("migrate", uri=f"exec:cat > {shlex.quote(str(path))}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info: dict[str, Any] = self.qmp("query-migrate")
            status = info.get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise ImageError(
                    f"saving the VM state failed: {info.get('error-desc', info)}",
                    hint="a device that cannot migrate (e.g. a mounted 9p share) blocks it",
                )
            time.sleep(0.05)
        raise ImageError(f"saving the VM state did not finish within {timeout:g} s")

    def save_internal(self, tag: str) -> None:
        """QEMU's own ``savevm``: RAM and device state into the qcow2 images themselves
        (every writable disk must be qcow2: ``internal_snapshots``)."""
        self.qmp("stop")
        said = str(self.qmp("human-monitor-command", **{"command-line": f"savevm {tag}"}))
        if said.strip():
            raise ImageError(f"savevm failed: {said.strip()}",
                             hint="every writable disk must be qcow2")  # fmt: skip

    def _ram_in_file(self) -> bool:
        return self.spec.memory_file is not None

    def resume_from(self, state: Path, timeout: float = 120.0) -> None:
        """Load a state saved by ``save_state`` (RAM: from the memory file, or the stream).

        The VM must have been started with ``incoming="defer"``. The saved VM was
        stopped, and QEMU carries that run state across: it arrives paused and
        needs a ``cont``.
        """
        self.qmp("migrate-set-capabilities", capabilities=[
            {"capability": "x-ignore-shared", "state": self._ram_in_file()}])  # fmt: skip
        self.qmp("migrate-incoming", uri=f"exec:cat {shlex.quote(str(state))}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status == "running":
                return
            migration = self.qmp("query-migrate").get("status")
            if migration == "failed":
                raise ImageError(
                    "resuming the saved VM state failed",
                    hint=f"QEMU said: {self.qemu_log_tail() or 'nothing'}",
                )
            if status == "paused" and migration == "completed":
                self.qmp("cont")
                continue
            if status in ("internal-error", "shutdown", "guest-panicked"):
                break
            time.sleep(0.005)
        raise ImageError(
            f"the resumed VM is not running (status {self.status()})",
            hint=f"QEMU said: {self.qemu_log_tail() or 'nothing'}",
        )

    def quit(self, timeout: float = 30.0) -> None:
        """Ask QEMU to exit now (after a saved state: images closed cleanly), and wait."""
        with contextlib.suppress(Exception):
            self.qmp("quit")
        if not self.wait_exit(timeout):
            raise ImageError(f"QEMU did not exit within {timeout:g} s of 'quit'")

    def shutdown(self, timeout: float = 120.0) -> None:
        """ACPI power button, then wait; QEMU exits when the guest powers off."""
        with contextlib.suppress(Exception):
            self.qmp("system_powerdown")
        if not self.wait_exit(timeout):
            raise ImageError(
                f"the guest did not power off within {timeout:g} s after the ACPI request",
                hint=f"serial log tail:\n{serial_tail(self.spec.serial_log)}",
            )
