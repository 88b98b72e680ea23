"""Rebuilds on the amd64 stand-in: warm layers and caches, locks, clear failures.

Builds beyond the shared demo: a rebuild with the demo's inputs (it resumes
the demo's provisioned layer), one whose cached layer is damaged (it
provisions from scratch), a locked rebuild with the demo's warm package cache,
and a lock naming a version the archive does not have.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from image import config
from image.build import layercache, lockfile, packagecache, pipeline
from image.errors import ImageError
from image.release import signatures, verify
from image.source import fetch, mirror, standin
from tests.fixtures.releasekeys import ReleaseKey
from tests.vm.conftest import attach_logs, package_changes, qemu_processes

ROOT = Path(__file__).resolve().parents[2]


def _write_lock(build_out: Path, target: Path) -> None:
    result = subprocess.run([str(ROOT / "inv"), "lock", str(build_out), "--out", str(target),
                             "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["lock"] == str(target)


def _mirror_config(cfg: config.BuildConfig, served: mirror.Mirror) -> config.BuildConfig:
    return dataclasses.replace(cfg, mirror=served.url, keyring=served.keyring,
                               fingerprints=(served.fingerprint,))  # fmt: skip


def _inv_json(*args: str) -> dict[str, Any]:
    result = subprocess.run([str(ROOT / "inv"), *args, "--json"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    doc: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return doc


def _demo_layer(cache_dir: Path, stage: str = "system") -> Path:
    (path,) = [i.path for i in layercache.items(cache_dir)
               if i.key == f"debian-jammy-amd64-smoke/{stage}"]  # fmt: skip
    return path


def _archive_as_served_now(layer: Path, *, except_url: str | None = None) -> list[str]:
    """Record in the layer the archive state deb.debian.org serves now.

    That archive moves on by itself: in one CI run its bookworm-updates and
    -security InRelease files changed between the demo and the rebuild ten
    minutes later, and the rebuild rightly provisioned from scratch. A test of
    reuse needs an archive that has not changed, so it records the present
    state (fetched as the lookup fetches it); the check itself is tested here
    (``except_url`` stays stale) and in the unit tier against a local server.
    """
    meta = layer / layercache.META
    meta.chmod(0o600)
    data = json.loads(meta.read_text())
    assert data["archive"], "the demo's layer recorded no archive state"
    for entry in data["archive"]:
        if entry["url"] != except_url:
            entry["sha256"] = layercache.fetch_index_sha256(entry["url"])
        else:
            entry["sha256"] = "0" * 64
    meta.write_text(json.dumps(data))
    return [entry["url"] for entry in data["archive"]]


def test_a_rebuild_with_the_same_inputs_resumes_the_demos_layer(
    fresh_config: config.BuildConfig, built: dict[str, Path], caplog: pytest.LogCaptureFixture,
    release_key: ReleaseKey,
) -> None:  # fmt: skip
    demo_out = built["image"].parent
    demo_info = json.loads((demo_out / "build-info.json").read_text())
    assert demo_info["provisioned_layer"]["reused"] is False  # the session's first build
    # The demo published, so its layer is in the cache (and `./inv cache` shows it).
    stats = _inv_json("cache", "--stats", "--cache-dir", str(fresh_config.cache_dir))
    # (Other tests' builds keep layers in other slots: the mirrored profile's system layer.)
    layers = [
        row
        for row in stats["caches"]
        if row["kind"] == "layer" and row["key"].startswith("debian-jammy-amd64-smoke/")
    ]
    # One layer per stage: smoke has no pip or npm, so no "libraries" stage.
    assert sorted((row["key"], row["files"]) for row in layers) == [
        ("debian-jammy-amd64-smoke/config", 1), ("debian-jammy-amd64-smoke/system", 1)]  # fmt: skip
    assert [s["stage"] for s in demo_info["stages"]] == ["system", "config"]
    assert all(s["ran"] for s in demo_info["stages"]) and demo_info["resumed_stage"] is None
    layer_path = _demo_layer(fresh_config.cache_dir)
    urls = _archive_as_served_now(layer_path)
    # An InRelease that changed since the layer was made: not reused, and why.
    _archive_as_served_now(layer_path, except_url=urls[0])
    slot, key = layer_path.parent.parent.name, layer_path.name  # <slot>/system/<key>
    with caplog.at_level(logging.INFO, logger="image.build.layercache"):
        assert layercache.lookup(fresh_config.cache_dir, slot, key) is None
    assert f"the archive changed since the layer was made ({urls[0]})" in caplog.text
    _archive_as_served_now(layer_path)
    base = standin.ensure(fresh_config.cache_dir, "amd64")
    with mirror.serve_mirror({"amd64": base.path}, fresh_config.cache_dir) as served:
        result = pipeline.build_image(_mirror_config(fresh_config, served), distro="debian",
                                      sign_key=str(release_key.secret),
                                      builder_id="https://ci.example.org/job/7")  # fmt: skip
    out = result.image.parent
    attach_logs(out / "logs" / "serial.log")
    # Signed as it was built: SHA256SUMS and the provenance, which names the layer it resumed.
    assert result.signed_by == release_key.fingerprint
    with signatures.keyring(release_key.public) as keys:
        verified = verify.verify_output(out, keys)
    assert verified.provenance.builder_id == "https://ci.example.org/job/7"
    info = json.loads(result.build_info.read_text())
    layer = info["provisioned_layer"]
    assert layer["reused"] is True and layer["made_by"] == demo_info["build_id"]
    assert layer["key"] == demo_info["provisioned_layer"]["key"]
    # No boot, no provisioning, no stage: resumed from the top layer, then verified
    # like any build.
    assert "boot" not in info["timings"] and "provision" not in info["timings"]
    assert "stage config" not in info["timings"]
    assert info["resumed_stage"] == "config" and not any(s["ran"] for s in info["stages"])
    assert layer["stage"] == "config"
    assert info["timings"]["resume"] < 60
    assert info["verify"]["sandbox_self_test"]["ok"] is True
    assert package_changes(demo_out, out) == {"added": [], "removed": [], "changed": []}
    # The records say where the image came from: the demo's provisioning console
    # and downloads, then this build's own.
    serial = (out / "logs" / "serial.log").read_text(errors="replace")
    assert f"--- build {info['build_id']}: resumed from provisioned layer" in serial
    assert f"(build {demo_info['build_id']})" in serial
    assert (out / "egress.jsonl").read_bytes().startswith((demo_out / "egress.jsonl").read_bytes()
        .split(b"\n", 1)[0])  # fmt: skip
    assert info["egress"]["connections"]["allow"] >= demo_info["egress"]["connections"]["allow"]
    # This build's SSH key, not the demo's, was the one that logged in.
    assert info["build_id"] not in demo_info["build_id"]
    assert [p for p in qemu_processes() if info["build_id"] in p] == []


def test_a_damaged_cached_layer_is_removed_and_the_build_goes_on_from_the_stage_below(
    fresh_config: config.BuildConfig, built: dict[str, Path]
) -> None:
    system_path = _demo_layer(fresh_config.cache_dir)
    _archive_as_served_now(system_path)  # so that the lookup finds it
    layer_path = _demo_layer(fresh_config.cache_dir, "config")
    system_made_by = json.loads((system_path / layercache.META).read_text())["build_id"]
    state = layer_path / layercache.STATE
    state.chmod(0o600)
    state.write_bytes(b"QEVM not a device state")
    base = standin.ensure(fresh_config.cache_dir, "amd64")
    with mirror.serve_mirror({"amd64": base.path}, fresh_config.cache_dir) as served:
        result = pipeline.build_image(_mirror_config(fresh_config, served), distro="debian")
    info = json.loads(result.build_info.read_text())
    assert info["provisioned_layer"]["reused"] is False
    assert info["provisioned_layer"]["made_by"] == info["build_id"]
    # The config layer did not resume: removed, and its stage ran again on the
    # system layer (no boot, no provisioning).
    assert {"stage config", "resume"} <= set(info["timings"])
    assert not {"boot", "provision"} & set(info["timings"])
    assert info["resumed_stage"] == "system"
    assert [(s["stage"], s["ran"]) for s in info["stages"]] == [("system", False),
                                                                ("config", True)]  # fmt: skip
    # The damaged layer is gone; this build's (same key) took its place, intact,
    # on the same system layer.
    now = _demo_layer(fresh_config.cache_dir, "config")
    assert now == layer_path
    meta = json.loads((now / layercache.META).read_text())
    assert meta["build_id"] == info["build_id"]
    assert meta["parent"]["build_id"] == system_made_by
    assert (now / layercache.STATE).read_bytes()[:4] == b"QEVM"
    assert (now / layercache.STATE).stat().st_size > 1000
    assert [p for p in qemu_processes() if info["build_id"] in p] == []


def test_an_incremental_rebuild_equals_a_cold_build_of_the_same_inputs(
    fresh_config: config.BuildConfig, built: dict[str, Path], tmp_path: Path
) -> None:
    """One skill changed: the rebuild resumes the demo's system layer and runs only
    the config stage; a cold build of the same inputs in an empty cache gives the
    same packages and the same skills."""
    _archive_as_served_now(_demo_layer(fresh_config.cache_dir))
    extra = tmp_path / "skills"
    shutil.copytree(ROOT / "tests" / "fixtures" / "skills", extra)
    cfg = dataclasses.replace(fresh_config, skills=extra, output_dir=tmp_path / "incremental")
    base = standin.ensure(fresh_config.cache_dir, "amd64")
    with mirror.serve_mirror({"amd64": base.path}, fresh_config.cache_dir) as served:
        incremental = pipeline.build_image(_mirror_config(cfg, served), distro="debian")
        info = json.loads(incremental.build_info.read_text())
        assert info["resumed_stage"] == "system"
        assert [(s["stage"], s["ran"]) for s in info["stages"]] == [("system", False),
                                                                    ("config", True)]  # fmt: skip
        assert "boot" not in info["timings"] and "stage config" in info["timings"]
        # The same inputs, no layer to start from: a cold build (its own empty cache).
        cold_cache = tmp_path / "cold-cache"
        cold_cfg = dataclasses.replace(cfg, cache_dir=cold_cache, output_dir=tmp_path / "cold")
        fetch.fetch(_mirror_config(cold_cfg, served))
        cold = pipeline.build_image(_mirror_config(cold_cfg, served), distro="debian")
    cold_info = json.loads(cold.build_info.read_text())
    assert cold_info["resumed_stage"] is None and "boot" in cold_info["timings"]
    assert package_changes(incremental.image.parent, cold.image.parent) == {
        "added": [], "removed": [], "changed": []}  # fmt: skip
    skills_of = [json.loads((out.image.parent / "manifest.json").read_text())["skills"]
                 for out in (incremental, cold)]  # fmt: skip
    assert skills_of[0] == skills_of[1] and any(s["name"] == "alpha" for s in skills_of[0])
    # The same layer keys: what decides a layer is the inputs, not the path there.
    assert [s["key"] for s in info["stages"]] == [s["key"] for s in cold_info["stages"]]
    # The provenance says the system stage came from the demo's build.
    statement = json.loads((incremental.image.parent / "provenance.intoto.json").read_text())
    internal = statement["predicate"]["buildDefinition"]["internalParameters"]
    demo_id = json.loads((built["image"].parent / "build-info.json").read_text())["build_id"]
    assert [(s["stage"], s["ran"], s["made_by"]) for s in internal["stages"]] == [
        ("system", False, demo_id), ("config", True, info["build_id"])]  # fmt: skip
    assert [p for p in qemu_processes() if info["build_id"] in p] == []


def test_rebuild_from_the_demo_lock_changes_no_package_and_downloads_no_deb(
    fresh_config: config.BuildConfig, tmp_path: Path, built: dict[str, Path]
) -> None:
    demo_out = built["image"].parent
    lock_path = tmp_path / "demo.lock"
    _write_lock(demo_out, lock_path)
    lock = lockfile.load(lock_path)
    demo_manifest = json.loads((demo_out / "manifest.json").read_text())
    assert len(lock.apt) == demo_manifest["counts"]["dpkg"]  # every installed package
    # The demo build filled the package cache this build shares (on Debian 13's
    # stand-in smoke fetches only a few .debs: the base already has the rest).
    cached = packagecache.stats(packagecache.items(fresh_config.cache_dir))
    assert any(row.kind == "apt" and row.files >= 1 for row in cached), cached
    base = standin.ensure(fresh_config.cache_dir, "amd64")
    with mirror.serve_mirror({"amd64": base.path}, fresh_config.cache_dir) as served:
        result = pipeline.build_image(_mirror_config(fresh_config, served), distro="debian",
                                      lock=lock)  # fmt: skip
    logs = result.image.parent / "logs"
    attach_logs(logs / "cloud-init-output.log", logs / "serial.log")
    assert package_changes(demo_out, result.image.parent) == {
        "added": [], "removed": [], "changed": []}  # fmt: skip
    info = json.loads(result.build_info.read_text())
    assert info["lock"]["apt"] == len(lock.apt)
    assert info["base"]["sha256"] == lock.base_sha256
    assert info["package_cache"] == {"enabled": True, "key": "debian-jammy-amd64"}
    output = (logs / "cloud-init-output.log").read_text(errors="replace")
    # Every .deb came from the cache: apt had nothing left to fetch.
    assert re.search(r"^Need to get 0 B/", output, re.MULTILINE), output[-3000:]
    # Other sessions may run VMs on this machine: only this build's count.
    assert [p for p in qemu_processes() if info["build_id"] in p] == []


def test_a_locked_version_the_archive_lacks_fails_naming_it_and_caches_nothing(
    vm_config: config.BuildConfig, tmp_path: Path, built: dict[str, Path]
) -> None:
    lock_path = tmp_path / "bogus.lock"
    _write_lock(built["image"].parent, lock_path)
    text = lock_path.read_text()
    installed = re.search(r"^libonig5:amd64=(.*)$", text, re.MULTILINE)
    assert installed, text
    # A dependency, not a listed package: apt would quietly take another version.
    text, count = re.subn(r"^libonig5:amd64=.*$", "libonig5:amd64=9.9-bogus", text,
                          flags=re.MULTILINE)  # fmt: skip
    assert count == 1
    lock_path.write_text(text)
    cache = tmp_path / "cache"  # empty: everything is downloaded, then thrown away
    cfg = dataclasses.replace(vm_config, cache_dir=cache, output_dir=tmp_path / "out")
    base = standin.ensure(vm_config.cache_dir, "amd64")
    with (
        mirror.serve_mirror({"amd64": base.path}, vm_config.cache_dir) as served,
        pytest.raises(ImageError) as info,
    ):
        pipeline.build_image(_mirror_config(cfg, served), distro="debian",
                             lock=lockfile.load(lock_path))  # fmt: skip
    message = info.value.message
    assert f"apt libonig5: locked 9.9-bogus, installed {installed[1]}" in message, message
    assert "does not match the lock" in message
    assert "snapshot" in (info.value.hint or "")
    assert "build logs:" in message
    assert sorted(p.name for p in cfg.output_dir.iterdir()) == []
    assert [i.path.name for i in packagecache.items(cache)] == []
    assert layercache.items(cache) == []  # a failed build keeps no provisioned layer
    assert [p for p in qemu_processes() if str(cache) in p] == []
