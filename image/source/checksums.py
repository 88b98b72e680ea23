"""SHA256SUMS and its detached OpenPGP signature: parse, verify with gpgv, name the signer.

The signature is the trust root of the whole pipeline, so the decision is made
from gpgv's machine-readable status lines (``--status-fd``), never from its
exit code or its human text: with two signatures, one by an unknown key, gpgv
exits non-zero although the other signature is good (apt reads the status
lines for the same reason).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from image import run
from image.errors import ImageError

_SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def parse_sha256sums(text: str) -> dict[str, str]:
    """``sha256sum`` output (text `` `` or binary ``*`` mode) -> {file name: lowercase hash}.

    Strict on purpose: a line we cannot read, or a name listed twice with two
    hashes, means the file is not what we think it is.
    """
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        m = _SUMS_LINE.match(line.rstrip("\r"))
        if not m:
            raise ValueError(f"line {number} is not '<sha256> *<file>': {line[:80]!r}")
        digest, name = m.group(1).lower(), m.group(2)
        if sums.get(name, digest) != digest:
            raise ValueError(f"{name} is listed twice with different hashes")
        sums[name] = digest
    return sums


# --- gpgv status lines -> one record per signature ---

# Outcomes gpgv reports for one signature (GnuPG doc/DETAILS, "Status codes").
_OUTCOMES = ("GOODSIG", "BADSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "ERRSIG")


@dataclass(frozen=True)
class Signature:
    outcome: str  # one of _OUTCOMES
    key_id: str  # long key id (16 hex) of the signing (sub)key
    fingerprint: str | None  # signing key fingerprint (VALIDSIG), when gpgv could check it
    primary_fingerprint: str | None  # its primary key: what a pinned list names

    @property
    def good(self) -> bool:
        return self.outcome == "GOODSIG" and self.primary_fingerprint is not None


def parse_gpgv_status(text: str) -> tuple[Signature, ...]:
    """gpgv ``--status-fd`` output -> the signatures it saw, in order."""
    records: list[dict[str, str | None]] = []
    current: dict[str, str | None] | None = None
    for line in text.splitlines():
        if not line.startswith("[GNUPG:] "):
            continue
        keyword, *args = line[len("[GNUPG:] ") :].split()
        if keyword == "NEWSIG":
            current = None
        elif keyword in _OUTCOMES:
            # NEWSIG is only emitted by newer GnuPG; an outcome always opens a record.
            current = {
                "outcome": keyword,
                "key_id": args[0] if args else "",
                "fingerprint": None,
                "primary": None,
            }
            records.append(current)
        elif keyword == "VALIDSIG" and current is not None and args:
            fpr = args[0].upper()
            # Field 10 is the primary key's fingerprint (absent in very old GnuPG,
            # where the signing key is the primary one).
            primary = args[9].upper() if len(args) >= 10 else fpr
            current["fingerprint"] = fpr
            current["primary"] = primary
    return tuple(
        Signature(str(r["outcome"]), str(r["key_id"]), r["fingerprint"], r["primary"])
        for r in records
    )


def accepted_signer(
    signatures: Iterable[Signature], fingerprints: Iterable[str], what: str = "SHA256SUMS",
    origin: str = "the mirror", how_to_accept: str = "pass --fingerprint with it",
) -> str:  # fmt: skip
    """The pinned primary fingerprint behind a good signature, or ImageError saying why not.

    A single BADSIG rejects the file even if another signature is good: the
    signed bytes were altered, or a signature was forged; either way, stop.
    ``what`` names the signed file in the messages, ``origin`` where it came from.
    """
    signatures = tuple(signatures)
    pinned = {f.upper() for f in fingerprints}
    bad = [s for s in signatures if s.outcome == "BADSIG"]
    if bad:
        raise ImageError(
            f"BAD signature on {what} (key {bad[0].key_id}): the file was altered "
            "or the signature belongs to another file",
            hint=f"{origin} is serving tampered or mismatched files; do not use it",
        )
    good = [s for s in signatures if s.good]
    for sig in good:
        if sig.primary_fingerprint in pinned:
            return sig.primary_fingerprint
    if good:
        signers = ", ".join(sorted({str(s.primary_fingerprint) for s in good}))
        raise ImageError(
            f"{what} is signed by {signers}, which is not an accepted signer "
            f"({', '.join(sorted(pinned))})",
            hint=f"only if you trust that key for {origin}: {how_to_accept}",
        )
    if not signatures:
        raise ImageError(
            f"{what}.gpg holds no OpenPGP signature",
            hint=f"{origin} must carry a detached binary signature of {what}",
        )
    reasons = ", ".join(f"{s.outcome} {s.key_id}" for s in signatures)
    raise ImageError(
        f"no good signature on {what} ({reasons})",
        hint="ERRSIG means the signing key is not one of the keys given (--keyring, --key); "
        "EXPKEYSIG/REVKEYSIG mean the key expired or was revoked",
    )


# --- the executor: gpgv against a keyring file ---


def _is_armored(keyring: Path) -> bool:
    with keyring.open("rb") as fh:
        return b"-----BEGIN PGP" in fh.read(4096)


def verify_signature(
    sums: Path, signature: Path, keyring: Path, fingerprints: Iterable[str],
    what: str = "SHA256SUMS", origin: str = "the mirror",
    how_to_accept: str = "pass --fingerprint with it",
) -> str:  # fmt: skip
    """gpgv the detached ``signature`` of ``sums`` against ``keyring``; return the signer.

    gpgv cannot read armored keyrings, so an armored one is dearmored into a
    throwaway directory that also serves as gpgv's home: nothing from the
    user's ~/.gnupg takes part in the decision.
    """
    if not keyring.is_file():
        raise ImageError(
            f"keyring {keyring} does not exist",
            hint="pass --keyring with an existing OpenPGP public keyring",
        )
    with tempfile.TemporaryDirectory(prefix="sandbox-image-gpgv-") as tmp:
        home = Path(tmp)
        home.chmod(0o700)
        usable = keyring.resolve()
        if _is_armored(keyring):
            usable = home / "keyring.gpg"
            dearmored = run.run(
                ["gpg", "--batch", "--no-tty", "--homedir", str(home), "--dearmor"],
                input=keyring.read_bytes(),
            ).stdout
            usable.write_bytes(dearmored)
        proc = run.run(
            [
                "gpgv",
                "--homedir",
                str(home),
                "--status-fd",
                "1",
                "--keyring",
                str(usable),
                str(signature),
                str(sums),
            ],
            check=False,
        )
    status = parse_gpgv_status(proc.stdout.decode(errors="replace"))
    return accepted_signer(status, fingerprints, what, origin, how_to_accept)


def lookup(sums: Mapping[str, str], name: str, source: str) -> str:
    """The expected hash of ``name``, or an error that says which file lacked it."""
    digest = sums.get(name) or sums.get(f"./{name}")
    if digest is None:
        listed = ", ".join(sorted(sums)[:8]) or "nothing"
        raise ImageError(
            f"{name} is not listed in {source} (it lists {listed})",
            hint="check --arch and --release, or that the mirror is complete",
        )
    return digest
