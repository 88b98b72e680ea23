"""The VM-state contract: what must match between a saved VM and the one resumed
from it (a build's provisioned layer, a snapshot, each launch), and what every
resume does first.

``device_hash`` names the device set without the file paths; ``qemu_version`` is
asked once per binary and cached; ``RESEED_RNG`` gives a resumed guest its own
randomness.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import replace

from image import run
from image.egress import guestnet
from image.vm import qemu


@functools.cache
def qemu_version(arch: str) -> str:
    out = run.run([qemu.QEMU_BINARY[arch], "--version"]).stdout.decode()
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else out.strip().splitlines()[0]


def device_hash(spec: qemu.VMSpec) -> str:
    """What must match between snapshot and launch: the device set, not the file paths."""
    argv = qemu.qemu_argv(replace(spec, incoming=None, loadvm=None, memory_private=False))
    paths = {
        str(p)
        for p in (
            spec.disk,
            spec.firmware_code,
            spec.firmware_vars,
            spec.serial_log,
            spec.qmp_socket,
            spec.qga_socket,
            spec.exec_socket,
            spec.session_disk,
            spec.memory_file,
            spec.share.path if spec.share else None,
            spec.seed_iso,
            *(shared.path for shared in spec.shares),
            *guestnet.forwarded_sockets(spec.guestfwd),
        )
        if p
    }
    # The host end of the SSH forward (a build VM's) and the size of TCG's translation
    # cache (a launch's, tb-size) are not guest-visible state. The vsock CID is, but
    # each launch must have its own: the guest reads it anew after a migration
    # (QEMU sends it a transport reset), so only the device's presence counts.
    normalized = [
        re.sub(r"hostfwd=tcp:127\.0\.0\.1:\d+-", "hostfwd=tcp:127.0.0.1:<port>-",
               re.sub(r",tb-size=\d+", "",
                      re.sub(r"guest-cid=\d+", "guest-cid=<cid>", _strip_paths(a, paths))))
        for a in argv
    ]  # fmt: skip
    return hashlib.sha256("\0".join(normalized).encode()).hexdigest()


def _strip_paths(arg: str, paths: set[str]) -> str:
    for p in sorted(paths, key=len, reverse=True):
        arg = arg.replace(p, "<path>")
    if not arg.startswith("local,id=fs"):
        return arg
    # A launch may share read-only what the snapshot VM had writable: the 9p
    # access mode and security model are host-side, not guest device state.
    return re.sub(r",readonly=on|,security_model=[a-z-]+", "", arg)


# A write to /dev/urandom only mixes into the kernel's input pool: the resumed,
# shared ChaCha state keeps serving reads until the next scheduled reseed, up to
# 60 s later. RNDRESEEDCRNG (_IO('R', 7), root) reseeds at once from the pool
# that now holds the host's bytes. amd64 launches also get this from vmgenid on
# kernels >= 5.18; -machine virt has no vmgenid device (QEMU 7.2) and jammy's
# 5.15 kernel no vmgenid driver, so the launch does it itself.
RESEED_RNG = (
    'python3 -I -S -c \'import fcntl, os, sys; f = os.open("/dev/urandom", os.O_WRONLY); '
    "os.write(f, sys.stdin.buffer.read(64)); fcntl.ioctl(f, 0x5207)'"
)
