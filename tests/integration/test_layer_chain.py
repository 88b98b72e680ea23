"""Stage layers with real qcow2 chains: committed lowest first, each disk's backing
file moved with the layer below, the data read back through the whole chain."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from image import run
from image.build import layercache
from image.vm import qemu

SLOT = "debian-jammy-amd64-smoke"


def _io(disk: Path, command: str) -> str:
    return run.run(["qemu-io", "-f", "qcow2", "-c", command, str(disk)]).stdout.decode()


def _new_layer(work: Path, stage: str, key: str, below: layercache.Layer | None,
               backing: Path) -> layercache.Layer:  # fmt: skip
    path = work / "layers" / stage
    path.mkdir(parents=True)
    qemu.create_overlay(backing, path / layercache.DISK)
    for name in layercache.FILES:
        if name != layercache.DISK:
            (path / name).write_bytes(name.encode())
    meta = layercache.LayerMeta(
        format=layercache.FORMAT, key=key, slot=SLOT, build_id="b1", created="now",
        device_hash="d" * 64, host_public_key="ssh-ed25519 AAAA host", archive=[], locked=True,
        stage=stage, parent=layercache.parent_ref(below.meta) if below else None,
    )  # fmt: skip
    layercache.write_meta(path, meta)
    return layercache.Layer(path, meta, cached=False)


def _backing(disk: Path) -> str:
    info = json.loads(run.run(["qemu-img", "info", "--output=json", str(disk)]).stdout)
    return str(info["full-backing-filename"])


def test_a_chain_committed_lowest_first_reads_through_from_the_cache(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    run.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"])
    _io(base, "write -P 0x11 0 64k")
    work, cache = tmp_path / "work", tmp_path / "cache"
    system = _new_layer(work, "system", "s" * 64, None, base)
    _io(system.path / layercache.DISK, "write -P 0x22 64k 64k")
    config = _new_layer(work, "config", "c" * 64, system, system.path / layercache.DISK)
    _io(config.path / layercache.DISK, "write -P 0x33 128k 64k")
    kept_system = layercache.commit(system, cache)
    assert kept_system == layercache.layer_path(cache, SLOT, "system", "s" * 64)
    kept_config = layercache.commit(config, cache, below=kept_system)
    assert kept_config == layercache.layer_path(cache, SLOT, "config", "c" * 64)
    assert not (work / "layers" / "system").exists()  # moved, not copied
    # The config disk now backs onto the system layer where it is in the cache.
    assert _backing(kept_config / layercache.DISK) == str(kept_system / layercache.DISK)
    top = kept_config / layercache.DISK
    for offset, pattern in ((0, 0x11), (64 << 10, 0x22), (128 << 10, 0x33)):
        assert "Pattern verification failed" not in _io(
            top, f"read -P {pattern:#x} {offset} 64k"), offset  # fmt: skip
    # What a build then finds: the whole chain, each on its own layer below.
    found = layercache.lookup_chain(cache, SLOT, [("system", "s" * 64), ("config", "c" * 64)])
    assert [layer.path for layer in found] == [kept_system, kept_config]
    for layer in found:
        layer.release()


def test_a_rerun_layer_is_rebased_onto_the_layer_below_with_the_blocks_it_read(
    tmp_path: Path,
) -> None:
    """A libraries layer made by re-running the stage on an earlier libraries
    layer: committed, its disk backs onto the system layer and still reads the
    earlier layer's blocks (copied in), so the earlier one can go."""
    base = tmp_path / "base.qcow2"
    run.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"])
    _io(base, "write -P 0x11 0 64k")
    work, cache = tmp_path / "work", tmp_path / "cache"
    system = _new_layer(work / "a", "system", "s" * 64, None, base)
    _io(system.path / layercache.DISK, "write -P 0x22 64k 64k")
    kept_system = layercache.commit(system, cache)
    assert kept_system is not None
    earlier = _new_layer(work / "a", "libraries", "e" * 64, system, kept_system / layercache.DISK)
    _io(earlier.path / layercache.DISK, "write -P 0x33 128k 128k")
    kept_earlier = layercache.commit(earlier, cache, below=kept_system)
    assert kept_earlier is not None
    # The re-run: an overlay on the earlier layer, one block of it changed.
    rerun = _new_layer(work / "b", "libraries", "n" * 64, system, kept_earlier / layercache.DISK)
    rerun.meta = dataclasses.replace(rerun.meta, build_id="b2",
                                     rerun_of=layercache.parent_ref(earlier.meta))  # fmt: skip
    layercache.write_meta(rerun.path, rerun.meta)
    _io(rerun.path / layercache.DISK, "write -P 0x44 192k 64k")
    kept = layercache.commit(rerun, cache, below=kept_system)
    assert kept is not None
    disk = kept / layercache.DISK
    assert _backing(disk) == str(kept_system / layercache.DISK)
    layercache.remove(kept_earlier)  # nothing reads it any more
    for offset, pattern in ((0, 0x11), (64 << 10, 0x22), (128 << 10, 0x33), (192 << 10, 0x44)):
        assert "Pattern verification failed" not in _io(
            disk, f"read -P {pattern:#x} {offset} 64k"), offset  # fmt: skip
