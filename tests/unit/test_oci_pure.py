from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from image.errors import ImageError
from image.release import oci
from tests.fixtures.buildoutput import IMAGE, info_for, make_output, make_snapshot

SHA = "a" * 64


def _layer(title: str, digest: str = f"sha256:{SHA}", size: int = 3) -> dict[str, Any]:
    return {"mediaType": oci.media_type(title), "digest": digest, "size": size,
            "annotations": {oci.TITLE: title}}  # fmt: skip


def _manifest(*titles: str, **extra: Any) -> dict[str, Any]:
    titles = titles or ("SHA256SUMS", "build-info.json")
    return {"artifactType": oci.ARTIFACT_TYPE, "layers": [_layer(t) for t in titles], **extra}


def test_media_types_per_file() -> None:
    assert oci.media_type(IMAGE) == "application/vnd.sandbox-image.disk.qcow2"
    assert oci.media_type("x.raw") == "application/vnd.sandbox-image.disk.raw"
    assert oci.media_type("sbom.json") == "application/vnd.cyclonedx+json"
    assert oci.media_type("manifest.json") == "application/vnd.sandbox-image.manifest.v1+json"
    assert oci.media_type("build-info.json") == ("application/vnd.sandbox-image.build-info.v1+json")
    assert oci.media_type("report.html") == "text/html"
    assert oci.media_type("egress.jsonl") == "application/vnd.sandbox-image.egress-log.v1+jsonl"
    assert oci.media_type("logs/serial.log") == "text/plain"
    assert oci.media_type("snapshot/memory") == "application/vnd.sandbox-image.snapshot.memory"
    assert oci.media_type("snapshot/base.qcow2") == "application/vnd.sandbox-image.disk.qcow2"
    assert oci.media_type("other") == "application/octet-stream"


def test_artifact_manifest_exact() -> None:
    layer = oci.Layer("sbom.json", "application/vnd.cyclonedx+json", f"sha256:{SHA}", 7)
    assert oci.artifact_manifest([layer], {"k": "v"}) == {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.sandbox-image.build.v1",
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            "size": 2,
            "data": "e30=",
        },
        "layers": [
            {
                "mediaType": "application/vnd.cyclonedx+json",
                "digest": f"sha256:{SHA}",
                "size": 7,
                "annotations": {"org.opencontainers.image.title": "sbom.json"},
            }
        ],
        "annotations": {"k": "v"},
    }


def test_empty_config_descriptor_is_the_digest_of_its_data() -> None:
    assert oci.EMPTY_CONFIG["digest"] == "sha256:" + hashlib.sha256(b"{}").hexdigest()


def test_annotations_from_build_info() -> None:
    info = info_for("20261130T040745-b28797", {}, {})
    assert oci.manifest_annotations(info, source="https://example.org/r", revision="abc") == {
        "org.opencontainers.image.title": "sandbox-image-jammy-amd64-smoke",
        "org.opencontainers.image.description": "sandbox-image build output (disk, SBOM, logs)",
        "org.opencontainers.image.created": "2026-11-30T04:07:45Z",
        "org.opencontainers.image.version": "20261130T040745-b28797",
        "org.opencontainers.image.source": "https://example.org/r",
        "org.opencontainers.image.revision": "abc",
        "sandbox-image.arch": "amd64",
        "sandbox-image.release": "jammy",
        "sandbox-image.profile": "smoke",
        "sandbox-image.base.serial": "20990101",
        "sandbox-image.base.sha256": "ab" * 32,
        "sandbox-image.base.signer": "4EBA" * 10,
        "sandbox-image.toolkit.version": "0.1.0",
    }
    # No source given: the key is left out rather than empty.
    assert "org.opencontainers.image.source" not in oci.manifest_annotations(info)


def test_created_from_build_id() -> None:
    assert oci.created_from_build_id("20990101T235959-000000") == "2099-01-01T23:59:59Z"
    assert oci.created_from_build_id("nonsense") == ""


def test_layers_of_accepts_our_artifact() -> None:
    layers = oci.layers_of(_manifest("SHA256SUMS", "build-info.json", "logs/serial.log"))
    assert [layer.title for layer in layers] == ["SHA256SUMS", "build-info.json", "logs/serial.log"]
    assert layers[0].sha256 == SHA


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (_manifest(artifactType="application/vnd.other"), "not a sandbox-image build artifact"),
        ({"layers": []}, "not a sandbox-image build artifact"),
        (_manifest("SHA256SUMS", "build-info.json", "../escape"), "not a plain relative path"),
        (_manifest("SHA256SUMS", "build-info.json", "/etc/passwd"), "not a plain relative path"),
        (_manifest("SHA256SUMS", "build-info.json", "a//b"), "not a plain relative path"),
        (_manifest("SHA256SUMS", "build-info.json", "SHA256SUMS"), "twice"),
        (_manifest("SHA256SUMS", "build-info.json", "logs", "logs/x"), "twice"),
        (_manifest("SHA256SUMS"), "lacks build-info.json"),
    ],
)
def test_layers_of_refuses(manifest: dict[str, Any], message: str) -> None:
    with pytest.raises(ImageError, match=message):
        oci.layers_of(manifest)


