"""A release's OpenPGP signatures: make them with the releaser's key, check them with gpgv.

Signing (``build-image --sign-key KEY``, ``./inv sign``): KEY is a secret-key file
(``gpg --export-secret-keys``, armored or binary: what CI keeps in a secret) or
the id, fingerprint or user id of a key in the user's own GnuPG keyring. A key
file is imported into a throwaway GnuPG home that is removed afterwards (with
its agent); its passphrase, if any, comes from ``SANDBOX_IMAGE_SIGN_PASSPHRASE``.
Signatures are detached and binary, as Canonical signs the cloud images'
SHA256SUMS.

Checking (``./inv verify --key KEY``): KEY is a file with the public key(s) to
accept (a secret-key file works too: only its public part is used). gpgv gets
exactly those keys and the decision is made from its status lines
(``checksums.verify_signature``): nothing from ``~/.gnupg`` takes part.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from image import run
from image.errors import ImageError
from image.source import checksums
from image.source.signing import stop_agent

PASSPHRASE_ENV = "SANDBOX_IMAGE_SIGN_PASSPHRASE"
SIGNATURE_SUFFIX = ".gpg"
# gpg --with-colons: the fingerprint record that follows a primary key's pub/sec record.
_PRIMARY_FPR = re.compile(
    r"^(?:pub|sec):[^\n]*\n(?:[^\n]*\n)*?fpr:(?:[^:]*:){8}([0-9A-F]{40}):", re.M
)


@dataclass(frozen=True)
class Signer:
    home: Path | None  # GnuPG home holding the secret key; None: the user's own
    fingerprint: str  # the primary key's: what a verifier accepts


def _gpg(
    home: Path | None, *args: str, input: bytes | None = None, hint: str, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    """gpg in ``home``, or in the user's own GnuPG home (``GNUPGHOME`` or ~/.gnupg)."""
    argv = ["gpg", "--batch", "--no-tty", *(["--homedir", str(home)] if home else []), *args]
    own = {"GNUPGHOME": os.environ["GNUPGHOME"]} if not home and "GNUPGHOME" in os.environ else {}
    return run.run(argv, input=input, hint=hint, check=check, env=own)


def _primary_fingerprints(colons: str) -> list[str]:
    return list(dict.fromkeys(_PRIMARY_FPR.findall(colons)))


@contextlib.contextmanager
def _throwaway_home() -> Iterator[Path]:
    # A short path: gpg-agent's socket lives in it (108-byte limit).
    with tempfile.TemporaryDirectory(prefix="si-gpg-") as tmp:
        home = Path(tmp)
        home.chmod(0o700)
        try:
            yield home
        finally:
            stop_agent(home)


def _import(home: Path, key: Path, flag: str) -> None:
    done = _gpg(home, "--import", str(key), hint="", check=False)
    if done.returncode != 0:
        said = [line.removeprefix("gpg: ") for line in done.stderr.decode(errors="replace")
                .splitlines() if "keybox" not in line]  # fmt: skip
        raise ImageError(
            f"{flag} {key} is not an OpenPGP key file ({'; '.join(said[:2]) or 'gpg refused it'})",
            hint="export keys with gpg --export --armor KEYID (public) or "
            "gpg --export-secret-keys --armor KEYID (secret)",
        )


