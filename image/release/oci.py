"""publish / pull: a build output (and optionally its snapshot) as one OCI artifact.

The registry protocol is oras' (``oras.provider.Registry``: blob uploads,
manifests, auth from the docker config); this module decides what goes in the
artifact and checks what comes back. The artifact is an OCI 1.1 image manifest
with an ``artifactType``, the empty config, and one layer per file, each with
its own media type and its path in ``org.opencontainers.image.title``.

oras' download does not check what the registry sends, so pull hashes every
blob while writing it, then checks the output's own SHA256SUMS (and a
snapshot's ``files_sha256``). Everything lands in a staging directory beside
``--out`` that is renamed only when all of it is verified: a refused pull
leaves nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import oras.container
import oras.provider
import requests

from image.build import output
from image.errors import ImageError
from image.release import provenance, verify
from image.release.signatures import SIGNATURE_SUFFIX, Keyring
from image.source.checksums import parse_sha256sums

log = logging.getLogger(__name__)

ARTIFACT_TYPE = "application/vnd.sandbox-image.build.v1"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
PGP_SIGNATURE = "application/pgp-signature"
# The provenance travels as a referrer of the artifact (its own manifest, whose
# subject is the artifact's): what `oras discover` and other OCI tools list.
PROVENANCE_FILES = (provenance.FILE, provenance.FILE + SIGNATURE_SUFFIX)
# OCI 1.1's empty descriptor: an artifact with no config of its own.
EMPTY_CONFIG = {
    "mediaType": "application/vnd.oci.empty.v1+json",
    "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
    "size": 2,
    "data": "e30=",
}
TITLE = "org.opencontainers.image.title"
SNAPSHOT_DIR = "snapshot"
# Big enough that a multi-GiB disk is a few hundred requests, small enough to stay in memory.
CHUNK_SIZE = 64 << 20
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}

MEDIA_TYPES = {
    "SHA256SUMS": "application/vnd.sandbox-image.sha256sums",
    "SHA256SUMS.gpg": PGP_SIGNATURE,
    "sbom.spdx.json": "application/spdx+json",
    provenance.FILE: provenance.MEDIA_TYPE,
    provenance.FILE + SIGNATURE_SUFFIX: PGP_SIGNATURE,
    "build-info.json": "application/vnd.sandbox-image.build-info.v1+json",
    "manifest.json": "application/vnd.sandbox-image.manifest.v1+json",
    "sbom.json": "application/vnd.cyclonedx+json",
    "report.html": "text/html",
    # The build proxy's audit log: one JSON object a line.
    "egress.jsonl": "application/vnd.sandbox-image.egress-log.v1+jsonl",
    f"{SNAPSHOT_DIR}/snapshot.json": "application/vnd.sandbox-image.snapshot.v1+json",
    f"{SNAPSHOT_DIR}/SHA256SUMS": "application/vnd.sandbox-image.sha256sums",
    f"{SNAPSHOT_DIR}/SHA256SUMS.gpg": PGP_SIGNATURE,
    f"{SNAPSHOT_DIR}/memory": "application/vnd.sandbox-image.snapshot.memory",
    f"{SNAPSHOT_DIR}/state": "application/vnd.sandbox-image.snapshot.state",
    f"{SNAPSHOT_DIR}/vars.fd": "application/vnd.sandbox-image.snapshot.vars",
}
DISK_QCOW2 = "application/vnd.sandbox-image.disk.qcow2"
DISK_RAW = "application/vnd.sandbox-image.disk.raw"


def media_type(title: str) -> str:
    """The media type of a file, from its path inside the artifact."""
    if title in MEDIA_TYPES:
        return MEDIA_TYPES[title]
    if title.endswith(".qcow2"):
        return DISK_QCOW2
    if title.endswith(".raw"):
        return DISK_RAW
    if title.startswith("logs/"):
        return "text/plain"
    return "application/octet-stream"


@dataclass(frozen=True)
class Layer:
    title: str  # path inside the output, '/'-separated
    media_type: str
    digest: str  # sha256:<hex>
    size: int

    @property
    def sha256(self) -> str:
        return self.digest.removeprefix("sha256:")

    def descriptor(self) -> dict[str, Any]:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
            "annotations": {TITLE: self.title},
        }


# --- pure builders ---


def created_from_build_id(build_id: str) -> str:
    """build-image names builds YYYYmmddTHHMMSS-xxxxxx (the build host's clock, UTC in CI)."""
    try:
        when = datetime.datetime.strptime(build_id[:15], "%Y%m%dT%H%M%S")
    except ValueError:
        return ""
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def manifest_annotations(
    info: Mapping[str, Any], *, source: str | None = None, revision: str | None = None
) -> dict[str, str]:
    """Manifest annotations from build-info.json: the standard keys, then our own."""
    typed = output.BuildInfo(info)
    cfg = typed.config
    base = typed.base
    name = typed.name
    found = {
        "org.opencontainers.image.title": name,
        "org.opencontainers.image.description": "sandbox-image build output (disk, SBOM, logs)",
        "org.opencontainers.image.created": info.get("created")
        or created_from_build_id(str(info.get("build_id", ""))),
        "org.opencontainers.image.version": str(info.get("build_id", "")),
        "org.opencontainers.image.source": source or "",
        "org.opencontainers.image.revision": revision or "",
        "sandbox-image.arch": str(cfg.get("arch", "")),
        "sandbox-image.release": str(cfg.get("release", "")),
        "sandbox-image.profile": str(cfg.get("profile", "")),
        "sandbox-image.base.serial": str(base.get("serial", "")),
        "sandbox-image.base.sha256": str(base.get("sha256", "")),
        "sandbox-image.base.signer": str(base.get("signer", "")),
        "sandbox-image.toolkit.version": str(info.get("toolkit_version", "")),
    }
    return {k: v for k, v in found.items() if v}


def artifact_manifest(layers: Sequence[Layer], notes: Mapping[str, str]) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": dict(EMPTY_CONFIG),
        "layers": [layer.descriptor() for layer in layers],
        "annotations": dict(notes),
    }


