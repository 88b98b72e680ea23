"""snapshot and launch: save a booted, ready VM once; resume it many times, fast.

How (Kata's "VM templating" idea, on plain QEMU):
- The snapshot VM keeps guest RAM in a file (``memory-backend-file,share=on``).
  Saving = stop the VM, then migrate *only device state* to a file with the
  ``x-ignore-shared`` capability: RAM is not copied at all, it already is the file.
- A launch maps that RAM file *privately* (``share=off``: MAP_PRIVATE, so writes
  are copy-on-write and never reach the file), loads the small device state with
  ``-incoming``, and runs. Pages are faulted in on touch, so resume cost barely
  depends on guest RAM size, and concurrent launches share the clean pages in
  the host page cache.
- Disk: the snapshot freezes its disk; each launch gets a qcow2 overlay on it.

Works on QEMU >= 4.1 (private destination RAM with x-ignore-shared), so on
jammy's 6.2 and Debian 12's 7.2. A snapshot is refused by a launch whose QEMU
version, machine or device set differs: device state is not portable across them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from image import hosttools, run
from image.build.output import BUILD_INFO, BuildOutput
from image.config import BuildConfig, format_size
from image.console import step
from image.contract import guest
from image.contract.vmstate import device_hash, qemu_version
from image.egress import guestnet, proxy
from image.errors import ImageError
from image.files import sha256_file
from image.runtime.execchannel import ChannelError, ExecSession, Process
from image.vm import accel, qemu
from image.vm.firmware import find_firmware
from image.vm.guestagent import GuestAgent

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: the standby sandbox, bound to WORKSPACE before a launch mounts it
SHARE_TAG = "share"
SHARE_MOUNT = "/mnt/share"
SESSION_MOUNT = "/sessions"
# The sandbox's workspace, as the VM sees it: a directory of the root filesystem on
# which each launch binds the session disk's work/ (personalize), so that the standby
# sandbox, which bound it before the snapshot was saved, sees it too.
WORKSPACE = "/workspace"
SESSION_WORK = f"{SESSION_MOUNT}/work"
SESSION_SERIAL = "session"  # /dev/disk/by-id/virtio-session in the guest
DEFAULT_SESSION_SIZE = 10 << 30
READY_ATTEMPTS = 5
# Files of a snapshot directory, all read-only once written.
MEMORY, STATE, DISK, BASE, VARS, META = (
    "memory", "state", "disk.qcow2", "base.qcow2", "vars.fd", "snapshot.json",
)  # fmt: skip
# QEMU's own savevm (internal=True, for bench/resume.py): the session disk is saved too.
SESSION, INTERNAL_TAG = "session.qcow2", "ready"


@dataclass(frozen=True)
class SnapshotMeta:
    format: int
    qemu_version: str
    arch: str
    machine: list[str]
    accel: list[str]
    cpus: int
    memory: int
    device_hash: str
    image_sha256: str
    created: str
    ready_seconds: float
    sizes: dict[str, int] = field(default_factory=dict)
    files_sha256: dict[str, str] = field(default_factory=dict)
    # False: RAM went into the state stream, a plain `migrate` (bench/resume.py's
    # comparison); launches then read it all back instead of mapping a file.
    ram_in_file: bool = True
    # True: QEMU's own `savevm` into the qcow2 images (what Lima offers; the bench's
    # other comparison); launches copy the disks and start with `-loadvm`.
    internal: bool = False
    # How launches reach the exec agent: "virtio-serial" (QEMU's Unix socket) or
    # "vsock" (the VM has a vhost-vsock device; each launch its own CID).
    exec_transport: str = "virtio-serial"

    @property
    def files(self) -> tuple[str, ...]:
        """The files a launch reads besides snapshot.json and the base."""
        if self.internal:
            return (DISK, VARS, SESSION)
        return (STATE, DISK, VARS, *([MEMORY] if self.ram_in_file else []))


def runtime_spec(
    arch: str, cpus: int, memory: int, accel_args: Sequence[str], work: Path, snapdir: Path,
    *, share: qemu.Share, session_disk: Path, disk: Path, vars_file: Path, firmware_code: Path,
    memory_private: bool, sockets: Path,
) -> qemu.VMSpec:  # fmt: skip
    """The runtime shape: identical for the snapshot VM and each launch, as device state needs."""
    return qemu.VMSpec(
        arch=arch, cpus=cpus, memory=memory, disk=disk, firmware_code=firmware_code,
        firmware_vars=vars_file, accel=tuple(accel_args), serial_log=work / "serial.log",
        qmp_socket=sockets / "qmp.sock", qga_socket=sockets / "qga.sock",
        exec_socket=sockets / "exec.sock",
        # No network but the host proxy: restrict=on, plus guestfwd to its sockets.
        net_restrict=True, guestfwd=guestnet.guest_forwards(sockets),
        share=share, session_disk=session_disk,
        memory_file=snapdir / MEMORY, memory_private=memory_private,
        extra=("-device", "vmgenid,guid=auto") if arch == "amd64" else (),
    )  # fmt: skip


def make_session_disk(path: Path, size: int) -> None:
    """A sparse raw ext4 made on the host in milliseconds, so the guest only mounts it.

    It already holds ``work/``, owned by the agent user (mkfs.ext4 -d copies owners).
    """
    with tempfile.TemporaryDirectory(prefix="session-root-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        os.chown(work, guest.AGENT_UID, guest.AGENT_UID)
        with path.open("wb") as f:
            f.truncate(size)
        run.run(["mkfs.ext4", "-q", "-F", "-L", "sessions", "-E", "lazy_itable_init=1",
                 "-d", tmp, str(path)])  # fmt: skip


def _wait_boot_finished(agent: GuestAgent, timeout: float) -> str:
    """Until systemd's start-up is over: cloud-init's config and final stages included.

    qemu-guest-agent answers long before that (on arm64 under TCG, cloud-init's
    config stage was still running 170 s into the boot): a snapshot saved then
    would make every launch finish the boot again, in the background, on its CPUs.
    """
    result = agent.exec(["/usr/bin/systemctl", "is-system-running", "--wait"], timeout=timeout)
    state = result.stdout.decode(errors="replace").strip()
    # degraded: start-up finished with a failed unit; a sandbox can live with that.
    if state not in ("running", "degraded"):
        raise ImageError(
            f"the guest's start-up did not finish (systemd says {state or 'nothing'!r})",
            hint="look at the serial log below for the unit that hangs",
        )
    if state == "degraded":
        failed = agent.exec(["/usr/bin/systemctl", "--failed", "--no-legend"], timeout=60)
        log.warning("the guest started degraded: %s", failed.stdout.decode(errors="replace"))
    return state


def _guest_ready(agent: GuestAgent, timeout: float, alive: Any) -> float:
    """Ready = start-up finished AND the sandbox launcher runs `true` as the agent user.

    The launcher may fail while the guest is still booting (user session, /home);
    a few tries cover that, and a failure that repeats is reported, not waited out.
    """
    start = time.monotonic()
    agent.wait_ready(timeout, alive)
    _wait_boot_finished(agent, max(1.0, timeout - (time.monotonic() - start)))
    argv = guest.sandboxed_argv(["true"], workspace=f"/home/{guest.AGENT_USER}")
    for attempt in range(READY_ATTEMPTS):
        result = agent.exec(argv, timeout=120)
        if result.exit_code == 0:
            return time.monotonic() - start
        if attempt + 1 < READY_ATTEMPTS:
            time.sleep(2)
    raise ImageError(
        f"the sandbox launcher did not run `true` as {guest.AGENT_USER} "
        f"(exit {result.exit_code}): {result.stderr.decode(errors='replace')[-500:].strip()}",
        hint="the image needs bwrap, socat, python3 and /usr/local/bin/sandbox-exec "
        "(built by ./inv build-image)",
    )


QCOW2_MAGIC = b"QFI\xfb"


def image_arch(image_path: Path, arch: str, *, explicit: bool) -> str:
    """The architecture to boot ``image_path`` as, decided before anything boots.

    A built image's folder says what it is (``build-info.json``, when it lists the
    image among its outputs): that architecture is taken, and one given explicitly
    (flag, environment, invoke.yaml) that differs is refused. An image on its own
    boots as ``arch``. A file that is not a qcow2 image is refused.
    """
    try:
        with image_path.open("rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise ImageError(
            f"no image at {image_path}", hint="build one with ./inv build-image"
        ) from None
    except OSError as exc:
        raise ImageError(f"cannot read {image_path}: {exc.strerror}") from None
    if magic != QCOW2_MAGIC:
        raise ImageError(
            f"{image_path} is not a qcow2 image",
            hint="pass the .qcow2 file that ./inv build-image wrote (or ./inv pull fetched)",
        )
    try:
        info = BuildOutput.read(image_path.parent).info
    except ImageError:
        return arch  # not in a build output's folder: nothing says otherwise
    built_for = str(info.config.get("arch") or "")
    if image_path.name not in info.outputs or built_for not in ("amd64", "arm64"):
        return arch
    if built_for != arch and explicit:
        raise ImageError(
            f"{image_path.name} was built for {built_for}, not {arch}",
            hint=f"leave out --arch (the image's own {BUILD_INFO} decides) or pass "
            f"--arch {built_for}",
        )
    return built_for


# Long on purpose: one VM's life from boot to saved state; QEMU stops with its `with`,
# and any failure removes the staging directory before the work folder goes.
TRANSPORTS = ("auto", "vsock", "virtio-serial")


def exec_transport(asked: str) -> str:
    """The exec channel's transport for a snapshot: vsock where this host can give
    the VM a vsock device (the probe: qemu.vsock_available), else virtio-serial."""
    if asked not in TRANSPORTS:
        raise ImageError(f"unknown exec transport {asked!r}",
                         hint=f"one of {', '.join(TRANSPORTS)}")  # fmt: skip
    if asked == "virtio-serial":
        return asked
    why_not = qemu.vsock_available()
    if why_not is None:
        return "vsock"
    if asked == "vsock":
        raise ImageError(f"no vsock on this host ({why_not})",
                         hint="load vhost_vsock (modprobe vhost_vsock), or use "
                         "--exec-transport virtio-serial")  # fmt: skip
    log.info("exec channel: virtio-serial (%s)", why_not)
    return "virtio-serial"


def new_vsock_cid() -> int:
    """A guest CID for one VM: 3 .. 2**32 - 2 (0-2 are reserved, 2**32 - 1 is "any").
    Random, so that concurrent launches do not meet; QEMU refuses a CID in use."""
    return 3 + secrets.randbelow((1 << 32) - 4)


def snapshot(
    cfg: BuildConfig, image_path: Path, out: Path, timeout: float | None = None,
    ram_in_file: bool = True, internal: bool = False, transport: str = "auto",
) -> tuple[Path, SnapshotMeta]:  # fmt: skip
    """Boot ``image_path`` in the runtime shape, wait until ready, save it into ``out``.
    ``ram_in_file=False`` is QEMU's plain way (RAM in the migration stream) and
    ``internal=True`` its ``savevm``, both kept for bench/resume.py to compare against.
    ``transport``: the exec channel's (exec_transport)."""
    ram_in_file = ram_in_file and not internal
    transport = exec_transport(transport)
    if not image_path.is_file():
        raise ImageError(f"no image at {image_path}", hint="build one with ./inv build-image")
    if out.exists():
        raise ImageError(f"{out} exists; a snapshot is never overwritten",
                         hint="choose another --out or remove the old snapshot")  # fmt: skip
    hosttools.require(hosttools.vm_tools(cfg.arch), "snapshot")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.staging-{uuid.uuid4().hex[:6]}")
    work = cfg.cache_dir / "work" / f"snapshot-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    work.mkdir(parents=True)
    # No proxy runs while the snapshot boots (it needs no network), but the
    # guestfwd rules are part of the device set every launch must match.
    sockets = guestnet.make_socket_dir()
    timings: dict[str, float] = {}
    try:
        with step("snapshot: prepare", timings):
            # The frozen disk is self-contained: a copy of the image (reflinked
            # where the filesystem can) plus the overlay the VM writes.
            run.run(["cp", "--reflink=auto", str(image_path), str(staging / BASE)])
            qemu.create_overlay(staging / BASE, staging / DISK)
            run.run(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", BASE,
                     str(staging / DISK)])  # fmt: skip
            firmware = find_firmware(cfg.arch)
            session = work / "session.raw"
            make_session_disk(session, DEFAULT_SESSION_SIZE)
            if internal:  # savevm needs every writable disk in qcow2
                for raw, dest in ((firmware.vars_template, VARS), (session, SESSION)):
                    run.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                             str(staging / dest)])  # fmt: skip
                session = staging / SESSION
            else:
                shutil.copyfile(firmware.vars_template, staging / VARS)
            (work / "share").mkdir()
            accel_args, reason = accel.accel_argv(cfg.accel, cfg.arch, cfg.cache_dir)
            timeout = timeout or accel.timeouts(accel_args, cfg.boot_timeout, None)[0]
            spec = runtime_spec(
                cfg.arch, cfg.cpus, cfg.memory, accel_args, work, staging,
                share=qemu.Share(work / "share", SHARE_TAG), session_disk=session,
                disk=staging / DISK, vars_file=staging / VARS, firmware_code=firmware.code,
                memory_private=False, sockets=sockets,
            )  # fmt: skip
            if not ram_in_file:
                spec = replace(spec, memory_file=None, internal_snapshots=internal)
            if transport == "vsock":
                spec = replace(spec, vsock_cid=new_vsock_cid())
        with qemu.VM(spec, work / "qemu.log") as vm, GuestAgent(spec.qga_socket) as agent:  # type: ignore[arg-type]
            with step("snapshot: boot to ready", timings):
                try:
                    ready = _guest_ready(agent, timeout, vm.alive)
                except ImageError as exc:
                    exc.message += f"\n--- serial (tail) ---\n{qemu.serial_tail(spec.serial_log)}"
                    raise
            with step("snapshot: exec agent", timings):
                # Started at boot, it is up by now; an image without it fails here soon.
                _exec_agent_ready(lambda: connect_exec(spec, 10), EXEC_AGENT_TIMEOUT, vm.alive)
            with step("snapshot: save", timings):
                # Do now what every launch would otherwise pay for.
                agent.exec(["/sbin/modprobe", "-a", "9p", "9pnet_virtio"], timeout=120)
                agent.exec(["/bin/mkdir", "-p", SHARE_MOUNT, SESSION_MOUNT], timeout=60)
                agent.exec(["/usr/bin/install", "-d", "-m", "0755", "-o", guest.AGENT_USER,
                            "-g", guest.AGENT_USER, WORKSPACE], timeout=60)  # fmt: skip
                # The first sandboxed command of every launch runs in this one.
                with connect_exec(spec, 10) as exec_session:
                    exec_session.standby(guest.sandbox_request(WORKSPACE))
                agent.exec(["/bin/sync"], timeout=120)
                agent.close()
                if internal:
                    vm.save_internal(INTERNAL_TAG)
                else:
                    vm.save_state(staging / STATE)
                version = vm.qmp("query-version")
                vm.quit()
        meta = SnapshotMeta(
            format=FORMAT_VERSION,
            qemu_version=qemu_version(cfg.arch),
            arch=cfg.arch,
            machine=qemu.machine_args(cfg.arch, accel_args),
            accel=list(accel_args),
            cpus=cfg.cpus,
            memory=cfg.memory,
            device_hash=device_hash(spec),
            image_sha256=sha256_file(image_path),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            ready_seconds=round(ready, 2),
            sizes={p.name: p.stat().st_size for p in staging.iterdir()},
            ram_in_file=ram_in_file,
            internal=internal,
            exec_transport=transport,
        )
        meta = replace(meta, files_sha256={
            n: sha256_file(staging / n) for n in meta.files if n != MEMORY})  # fmt: skip
        log.info("snapshot of QEMU %s (%s), accelerator %s", meta.qemu_version,
                 version.get("package", ""), reason)  # fmt: skip
        (staging / META).write_text(json.dumps(meta.__dict__, indent=2, sort_keys=True) + "\n")
        for path in staging.iterdir():
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            with path.open("rb") as f:
                os.fsync(f.fileno())
        staging.rename(out)
        return out, meta
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(sockets, ignore_errors=True)