@contextlib.contextmanager
def signer(key: str, flag: str = "--sign-key") -> Iterator[Signer]:
    """The signing key ``key`` names, ready for ``sign`` while the context lasts;
    ``flag`` is how the user named it, for the messages."""
    path = Path(key).expanduser()
    if path.is_file():
        with _throwaway_home() as home:
            _import(home, path, flag)
            listing = _gpg(home, "--with-colons", "--list-secret-keys", hint="").stdout.decode()
            found = _primary_fingerprints(listing)
            if len(found) != 1:
                raise ImageError(
                    f"{flag} {path} holds {len(found) or 'no'} secret key{'s' * (len(found) != 1)}",
                    hint="export exactly one: gpg --export-secret-keys --armor KEYID > key.asc",
                )
            yield Signer(home, found[0])
        return
    probe = _gpg(None, "--with-colons", "--list-secret-keys", key, hint="", check=False)
    found = _primary_fingerprints(probe.stdout.decode(errors="replace"))
    if probe.returncode != 0 or not found:
        raise ImageError(
            f"{flag} {key!r} is neither a key file nor a secret key in your GnuPG keyring",
            hint="pass a file from gpg --export-secret-keys, or a fingerprint that "
            "gpg --list-secret-keys shows",
        )
    if len(found) > 1:
        raise ImageError(f"{flag} {key!r} names {len(found)} secret keys",
                         hint="pass the fingerprint of the one to sign with")  # fmt: skip
    yield Signer(None, found[0])


def sign(who: Signer, path: Path) -> Path:
    """A detached binary signature of ``path`` at ``path``.gpg, written whole or not at all."""
    signature = path.with_name(path.name + SIGNATURE_SUFFIX)
    partial = signature.with_name(f".{signature.name}.partial")
    partial.unlink(missing_ok=True)
    passphrase = os.environ.get(PASSPHRASE_ENV)
    secret = ["--pinentry-mode", "loopback", "--passphrase-fd", "0"] if passphrase else []
    try:
        _gpg(
            who.home, *secret, "--local-user", who.fingerprint, "--output", str(partial),
            "--detach-sign", str(path),
            input=passphrase.encode() if passphrase else None,
            hint=f"is the key protected by a passphrase? set {PASSPHRASE_ENV}",
        )  # fmt: skip
        partial.replace(signature)
    finally:
        partial.unlink(missing_ok=True)
        if who.home is not None:
            stop_agent(who.home)
    return signature


@dataclass(frozen=True)
class Keyring:
    """The accepted public keys, as one binary keyring gpgv can read."""

    path: Path
    fingerprints: tuple[str, ...]

    def check(self, path: Path, what: str) -> str:
        """The fingerprint behind a good signature of ``path`` (``path``.gpg), or ImageError."""
        signature = path.with_name(path.name + SIGNATURE_SUFFIX)
        if not signature.is_file():
            raise ImageError(
                f"{what} is not signed (no {signature.name})",
                hint="the build was not signed: build-image --sign-key KEY, or ./inv sign OUT",
            )
        return checksums.verify_signature(
            path, signature, self.path, self.fingerprints, what=what,
            origin="whoever handed you this build", how_to_accept="pass that key with --key",
        )  # fmt: skip


_PUBLIC_KEY_HINT = "pass the publisher's public key file (gpg --export --armor KEYID)"


@contextlib.contextmanager
def keyring(key: Path, flag: str = "--key") -> Iterator[Keyring]:
    """The public keys in ``key`` (armored or binary, public or secret export)."""
    if not key.is_file():
        raise ImageError(f"{flag} {key} does not exist", hint=_PUBLIC_KEY_HINT)
    with _throwaway_home() as home:
        _import(home, key, flag)
        listing = _gpg(home, "--with-colons", "--list-keys", hint="").stdout.decode()
        found = _primary_fingerprints(listing)
        if not found:
            raise ImageError(f"{flag} {key} holds no OpenPGP public key", hint=_PUBLIC_KEY_HINT)
        public = home / "accepted.gpg"
        public.write_bytes(_gpg(home, "--export", *found, hint="").stdout)
        yield Keyring(public, tuple(found))


def try_key(key: str) -> str:
    """Sign a scratch file with ``key``: a missing key or a wrong passphrase fails before a
    build spends its hour, not after. Returns the key's fingerprint."""
    with signer(key) as who, tempfile.TemporaryDirectory(prefix="si-sign-") as tmp:
        probe = Path(tmp) / "probe"
        probe.write_bytes(b"sandbox-image signing probe\n")
        sign(who, probe)
        return who.fingerprint
