"""The lock: exact package versions and the base image of one build, to rebuild it the same.

``./inv lock OUT`` writes it from a build output's ``manifest.json`` and
``build-info.json``; ``build-image --lock FILE`` installs exactly what it names.
The format is line-oriented text (reviewable in a diff, every error has a line)::

    # comments start with '#'
    format: 1
    distro: ubuntu
    release: jammy
    arch: arm64
    profile: full
    base-serial: 20240912
    base-sha256: <64 hex digits>
    snapshot: 20240301T000000Z        (optional; snapshot.ubuntu.com, jammy only)

    [apt]
    adduser:all=3.118ubuntu5           one line per installed dpkg package
    [pip]
    pypdf==7.1.1                       every package pip put in /usr/local
    [npm]
    docx@9.15.2                        every global npm package

Every installed dpkg package is locked, not only the profile's: the packages
apt pulled in as dependencies are what most often changes between two builds.
Pure parsing and rendering; the caller reads and writes the files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image.build import manifest, output, packages
from image.build.mirrors import Mirrors
from image.errors import ImageError

FORMAT = "1"
HEADER_KEYS = (
    "format",
    "distro",
    "release",
    "arch",
    "profile",
    "base-serial",
    "base-sha256",
    "snapshot",
    "apt-mirror",
    "pip-index",
    "npm-registry",
)
REQUIRED_KEYS = HEADER_KEYS[:7]
KINDS = ("apt", "pip", "npm")

_DEB_NAME = r"[a-z0-9][a-z0-9+.-]+"
# Debian policy 5.6.12: [epoch:]upstream[-revision]; upstream starts with a digit.
_DEB_VERSION = r"(?:\d+:)?[0-9][A-Za-z0-9.+~-]*"
_APT_LINE = re.compile(rf"^(?P<name>{_DEB_NAME}):(?P<arch>[a-z0-9-]+)=(?P<version>{_DEB_VERSION})$")
_PIP_LINE = re.compile(
    r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)==(?P<version>[A-Za-z0-9.!+_-]+)$"
)
_NPM_LINE = re.compile(
    r"^(?P<name>(?:@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*)"
    r"@(?P<version>\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]+)?)$"
)
_SERIAL = re.compile(r"^\d{8}(\.\d+)?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SNAPSHOT = re.compile(r"^\d{8}T\d{6}Z$")
_MIRROR_URL = re.compile(r"^https?://[^\s@#]+$")
_APT_NOT_FOUND = re.compile(r"E: Version '([^']+)' for '([^']+)' was not found")


class LockError(ImageError):
    """A malformed lock file, pointing at file and line."""

    def __init__(self, path: Path, line: int | None, problem: str, hint: str | None = None):
        where = str(path) if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {problem}", hint)


@dataclass(frozen=True, order=True)
class Pin:
    name: str
    version: str
    arch: str = ""  # dpkg only

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True)
class Lock:
    distro: str
    release: str
    arch: str
    profile: str
    base_serial: str
    base_sha256: str
    apt: tuple[Pin, ...]
    pip: tuple[Pin, ...] = ()
    npm: tuple[Pin, ...] = ()
    snapshot: str | None = None
    # Where the packages came from when not the public archives (no credentials).
    mirrors: Mirrors = field(default_factory=Mirrors)

    def apt_version(self, name: str) -> str | None:
        for pin in self.apt:
            if pin.name == name:
                return pin.version
        return None

    def pip_version(self, name: str) -> str | None:
        key = pip_key(name)
        for pin in self.pip:
            if pip_key(pin.name) == key:
                return pin.version
        return None

    def npm_version(self, name: str) -> str | None:
        for pin in self.npm:
            if pin.name == name:
                return pin.version
        return None


def pip_key(name: str) -> str:
    """PEP 503 normalisation: pip treats Foo_Bar, foo-bar and foo.bar as one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


# --- writing -------------------------------------------------------------------


