"""sign / verify: who built a build output, from what, and is every byte still theirs?

``sign`` adds detached signatures to a build output (``SHA256SUMS.gpg`` and the
provenance's) or to a snapshot (a ``SHA256SUMS`` of every file in it, signed:
the RAM file is covered too). ``verify`` checks, in this order, and stops at the
first thing that does not hold, naming it:

1. ``SHA256SUMS`` carries a good signature by one of the given keys;
2. every file it lists has that hash;
3. the provenance carries a good signature by one of the given keys, its
   subjects are exactly those files, its byproducts (build-info.json, logs)
   are the files present, its required inputs are named, and the base image it
   names is the one build-info.json records; with ``--expect-source`` and
   ``--expect-revision``, the toolkit it was built from is that one, unmodified;
4. a snapshot inside (``snapshot/``, as ``pull`` lays it out) is signed the same
   way, lists every file it holds, and resumes the image verified above.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image.build import output
from image.errors import ImageError
from image.files import sha256_file
from image.release import provenance
from image.release.signatures import SIGNATURE_SUFFIX, Keyring, Signer, sign
from image.source.checksums import parse_sha256sums

SUMS = output.SHA256SUMS
SNAPSHOT_DIR = "snapshot"
SNAPSHOT_META = "snapshot.json"
_SIGNED_SUMS = (SUMS, SUMS + SIGNATURE_SUFFIX)


@dataclass(frozen=True)
class Verified:
    out: Path
    signer: str  # primary fingerprint behind SHA256SUMS' signature
    provenance: provenance.Provenance
    files: int  # files whose hash was checked
    snapshot: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "signer": self.signer,
            "files_checked": self.files,
            "snapshot": self.snapshot,
            **self.provenance.to_json(),
        }


def _read_sums(path: Path) -> dict[str, str]:
    try:
        return parse_sha256sums(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ImageError(f"{path} is unreadable: {exc}") from None


def _check_hashes(
    root: Path, sums: Mapping[str, str], where: str, known: Mapping[str, str] | None = None
) -> None:
    """``known``: hashes taken already (pull's, while downloading), by path from ``root``."""
    for name, want in sorted(sums.items()):
        path = root / name
        if ".." in Path(name).parts or Path(name).is_absolute() or not path.is_file():
            raise ImageError(f"{where}{name} is listed in SHA256SUMS but missing",
                             hint="the build output is incomplete")  # fmt: skip
        got = (known or {}).get(name) or sha256_file(path)
        if got != want:
            raise ImageError(
                f"{where}{name}: sha256 {got} does not match SHA256SUMS ({want})",
                hint="the file was altered after it was signed; do not use it",
            )


def verify_output(
    out: Path,
    keys: Keyring,
    *,
    expect_source: str | None = None,
    expect_revision: str | None = None,
    exclusive: bool = False,
    known: Mapping[str, str] | None = None,
) -> Verified:
    """Verify a build output (``build-image --out`` or ``pull --out``); ImageError otherwise.

    ``exclusive``: every file in ``out`` must be one the signatures cover (a pulled
    artifact: a layer its publisher did not sign is refused). A local output
    directory may be shared with other files, so it is not exclusive by default.
    ``known``: sha256 already taken of files in ``out`` (by relative path), not read again.
    """
    known = known or {}
    if not (out / SUMS).is_file():
        raise ImageError(f"{out} is not a build output (no {SUMS})",
                         hint="pass what ./inv build-image or ./inv pull wrote")  # fmt: skip
    signer = keys.check(out / SUMS, SUMS)
    sums = _read_sums(out / SUMS)
    _check_hashes(out, sums, "", known)
    prov_path = out / provenance.FILE
    if not prov_path.is_file():
        raise ImageError(f"{out} has no {provenance.FILE}",
                         hint="the build predates provenance, or it was removed")  # fmt: skip
    keys.check(prov_path, provenance.FILE)
    prov = provenance.parse(prov_path.read_text())
    present = {
        p.relative_to(out).as_posix(): known.get(p.relative_to(out).as_posix()) or sha256_file(p)
        for p in [out / output.BUILD_INFO, *sorted((out / "logs").glob("*"))]
        if p.is_file()
    }
    # build-info.json is a byproduct: provenance.check proves it unaltered before its
    # base image record is compared, so read it only for that.
    base = None
    with contextlib.suppress(ImageError):  # unreadable: the byproduct check says why
        base = str(output.BuildOutput.read(out).info.base.get("sha256") or "") or None
    provenance.check(prov, sums, present, base_sha256=base, expect_source=expect_source,
                     expect_revision=expect_revision)  # fmt: skip
    if exclusive:
        covered = {*sums, *_SIGNED_SUMS, provenance.FILE, provenance.FILE + SIGNATURE_SUFFIX,
                   *prov.byproducts}  # fmt: skip
        for path in sorted(out.rglob("*")):
            name = path.relative_to(out).as_posix()
            if path.is_file() and not name.startswith(f"{SNAPSHOT_DIR}/") and name not in covered:
                raise ImageError(f"{name} is not covered by the signatures",
                                 hint="the artifact carries a file its publisher did not "
                                 "sign; do not use it")  # fmt: skip
    checked = len(sums)
    snap = out / SNAPSHOT_DIR
    if snap.is_dir():
        inside = {k.removeprefix(f"{SNAPSHOT_DIR}/"): v for k, v in known.items()
                  if k.startswith(f"{SNAPSHOT_DIR}/")}  # fmt: skip
        checked += verify_snapshot(snap, keys, image_sha256=_image_sha(sums), known=inside)
    return Verified(out, signer, prov, checked, snap.is_dir())


def _image_sha(sums: Mapping[str, str]) -> str | None:
    images = [sha for name, sha in sums.items() if name.endswith(".qcow2")]
    return images[0] if len(images) == 1 else None


def verify_snapshot(
    snap: Path, keys: Keyring, image_sha256: str | None = None,
    known: Mapping[str, str] | None = None,
) -> int:  # fmt: skip
    """A snapshot signed by ``sign_snapshot``: every file listed, hashed and none extra."""
    where = f"{SNAPSHOT_DIR}/"
    if not (snap / SUMS).is_file():
        raise ImageError(
            f"the snapshot in {snap} is not signed (no {where}{SUMS})",
            hint="sign it with ./inv sign SNAPSHOT --key KEY before publishing it",
        )
    keys.check(snap / SUMS, f"{where}{SUMS}")
    sums = _read_sums(snap / SUMS)
    extra = sorted(
        p.name for p in snap.iterdir()
        if p.name not in sums and p.name not in _SIGNED_SUMS and not p.name.startswith(".")
    )  # fmt: skip
    if extra:
        raise ImageError(f"{where}{extra[0]} is not listed in {where}{SUMS}",
                         hint="a file was added to the snapshot after it was signed")  # fmt: skip
    _check_hashes(snap, sums, where, known)
    try:
        meta = json.loads((snap / SNAPSHOT_META).read_text())
    except (OSError, ValueError) as exc:
        raise ImageError(f"{where}{SNAPSHOT_META} is unreadable: {exc}") from None
    if image_sha256 is not None and meta.get("image_sha256") != image_sha256:
        raise ImageError(
            f"the snapshot resumes image sha256 {meta.get('image_sha256')}, "
            f"not this build's ({image_sha256})",
            hint="the snapshot belongs to another build",
        )
    return len(sums)


# --- signing what exists ---


def sign_output(out: Path, who: Signer) -> list[Path]:
    """Sign a build output's SHA256SUMS and provenance, after checking they still hold."""
    sums = _read_sums(out / SUMS) if (out / SUMS).is_file() else None
    if sums is None or not (out / provenance.FILE).is_file():
        raise ImageError(
            f"{out} is not a build output with a provenance (no {SUMS} or {provenance.FILE})",
            hint="pass what ./inv build-image wrote; builds before provenance cannot be signed",
        )
    _check_hashes(out, sums, "")  # never sign a damaged output
    prov = provenance.parse((out / provenance.FILE).read_text())
    present = {name: sha256_file(out / name) for name in prov.byproducts if (out / name).is_file()}
    provenance.check(prov, sums, present)
    return [sign(who, out / SUMS), sign(who, out / provenance.FILE)]


def sign_snapshot(snap: Path, who: Signer) -> list[Path]:
    """Write SHA256SUMS of every file in a snapshot (its RAM too) and sign it."""
    if not (snap / SNAPSHOT_META).is_file():
        raise ImageError(f"{snap} is not a snapshot (no {SNAPSHOT_META})",
                         hint="pass the directory ./inv snapshot wrote")  # fmt: skip
    names = sorted(
        p.name for p in snap.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name not in _SIGNED_SUMS
    )  # fmt: skip
    text = "".join(f"{sha256_file(snap / n)} *{n}\n" for n in names)
    partial = snap / f".{SUMS}.partial"
    partial.write_text(text)
    partial.replace(snap / SUMS)
    return [snap / SUMS, sign(who, snap / SUMS)]