def load_meta(snapdir: Path) -> SnapshotMeta:
    try:
        data = json.loads((snapdir / META).read_text())
        meta = SnapshotMeta(**data)
    except FileNotFoundError:
        raise ImageError(f"{snapdir} is not a snapshot (no {META})",
                         hint="make one with ./inv snapshot") from None  # fmt: skip
    except (ValueError, TypeError) as exc:
        raise ImageError(f"{snapdir / META} is damaged: {exc}",
                         hint="make the snapshot again with ./inv snapshot") from None  # fmt: skip
    if meta.format != FORMAT_VERSION:
        raise ImageError(f"snapshot format {meta.format} is not {FORMAT_VERSION}",
                         hint="make the snapshot again with this version") from None  # fmt: skip
    return meta


# Under TCG, QEMU's translation cache (tb-size) defaults to 1 GiB, and a launch
# fills ~250 MiB of it with code it translates: memory each launch holds alone.
# Capped for launches at what bench/resume.py measured (docs/exec.md: "tb-size").
TB_SIZE_MIB = 64


def with_tb_size(accel_args: Sequence[str], mib: int | None) -> tuple[str, ...]:
    """The accelerator arguments with TCG's translation cache capped (not for KVM)."""
    if mib is None or not accel.is_tcg(accel_args):
        return tuple(accel_args)
    return tuple(f"{a},tb-size={mib}" if a.startswith("tcg") else a for a in accel_args)