def from_build(
    manifest_json: Mapping[str, Any], build_info: Mapping[str, Any], snapshot: str | None = None
) -> Lock:
    """A lock from a build output's manifest.json and build-info.json (as parsed JSON)."""
    try:
        base = build_info["base"]
        config = build_info["config"]
        found = manifest_json
        distro = str(found["distro"])
        lock = Lock(
            distro=distro,
            release=str(config["release"]),
            arch=str(found["arch"]),
            profile=str(config["profile"]),
            base_serial=str(base["serial"]),
            base_sha256=str(base["sha256"]),
            apt=tuple(
                sorted(
                    Pin(str(p["name"]), str(p["version"]), str(p["arch"])) for p in found["dpkg"]
                )
            ),
            pip=tuple(sorted(Pin(str(p["name"]), str(p["version"])) for p in found["pip"])),
            npm=tuple(sorted(Pin(str(p["name"]), str(p["version"])) for p in found["npm"])),
            snapshot=snapshot,
            mirrors=Mirrors(
                apt=(build_info.get("mirrors") or {}).get("apt"),
                pip=(build_info.get("mirrors") or {}).get("pip"),
                npm=(build_info.get("mirrors") or {}).get("npm"),
            ),
        )
    except (KeyError, TypeError) as exc:
        raise ImageError(
            f"the build output does not describe a build: {exc!r} is missing",
            hint="pass the output directory of a finished ./inv build-image",
        ) from None
    if snapshot is not None and lock.distro != "ubuntu":
        raise ImageError(
            f"--snapshot-timestamp needs an Ubuntu build; this one is {lock.distro}",
            hint="snapshot.ubuntu.com serves Ubuntu only; drop the timestamp",
        )
    if snapshot is not None and not _SNAPSHOT.fullmatch(snapshot):
        raise ImageError(f"not a snapshot timestamp: {snapshot!r}",
                         hint="use YYYYMMDDTHHMMSSZ, e.g. 20240301T000000Z")  # fmt: skip
    if lock.base_serial == "latest":
        raise ImageError(
            "the build did not record a base image serial (the mirror named none)",
            hint="rebuild with --serial YYYYMMDD so the lock can pin the base image",
        )
    # Round-trip through the parser: a lock we write is one we can read.
    return parse(render(lock), Path("<lock>"))


def from_output(where: Path, snapshot: str | None = None) -> Lock:
    """A lock from a build-image output directory (its manifest.json and build-info.json)."""
    built = output.BuildOutput.read(where)
    return from_build(built.manifest, built.info.raw, snapshot=snapshot)


def render(lock: Lock) -> str:
    lines = [
        "# sandbox-image lock: exact versions of one build; use with build-image --lock FILE.",
        "# Written by ./inv lock; regenerate it rather than editing versions by hand.",
        f"format: {FORMAT}",
        f"distro: {lock.distro}",
        f"release: {lock.release}",
        f"arch: {lock.arch}",
        f"profile: {lock.profile}",
        f"base-serial: {lock.base_serial}",
        f"base-sha256: {lock.base_sha256}",
    ]
    if lock.snapshot is not None:
        lines.append(f"snapshot: {lock.snapshot}")
    for key, url in (("apt-mirror", lock.mirrors.apt), ("pip-index", lock.mirrors.pip),
                     ("npm-registry", lock.mirrors.npm)):  # fmt: skip
        if url is not None:
            lines.append(f"{key}: {url}")
    lines += ["", "[apt]", *(f"{p.name}:{p.arch}={p.version}" for p in lock.apt)]
    lines += ["", "[pip]", *(f"{p.name}=={p.version}" for p in lock.pip)]
    lines += ["", "[npm]", *(f"{p.name}@{p.version}" for p in lock.npm)]
    return "\n".join(lines) + "\n"


# --- reading -------------------------------------------------------------------


def _content_lines(text: str) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        content = raw.split("#", 1)[0].strip()
        if content:
            yield number, content


def _header_value(path: Path, line: int, key: str, value: str) -> str:
    checks: dict[str, tuple[re.Pattern[str] | tuple[str, ...], str]] = {
        "format": ((FORMAT,), f"this toolkit reads lock format {FORMAT}"),
        "distro": (packages.DISTROS, f"one of {', '.join(packages.DISTROS)}"),
        "release": (re.compile(r"^[a-z]+$"), "a release code name like jammy"),
        "arch": (("arm64", "amd64"), "arm64 or amd64"),
        "profile": (re.compile(r"^[a-z0-9][a-z0-9_-]*$"), "a profile name like full"),
        "base-serial": (_SERIAL, "a cloud image serial like 20240912"),
        "base-sha256": (_SHA256, "64 lower-case hex digits"),
        "snapshot": (_SNAPSHOT, "YYYYMMDDTHHMMSSZ, e.g. 20240301T000000Z"),
        **dict.fromkeys(
            ("apt-mirror", "pip-index", "npm-registry"),
            (_MIRROR_URL, "an http(s) URL without credentials"),
        ),
    }
    allowed, what = checks[key]
    ok = value in allowed if isinstance(allowed, tuple) else allowed.fullmatch(value) is not None
    if not ok:
        raise LockError(path, line, f"{key}: {value!r} is not valid", f"expected {what}")
    return value