def referrer_manifest(subject: Mapping[str, Any], layers: Sequence[Layer]) -> dict[str, Any]:
    """The provenance's own manifest: its files as layers, ``subject`` the artifact's."""
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": provenance.MEDIA_TYPE,
        "config": dict(EMPTY_CONFIG),
        "layers": [layer.descriptor() for layer in layers],
        "subject": dict(subject),
    }


def referrers_tag(digest: str) -> str:
    """OCI 1.1's referrers tag schema, for registries without the referrers API."""
    return digest.replace(":", "-")


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """The digest of the bytes oras sends (requests' JSON encoding), for registries that
    do not name it in Docker-Content-Digest."""
    return "sha256:" + hashlib.sha256(json.dumps(manifest).encode()).hexdigest()


def _safe_title(title: object) -> str:
    """A relative path with no way out of the output directory."""
    if not isinstance(title, str) or not title:
        raise ValueError("a layer has no title")
    path = PurePosixPath(title)
    if path.is_absolute() or ".." in path.parts or "\\" in title or str(path) != title:
        raise ValueError(f"layer title {title!r} is not a plain relative path")
    return title


def layers_of(
    manifest: Mapping[str, Any], kind: str = ARTIFACT_TYPE,
    required: Sequence[str] = ("build-info.json", "SHA256SUMS"),
) -> list[Layer]:  # fmt: skip
    """The layers of a pulled manifest, refused unless it is one of ours (``kind``)."""
    found = manifest.get("artifactType") or (manifest.get("config") or {}).get("mediaType")
    if found != kind:
        raise ImageError(
            f"not a sandbox-image build artifact (artifact type {found!r})",
            hint=f"pull a reference pushed by ./inv publish (artifact type {kind})",
        )
    layers: list[Layer] = []
    seen: set[str] = set()
    for entry in manifest.get("layers") or []:
        try:
            title = _safe_title((entry.get("annotations") or {}).get(TITLE))
            digest, size = entry["digest"], entry["size"]
            if not (isinstance(digest, str) and _DIGEST.match(digest)):
                raise ValueError(f"{title}: digest {digest!r} is not sha256:<64 hex>")
            if not isinstance(size, int) or size < 0:
                raise ValueError(f"{title}: size {size!r} is not a byte count")
        except (ValueError, KeyError, AttributeError) as exc:
            raise ImageError(
                f"the artifact's manifest is malformed: {exc}",
                hint="the registry holds something other than what ./inv publish pushed",
            ) from None
        if title in seen or any(title.startswith(f"{s}/") or s.startswith(f"{title}/")
                                for s in seen):  # fmt: skip
            raise ImageError(f"the artifact's manifest lists {title} twice")
        seen.add(title)
        layers.append(Layer(title, str(entry.get("mediaType", "")), digest, size))
    if any(name not in seen for name in required):
        raise ImageError(
            f"the artifact lacks {' or '.join(required)}",
            hint="it was not pushed by ./inv publish from a complete build output",
        )
    return layers


