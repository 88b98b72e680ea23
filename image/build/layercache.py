"""Provisioned layers: the build VM saved the moment each stage of provisioning has finished.

Under TCG, booting the base image and provisioning it are most of a build, and
a rebuild with the same inputs would do both again for the same result. A
layer is that build VM, stopped right after cloud-init finished and saved
with QEMU's migration to a file: its disk (a qcow2 overlay on the base image),
its device state and RAM (one migration stream; pages of zeros take a flag
each) and its firmware variables. (Snapshots keep RAM in a file instead, so
that many launches share it; a build resumes a layer once, and file-backed RAM
made the provisioning itself ~7 % slower here.)

Provisioning runs in stages, by how often their inputs change
(image/build/stages.py): "system" (cloud-init: users, apt, third-party
sources, packages), "libraries" (pip, npm), "config" (the sandbox's files,
the skills). Each stage ends in a layer whose disk is a qcow2 overlay on the
layer below (the lowest on the base image), and whose key is made of its own
inputs and the key below. A build resumes the deepest layer whose key still
matches and runs only the stages above it, each from the layer below, saving
each as a new layer.

Every build resumes from a layer: a cold build provisions and saves each
stage first, a warm rebuild finds some or all of them. From there both do the
same thing: the clock set, the kernel RNG reseeded, a fresh build SSH key,
then the next stage, or verify, describe, generalize, compact and publish. So
the path a warm rebuild takes is the one every cold build takes too.

    <cache>/layers/<distro>-<release>-<arch>-<profile>/<stage>/<key>/
        disk.qcow2  state  vars.fd  serial.log  egress.jsonl  layer.json

A layer's serial.log and egress.jsonl are its own stage's records. A layer
above another names it (key and the build that made it): a layer below made
again by another build holds other disk blocks, and the one above, an
overlay on the old blocks, is then removed, never resumed.

Reuse is safe only if a cold build now would provision the same guest:
- The system layer's key is the SHA-256 of every input that decides what the
  provisioned guest holds or whether its saved state loads: the base image's
  hash, the rendered cloud-init (per-build keys replaced by placeholders), the
  lock's apt part, the egress policy, disk size, the VM's device set, QEMU's
  version and the firmware's hash, the toolkit's version. A later stage's key
  is the one below, the stage's script and its payload.
- An unlocked build also depends on the archive's state. The system layer
  records the SHA-256 of every InRelease file apt used; a lookup fetches each
  again and reuses the layer only if none has changed (a new security update:
  a miss, and every stage runs). PyPI's and npm's indexes have no such single
  signed file: an unlocked build keeps no "libraries" layer, nor any above it
  (build with --lock).

A layer enters the cache only after its build has published (files fsynced,
read-only, one rename); a build that uses one holds a shared lock on it and on
every layer below it, and pruning skips layers in use. The newest ``KEEP``
layers of each stage are kept; one whose layer below is gone goes too.
Trust is that of the cache directory itself (the host user's), as for the
package caches.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from image.build.packagecache import Item
from image.errors import ImageError
from image.vm import qemu

log = logging.getLogger(__name__)

FORMAT = 2
KEEP = 2  # per stage of a slot: the newest ones
SYSTEM = "system"  # the first stage: cloud-init on the base image
STATE, DISK, VARS, META = "state", "disk.qcow2", "vars.fd", "layer.json"
SERIAL, EGRESS = "serial.log", "egress.jsonl"  # the provisioning's own records
FILES = (STATE, DISK, VARS, SERIAL, EGRESS)
INDEX_TIMEOUT = 15.0

# Run in the guest before it is saved: each apt source's InRelease URL and the
# SHA-256 of the copy apt verified and used ("-": not found under that name).
ARCHIVE_STATE_SCRIPT = r"""apt-get indextargets --format '$(BASE_URI)' | sort -u |
while read -r uri; do
  f="/var/lib/apt/lists/$(printf '%s' "${uri#*://}InRelease" | tr / _)"
  if [ -f "$f" ]; then echo "${uri}InRelease $(sha256sum < "$f" | cut -d' ' -f1)"
  else echo "${uri}InRelease -"; fi
done"""


@dataclass(frozen=True)
class LayerMeta:
    format: int
    key: str
    slot: str
    build_id: str  # the build that provisioned it
    created: str
    device_hash: str
    host_public_key: str  # the guest's sshd key (the provisioning build's)
    archive: list[dict[str, str | None]]  # [{"url": InRelease URL, "sha256": ...}]
    locked: bool
    seconds: dict[str, float] = field(default_factory=dict)  # boot, provision
    inputs: dict[str, Any] = field(default_factory=dict)  # what the key was made of
    stage: str = SYSTEM
    parent: dict[str, str] | None = None  # the layer below: {"stage", "key", "build_id"}
    rerun_key: str = ""  # which builds may re-run this stage on it (stages.Stage.rerun_key)
    rerun_of: dict[str, str] | None = None  # made by a re-run on this layer (then rebased)


def parent_ref(meta: LayerMeta) -> dict[str, str]:
    """How a layer above names this one."""
    return {"stage": meta.stage, "key": meta.key, "build_id": meta.build_id}


@dataclass
class Layer:
    """A layer in use: its files stay put while ``lock_fd`` holds a shared lock."""

    path: Path
    meta: LayerMeta
    cached: bool  # found in the cache (a warm rebuild), or made by this build
    lock_fd: int | None = None
    # A layer this one's disk is an overlay on until it is committed (a re-run's).
    holds: Layer | None = None

    def release(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None
        if self.holds is not None:
            self.holds.release()


def make_key(inputs: Mapping[str, Any]) -> str:
    text = json.dumps(dict(inputs), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def slot(distro: str, release: str, arch: str, profile: str) -> str:
    return f"{distro}-{release}-{arch}-{profile}"


def layers_dir(cache_dir: Path) -> Path:
    return cache_dir / "layers"


def layer_path(cache_dir: Path, slot_name: str, stage: str, key: str) -> Path:
    return layers_dir(cache_dir) / slot_name / stage / key


def parse_archive_state(stdout: str) -> list[dict[str, str | None]]:
    """ARCHIVE_STATE_SCRIPT's lines -> [{"url", "sha256" or None}], in a stable order."""
    entries: list[dict[str, str | None]] = []
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) != 2 or not parts[0].startswith(("http://", "https://")):
            continue
        digest = parts[1] if len(parts[1]) == 64 else None
        entries.append({"url": parts[0], "sha256": digest})
    return sorted(entries, key=lambda e: str(e["url"]))