def _pin(kind: str, content: str, path: Path, line: int) -> Pin:
    if kind == "apt":
        m = _APT_LINE.fullmatch(content)
        if m:
            return Pin(m["name"], m["version"], m["arch"])
        raise LockError(path, line, f"not an apt pin: {content!r}", "write name:arch=version")
    if kind == "pip":
        m = _PIP_LINE.fullmatch(content)
        if m:
            return Pin(m["name"], m["version"])
        raise LockError(path, line, f"not a pip pin: {content!r}", "write name==version")
    m = _NPM_LINE.fullmatch(content)
    if m:
        return Pin(m["name"], m["version"])
    raise LockError(path, line, f"not an npm pin: {content!r}", "write name@x.y.z")


def parse(text: str, path: Path) -> Lock:
    """Lock text -> Lock; every problem names the file and line."""
    header: dict[str, tuple[int, str]] = {}
    pins: dict[str, list[Pin]] = {kind: [] for kind in KINDS}
    seen: dict[tuple[str, str], int] = {}
    section: str | None = None
    sections_seen: set[str] = set()
    for line, content in _content_lines(text):
        m = re.fullmatch(r"\[([a-z]+)\]", content)
        if m:
            if m[1] not in KINDS:
                raise LockError(
                    path, line, f"unknown section [{m[1]}]", "sections are [apt], [pip] and [npm]"
                )
            if m[1] in sections_seen:
                raise LockError(path, line, f"section [{m[1]}] appears twice")
            section = m[1]
            sections_seen.add(section)
            continue
        if section is None:
            key, sep, value = content.partition(":")
            key, value = key.strip(), value.strip()
            if not sep or key not in HEADER_KEYS:
                raise LockError(
                    path,
                    line,
                    f"unknown header line {content!r}",
                    f"header keys: {', '.join(HEADER_KEYS)}",
                )
            if key in header:
                raise LockError(path, line, f"{key!r} given twice (first on line {header[key][0]})")
            header[key] = (line, _header_value(path, line, key, value))
            continue
        pin = _pin(section, content, path, line)
        # One version per name: apt pins and installs by name.
        name_key = pip_key(pin.name) if section == "pip" else pin.name
        if (section, name_key) in seen:
            raise LockError(
                path,
                line,
                f"{pin.name!r} is locked twice (first on line {seen[(section, name_key)]})",
            )
        seen[(section, name_key)] = line
        pins[section].append(pin)
    absent = [k for k in REQUIRED_KEYS if k not in header]
    if absent:
        raise LockError(
            path,
            None,
            f"missing header key(s): {', '.join(absent)}",
            "regenerate the lock with ./inv lock OUT",
        )
    if not pins["apt"]:
        raise LockError(
            path,
            None,
            "the [apt] section locks no package",
            "regenerate the lock with ./inv lock OUT",
        )
    distro = header["distro"][1]
    if "snapshot" in header and distro != "ubuntu":
        raise LockError(
            path,
            header["snapshot"][0],
            "a snapshot pin needs distro ubuntu",
            "snapshot.ubuntu.com serves Ubuntu only",
        )
    return Lock(
        distro=distro,
        release=header["release"][1],
        arch=header["arch"][1],
        profile=header["profile"][1],
        base_serial=header["base-serial"][1],
        base_sha256=header["base-sha256"][1],
        apt=tuple(pins["apt"]),
        pip=tuple(pins["pip"]),
        npm=tuple(pins["npm"]),
        snapshot=header["snapshot"][1] if "snapshot" in header else None,
        mirrors=Mirrors(
            apt=header["apt-mirror"][1] if "apt-mirror" in header else None,
            pip=header["pip-index"][1] if "pip-index" in header else None,
            npm=header["npm-registry"][1] if "npm-registry" in header else None,
        ),
    )


def load(path: Path) -> Lock:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ImageError(
            f"cannot read the lock {path}: {exc.strerror}",
            hint="make one with ./inv lock OUT --out FILE",
        ) from None
    return parse(text, path)


# --- applying ------------------------------------------------------------------


def check_build_matches(lock: Lock, *, distro: str, release: str, arch: str, profile: str) -> None:
    """A lock is for one distro, release, arch and profile: refuse any other."""
    for what, want, have in (
        ("distro", lock.distro, distro),
        ("release", lock.release, release),
        ("arch", lock.arch, arch),
        ("profile", lock.profile, profile),
    ):
        if want != have:
            raise ImageError(
                f"the lock is for {what} {want}, this build is for {have}",
                hint=f"build with --{what} {want}, or make a lock from a build with {what} {have}",
            )