def check_output(hashes: Mapping[str, str], sums_text: str, snapshot_meta: str | None) -> None:
    """The output's own promises against the bytes we hold: SHA256SUMS, snapshot.json."""
    try:
        sums = parse_sha256sums(sums_text)
    except ValueError as exc:
        raise ImageError(f"SHA256SUMS of the output is unreadable: {exc}") from None
    for name, want in sorted(sums.items()):
        got = hashes.get(name)
        if got is None:
            raise ImageError(f"{name} is listed in SHA256SUMS but not in the output")
        if got != want:
            raise ImageError(
                f"{name}: sha256 {got} does not match SHA256SUMS ({want})",
                hint="the output was altered after it was built; do not use it",
            )
    if snapshot_meta is None:
        return
    try:
        meta = json.loads(snapshot_meta)
        files = dict(meta.get("files_sha256") or {})
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        raise ImageError("snapshot/snapshot.json is unreadable") from None
    image_sha = meta.get("image_sha256")
    if image_sha:
        files.setdefault("base.qcow2", image_sha)
    for name, want in sorted(files.items()):
        got = hashes.get(f"{SNAPSHOT_DIR}/{name}")
        if got != want:
            raise ImageError(
                f"snapshot/{name}: sha256 {got} does not match snapshot.json ({want})",
                hint="the snapshot was altered after it was saved; do not use it",
            )


def plain_http(registry: str, insecure: bool) -> bool:
    """Plain HTTP only for loopback, unless the user says --insecure."""
    host = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
    host = host.strip("[]")
    return insecure or host in _LOOPBACK


def parse_reference(ref: str) -> oras.container.Container:
    # oras would read "repo:tag" as a Docker Hub name: a registry must be named.
    registry = ref.split("/", 1)[0]
    named = "/" in ref and (re.search(r"[.:]", registry) is not None or registry == "localhost")
    try:
        container = oras.container.Container(ref) if named else None
    except ValueError:
        container = None
    if container is None:
        raise ImageError(
            f"{ref!r} is not REGISTRY/REPOSITORY[:TAG|@DIGEST]",
            hint="e.g. 127.0.0.1:5000/sandbox-image:jammy-amd64 or ghcr.io/ORG/sandbox-image:v1",
        )
    return container


# --- reading a build output ---


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def output_files(out: Path, snapshot: Path | None = None) -> list[tuple[str, Path]]:
    """(title, path) of what a build output publishes, in a stable order.

    Only the files the build made (SHA256SUMS names them), never whatever else
    shares the output directory.
    """
    missing = [n for n in ("build-info.json", "SHA256SUMS") if not (out / n).is_file()]
    if missing:
        raise ImageError(
            f"{out} is not a complete build output (no {', '.join(missing)})",
            hint="pass the directory ./inv build-image wrote (its --out)",
        )
    try:
        listed = parse_sha256sums((out / "SHA256SUMS").read_text())
    except ValueError as exc:
        raise ImageError(f"{out}/SHA256SUMS is unreadable: {exc}") from None
    names = [*sorted(listed), "SHA256SUMS", "build-info.json"]
    if (out / "report.html").is_file() and "report.html" not in listed:
        names.append("report.html")
    if (out / f"SHA256SUMS{SIGNATURE_SUFFIX}").is_file():
        names.append(f"SHA256SUMS{SIGNATURE_SUFFIX}")
    files = [(name, out / name) for name in names]
    logs = out / "logs"
    if logs.is_dir():
        files += [(f"logs/{p.name}", p) for p in sorted(logs.iterdir()) if p.is_file()]
    if snapshot is not None:
        if not (snapshot / "snapshot.json").is_file():
            raise ImageError(
                f"{snapshot} is not a snapshot (no snapshot.json)",
                hint="pass the directory ./inv snapshot wrote",
            )
        files += [
            (f"{SNAPSHOT_DIR}/{p.name}", p)
            for p in sorted(snapshot.iterdir())
            if p.is_file() and not p.name.startswith(".")
        ]
    for _, path in files:
        if not path.is_file():
            raise ImageError(f"{path} is listed in SHA256SUMS but missing",
                             hint="rebuild the output; it is incomplete")  # fmt: skip
    return files


# --- the registry side ---


