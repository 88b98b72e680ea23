"""Private mirrors a build installs from instead of the public archives: an apt mirror
(or a snapshot.ubuntu.com pin), a pip index (PEP 503), an npm registry.

What a company runs in front of the internet. The build VM reaches each of them
like everything else, through the host's egress proxy, so a URL is resolved as the
host sees it. The build policy admits exactly the mirrors given and no longer the
public hosts they replace: a mirror that lacks a package fails the build rather
than quietly falling back to the internet. Recorded in build-info.json and the lock
without credentials.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from image.egress import guestnet
from image.errors import ImageError

# The public hosts each mirror replaces (as build.policy names them).
APT_PUBLIC = ("archive.ubuntu.com", "*.archive.ubuntu.com", "security.ubuntu.com",
              "ports.ubuntu.com", "deb.debian.org", "security.debian.org")  # fmt: skip
PIP_PUBLIC = ("pypi.org", "files.pythonhosted.org")
NPM_PUBLIC = ("registry.npmjs.org",)
_SNAPSHOT = re.compile(r"\d{8}T\d{6}Z")


def redacted(url: str) -> str:
    """The URL without user:password (what records and logs may hold)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _url(value: str | None, flag: str, example: str) -> str | None:
    if value is None:
        return None
    parts = urllib.parse.urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
        raise ImageError(f"{flag}: {value!r} is not an http(s) URL", hint=f"e.g. {flag} {example}")
    return value.strip()


@dataclass(frozen=True)
class Mirrors:
    apt: str | None = None
    apt_key: str | None = None  # armored OpenPGP public key that signs the apt mirror
    apt_snapshot: str | None = None
    pip: str | None = None
    npm: str | None = None

    @classmethod
    def given(
        cls, apt: str | None = None, apt_key_file: Path | None = None,
        apt_snapshot: str | None = None, pip: str | None = None, npm: str | None = None,
    ) -> Mirrors:  # fmt: skip
        """Checked flags (before anything is downloaded or booted)."""
        key = None
        if apt_key_file is not None:
            if apt is None:
                raise ImageError("--apt-mirror-key without --apt-mirror",
                                 hint="it is the key that signs the mirror's Release")  # fmt: skip
            try:
                key = apt_key_file.read_text(encoding="ascii")
            except (OSError, UnicodeDecodeError) as exc:
                raise ImageError(
                    f"--apt-mirror-key {apt_key_file}: cannot read it ({exc})",
                    hint="an armored key: gpg --armor --export KEYID > key.asc",
                ) from None
            if "-----BEGIN PGP PUBLIC KEY BLOCK-----" not in key:
                raise ImageError(f"--apt-mirror-key {apt_key_file}: not an armored public key",
                                 hint="gpg --armor --export KEYID > key.asc")  # fmt: skip
        if apt is not None and apt_snapshot is not None:
            raise ImageError("--apt-mirror and --apt-snapshot both name the archive",
                             hint="give one: a snapshot pin is itself the archive")  # fmt: skip
        if apt_snapshot is not None and not _SNAPSHOT.fullmatch(apt_snapshot):
            raise ImageError(f"--apt-snapshot {apt_snapshot!r} is not a timestamp",
                             hint="e.g. --apt-snapshot 20240301T000000Z")  # fmt: skip
        return cls(
            apt=_url(apt, "--apt-mirror", "http://mirror.corp.example/ubuntu"),
            apt_key=key, apt_snapshot=apt_snapshot,
            pip=_url(pip, "--pip-index", "https://pypi.corp.example/simple/"),
            npm=_url(npm, "--npm-registry", "https://npm.corp.example/"),
        )  # fmt: skip

    def __bool__(self) -> bool:
        return any((self.apt, self.apt_snapshot, self.pip, self.npm))

    def or_from(self, recorded: Mirrors) -> Mirrors:
        """These, and for what these leave out the ones a lock recorded."""
        return replace(
            self,
            apt=self.apt or (recorded.apt if not self.apt_snapshot else None),
            pip=self.pip or recorded.pip, npm=self.npm or recorded.npm,
        )  # fmt: skip

    def policy(self, choice: guestnet.PolicyChoice) -> guestnet.PolicyChoice:
        """The build policy admitting exactly these mirrors, denying what they replace."""
        urls = [u for u in (self.apt, self.pip, self.npm) if u]
        deny: list[str] = []
        for url, public in ((self.apt or self.apt_snapshot, APT_PUBLIC), (self.pip, PIP_PUBLIC),
                            (self.npm, NPM_PUBLIC)):  # fmt: skip
            if url:
                own = urllib.parse.urlsplit(url).hostname if "://" in url else None
                deny += [h for h in public if h != own]
        choice = guestnet.with_urls(choice, urls)  # an address literal is admitted here
        hosts = [urllib.parse.urlsplit(u).hostname or "" for u in urls]
        names = [h for h in hosts if h and not _is_address(h)]
        choice = guestnet.with_local_addresses(choice, names)  # a name may resolve inside
        return replace(choice, deny=choice.deny + tuple(d for d in deny if d not in choice.deny))

    def to_json(self) -> dict[str, Any]:
        return {
            "apt": redacted(self.apt) if self.apt else None,
            "apt_key": bool(self.apt_key),
            "apt_snapshot": self.apt_snapshot,
            "pip": redacted(self.pip) if self.pip else None,
            "npm": redacted(self.npm) if self.npm else None,
        }