def check_base(lock: Lock, sha256: str) -> None:
    if sha256 != lock.base_sha256:
        raise ImageError(
            f"the base image (serial {lock.base_serial}) has sha256 {sha256}, "
            f"the lock expects {lock.base_sha256}",
            hint="the mirror now serves different bytes under the locked serial; do not "
            "build from it unless you trust the change, then make a new lock",
        )


def pinned_specs(lock: Lock, profile: packages.Profile) -> dict[str, tuple[str, ...]]:
    """The profile's packages at the lock's versions: apt name=version, pip ==, npm @.

    Only the profile's own packages are named to the installers (so apt marks
    the same packages manual as an unlocked build); their dependencies are
    held to the lock by apt preferences and the pip constraints (see below).
    """
    # (ecosystem, (name, how the installer is asked for it) per package, the lock's lookup)
    wanted = [
        ("apt", [(n, n) for n in profile.apt_packages], lock.apt_version, "="),
        ("pip", [(e.name, e.spec.rsplit("==", 1)[0]) for g in profile.groups_of("pip")
                 for e in g.entries], lock.pip_version, "=="),
        ("npm", [(e.name, e.name) for g in profile.groups_of("npm") for e in g.entries],
         lock.npm_version, "@"),
    ]  # fmt: skip
    missing: list[str] = []
    pinned: dict[str, list[str]] = {}
    for kind, names, version_of, joiner in wanted:
        pinned[kind] = []
        for name, request in names:
            version = version_of(name)
            if version is None:
                missing.append(f"{kind} {name}")
            else:
                pinned[kind].append(f"{request}{joiner}{version}")
    if missing:
        raise ImageError(
            f"profile {profile.name} lists packages the lock has no version for: "
            f"{', '.join(missing)}",
            hint="the package lists changed since the lock was made; build without --lock "
            "and make a new lock from that build",
        )
    return {kind: tuple(specs) for kind, specs in pinned.items()}


def apt_preferences(lock: Lock) -> str:
    """apt_preferences(5): every locked package held at its version, even as a dependency.

    Priority 1001 makes apt take that version over any other (downgrading if it
    must). A pinned version the archive no longer has is ignored by apt, which
    is why the build compares what got installed with the lock afterwards.
    """
    stanzas = [
        f"Package: {p.name}\nPin: version {p.version}\nPin-Priority: 1001\n" for p in lock.apt
    ]
    return "\n".join(stanzas)


def pip_constraints(lock: Lock) -> tuple[str, ...]:
    return tuple(f"{p.name}=={p.version}" for p in lock.pip)


def installed(found: manifest.Manifest) -> dict[str, tuple[Pin, ...]]:
    """A build's manifest as pins, per kind."""
    return {
        "apt": tuple(Pin(p.name, p.version, p.arch) for p in found.dpkg),
        "pip": tuple(Pin(p.name, p.version) for p in found.pip),
        "npm": tuple(Pin(p.name, p.version) for p in found.npm),
    }


def differences(lock: Lock, found: manifest.Manifest) -> list[str]:
    """What a build installed that the lock does not say, one line per package."""
    have_all = installed(found)
    lines: list[str] = []
    for kind in KINDS:
        want = {_diff_key(kind, p): p for p in getattr(lock, kind)}
        have = {_diff_key(kind, p): p for p in have_all[kind]}
        for key in sorted(set(want) | set(have)):
            w, h = want.get(key), have.get(key)
            if w is not None and h is None:
                lines.append(f"{kind} {w.name}: locked {w.version}, not installed")
            elif w is None and h is not None:
                lines.append(f"{kind} {h.name}: installed {h.version}, not in the lock")
            elif w is not None and h is not None and w.version != h.version:
                lines.append(f"{kind} {w.name}: locked {w.version}, installed {h.version}")
    return lines


def _diff_key(kind: str, pin: Pin) -> tuple[str, str]:
    if kind == "apt":
        return (pin.name, pin.arch)
    return (pip_key(pin.name) if kind == "pip" else pin.name, "")


def unavailable_versions(apt_output: str) -> list[str]:
    """``name=version`` for each "E: Version 'v' for 'name' was not found" apt printed."""
    found = []
    for version, name in _APT_NOT_FOUND.findall(apt_output):
        spec = f"{name}={version}"
        if spec not in found:
            found.append(spec)
    return found
