"""publish / pull against a real OCI registry (Debian's docker-registry) on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from image.errors import ImageError
from image.release import oci
from tests.fixtures.buildoutput import IMAGE, make_output, make_snapshot
from tests.fixtures.registry import LocalRegistry
from tests.hosttools import need


def _manifest(registry: LocalRegistry, repo: str, tag: str) -> dict[str, Any]:
    answer = requests.get(
        f"http://{registry.host}/v2/{repo}/manifests/{tag}",
        headers={"Accept": oci.OCI_MANIFEST},
        timeout=10,
    )
    answer.raise_for_status()
    assert answer.headers["Content-Type"] == oci.OCI_MANIFEST
    doc: dict[str, Any] = answer.json()
    return doc


def _put_manifest(registry: LocalRegistry, repo: str, tag: str, doc: dict[str, Any]) -> None:
    answer = requests.put(
        f"http://{registry.host}/v2/{repo}/manifests/{tag}",
        data=json.dumps(doc).encode(),
        headers={"Content-Type": oci.OCI_MANIFEST},
        timeout=10,
    )
    assert answer.status_code == 201, answer.text


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _nothing_left(parent: Path, out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in parent.iterdir() if p.name.startswith(f".{out.name}.pull-")] == []


def test_round_trip_is_byte_identical(registry: LocalRegistry, tmp_path: Path) -> None:
    out = make_output(tmp_path / "out", pip=[("pypdf", "4.0.1")])
    ref = f"{registry.host}/team/sandbox-image:jammy-amd64"
    published = oci.publish(out, ref, source="https://example.org/sandbox-image", revision="abc")
    stored = requests.get(
        f"http://{registry.host}/v2/team/sandbox-image/manifests/{published.digest}",
        headers={"Accept": oci.OCI_MANIFEST}, timeout=10,
    ).content  # fmt: skip
    assert published.digest == "sha256:" + hashlib.sha256(stored).hexdigest()
    assert oci.manifest_digest(json.loads(stored)) == published.digest  # the fallback agrees
    pulled = oci.pull(ref, tmp_path / "back")
    assert _files(tmp_path / "back") == _files(out)
    assert {layer.title for layer in pulled.layers} == set(_files(out))
    # By digest too: what CI pins after a publish.
    by_digest = oci.pull(f"{registry.host}/team/sandbox-image@{published.digest}",
                         tmp_path / "again")  # fmt: skip
    assert _files(by_digest.out) == _files(out)


def test_manifest_carries_types_and_annotations(registry: LocalRegistry, tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    oci.publish(out, f"{registry.host}/sandbox-image:annotated", source="https://example.org/r")
    doc = _manifest(registry, "sandbox-image", "annotated")
    assert doc["artifactType"] == "application/vnd.sandbox-image.build.v1"
    assert doc["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    types = {layer["annotations"][oci.TITLE]: layer["mediaType"] for layer in doc["layers"]}
    assert types[IMAGE] == "application/vnd.sandbox-image.disk.qcow2"
    assert types["sbom.json"] == "application/vnd.cyclonedx+json"
    assert types["manifest.json"] == "application/vnd.sandbox-image.manifest.v1+json"
    assert types["report.html"] == "text/html"
    notes = doc["annotations"]
    assert notes["org.opencontainers.image.source"] == "https://example.org/r"
    assert notes["org.opencontainers.image.created"] == "2026-11-30T04:07:45Z"
    assert notes["sandbox-image.base.serial"] == "20990101"
    assert notes["sandbox-image.profile"] == "smoke"
    assert notes["sandbox-image.arch"] == "amd64"
    assert notes["sandbox-image.toolkit.version"] == "0.1.0"


def test_tampered_blob_is_refused(registry: LocalRegistry, tmp_path: Path) -> None:
    out = make_output(tmp_path / "out", image_bytes=b"QFI\xfb tamper me" * 100)
    published = oci.publish(out, f"{registry.host}/tamper:v1")
    image = next(layer for layer in published.layers if layer.title == IMAGE)
    blob = registry.blob_path(image.digest)
    original = blob.read_bytes()
    blob.write_bytes(original.replace(b"tamper", b"TAMPER", 1))  # same size, other bytes
    try:
        with pytest.raises(ImageError, match=rf"{IMAGE}: the registry sent .* the manifest says"):
            oci.pull(f"{registry.host}/tamper:v1", tmp_path / "back")
        _nothing_left(tmp_path, tmp_path / "back")
    finally:
        blob.write_bytes(original)


def test_manifest_pointing_to_the_wrong_blob_is_refused(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    """Every blob matches its digest, but not the file the output's SHA256SUMS promises."""
    out = make_output(tmp_path / "out")
    oci.publish(out, f"{registry.host}/swap:v1")
    doc = _manifest(registry, "swap", "v1")
    by_title = {layer["annotations"][oci.TITLE]: layer for layer in doc["layers"]}
    sbom, manifest = by_title["sbom.json"], by_title["manifest.json"]
    for key in ("digest", "size"):
        sbom[key], manifest[key] = manifest[key], sbom[key]
    _put_manifest(registry, "swap", "swapped", doc)
    with pytest.raises(ImageError, match=r"does not match SHA256SUMS"):
        oci.pull(f"{registry.host}/swap:swapped", tmp_path / "back")
    _nothing_left(tmp_path, tmp_path / "back")