@dataclass(frozen=True)
class LaunchOptions:
    share: Path | None = None
    share_readonly: bool = False
    session_size: int = DEFAULT_SESSION_SIZE
    hostname: str | None = None
    command: tuple[str, ...] = ()
    command_timeout: float = 3600.0
    policy: guestnet.PolicyChoice = guestnet.DEFAULT_LAUNCH
    audit_log: Path | None = None  # default: <cache>/audit/launch-<id>.jsonl
    tb_size_mib: int | None = TB_SIZE_MIB  # under TCG; None: QEMU's own (1 GiB)


@dataclass
class Launch:
    """A running sandbox VM resumed from a snapshot."""

    vm: qemu.VM
    agent: GuestAgent
    work: Path
    hostname: str
    timings: dict[str, float]
    audit_log: Path  # the egress proxy's record of this launch's connections
    session: ExecSession  # the exec agent's channel, open for the launch's life
    _agent_ready: bool = False

    def exec(self, argv: list[str], timeout: float = 600.0) -> Any:
        """Through qemu-guest-agent (diagnostics, tests), as root; waited for on first use."""
        if not self._agent_ready:
            self.agent.wait_ready(60, self.vm.alive)
            self._agent_ready = True
        return self.agent.exec(argv, timeout=timeout)

    def sandboxed(self, command: Sequence[str], timeout: float = 3600.0) -> Any:
        return self.exec(guest.sandboxed_argv(command, workspace=WORKSPACE), timeout=timeout)

    def exec_session(self) -> contextlib.AbstractContextManager[ExecSession]:
        """The exec agent's channel (streaming commands, stdin, signals, files): the
        launch's own, closed when the launch ends."""
        return contextlib.nullcontext(self.session)

    def spawn_sandboxed(self, session: ExecSession, command: Sequence[str]) -> Process:
        """COMMAND in the sandbox as the agent user, its output streaming."""
        return session.spawn(list(command), sandbox=guest.sandbox_request(WORKSPACE))