def test_layers_of_refuses_bad_digest_and_size() -> None:
    bad = _manifest()
    bad["layers"][0]["digest"] = "sha512:" + "a" * 128
    with pytest.raises(ImageError, match="digest"):
        oci.layers_of(bad)
    bad = _manifest()
    bad["layers"][1]["size"] = -1
    with pytest.raises(ImageError, match="size"):
        oci.layers_of(bad)
    bad = _manifest()
    del bad["layers"][1]["annotations"]
    with pytest.raises(ImageError, match="no title"):
        oci.layers_of(bad)


def test_check_output() -> None:
    sums = f"{SHA} *a.qcow2\n{'b' * 64} *sbom.json\n"
    oci.check_output({"a.qcow2": SHA, "sbom.json": "b" * 64, "extra": "c" * 64}, sums, None)
    with pytest.raises(ImageError, match=r"sbom.json: sha256 c+ does not match SHA256SUMS"):
        oci.check_output({"a.qcow2": SHA, "sbom.json": "c" * 64}, sums, None)
    with pytest.raises(ImageError, match="listed in SHA256SUMS but not in the output"):
        oci.check_output({"a.qcow2": SHA}, sums, None)
    with pytest.raises(ImageError, match="unreadable"):
        oci.check_output({}, "garbage\n", None)


def test_check_output_snapshot() -> None:
    meta = json.dumps({"image_sha256": SHA, "files_sha256": {"state": "d" * 64}})
    good = {"snapshot/state": "d" * 64, "snapshot/base.qcow2": SHA}
    oci.check_output(good, "", meta)
    with pytest.raises(ImageError, match=r"snapshot/base.qcow2: sha256 .* snapshot.json"):
        oci.check_output({**good, "snapshot/base.qcow2": "e" * 64}, "", meta)
    with pytest.raises(ImageError, match="snapshot/state"):
        oci.check_output({"snapshot/base.qcow2": SHA}, "", meta)


@pytest.mark.parametrize(
    ("registry", "insecure", "plain"),
    [
        ("127.0.0.1:5000", False, True),
        ("localhost:5000", False, True),
        ("[::1]:5000", False, True),
        ("ghcr.io", False, False),
        ("registry.example.org:5000", False, False),
        ("127.0.0.1.example.org:5000", False, False),
        ("registry.example.org:5000", True, True),
    ],
)
def test_plain_http_only_for_loopback(registry: str, insecure: bool, plain: bool) -> None:
    assert oci.plain_http(registry, insecure) is plain


def test_parse_reference() -> None:
    ref = oci.parse_reference("127.0.0.1:5000/team/sandbox-image:jammy-amd64")
    assert (ref.registry, ref.api_prefix, ref.tag) == (
        "127.0.0.1:5000", "team/sandbox-image", "jammy-amd64",
    )  # fmt: skip
    assert oci.parse_reference(f"ghcr.io/o/r@sha256:{SHA}").digest == f"sha256:{SHA}"
    for bad in ("sandbox-image:tag", "team/sandbox-image", ""):
        with pytest.raises(ImageError, match="REGISTRY/REPOSITORY"):
            oci.parse_reference(bad)


def test_output_files_lists_only_the_build(tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    (out / "unrelated.txt").write_text("not part of the build")
    (out / ".staging-x").mkdir()
    titles = [t for t, _ in oci.output_files(out)]
    # The provenance is not a layer: publish attaches it as a referrer.
    assert titles == [
        "manifest.json", "report.html", IMAGE, "sbom.json", "sbom.spdx.json", "SHA256SUMS",
        "build-info.json", "logs/serial.log",
    ]  # fmt: skip
    snap = make_snapshot(tmp_path / "snap", out / IMAGE)
    with_snap = [t for t, _ in oci.output_files(out, snap)]
    assert with_snap[len(titles) :] == [
        "snapshot/base.qcow2", "snapshot/disk.qcow2", "snapshot/memory",
        "snapshot/snapshot.json", "snapshot/state", "snapshot/vars.fd",
    ]  # fmt: skip


def test_output_files_refuses_incomplete_output(tmp_path: Path) -> None:
    out = make_output(tmp_path / "out")
    (out / "sbom.json").unlink()
    with pytest.raises(ImageError, match=r"sbom\.json is listed in SHA256SUMS but missing"):
        oci.output_files(out)
    (out / "build-info.json").unlink()
    with pytest.raises(ImageError, match=r"not a complete build output \(no build-info.json\)"):
        oci.output_files(out)
    with pytest.raises(ImageError, match="not a snapshot"):
        oci.output_files(make_output(tmp_path / "o2"), tmp_path)