def fetch_index_sha256(url: str) -> str:
    response = requests.get(url, timeout=INDEX_TIMEOUT)
    response.raise_for_status()
    return hashlib.sha256(response.content).hexdigest()


def stale_reason(meta: LayerMeta, fetch: Callable[[str], str] = fetch_index_sha256) -> str | None:
    """Why an unlocked build must not reuse this layer now; None if it may."""
    if meta.locked:
        return None  # the lock, part of the key, names every version
    if not meta.archive:
        return "the layer recorded no apt archive state"
    for entry in meta.archive:
        url, recorded = str(entry["url"]), entry["sha256"]
        if recorded is None:
            return f"apt's copy of {url} was not found in the guest"
        try:
            now = fetch(url)
        except (requests.RequestException, OSError) as exc:
            return f"cannot check {url}: {exc}"
        if now != recorded:
            return f"the archive changed since the layer was made ({url})"
    return None


def _load_meta(path: Path) -> LayerMeta:
    data = json.loads((path / META).read_text())
    meta = LayerMeta(**data)
    if meta.format != FORMAT:
        raise ValueError(f"layer format {meta.format} is not {FORMAT}")
    return meta


def _lock_shared(path: Path) -> int | None:
    """A shared lock on the layer, if it is still whole once locked (a pruner
    holds the exclusive lock while it deletes)."""
    try:
        fd = os.open(path / META, os.O_RDONLY)
    except OSError:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)
    if all((path / name).is_file() for name in FILES):
        return fd
    os.close(fd)
    return None