EXEC_AGENT_TIMEOUT = 180.0


def connect_exec(spec: qemu.VMSpec, timeout: float) -> ExecSession:
    """A session with the VM's exec agent: over vsock if the VM has a vsock
    device, else over its virtio-serial port."""
    if spec.vsock_cid is not None:
        return ExecSession.connect_vsock(spec.vsock_cid, guest.EXEC_VSOCK_PORT, timeout)
    assert spec.exec_socket is not None
    return ExecSession.connect(spec.exec_socket, timeout)


def _exec_agent_ready(connect: Callable[[], ExecSession], timeout: float, alive: Any) -> None:
    """The exec agent answers (on the transport launches will use) and has run a
    command: it is warm when the VM is saved."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with connect() as session:
                # A sandboxed command, as launches run them: what it reads (bwrap,
                # socat, the filters, the inner stage) is in the page cache when saved.
                home = f"/home/{guest.AGENT_USER}"
                if session.run(["true"], timeout=120, sandbox=guest.sandbox_request(home)).ok:
                    return
        except ChannelError as exc:
            if time.monotonic() > deadline or not alive():
                raise ImageError(f"the exec agent did not answer: {exc.message}",
                                 hint=f"is {guest.EXEC_SERVICE} in the image? rebuild it "
                                 "with this version of sandbox-image") from None  # fmt: skip
        time.sleep(0.5)


def check_compatible(meta: SnapshotMeta, snapdir: Path, spec: qemu.VMSpec) -> None:
    here = qemu_version(meta.arch)
    if here != meta.qemu_version:
        raise ImageError(
            f"this snapshot was made by QEMU {meta.qemu_version}; this host has QEMU {here}",
            hint="device state does not move across QEMU versions: run ./inv snapshot here",
        )
    if device_hash(spec) != meta.device_hash:
        raise ImageError(
            "this snapshot's machine or device set differs from what this launch would use",
            hint="run ./inv snapshot again with this version of sandbox-image",
        )
    for name in (*meta.files, BASE):
        if not (snapdir / name).is_file():
            raise ImageError(f"snapshot file missing: {snapdir / name}")


@contextlib.contextmanager
def launch(
    snapdir: Path, cfg: BuildConfig, options: LaunchOptions,
    resolver: proxy.Resolver = proxy.system_resolver,
) -> Iterator[Launch]:  # fmt: skip
    """Resume a sandbox; its only way out is the egress proxy this launch runs."""
    snapdir = snapdir.resolve()  # QEMU gets absolute paths: its cwd is not ours to rely on
    meta = load_meta(snapdir)
    policy = options.policy.load()
    launch_id = uuid.uuid4().hex[:12]
    audit_log = options.audit_log or cfg.cache_dir / "audit" / f"launch-{launch_id}.jsonl"
    audit_log.parent.mkdir(parents=True, exist_ok=True)
    work = cfg.cache_dir / "launches" / launch_id
    work.mkdir(parents=True)
    sockets = guestnet.make_socket_dir()
    timings: dict[str, float] = {}
    try:
        start = time.monotonic()
        disk = work / "disk.qcow2"
        vars_file = work / "vars.fd"
        if meta.internal:
            # loadvm reads the saved state from the images themselves: each launch
            # gets copies (the disk's backing file stays the snapshot's base).
            session = work / SESSION
            for name, dest in ((DISK, disk), (VARS, vars_file), (SESSION, session)):
                run.run(["cp", "--reflink=auto", "--sparse=always", str(snapdir / name),
                         str(dest)])  # fmt: skip
                dest.chmod(0o600)
            run.run(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", str(snapdir / BASE),
                     str(disk)])  # fmt: skip
        else:
            qemu.create_overlay(snapdir / DISK, disk)
            shutil.copyfile(snapdir / VARS, vars_file)
            vars_file.chmod(0o600)
            session = work / "session.raw"
            make_session_disk(session, options.session_size)
        share_dir = options.share or (work / "share")
        share_dir.mkdir(exist_ok=True)
        firmware = find_firmware(meta.arch)
        spec = runtime_spec(
            meta.arch, meta.cpus, meta.memory, with_tb_size(meta.accel, options.tb_size_mib),
            work, snapdir,
            share=qemu.Share(share_dir.resolve(), SHARE_TAG, options.share_readonly),
            session_disk=session, disk=disk, vars_file=vars_file,
            firmware_code=firmware.code, memory_private=True, sockets=sockets,
        )  # fmt: skip
        if not meta.ram_in_file:
            spec = replace(spec, memory_file=None, internal_snapshots=meta.internal)
        if meta.exec_transport == "vsock":
            why_not = qemu.vsock_available()
            if why_not is not None:
                raise ImageError(f"the snapshot reaches its exec agent over vsock, and this "
                                 f"host has none ({why_not})",
                                 hint="load vhost_vsock, or make the snapshot again here "
                                 "(it picks virtio-serial)")  # fmt: skip
            spec = replace(spec, vsock_cid=new_vsock_cid())
        check_compatible(meta, snapdir, spec)
        if meta.internal:
            spec = replace(spec, loadvm=INTERNAL_TAG)
        else:
            spec = replace(spec, incoming="defer")
        timings["prepare"] = round(time.monotonic() - start, 3)
        with (
            guestnet.serve_for_vm(policy, sockets, audit_log, resolver),
            qemu.VM(spec, work / "qemu.log") as vm,
            GuestAgent(spec.qga_socket) as agent,  # type: ignore[arg-type]
        ):
            if not meta.internal:
                vm.resume_from(snapdir / STATE)
            timings["resume"] = round(time.monotonic() - start, 3)
            with connect_exec(spec, 60) as channel:
                timings["agent"] = round(time.monotonic() - start, 3)
                hostname = options.hostname or f"sandbox-{uuid.uuid4().hex[:8]}"
                channel.personalize(**personalize_request(hostname, options.share_readonly))
                timings["ready"] = round(time.monotonic() - start, 3)
                yield Launch(vm, agent, work, hostname, timings, audit_log, channel)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(sockets, ignore_errors=True)


def personalize_request(hostname: str, share_readonly: bool) -> dict[str, Any]:
    """What makes a launch its own machine: one exec-agent request, handled in the
    agent's process (image/guest/exec_agent.py: ``personalize``). Two launches from
    one snapshot start with identical kernel RNG state: 64 fresh bytes from this
    host are mixed in and the CRNG reseeded at once. The guest's clock stopped when
    the snapshot was saved."""
    share_options = "trans=virtio,version=9p2000.L"
    return {
        "hostname": hostname,
        "time_ns": time.time_ns(),
        "entropy": os.urandom(64),
        "mounts": [
            {"source": SHARE_TAG, "target": SHARE_MOUNT, "fstype": "9p",
             "options": share_options, "readonly": share_readonly},
            {"source": f"/dev/disk/by-id/virtio-{SESSION_SERIAL}", "target": SESSION_MOUNT,
             "fstype": "ext4", "options": "", "readonly": False},
            {"source": SESSION_WORK, "target": WORKSPACE, "fstype": "none", "options": "",
             "readonly": False, "bind": True},
        ],
    }  # fmt: skip


def format_meta(meta: SnapshotMeta) -> str:
    return (f"QEMU {meta.qemu_version}, {meta.arch}, {meta.cpus} vCPU, "
            f"{format_size(meta.memory)} RAM, ready in {meta.ready_seconds} s")  # fmt: skip


def parse_launch_options(
    share: str | None, session_disk: str, hostname: str | None, command: Sequence[str],
    timeout: float, policy: guestnet.PolicyChoice | None = None, audit_log: str | None = None,
) -> LaunchOptions:  # fmt: skip
    """`--share HOSTDIR[:ro]`, `--session-disk SIZE`, `--hostname`, `-- CMD...` -> options."""
    from image.config import parse_size

    share_path, readonly = None, False
    if share:
        text, _, mode = share.rpartition(":") if share.endswith((":ro", ":rw")) else (share, "", "")
        share_path, readonly = Path(text).expanduser().resolve(), mode == "ro"
        if not share_path.is_dir():
            raise ImageError(f"--share {share}: not a directory", hint="create it first")
    try:
        size = parse_size(session_disk)
    except ValueError as exc:
        raise ImageError(f"--session-disk: {exc}", hint="e.g. --session-disk 20G") from None
    if hostname is not None and not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", hostname):
        raise ImageError(f"not a host name: {hostname!r}", hint="lower-case letters, digits, '-'")
    return LaunchOptions(
        share_path, readonly, size, hostname, tuple(command), timeout,
        policy or guestnet.DEFAULT_LAUNCH,
        Path(audit_log).expanduser().resolve() if audit_log else None,
    )  # fmt: skip
