"""Throwaway OpenPGP keys: they sign the offline mirror's SHA256SUMS and the tests' fixtures.

Never used for anything a user trusts: the real trust root is keys/ (Canonical's keys).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from image import run
from image.errors import ImageError


@dataclass(frozen=True)
class SigningKey:
    home: Path  # GNUPGHOME holding the secret key
    fingerprint: str
    public_keyring: Path  # binary public keyring, usable with gpgv --keyring


def _gpg(home: Path, *args: str, input: bytes | None = None) -> bytes:
    """gpg in ``home``; any gpg-agent it started is stopped again before returning.

    gpg starts one agent per home to use a secret key (even to list it), and
    that agent would outlive the toolkit, the test, or the CI job.
    """
    try:
        return run.run(
            ["gpg", "--homedir", str(home), "--batch", "--no-tty", *args], input=input
        ).stdout
    finally:
        stop_agent(home)


def stop_agent(home: Path, timeout: float = 5.0) -> None:
    """Stop the gpg-agent of ``home`` and wait until it is gone.

    `gpgconf --kill` returns before the agent exits; until then its socket in
    ``home`` still answers, and a gpg run in the meantime (or after ``home`` was
    renamed) would talk to a dying agent. The agent removes its socket last.
    """
    socket = home / "S.gpg-agent"
    if not socket.exists():
        return
    run.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
    deadline = time.monotonic() + timeout
    while socket.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def create_key(home: Path, name: str = "sandbox-image throwaway mirror key") -> SigningKey:
    """A new ed25519 signing key in ``home`` (created), exported as a public keyring."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    _gpg(
        home,
        "--passphrase",
        "",
        "--quick-generate-key",
        f"{name} <nobody@invalid>",
        "ed25519",
        "sign",
        "never",
    )
    listing = _gpg(home, "--with-colons", "--list-secret-keys").decode()
    fprs = re.findall(r"^fpr:(?:[^:]*:){8}([0-9A-F]{40}):", listing, re.MULTILINE)
    if not fprs:
        raise RuntimeError(f"gpg made no key in {home}")
    keyring = home / "public.gpg"
    keyring.write_bytes(_gpg(home, "--export", fprs[0]))
    return SigningKey(home, fprs[0], keyring)


def load_key(home: Path) -> SigningKey | None:
    """The key made earlier in ``home``, if there is one."""
    keyring = home / "public.gpg"
    if not keyring.exists():
        return None
    listing = _gpg(home, "--with-colons", "--list-secret-keys").decode()
    fprs = re.findall(r"^fpr:(?:[^:]*:){8}([0-9A-F]{40}):", listing, re.MULTILINE)
    return SigningKey(home, fprs[0], keyring) if fprs else None


def cached_key(home: Path, name: str) -> SigningKey:
    """The throwaway key kept in ``home``, made on first use (atomically: no half key dir).

    ``home`` should have a short path: gpg-agent's sockets live in it, and a
    socket path has a 108-byte limit.
    """
    key = load_key(home)
    if key is not None:
        return key
    home.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".mk-", dir=home.parent))
    try:
        create_key(staging, name)
        # If another process made one first, the rename fails and we use theirs.
        with contextlib.suppress(OSError):
            staging.rename(home)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    key = load_key(home)
    if key is None:
        raise ImageError(
            f"no usable signing key in {home}",
            hint=f"remove {home} and run again to make a new one",
        )
    return key


def sign_detached(
    key: SigningKey, path: Path, signature: Path | None = None, *, armor: bool = False
) -> Path:
    """Detached signature: binary, as cloud-images.ubuntu.com's SHA256SUMS.gpg, or
    ASCII-armoured, as an apt repository's Release.gpg."""
    signature = signature or path.with_name(path.name + ".gpg")
    signature.unlink(missing_ok=True)
    _gpg(
        key.home, "--local-user", key.fingerprint, *(["--armor"] if armor else []),
        "--output", str(signature), "--detach-sign", str(path),
    )  # fmt: skip
    return signature


def clearsign(key: SigningKey, path: Path, signed: Path) -> Path:
    """An inline-signed copy of ``path``, as an apt repository's InRelease."""
    signed.unlink(missing_ok=True)
    _gpg(key.home, "--local-user", key.fingerprint, "--digest-algo", "SHA512",
         "--output", str(signed), "--clearsign", str(path))  # fmt: skip
    return signed


def export_armored(key: SigningKey) -> bytes:
    """The public key as a repository publishes it for download (``gpg --armor --export``)."""
    return _gpg(key.home, "--armor", "--export", key.fingerprint)