def lookup(
    cache_dir: Path, slot_name: str, key: str, fetch: Callable[[str], str] = fetch_index_sha256,
    *, stage: str = SYSTEM, below: Layer | None = None,
) -> Layer | None:  # fmt: skip
    """The cached layer for ``key`` if it may be reused now, locked shared; else None.

    ``below``: the layer it must have been made on (its disk's backing file)."""
    path = layer_path(cache_dir, slot_name, stage, key)
    what = f"provisioned layer ({stage})"
    if not (path / META).is_file():
        log.info("%s: none for this build's inputs (key %s)", what, key[:12])
        return None
    try:
        meta = _load_meta(path)
        missing = [name for name in FILES if not (path / name).is_file()]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        if meta.stage != stage:
            raise ValueError(f"it is a layer of stage {meta.stage!r}")
        if below is not None and meta.parent != parent_ref(below.meta):
            raise ValueError("it was made on another copy of the layer below")
    except (OSError, ValueError, TypeError) as exc:
        log.warning("%s %s is damaged (%s): removed", what, path, exc)
        remove(path)
        return None
    if stage == SYSTEM:  # the stages above hold only what their keys pin
        reason = stale_reason(meta, fetch)
        if reason is not None:
            log.info("%s %s not reused: %s", what, key[:12], reason)
            return None
    fd = _lock_shared(path)
    if fd is None:
        log.info("%s %s was removed while it was looked up", what, key[:12])
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # last use, for pruning and for KEEP
    log.info("%s %s reused (made by build %s)", what, key[:12], meta.build_id)
    return Layer(path, meta, cached=True, lock_fd=fd)


def lookup_chain(
    cache_dir: Path, slot_name: str, keys: Iterable[tuple[str, str]],
    fetch: Callable[[str], str] = fetch_index_sha256,
) -> list[Layer]:  # fmt: skip
    """The cached layers for ``keys`` ((stage, key), lowest first), as far up as
    they go: each found on the one below it, each locked shared."""
    found: list[Layer] = []
    for stage, key in keys:
        layer = lookup(cache_dir, slot_name, key, fetch, stage=stage,
                       below=found[-1] if found else None)  # fmt: skip
        if layer is None:
            break
        found.append(layer)
    return found


def lookup_rerunnable(cache_dir: Path, slot_name: str, stage: str, rerun_key: str,
                      below: Layer) -> Layer | None:  # fmt: skip
    """The newest cached layer of ``stage`` this build may re-run the stage on (the
    same re-run key, made on ``below``), locked shared; else None."""
    stage_path = layers_dir(cache_dir) / slot_name / stage
    if not rerun_key or not stage_path.is_dir():
        return None
    found = sorted((p for p in stage_path.iterdir() if p.is_dir()),
                   key=lambda p: p.stat().st_mtime, reverse=True)  # fmt: skip
    for path in found:
        try:
            meta = _load_meta(path)
        except (OSError, ValueError, TypeError):
            continue  # a lookup of its own key removes a damaged one
        if meta.rerun_key != rerun_key or meta.parent != parent_ref(below.meta):
            continue
        fd = _lock_shared(path)
        if fd is None:
            continue
        log.info("provisioned layer (%s) %s: this build re-runs the stage on it (made by "
                 "build %s)", stage, meta.key[:12], meta.build_id)  # fmt: skip
        return Layer(path, meta, cached=True, lock_fd=fd)
    return None


def write_meta(path: Path, meta: LayerMeta) -> None:
    (path / META).write_text(json.dumps(asdict(meta), indent=2, sort_keys=True) + "\n")


def commit(layer: Layer, cache_dir: Path, below: Path | None = None) -> Path | None:
    """Move a layer this build made into the cache (after the build has published).

    ``below``: where the layer below now is, if this build moved it too (the
    disk's backing file is renamed to it). Files fsynced, read-only and
    private, then one rename; the stage keeps its newest KEEP.
    """
    meta = layer.meta
    dest = layer_path(cache_dir, meta.slot, meta.stage, meta.key)
    if dest.exists():
        return None  # another build with the same inputs got there first
    if meta.rerun_of is not None:
        # Its disk is an overlay on the layer it was re-run on: the blocks it
        # still reads from there are copied in, so that it needs only the layer
        # below, as any layer of its stage.
        assert below is not None, "a re-run layer is kept after the layer below it"
        qemu.rebase_overlay(layer.path / DISK, below / DISK, copy=True)
    elif below is not None:
        qemu.rebase_overlay(layer.path / DISK, below / DISK)
    for name in (*FILES, META):
        file = layer.path / name
        with file.open("rb") as f:
            os.fsync(f.fileno())
        file.chmod(stat.S_IRUSR)  # the guest's RAM and disk: nobody else's business
    layer.path.chmod(stat.S_IRWXU)
    dest.parent.mkdir(parents=True, exist_ok=True)
    layer.path.rename(dest)
    layer.path = dest
    os.utime(dest)  # its first use: now
    trim_slot(dest.parent, keep=KEEP)
    remove_orphans(cache_dir)
    return dest