@dataclass(frozen=True)
class Published:
    reference: str
    digest: str
    layers: list[Layer]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "digest": self.digest,
            "bytes": sum(layer.size for layer in self.layers),
            "files": {layer.title: layer.digest for layer in self.layers},
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True)
class Pulled:
    reference: str
    out: Path
    layers: list[Layer]
    seconds: float
    digest: str = ""  # the artifact manifest's
    verified: verify.Verified | None = None  # with --verify-key

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "digest": self.digest,
            "out": str(self.out),
            "bytes": sum(layer.size for layer in self.layers),
            "files": {layer.title: layer.digest for layer in self.layers},
            "seconds": round(self.seconds, 2),
            **({"verified": self.verified.to_json()} if self.verified else {}),
        }


def _client(container: oras.container.Container, insecure: bool) -> oras.provider.Registry:
    http = plain_http(container.registry, insecure)
    registry = oras.provider.Registry(hostname=container.registry, insecure=http)
    # oras retries a refused connection for minutes: ask once, quickly, first.
    url = f"{'http' if http else 'https'}://{container.registry}/v2/"
    try:
        answer = registry.session.get(url, timeout=15)
    except requests.RequestException as exc:
        raise ImageError(
            f"cannot reach the registry at {url}: {exc.__class__.__name__}",
            hint="is it running and is the address right? a plain-HTTP registry that is "
            "not on this machine needs --insecure",
        ) from None
    if answer.status_code not in (200, 401):
        raise ImageError(f"{url} answered {answer.status_code}: not an OCI registry?")
    return registry


def _fail_on(response: requests.Response, what: str) -> None:
    if response.status_code in (200, 201, 202):
        return
    detail = response.text[:300].strip()
    raise ImageError(
        f"registry refused {what}: HTTP {response.status_code} {detail}",
        hint="check the reference and that you are logged in (docker/oras login writes "
        "the credentials this uses)",
    )


@contextlib.contextmanager
def _registry_errors(what: str) -> Iterator[None]:
    try:
        yield
    except requests.RequestException as exc:
        raise ImageError(f"{what}: {exc}", hint="is the registry still reachable?") from None
    except ValueError as exc:  # how oras reports a refused request
        raise ImageError(f"{what}: {exc}", hint="check the reference and your login") from None


def publish(
    out: Path, ref: str, *, snapshot: Path | None = None, insecure: bool = False,
    source: str | None = None, revision: str | None = None,
) -> Published:  # fmt: skip
    """Push the output's files as layers, then the manifest that names them."""
    started = time.monotonic()
    container = parse_reference(ref)
    files = output_files(out, snapshot)
    registry = _client(container, insecure)  # before hashing gigabytes: fail fast
    hashes = {title: _sha256_file(path)[0] for title, path in files}
    meta = (snapshot / "snapshot.json").read_text() if snapshot else None
    # Never publish a damaged output: the same check pull will make.
    check_output(hashes, (out / "SHA256SUMS").read_text(), meta)
    info = output.BuildOutput.read(out).info.raw
    with _registry_errors(f"pushing to {ref}"):
        layers = _upload(registry, container, files)
        manifest = artifact_manifest(
            layers, manifest_annotations(info, source=source, revision=revision)
        )
        with _empty_config_file() as config_path:
            _fail_on(registry.upload_blob(str(config_path), container, dict(EMPTY_CONFIG)),
                     "the empty config blob")  # fmt: skip
        answer = registry.upload_manifest(manifest, container)
        _fail_on(answer, "the manifest")
        digest = answer.headers.get("Docker-Content-Digest") or manifest_digest(manifest)
        attached = [(title, out / title) for title in PROVENANCE_FILES if (out / title).is_file()]
        if attached:
            subject = {"mediaType": OCI_MANIFEST, "digest": digest,
                       "size": len(json.dumps(manifest).encode())}  # what oras sent  # fmt: skip
            _attach(registry, container, subject, attached)
    return Published(container.uri, digest, layers, time.monotonic() - started)


def _upload(
    registry: oras.provider.Registry, container: oras.container.Container,
    files: Sequence[tuple[str, Path]],
) -> list[Layer]:  # fmt: skip
    layers = []
    for title, path in files:
        sha, size = _sha256_file(path)
        layer = Layer(title, media_type(title), f"sha256:{sha}", size)
        log.info("push %s (%d bytes)", title, size)
        _fail_on(registry.upload_blob(str(path), container, layer.descriptor(), do_chunked=True,
                                      chunk_size=CHUNK_SIZE), f"the blob of {title}")  # fmt: skip
        layers.append(layer)
    return layers


