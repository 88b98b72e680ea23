"""Provisioned layers: keys, archive freshness, lookup, commit, trimming and pruning."""

from __future__ import annotations

import fcntl
import hashlib
import http.server
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest

from image import config
from image.build import cloudinit, layercache, lockfile, packages, pipeline, stages
from image.build.inputs import build_inputs
from image.contract import vmstate
from image.vm import qemu, ssh

SLOT = "debian-jammy-amd64-smoke"


class _Archive(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def archive() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A real HTTP server whose files the test edits: {"/dists/x/InRelease": bytes}."""
    files: dict[str, bytes] = {}

    class Handler(_Archive):
        pass

    Handler.files = files
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", files
    finally:
        server.shutdown()
        server.server_close()


def _meta(key: str = "k" * 64, **kw: object) -> layercache.LayerMeta:
    meta = layercache.LayerMeta(
        format=layercache.FORMAT, key=key, slot=SLOT, build_id="b1", created="now",
        device_hash="d" * 64, host_public_key="ssh-ed25519 AAAA host", archive=[], locked=True,
    )  # fmt: skip
    return replace(meta, **kw)  # type: ignore[arg-type]


def _make_layer(cache: Path, meta: layercache.LayerMeta, mtime: float | None = None) -> Path:
    path = layercache.layer_path(cache, meta.slot, meta.stage, meta.key)
    path.mkdir(parents=True)
    for name in layercache.FILES:
        (path / name).write_bytes(name.encode())
    layercache.write_meta(path, meta)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_key_is_stable_and_sees_every_input() -> None:
    inputs = {"base_sha256": "a" * 64, "seed": {"user-data": "b" * 64}, "lock_sha256": None}
    key = layercache.make_key(inputs)
    assert key == layercache.make_key(dict(reversed(list(inputs.items()))))  # order-free
    assert len(key) == 64
    for name, other in (("base_sha256", "c" * 64), ("seed", {"user-data": "d" * 64}),
                        ("lock_sha256", "e" * 64)):  # fmt: skip
        assert layercache.make_key({**inputs, name: other}) != key


def test_archive_state_lines_parse_to_urls_and_hashes() -> None:
    out = (
        "http://deb.debian.org/debian/dists/bookworm/InRelease " + "a" * 64 + "\n"
        "http://deb.debian.org/debian/dists/bookworm-updates/InRelease -\n"
        "garbage line\n"
    )
    assert layercache.parse_archive_state(out) == [
        {"url": "http://deb.debian.org/debian/dists/bookworm-updates/InRelease", "sha256": None},
        {"url": "http://deb.debian.org/debian/dists/bookworm/InRelease", "sha256": "a" * 64},
    ]


def test_a_locked_layer_never_asks_the_archive() -> None:
    def fetch(url: str) -> str:
        raise AssertionError("a locked layer must not depend on the archive")

    assert layercache.stale_reason(_meta(locked=True), fetch) is None


def test_an_unlocked_layer_is_fresh_only_while_every_inrelease_is_unchanged(
    archive: tuple[str, dict[str, bytes]],
) -> None:
    base, files = archive
    files["/debian/dists/bookworm/InRelease"] = b"Date: one\n"
    files["/debian/dists/bookworm-updates/InRelease"] = b"Date: two\n"
    recorded = [
        {"url": f"{base}{path}", "sha256": hashlib.sha256(data).hexdigest()}
        for path, data in files.items()
    ]
    meta = _meta(locked=False, archive=recorded)
    assert layercache.stale_reason(meta) is None
    files["/debian/dists/bookworm-updates/InRelease"] = b"Date: three (a security update)\n"
    reason = layercache.stale_reason(meta)
    assert reason == f"the archive changed since the layer was made ({base}" \
                     "/debian/dists/bookworm-updates/InRelease)"  # fmt: skip
    del files["/debian/dists/bookworm-updates/InRelease"]
    assert "cannot check" in str(layercache.stale_reason(meta))  # 404: no reuse
    assert "was not found in the guest" in str(
        layercache.stale_reason(_meta(locked=False, archive=[{"url": base, "sha256": None}]))
    )
    assert layercache.stale_reason(_meta(locked=False)) == "the layer recorded no apt archive state"


def test_lookup_finds_a_layer_and_holds_it_shared(tmp_path: Path) -> None:
    assert layercache.lookup(tmp_path, SLOT, "k" * 64) is None
    path = _make_layer(tmp_path, _meta())
    os.utime(path, (1, 1))
    layer = layercache.lookup(tmp_path, SLOT, "k" * 64)
    assert layer is not None and layer.cached and layer.path == path
    assert path.stat().st_mtime > 1  # its last use, for pruning
    fd = os.open(path / layercache.META, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):  # a pruner cannot take it away now
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert layercache.remove(path) is False and path.is_dir()
        layer.release()
        assert layercache.remove(path) is True and not path.exists()
    finally:
        os.close(fd)


def test_a_damaged_layer_is_removed_not_used(tmp_path: Path) -> None:
    path = _make_layer(tmp_path, _meta())
    (path / layercache.STATE).unlink()
    assert layercache.lookup(tmp_path, SLOT, "k" * 64) is None
    assert not path.exists()
    path = _make_layer(tmp_path, _meta())
    (path / layercache.META).write_text("{not json")
    assert layercache.lookup(tmp_path, SLOT, "k" * 64) is None
    assert not path.exists()


def test_commit_moves_a_read_only_layer_in_and_keeps_the_newest(tmp_path: Path) -> None:
    old = [_make_layer(tmp_path, _meta(key=c * 64), mtime=t) for c, t in (("a", 100), ("b", 200))]
    work = tmp_path / "work" / "layer"
    work.mkdir(parents=True)
    for name in layercache.FILES:
        (work / name).write_bytes(b"x")
    meta = _meta(key="n" * 64)
    layercache.write_meta(work, meta)
    layer = layercache.Layer(work, meta, cached=False)
    dest = layercache.commit(layer, tmp_path)
    assert dest == layercache.layers_dir(tmp_path) / SLOT / "system" / ("n" * 64)
    assert layer.path == dest and not work.exists()
    assert all(not os.access(dest / n, os.W_OK) or os.geteuid() == 0 for n in layercache.FILES)
    assert oct((dest / layercache.STATE).stat().st_mode & 0o777) == "0o400"
    assert oct(dest.stat().st_mode & 0o777) == "0o700"
    # KEEP = 2: the new one and the most recently used old one.
    assert dest.exists() and old[1].exists() and not old[0].exists()
    # Another build with the same inputs already committed: nothing replaced.
    work.mkdir()
    layercache.write_meta(work, meta)
    assert layercache.commit(layercache.Layer(work, meta, cached=False), tmp_path) is None


def test_items_and_prune_count_allocated_bytes_and_skip_layers_in_use(tmp_path: Path) -> None:
    busy = _make_layer(tmp_path, _meta(key="a" * 64))
    idle = _make_layer(tmp_path, _meta(key="b" * 64))
    with (idle / layercache.DISK).open("r+b") as f:
        f.truncate(1 << 30)  # sparse: a gigabyte of holes takes no space
    found = layercache.items(tmp_path)
    assert [(i.key, i.kind) for i in found] == [(f"{SLOT}/system", "layer")] * 2
    assert all(i.size < 1 << 20 for i in found)
    held = layercache.lookup(tmp_path, SLOT, "a" * 64)
    assert held is not None
    freed = layercache.prune(found)
    assert busy.exists() and not idle.exists()
    assert freed == next(i.size for i in found if i.path == idle)
    held.release()


def _build_spec(tmp: Path, **kw: object) -> qemu.VMSpec:
    spec = qemu.VMSpec(
        arch="amd64", cpus=2, memory=2 << 30, disk=tmp / "layer/disk.qcow2",
        firmware_code=Path("/fw/CODE.fd"), firmware_vars=tmp / "layer/vars.fd",
        accel=("-accel", "tcg,thread=multi"), serial_log=tmp / "serial-provision.log",
        qmp_socket=tmp / "qmp.sock", qga_socket=tmp / "qga.sock", seed_iso=tmp / "seed.iso",
        ssh_port=40000, net_restrict=True,
        shares=(qemu.Share(tmp / "pkg", "pkgcache", True), qemu.Share(tmp / "new", "pkgnew")),
    )  # fmt: skip
    return replace(spec, **kw)  # type: ignore[arg-type]


def test_a_build_vm_resumes_with_other_paths_and_port_but_not_other_devices(
    tmp_path: Path,
) -> None:
    cold = _build_spec(tmp_path / "one")
    resumed = _build_spec(tmp_path / "two", ssh_port=41234,
                          incoming="defer")  # fmt: skip
    assert vmstate.device_hash(cold) == vmstate.device_hash(resumed)
    assert vmstate.device_hash(_build_spec(tmp_path, cpus=4)) != vmstate.device_hash(cold)
    assert vmstate.device_hash(_build_spec(tmp_path, shares=())) != vmstate.device_hash(cold)
    assert vmstate.device_hash(_build_spec(tmp_path, seed_iso=None)) != vmstate.device_hash(cold)


def test_resume_script_reseeds_sets_the_clock_and_installs_only_this_builds_key() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE build@sandbox-image-x"
    script = pipeline.resume_script(key, 1_700_000_000_000_000_001)
    steps = script.split(" && ")
    assert steps[0] == vmstate.RESEED_RNG
    # apt's timers stop before the clock jumps, so nothing upgrades mid-build.
    assert steps[1] == ("{ systemctl stop apt-daily.timer apt-daily-upgrade.timer "
                        "2>/dev/null || true; }")  # fmt: skip
    assert steps[2] == "date -u -s @1700000000.000000001 > /dev/null"
    assert steps[3] == f"printf '%s\\n' '{key}' > /home/build/.ssh/authorized_keys"


def test_layer_time_stamp_is_utc() -> None:
    assert time.strptime(layercache.now_utc(), "%Y-%m-%dT%H:%M:%SZ")


def _inputs(**kw: object) -> cloudinit.RenderInputs:
    cfg = config.resolve({"arch": "amd64", "profile": "smoke"}, {}, {}).config
    client = ssh.KeyPair.generate("build@x")
    host = ssh.KeyPair.generate("host@x")
    inputs = build_inputs(
        cfg, "debian", host_key=host, build_ssh_public_key=client.public_openssh,
        package_lists=packages.PACKAGE_LISTS,
    )  # fmt: skip
    return replace(inputs, **kw)  # type: ignore[arg-type]


def test_the_seed_part_of_a_key_ignores_the_per_build_keys_only() -> None:
    one, two = pipeline.seed_digests(_inputs()), pipeline.seed_digests(_inputs())
    assert one == two  # two builds: other SSH keys, same layer key
    # The skills are the "config" stage's, not the seed's.
    assert set(one) == {"user-data", "meta-data", "network-config"}
    assert pipeline.seed_digests(_inputs(skills_dirs=())) == one
    assert pipeline.seed_digests(_inputs(package_cache=True)) != one
    assert pipeline.seed_digests(_inputs(apt_proxy="http://10.0.2.100:3129")) != one


def _stage_keys(inputs: cloudinit.RenderInputs, locked: bool = True) -> list[tuple[str, str, bool]]:
    system = {"seed": pipeline.seed_digests(inputs)}
    planned = stages.plan(system, cloudinit.render_stages(inputs), locked=locked)
    return [(s.name, s.key, s.keep) for s in planned]


def test_a_change_misses_its_own_stage_and_those_above_never_one_below(tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    shutil.copytree(packages.PACKAGE_LISTS, lists)
    profile = lists / "profiles" / "smoke.profile"
    profile.write_text(profile.read_text() + "pip: bench\n")
    (lists / "pip" / "bench.list").write_text("six==1.16.0\n")
    skills = tmp_path / "skills"
    shutil.copytree(cloudinit.PROJECT_ROOT / "tests" / "fixtures" / "skills", skills)
    base = _stage_keys(_inputs(package_lists=lists, skills_dirs=(skills,)))
    assert [name for name, _, _ in base] == ["system", "libraries", "config"]
    assert all(keep for _, _, keep in base)
    # One pip pin: the libraries stage and the config stage above it run again.
    (lists / "pip" / "bench.list").write_text("six==1.15.0\n")
    pin = _stage_keys(_inputs(package_lists=lists, skills_dirs=(skills,)))
    assert [a[1] == b[1] for a, b in zip(base, pin, strict=True)] == [True, False, False]
    # One skill file: only the config stage.
    skill_md = skills / "alpha" / "SKILL.md"
    skill_md.write_text(skill_md.read_text(encoding="utf-8") + "\nOne more line.\n", "utf-8")
    skill = _stage_keys(_inputs(package_lists=lists, skills_dirs=(skills,)))
    assert [a[1] == b[1] for a, b in zip(pin, skill, strict=True)] == [True, True, False]
    # One apt package: every stage.
    (lists / "apt" / "smoke.list").write_text((lists / "apt" / "smoke.list").read_text() + "tree\n")
    apt = _stage_keys(_inputs(package_lists=lists, skills_dirs=(skills,)))
    assert [a[1] == b[1] for a, b in zip(skill, apt, strict=True)] == [False, False, False]
    # An unlocked build keeps no layer from "libraries" up (PyPI may move on).
    unlocked = _stage_keys(_inputs(package_lists=lists, skills_dirs=(skills,)), locked=False)
    assert [keep for _, _, keep in unlocked] == [True, False, False]
    # The same inputs twice: the same keys (no per-build key leaks into a stage).
    assert _stage_keys(_inputs(package_lists=lists, skills_dirs=(skills,))) == apt


def test_a_layer_pruned_between_the_checks_and_the_lock_is_not_used(tmp_path: Path) -> None:
    path = _make_layer(tmp_path, _meta())
    fd = layercache._lock_shared(path)
    assert fd is not None
    os.close(fd)
    (path / layercache.DISK).unlink()  # what a pruner's rmtree leaves half done
    assert layercache._lock_shared(path) is None
    shutil.rmtree(path)
    assert layercache._lock_shared(path) is None


def _stacked(tmp_path: Path) -> tuple[Path, Path]:
    """A system layer and a config layer made on it, in the cache."""
    system = _make_layer(tmp_path, _meta(key="s" * 64))
    above = _meta(key="c" * 64, stage="config", build_id="b2",
                  parent=layercache.parent_ref(_meta(key="s" * 64)))  # fmt: skip
    return system, _make_layer(tmp_path, above)


def test_a_chain_is_found_lowest_first_and_only_on_its_own_layer_below(tmp_path: Path) -> None:
    system, config_ = _stacked(tmp_path)
    keys = [("system", "s" * 64), ("libraries", "l" * 64), ("config", "c" * 64)]
    # No libraries layer: the chain stops at the system one (config is not reached).
    found = layercache.lookup_chain(tmp_path, SLOT, keys)
    assert [layer.path for layer in found] == [system]
    for layer in found:
        layer.release()
    found = layercache.lookup_chain(tmp_path, SLOT, [keys[0], keys[2]])
    assert [layer.path for layer in found] == [system, config_]
    for layer in found:
        layer.release()
    # The system layer made again by another build: other disk blocks under the
    # config layer's overlay. It is removed, never resumed.
    shutil.rmtree(system)
    _make_layer(tmp_path, _meta(key="s" * 64, build_id="b9"))
    found = layercache.lookup_chain(tmp_path, SLOT, [keys[0], keys[2]])
    assert [layer.meta.build_id for layer in found] == ["b9"]
    assert not config_.exists()
    for layer in found:
        layer.release()


def test_a_layer_whose_layer_below_is_pruned_goes_too(tmp_path: Path) -> None:
    system, config_ = _stacked(tmp_path)
    items = layercache.items(tmp_path)
    assert sorted(i.key for i in items) == [f"{SLOT}/config", f"{SLOT}/system"]
    layercache.prune([i for i in items if i.path == system], tmp_path)
    assert not system.exists() and not config_.exists()
    # An old one-layer-per-build folder is listed (and prunable), never looked up.
    old = layercache.layers_dir(tmp_path) / SLOT / ("o" * 64)
    old.mkdir(parents=True)
    layercache.write_meta(old, replace(_meta(key="o" * 64), format=1))
    assert [i.key for i in layercache.items(tmp_path)] == [f"{SLOT}/format-1"]
    layercache.prune(layercache.items(tmp_path), tmp_path)
    assert not old.exists()


def _smoke_pip_lock(six: str) -> lockfile.Lock:
    profile = packages.resolve_profile("smoke", packages.PACKAGE_LISTS, "debian")
    return lockfile.Lock(
        distro="debian", release="jammy", arch="amd64", profile="smoke", base_serial="20990101",
        base_sha256="0" * 64, apt=tuple(lockfile.Pin(n, "1.0", "amd64")
                                        for n in (*profile.apt_packages, "python3-pip")),
        pip=(lockfile.Pin("six", six),),
    )  # fmt: skip


def test_a_locked_libraries_stage_may_be_re_run_on_a_layer_of_another_lock(
    tmp_path: Path,
) -> None:
    lists = tmp_path / "lists"
    shutil.copytree(packages.PACKAGE_LISTS, lists)
    profile = lists / "profiles" / "smoke.profile"
    profile.write_text(profile.read_text() + "pip: bench\n")
    (lists / "pip" / "bench.list").write_text("six==1.16.0\n")
    (lists / "apt" / "smoke.list").write_text((lists / "apt" / "smoke.list").read_text()
                                              + "python3-pip\n")  # fmt: skip

    def planned(lock: lockfile.Lock | None) -> list[stages.Stage]:
        inputs = _inputs(package_lists=lists, lock=lock)
        system = {"seed": pipeline.seed_digests(inputs)}
        return stages.plan(system, cloudinit.render_stages(inputs), locked=lock is not None)

    one, other = planned(_smoke_pip_lock("1.16.0")), planned(_smoke_pip_lock("1.15.0"))
    assert [s.name for s in one] == ["system", "libraries", "config"]
    assert one[0].key == other[0].key and one[1].key != other[1].key
    assert one[1].rerun_key and one[1].rerun_key == other[1].rerun_key
    assert not one[0].rerun_key and not one[2].rerun_key  # only "libraries" has a re-run form
    assert all(not s.rerun_key for s in planned(None))  # unlocked: its layer is not kept


def test_a_rerun_takes_the_newest_layer_of_its_stage_made_on_the_same_layer_below(
    tmp_path: Path,
) -> None:
    system_meta = _meta(key="s" * 64)
    _make_layer(tmp_path, system_meta)
    system = layercache.lookup(tmp_path, SLOT, "s" * 64)
    assert system is not None
    below = layercache.parent_ref(system_meta)
    libs = {
        "old": _meta(key="1" * 64, stage="libraries", parent=below, rerun_key="r"),
        "new": _meta(key="2" * 64, stage="libraries", parent=below, rerun_key="r"),
        "other form": _meta(key="3" * 64, stage="libraries", parent=below, rerun_key="x"),
        "other below": _meta(key="4" * 64, stage="libraries", rerun_key="r",
                             parent={**below, "build_id": "b0"}),
    }  # fmt: skip
    now = time.time()
    newest_first = sorted(libs, key=lambda name: name != "new")
    paths = {name: _make_layer(tmp_path, libs[name], mtime=now - i)
             for i, name in enumerate(newest_first)}  # fmt: skip
    found = layercache.lookup_rerunnable(tmp_path, SLOT, "libraries", "r", system)
    assert found is not None and found.path == paths["new"]
    assert not layercache.remove(found.path)  # held: a pruner leaves it
    found.release()
    layercache.remove(paths["new"])
    found = layercache.lookup_rerunnable(tmp_path, SLOT, "libraries", "r", system)
    assert found is not None and found.path == paths["old"]
    found.release()
    assert layercache.lookup_rerunnable(tmp_path, SLOT, "libraries", "", system) is None
    assert layercache.lookup_rerunnable(tmp_path, SLOT, "config", "r", system) is None
    system.release()
