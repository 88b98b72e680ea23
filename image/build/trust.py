"""Extra CA certificates the build VM trusts: for a network whose proxy inspects TLS.

Companies (and some CI networks) send HTTPS through a proxy that re-signs it with
their own CA; the build VM's pip and npm then fail with "certificate verify
failed" unless the guest trusts that CA too. ``build-image --ca-cert FILE`` (a PEM
file, or a folder of ``*.crt``) puts each certificate into the guest's store
(``/usr/local/share/ca-certificates``, ``update-ca-certificates``) before anything
is downloaded, and points pip and npm at the system store. They stay in the image
(its users meet the same proxy) and build-info records each one's SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from image.errors import ImageError

GUEST_DIR = "/usr/local/share/ca-certificates"
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # what update-ca-certificates writes
# Where Debian and Ubuntu keep the CAs a host adds to its store: behind a proxy that
# inspects TLS, a build VM's pip and npm need them too (build-image --ca-cert).
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----\s+[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")


@dataclass(frozen=True)
class CACert:
    name: str  # file name in the guest, sandbox-image-<n>-<stem>.crt
    pem: str
    sha256: str  # of the certificate (DER), as `openssl x509 -fingerprint -sha256` shows it

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "sha256": self.sha256}


def parse(text: str, origin: str) -> list[str]:
    """The PEM certificates in ``text``; none is an error naming ``origin``."""
    found = [m.group(0) for m in _PEM.finditer(text)]
    for pem in found:
        try:
            der = ssl.PEM_cert_to_DER_cert(pem)
        except ValueError:
            der = b""
        if not _is_der_sequence(der):
            raise ImageError(f"{origin}: a certificate that is not valid PEM (DER inside)")
    if not found:
        raise ImageError(
            f"{origin}: no PEM certificate in it",
            hint="pass the CA certificate in PEM form (-----BEGIN CERTIFICATE-----)",
        )
    return found


def _is_der_sequence(der: bytes) -> bool:
    """Whether ``der`` is one whole ASN.1 SEQUENCE, as every X.509 certificate is (a
    sanity check against a truncated or wrong file, not a parser)."""
    if len(der) < 2 or der[0] != 0x30:
        return False
    if der[1] < 0x80:
        return len(der) == 2 + der[1]
    width = der[1] & 0x7F
    return 0 < width <= 4 and len(der) == 2 + width + int.from_bytes(der[2 : 2 + width], "big")


def load(paths: list[Path]) -> tuple[CACert, ...]:
    """The certificates in these files (or folders of *.crt), each named for the guest."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.crt"))
            if not found:
                raise ImageError(
                    f"no *.crt file in {path}",
                    hint="a folder passed to --ca-cert holds PEM certificates named *.crt",
                )
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ImageError(f"no CA certificate at {path}", hint="pass a PEM file or a folder")
    certs: list[CACert] = []
    for file in files:
        try:
            text = file.read_text(encoding="ascii", errors="strict")
        except (OSError, UnicodeDecodeError) as exc:
            raise ImageError(f"cannot read CA certificate {file}: {exc}") from None
        for pem in parse(text, str(file)):
            der = ssl.PEM_cert_to_DER_cert(pem)
            stem = re.sub(r"[^A-Za-z0-9_.-]", "_", file.stem)[:40]
            certs.append(CACert(f"sandbox-image-{len(certs) + 1}-{stem}.crt", pem + "\n",
                                hashlib.sha256(der).hexdigest()))  # fmt: skip
    return tuple(certs)


def bootcmd_script(certs: tuple[CACert, ...]) -> str:
    """One bootcmd item: the certificates into the store, before any download."""
    lines = ["( set -eu", f"  install -d -m 0755 {GUEST_DIR}"]
    for cert in certs:
        encoded = base64.b64encode(cert.pem.encode()).decode()
        lines.append(f"  echo {encoded} | base64 -d > {GUEST_DIR}/{cert.name}")
    lines += ["  update-ca-certificates > /dev/null", ") || exit 1"]
    return "\n".join(lines)


def host_cas(folder: Path = HOST_CA_DIR) -> tuple[CACert, ...]:
    """The CAs this host added to its own store (none: an empty tuple)."""
    return load([folder]) if any(folder.glob("*.crt")) else ()