def _put_manifest(
    registry: oras.provider.Registry, container: oras.container.Container, reference: str,
    body: bytes, media: str, what: str,
) -> requests.Response:  # fmt: skip
    answer = registry.do_request(
        f"{registry.prefix}://{container.manifest_url(reference)}", "PUT", data=body,
        headers={"Content-Type": media},
    )  # fmt: skip
    _fail_on(answer, what)
    response: requests.Response = answer
    return response


def _attach(
    registry: oras.provider.Registry, container: oras.container.Container,
    subject: Mapping[str, Any], files: Sequence[tuple[str, Path]],
) -> str:  # fmt: skip
    """Push ``files`` as a referrer of ``subject``; its manifest's digest.

    A registry with the referrers API says so (``OCI-Subject``) and lists it by
    itself; for one without (distribution 2.x), the referrer is added to the
    index tagged ``sha256-<subject hex>``, as OCI 1.1 prescribes.
    """
    manifest = referrer_manifest(subject, _upload(registry, container, files))
    body = json.dumps(manifest).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    answer = _put_manifest(registry, container, digest, body, OCI_MANIFEST,
                           "the provenance's manifest")  # fmt: skip
    if "OCI-Subject" in answer.headers:
        return digest
    tag = referrers_tag(str(subject["digest"]))
    index = _get_index(registry, container, tag) or {
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [],
    }  # fmt: skip
    entry = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body),
             "artifactType": provenance.MEDIA_TYPE}  # fmt: skip
    index["manifests"] = [m for m in index.get("manifests") or [] if m.get("digest") != digest]
    index["manifests"].append(entry)
    _put_manifest(registry, container, tag, json.dumps(index).encode(), OCI_INDEX,
                  "the referrers index")  # fmt: skip
    return digest


def _get_index(
    registry: oras.provider.Registry, container: oras.container.Container, tag: str
) -> dict[str, Any] | None:
    answer = registry.do_request(
        f"{registry.prefix}://{container.manifest_url(tag)}", "GET",
        headers={"Accept": OCI_INDEX},
    )  # fmt: skip
    if answer.status_code == 404:
        return None
    _fail_on(answer, f"the referrers index {tag}")
    try:
        found = answer.json()
    except ValueError:
        found = None
    if not isinstance(found, dict) or not isinstance(found.get("manifests", []), list):
        raise ImageError(f"the registry's {tag} is not an OCI index",
                         hint="something else uses the referrers tag of this artifact")  # fmt: skip
    return found


def referrers(
    registry: oras.provider.Registry, container: oras.container.Container, digest: str,
    artifact_type: str,
) -> list[dict[str, Any]]:  # fmt: skip
    """Descriptors of the manifests that refer to ``digest``, of ``artifact_type``, in the
    registry's order (the tag schema's is the order they were pushed)."""
    url = f"{registry.prefix}://{container.registry}/v2/{container.api_prefix}/referrers/{digest}"
    answer = registry.do_request(url, "GET", headers={"Accept": OCI_INDEX})
    index: dict[str, Any] | None
    if answer.status_code == 200 and OCI_INDEX in answer.headers.get("Content-Type", ""):
        index = answer.json()
    else:
        index = _get_index(registry, container, referrers_tag(digest))
    found = (index or {}).get("manifests") or []
    return [m for m in found if isinstance(m, dict) and m.get("artifactType") == artifact_type]


@contextlib.contextmanager
def _empty_config_file() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sandbox-image-oci-") as tmp:
        path = Path(tmp) / "config.json"
        path.write_bytes(b"{}")
        yield path