def test_a_digest_the_registry_lacks_is_refused(registry: LocalRegistry, tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    published = oci.publish(out, f"{registry.host}/missing:v1")
    gone = published.layers[-1].digest  # the last blob pulled: all others were written first
    answer = requests.delete(f"http://{registry.host}/v2/missing/blobs/{gone}", timeout=10)
    assert answer.status_code == 202, answer.text
    with pytest.raises(ImageError, match=r"refused the blob of logs/serial\.log: HTTP 404"):
        oci.pull(f"{registry.host}/missing:v1", tmp_path / "back")
    _nothing_left(tmp_path, tmp_path / "back")


def test_other_artifacts_are_refused(registry: LocalRegistry, tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    oci.publish(out, f"{registry.host}/other:v1")
    doc = _manifest(registry, "other", "v1")
    doc["artifactType"] = "application/vnd.example.thing"
    _put_manifest(registry, "other", "v2", doc)
    with pytest.raises(ImageError, match="not a sandbox-image build artifact"):
        oci.pull(f"{registry.host}/other:v2", tmp_path / "back")
    _nothing_left(tmp_path, tmp_path / "back")


def test_snapshot_round_trip_stays_sparse_and_read_only(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    out = make_output(tmp_path / "out")
    snap = make_snapshot(tmp_path / "snap", out / IMAGE, memory_bytes=64 << 20)
    oci.publish(out, f"{registry.host}/withsnap:v1", snapshot=snap)
    pulled = oci.pull(f"{registry.host}/withsnap:v1", tmp_path / "back")
    assert _files(pulled.out / "snapshot") == _files(snap)
    memory = (pulled.out / "snapshot" / "memory").stat()
    assert memory.st_size == 64 << 20
    assert memory.st_blocks * 512 <= 4 << 20  # of 64 MiB: the zero pages stayed holes
    modes = {p.name: p.stat().st_mode & 0o777 for p in (pulled.out / "snapshot").iterdir()}
    assert set(modes.values()) == {0o444}


def test_tampered_snapshot_is_refused(registry: LocalRegistry, tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    snap = make_snapshot(tmp_path / "snap", out / IMAGE)
    (snap / "state").write_bytes(b"not the saved state")
    with pytest.raises(ImageError, match=r"snapshot/state: sha256 .* snapshot\.json"):
        oci.publish(out, f"{registry.host}/badsnap:v1", snapshot=snap)


def test_a_damaged_output_is_not_published(registry: LocalRegistry, tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    (out / "sbom.json").write_text("{}")
    with pytest.raises(ImageError, match=r"sbom\.json: sha256 .* does not match SHA256SUMS"):
        oci.publish(out, f"{registry.host}/damaged:v1")
    answer = requests.get(f"http://{registry.host}/v2/damaged/tags/list", timeout=10)
    assert answer.status_code == 404  # nothing reached the registry


def test_pull_never_overwrites(registry: LocalRegistry, tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    oci.publish(out, f"{registry.host}/keep:v1")
    with pytest.raises(ImageError, match="already exists and is not empty"):
        oci.pull(f"{registry.host}/keep:v1", out)
    assert _files(out) == _files(make_output(tmp_path / "same"))


def test_unreachable_registry_fails_fast(tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    with pytest.raises(ImageError, match="cannot reach the registry"):
        oci.publish(out, "127.0.0.1:9/sandbox-image:v1")  # discard port: nothing listens


@pytest.mark.allow_subprocess
def test_tasks_publish_and_pull(registry: LocalRegistry, tmp_path: Path) -> None:
    from image import run

    out = make_output(tmp_path / "out")
    inv = Path(__file__).resolve().parents[2] / "inv"
    env = {"HOME": os.environ.get("HOME", "/root")}
    ref = f"{registry.host}/cli:v1"
    pushed = run.run([str(inv), "publish", str(out), "--to", ref, "--json"], env=env)
    assert json.loads(pushed.stdout.decode().splitlines()[-1])["digest"].startswith("sha256:")
    pulled = run.run([str(inv), "pull", ref, "--out", str(tmp_path / "back"), "--json"], env=env)
    assert json.loads(pulled.stdout.decode().splitlines()[-1])["out"] == str(tmp_path / "back")
    assert _files(tmp_path / "back") == _files(out)
    refused = run.run([str(inv), "pull", "sandbox-image:v1", "--out", str(tmp_path / "x")], env=env,
                      check=False)  # fmt: skip
    assert refused.returncode == 1
    assert b"not REGISTRY/REPOSITORY" in refused.stderr


@pytest.mark.allow_subprocess
def test_registry_task_serves_until_sigterm(tmp_path: Path) -> None:
    from image import run

    need("docker-registry")
    inv = Path(__file__).resolve().parents[2] / "inv"
    log = tmp_path / "registry.out"
    argv = [str(inv), "registry", "--port", "0", "--storage", str(tmp_path / "storage")]
    with run.background(argv, stdout=log, env={"HOME": os.environ.get("HOME", "/root")}) as proc:
        host = ""
        for _ in range(600):  # 60 s at most (./inv and the registry start)
            host = next((line for line in log.read_text().splitlines()
                         if line.startswith("127.0.0.1:")), "")  # fmt: skip
            if host or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert host, log.read_text()
        out = make_output(tmp_path / "out")
        oci.publish(out, f"{host}/served:v1")
        assert oci.pull(f"{host}/served:v1", tmp_path / "back").out == tmp_path / "back"
        run.stop(proc, timeout=30)
        assert proc.returncode == 0, log.read_text()
    assert (tmp_path / "storage" / "storage" / "docker").is_dir()