def remove(path: Path) -> bool:
    """Delete a layer unless a build is using it (it holds a shared lock)."""
    if (path / META).is_file():
        try:
            fd = os.open(path / META, os.O_RDONLY)
        except OSError:
            fd = None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                log.info("provisioned layer %s is in use: kept", path)
                return False
            try:
                shutil.rmtree(path, ignore_errors=True)
            finally:
                os.close(fd)
            return True
    shutil.rmtree(path, ignore_errors=True)
    return True


def trim_slot(slot_path: Path, keep: int) -> list[Path]:
    """Remove all but the ``keep`` most recently used layers of a slot."""
    found = sorted((p for p in slot_path.iterdir() if p.is_dir()),
                   key=lambda p: p.stat().st_mtime, reverse=True)  # fmt: skip
    removed = [p for p in found[keep:] if remove(p)]
    for path in removed:
        log.info("provisioned layer %s removed (a slot keeps its newest %d)", path.name[:12], keep)
    return removed


def allocated(path: Path) -> int:
    """Bytes a layer really takes on disk (its qcow2 disk may be sparse)."""
    return sum(p.stat().st_blocks * 512 for p in path.iterdir() if p.is_file())


def _stage_dirs(cache_dir: Path) -> Iterator[tuple[str, Path]]:
    """(slot/stage, folder) for every stage folder of every slot."""
    root = layers_dir(cache_dir)
    if not root.is_dir():
        return
    for slot_path in sorted(p for p in root.iterdir() if p.is_dir()):
        for stage_path in sorted(p for p in slot_path.iterdir() if p.is_dir()):
            yield f"{slot_path.name}/{stage_path.name}", stage_path


def items(cache_dir: Path) -> list[Item]:
    """Each layer as one prunable item (kind "layer", key = its slot/stage).

    A folder of format 1 (``<slot>/<key>``, one layer per build) is listed as
    ``<slot>/format-1`` so that pruning can remove it; no build reads it."""
    found: list[Item] = []
    for name, stage_path in _stage_dirs(cache_dir):
        if (stage_path / META).is_file():
            group = [stage_path]
            name = f"{name.split('/')[0]}/format-1"
        else:
            group = sorted(p for p in stage_path.iterdir() if p.is_dir())
        for path in group:
            with contextlib.suppress(OSError):
                found.append(Item(path, name, "layer", allocated(path), path.stat().st_mtime))
    return found


def remove_orphans(cache_dir: Path) -> int:
    """Remove every layer whose layer below is gone or was made again (its disk
    would be an overlay on blocks that are not there); the bytes freed."""
    freed = 0
    changed = True
    while changed:  # a removal may orphan the layer above it in turn
        changed = False
        for name, stage_path in _stage_dirs(cache_dir):
            for path in sorted(p for p in stage_path.iterdir() if p.is_dir()):
                try:
                    meta = _load_meta(path)
                except (OSError, ValueError, TypeError):
                    continue
                problem = _below_problem(cache_dir, name.split("/")[0], meta)
                if problem is None:
                    continue
                size = allocated(path)
                if remove(path):
                    log.info("provisioned layer %s removed: %s", path.name[:12], problem)
                    freed += size
                    changed = True
    return freed


def _below_problem(cache_dir: Path, slot_name: str, meta: LayerMeta) -> str | None:
    """Why the layer below ``meta``'s is unusable; None if it is there (or there is none)."""
    if meta.parent is None:
        return None
    path = layer_path(cache_dir, slot_name, meta.parent["stage"], meta.parent["key"])
    try:
        below = _load_meta(path)
    except FileNotFoundError:
        return "the layer below is gone"
    except (OSError, ValueError, TypeError):
        return "the layer below is damaged"
    if parent_ref(below) != meta.parent:
        return "the layer below was made again by another build"
    return None


def prune(chosen: Iterable[Item], cache_dir: Path | None = None) -> int:
    """Remove the chosen layers (not those in use), then any left without their layer below."""
    freed = 0
    for item in chosen:
        if item.kind == "layer" and remove(item.path):
            freed += item.size
    if cache_dir is not None:
        freed += remove_orphans(cache_dir)
    return freed


def check_resumable(meta: LayerMeta, device_hash: str) -> None:
    if meta.device_hash != device_hash:
        raise ImageError("the layer's device set differs from this build VM's")


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