def _download(
    registry: oras.provider.Registry, container: oras.container.Container, layer: Layer,
    dest: Path,
) -> str:  # fmt: skip
    """Stream one blob to ``dest`` while hashing it; refuse any byte the digest did not name.

    All-zero chunks become holes, so a sparse file (a snapshot's RAM) stays sparse.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with registry.get_blob(container, layer.digest, stream=True) as answer:
        _fail_on(answer, f"the blob of {layer.title}")
        with dest.open("wb") as f:
            for chunk in answer.iter_content(chunk_size=1 << 20):
                size += len(chunk)
                if size > layer.size:
                    break
                digest.update(chunk)
                if chunk.count(0) == len(chunk):
                    f.seek(len(chunk), os.SEEK_CUR)
                else:
                    f.write(chunk)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
    got = f"sha256:{digest.hexdigest()}"
    if size != layer.size or got != layer.digest:
        raise ImageError(
            f"{layer.title}: the registry sent {'more than ' if size > layer.size else ''}"
            f"{size} bytes with {got}, the manifest says {layer.size} bytes with {layer.digest}",
            hint="the registry's copy is corrupt or was tampered with; nothing was written",
        )
    return digest.hexdigest()


def _get_manifest(
    registry: oras.provider.Registry, container: oras.container.Container, reference: str
) -> tuple[dict[str, Any], str]:
    """A manifest and the digest of its bytes; refused if a digest reference does not match."""
    answer = registry.do_request(
        f"{registry.prefix}://{container.manifest_url(reference)}", "GET",
        headers={"Accept": OCI_MANIFEST},
    )  # fmt: skip
    _fail_on(answer, f"the manifest {reference}")
    digest = "sha256:" + hashlib.sha256(answer.content).hexdigest()
    if reference.startswith("sha256:") and digest != reference:
        raise ImageError(f"the registry sent a manifest with digest {digest} for {reference}",
                         hint="the registry's copy is corrupt or was tampered with")  # fmt: skip
    try:
        doc = json.loads(answer.content)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise ImageError(f"the manifest {reference} is not a JSON object")
    return doc, digest


def _provenance_layers(
    registry: oras.provider.Registry, container: oras.container.Container, subject: str
) -> list[Layer]:
    """The files of the newest provenance referrer of ``subject`` (none: [])."""
    found = referrers(registry, container, subject, provenance.MEDIA_TYPE)
    if not found:
        return []
    manifest, digest = _get_manifest(registry, container, str(found[-1].get("digest", "")))
    claimed = (manifest.get("subject") or {}).get("digest")
    if claimed != subject:
        raise ImageError(
            f"the provenance referrer {digest} is for {claimed}, not this artifact ({subject})",
            hint="the registry lists another artifact's provenance for this one; do not use it",
        )
    layers = layers_of(manifest, kind=provenance.MEDIA_TYPE, required=(provenance.FILE,))
    stray = [layer.title for layer in layers if layer.title not in PROVENANCE_FILES]
    if stray:
        raise ImageError(f"the provenance referrer {digest} carries {stray[0]}",
                         hint="only the provenance and its signature belong there")  # fmt: skip
    return layers


def pull(
    ref: str, out: Path, *, insecure: bool = False, keys: Keyring | None = None,
    expect_source: str | None = None, expect_revision: str | None = None,
) -> Pulled:  # fmt: skip
    """Fetch the artifact (and its provenance) into a staging directory, check all of it
    (with ``keys``: ``verify.verify_output`` too), then rename it to ``out``."""
    started = time.monotonic()
    container = parse_reference(ref)
    out = out.resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ImageError(f"{out} already exists and is not empty",
                         hint="pull into a new directory")  # fmt: skip
    registry = _client(container, insecure)
    with _registry_errors(f"reading the manifest of {ref}"):
        manifest, digest = _get_manifest(registry, container, container.digest or container.tag)
        layers = layers_of(manifest)
        attached = _provenance_layers(registry, container, digest)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.pull-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        hashes = {}
        with _registry_errors(f"pulling {ref}"):
            for layer in [*layers, *attached]:
                log.info("pull %s (%d bytes)", layer.title, layer.size)
                hashes[layer.title] = _download(registry, container, layer, staging / layer.title)
        meta_path = staging / SNAPSHOT_DIR / "snapshot.json"
        check_output(
            hashes,
            (staging / "SHA256SUMS").read_text(),
            meta_path.read_text() if meta_path.is_file() else None,
        )
        verified = None
        if keys is not None:
            verified = verify.verify_output(
                staging,
                keys,
                expect_source=expect_source,
                expect_revision=expect_revision,
                exclusive=True,
                known=hashes,  # hashed while downloading: not read again
            )
        if (staging / SNAPSHOT_DIR).is_dir():
            for path in (staging / SNAPSHOT_DIR).iterdir():
                path.chmod(0o444)  # as ./inv snapshot leaves them: read-only once written
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if verified is not None:
        verified = dataclasses.replace(verified, out=out)
    return Pulled(container.uri, out, [*layers, *attached], time.monotonic() - started, digest,
                  verified)  # fmt: skip
