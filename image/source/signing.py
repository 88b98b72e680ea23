"""Throwaway OpenPGP keys: they sign the offline mirror's SHA256SUMS and the tests' fixtures.

Never used for anything a user trusts: the real trust root is keys/ (Canonical's keys).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from image import run


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


def sign_detached(key: SigningKey, path: Path, signature: Path | None = None) -> Path:
    """Binary detached signature, as cloud-images.ubuntu.com's SHA256SUMS.gpg."""
    signature = signature or path.with_name(path.name + ".gpg")
    signature.unlink(missing_ok=True)
    _gpg(
        key.home,
        "--local-user",
        key.fingerprint,
        "--output",
        str(signature),
        "--detach-sign",
        str(path),
    )
    return signature
