"""Package lists and profiles: what goes into the image.

Layout of ``package-lists/`` (data only; code never edits it):

    apt/<group>.list        one Debian package name a line
    pip/<group>.list        one ``name==version`` a line (extras allowed)
    npm/<group>.list        one ``name@version`` a line (scoped names allowed)
    sources/<name>.source   an extra apt repository: ``key: value`` lines
    profiles/<name>.profile which groups and sources a profile picks, and the
                            dpkg count it is expected to end with
    distros/<distro>.map    the names that differ on another distribution than
                            jammy (the Debian stand-in): apt names, checks

``#`` starts a comment anywhere on a line. Every parse error names the file
and the line, so a broken list is fixed where it is, not guessed at.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from image.errors import ImageError

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_LISTS = PROJECT_ROOT / "package-lists"
KINDS = ("apt", "pip", "npm")
DISTROS = ("ubuntu", "debian")

# Debian policy 5.6.1: lower case, digits, + - . ; at least two characters.
_APT_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
# PEP 508 name, optional extras, and an exact == pin (the image must be rebuildable).
_PIP_ENTRY = re.compile(
    r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)"
    r"(?:\[(?P<extras>[A-Za-z0-9._-]+(?:,[A-Za-z0-9._-]+)*)\])?"
    r"==(?P<version>[A-Za-z0-9.!+_-]+)$"
)
_NPM_ENTRY = re.compile(
    r"^(?P<name>(?:@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*)"
    r"@(?P<version>\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]+)?)$"
)
_GROUP_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_FINGERPRINT = re.compile(r"^[0-9A-F]{40}$")


class ListError(ImageError):
    """A malformed package list, source or profile, pointing at file and line."""

    def __init__(self, path: Path, line: int | None, problem: str, hint: str | None = None):
        self.path = path
        self.line = line
        where = _shown(path) if line is None else f"{_shown(path)}:{line}"
        super().__init__(f"{where}: {problem}", hint)


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Entry:
    """One package line: ``spec`` is what the installer gets, ``key`` what duplicates compare."""

    name: str
    version: str | None
    spec: str
    key: str
    path: Path
    line: int
    # pip only: why this package may install from an sdist ("# sdist: REASON" on its line).
    sdist: str | None = None


@dataclass(frozen=True)
class Group:
    kind: str  # apt | pip | npm
    name: str
    path: Path
    entries: tuple[Entry, ...]
    # pip only: pins for the transitive dependencies (pip --constraint), from
    # pip/<group>.constraints next to the list.
    constraints: tuple[Entry, ...] = ()


@dataclass(frozen=True)
class AptSource:
    """An extra apt repository, its signing key pinned by full fingerprint.

    The build VM downloads the key from ``key_url`` (through the egress proxy) and
    trusts it only if its fingerprint is ``fingerprint``: no keyserver, no dirmngr.
    """

    name: str
    path: Path
    uri: str
    suite: str
    components: tuple[str, ...]
    fingerprint: str
    key_url: str

    @property
    def keyring(self) -> str:
        """Where the guest keeps the checked key; the source line's signed-by."""
        return f"/etc/apt/keyrings/sandbox-image-{self.name}.gpg"

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name, "uri": self.uri, "suite": self.suite,
            "components": list(self.components), "fingerprint": self.fingerprint,
            "key_url": self.key_url, "file": _shown(self.path),
        }  # fmt: skip


@dataclass(frozen=True)
class Check:
    """What the builder runs in the finished guest, and what its output must match."""

    name: str
    expect: str  # a regular expression searched in the command's output
    command: str
    path: Path
    line: int


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    description: str
    distros: tuple[str, ...]
    groups: tuple[Group, ...]
    sources: tuple[AptSource, ...]
    expected_installed: int
    tolerance: float  # a fraction: 0.05 for 5 %
    checks: tuple[Check, ...] = ()  # from profiles/<name>.checks, if present

    def _specs(self, kind: str) -> tuple[str, ...]:
        return tuple(e.spec for g in self.groups if g.kind == kind for e in g.entries)

    @property
    def apt_packages(self) -> tuple[str, ...]:
        return self._specs("apt")

    @property
    def pip_packages(self) -> tuple[str, ...]:
        return self._specs("pip")

    @property
    def npm_packages(self) -> tuple[str, ...]:
        return self._specs("npm")

    @property
    def pip_constraints(self) -> tuple[str, ...]:
        return tuple(e.spec for g in self.groups if g.kind == "pip" for e in g.constraints)

    def groups_of(self, kind: str) -> tuple[Group, ...]:
        return tuple(g for g in self.groups if g.kind == kind)

    @property
    def expected_range(self) -> tuple[int, int]:
        """The dpkg count the builder accepts: expected ± tolerance, rounded outwards."""
        slack = self.expected_installed * self.tolerance
        return max(math.floor(self.expected_installed - slack), 0), math.ceil(
            self.expected_installed + slack
        )

    def summary(self) -> dict[str, object]:
        low, high = self.expected_range
        return {
            "profile": self.name,
            "description": self.description,
            "distros": list(self.distros),
            "groups": [
                {"kind": g.kind, "name": g.name, "count": len(g.entries)} for g in self.groups
            ],
            "sources": [s.name for s in self.sources],
            "explicit": {kind: len(self._specs(kind)) for kind in KINDS},
            "pip_constraints": len(self.pip_constraints),
            "expected_installed": self.expected_installed,
            "tolerance": self.tolerance,
            "expected_range": [low, high],
        }


def _content_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, content) for every line that is not blank once comments go."""
    for number, raw in enumerate(text.splitlines(), start=1):
        content = raw.split("#", 1)[0].strip()
        if content:
            yield number, content


_SDIST_NOTE = re.compile(r"#\s*sdist:\s*(?P<reason>\S.*)$")


def _sdist_reason(text: str, line: int) -> str | None:
    m = _SDIST_NOTE.search(text.splitlines()[line - 1])
    return m["reason"].strip() if m else None


def _parse_entry(kind: str, content: str, path: Path, line: int) -> Entry:
    if kind == "apt":
        if not _APT_NAME.fullmatch(content):
            raise ListError(
                path,
                line,
                f"not a Debian package name: {content!r}",
                "one package a line: lower case letters, digits, + - .",
            )
        return Entry(content, None, content, content, path, line)
    if kind == "pip":
        m = _PIP_ENTRY.fullmatch(content)
        if not m:
            raise ListError(
                path,
                line,
                f"not a pinned pip requirement: {content!r}",
                "write name==version (extras allowed: name[extra]==version)",
            )
        key = re.sub(r"[-_.]+", "-", m["name"]).lower()  # PEP 503 normalisation
        return Entry(m["name"], m["version"], content, key, path, line)
    if kind == "npm":
        m = _NPM_ENTRY.fullmatch(content)
        if not m:
            raise ListError(
                path,
                line,
                f"not a pinned npm package: {content!r}",
                "write name@x.y.z (scoped: @scope/name@x.y.z)",
            )
        return Entry(m["name"], m["version"], content, m["name"], path, line)
    raise ValueError(f"unknown kind {kind!r}")


def parse_group(kind: str, name: str, path: Path, text: str) -> Group:
    """Parse one list file's text. Pure: the caller reads the file."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    entries: list[Entry] = []
    seen: dict[str, Entry] = {}
    for line, content in _content_lines(text):
        if len(content.split()) != 1:
            raise ListError(
                path,
                line,
                f"one package a line, got {content!r}",
                "put each package on its own line; comments start with #",
            )
        entry = _parse_entry(kind, content, path, line)
        reason = _sdist_reason(text, line)
        if reason is not None:
            if kind != "pip":
                raise ListError(path, line, "only pip packages can come from an sdist")
            entry = dataclasses.replace(entry, sdist=reason)
        if entry.key in seen:
            raise ListError(
                path,
                line,
                f"duplicate package {entry.name!r} (already on line {seen[entry.key].line})",
            )
        seen[entry.key] = entry
        entries.append(entry)
    if not entries:
        raise ListError(path, None, "the list names no package")
    return Group(kind, name, path, tuple(entries))


def _with_constraints(group: Group, path: Path) -> Group:
    """Attach pip/<group>.constraints; a package pinned in both files is an error."""
    if not path.is_file():
        return group
    pins = parse_group("pip", group.name, path, path.read_text(encoding="utf-8"))
    listed = {e.key: e for e in group.entries}
    for entry in pins.entries:
        if entry.key in listed:
            first = listed[entry.key]
            raise ListError(
                path,
                entry.line,
                f"{entry.name!r} is already pinned in {_shown(first.path)}:{first.line}",
                "pin a package in one place only",
            )
    return dataclasses.replace(group, constraints=pins.entries)


def _parse_fields(path: Path, text: str, allowed: Iterable[str]) -> dict[str, tuple[int, str]]:
    """``key: value`` lines -> {key: (line, value)}; unknown and repeated keys are errors."""
    known = tuple(allowed)
    fields: dict[str, tuple[int, str]] = {}
    for line, content in _content_lines(text):
        key, sep, value = content.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ListError(path, line, f"expected 'key: value', got {content!r}")
        if key not in known:
            raise ListError(path, line, f"unknown key {key!r}", f"known keys: {', '.join(known)}")
        if key in fields:
            raise ListError(path, line, f"{key!r} given twice (first on line {fields[key][0]})")
        if not value:
            raise ListError(path, line, f"{key!r} has no value")
        fields[key] = (line, value)
    return fields


def _require(path: Path, fields: dict[str, tuple[int, str]], *keys: str) -> None:
    absent = [k for k in keys if k not in fields]
    if absent:
        raise ListError(path, None, f"missing key(s): {', '.join(absent)}")


def parse_source(name: str, path: Path, text: str) -> AptSource:
    keys = ("uri", "suite", "components", "key_url", "fingerprint")
    fields = _parse_fields(path, text, (*keys, "keyserver"))
    if "keyserver" in fields:
        raise ListError(
            path, fields["keyserver"][0], "keyserver is no longer read",
            "give key_url: the HTTPS URL the repository publishes its key at; the "
            "build fetches it through the egress proxy and checks the fingerprint",
        )  # fmt: skip
    _require(path, fields, *keys)
    for key in ("uri", "key_url"):
        line, value = fields[key]
        if not re.fullmatch(r"https?://[^\s'\"\\]+", value):
            raise ListError(path, line, f"{key} must be an http(s):// URL, got {value!r}")
    for key in ("suite", "components"):
        line, value = fields[key]
        if not re.fullmatch(r"[A-Za-z0-9._/-]+( [A-Za-z0-9._/-]+)*", value):
            raise ListError(path, line, f"{key}: unexpected characters in {value!r}")
    line, fpr = fields["fingerprint"]
    fpr = fpr.replace(" ", "").upper()
    if not _FINGERPRINT.fullmatch(fpr):
        raise ListError(
            path,
            line,
            f"not a 40-hex-digit OpenPGP fingerprint: {fpr!r}",
            "pin the full fingerprint, never a short key id",
        )
    return AptSource(
        name=name,
        path=path,
        uri=fields["uri"][1],
        suite=fields["suite"][1],
        components=tuple(fields["components"][1].split()),
        fingerprint=fpr,
        key_url=fields["key_url"][1],
    )


def load_source_file(path: Path) -> AptSource:
    """A ``.source`` given on the command line; its file name (without .source) is its name."""
    if path.suffix != ".source" or not _GROUP_NAME.fullmatch(path.stem):
        raise ImageError(
            f"{path}: a source file is named NAME.source (NAME: a-z, 0-9, - and _)",
            hint="the name says which of the profile's sources it replaces, e.g. nodesource.source",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ImageError(f"cannot read source file {path}: {exc.strerror}") from None
    return parse_source(path.stem, path, text)


def _parse_tolerance(path: Path, line: int, value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", value)
    if not m or not 0 <= float(m[1]) < 100:
        raise ListError(path, line, f"tolerance must be a percentage like 5%, got {value!r}")
    return float(m[1]) / 100


# Long on purpose: it checks a profile's fields in file order, each error naming its line.
def load_profile(name: str, root: Path = PACKAGE_LISTS) -> Profile:
    """Read a profile and every list and source it names; all errors name file and line."""
    if not _GROUP_NAME.fullmatch(name):
        raise ImageError(
            f"not a profile name: {name!r}",
            hint=f"known profiles: {', '.join(list_profiles(root))}",
        )
    path = root / "profiles" / f"{name}.profile"
    if not path.is_file():
        raise ImageError(
            f"no profile {name!r} ({_shown(path)} does not exist)",
            hint=f"known profiles: {', '.join(list_profiles(root)) or 'none'}",
        )
    fields = _parse_fields(
        path,
        path.read_text(encoding="utf-8"),
        (
            "description",
            "distros",
            "apt",
            "pip",
            "npm",
            "sources",
            "expected_installed",
            "tolerance",
        ),
    )
    _require(path, fields, "description", "distros", "apt", "expected_installed", "tolerance")

    line, distro_text = fields["distros"]
    distros = tuple(distro_text.split())
    for distro in distros:
        if distro not in DISTROS:
            raise ListError(
                path, line, f"unknown distro {distro!r}", f"known distros: {', '.join(DISTROS)}"
            )

    groups: list[Group] = []
    owner: dict[tuple[str, str], Entry] = {}
    for kind in KINDS:
        if kind not in fields:
            continue
        line, names = fields[kind]
        for group_name in names.split():
            group_path = root / kind / f"{group_name}.list"
            if not _GROUP_NAME.fullmatch(group_name) or not group_path.is_file():
                known = sorted(p.stem for p in (root / kind).glob("*.list"))
                raise ListError(
                    path,
                    line,
                    f"unknown {kind} group {group_name!r}",
                    f"known {kind} groups: {', '.join(known) or 'none'}",
                )
            if any(g.kind == kind and g.name == group_name for g in groups):
                raise ListError(path, line, f"{kind} group {group_name!r} named twice")
            group = parse_group(
                kind, group_name, group_path, group_path.read_text(encoding="utf-8")
            )
            if kind == "pip":
                group = _with_constraints(group, group_path.with_suffix(".constraints"))
            for entry in group.entries:
                first = owner.get((kind, entry.key))
                if first is not None:
                    raise ListError(
                        entry.path,
                        entry.line,
                        f"{entry.name!r} is also in {_shown(first.path)}:{first.line}; "
                        f"profile {name!r} picks both groups",
                        "keep each package in one group only",
                    )
                owner[(kind, entry.key)] = entry
            groups.append(group)

    sources: list[AptSource] = []
    if "sources" in fields:
        line, names = fields["sources"]
        for source_name in names.split():
            source_path = root / "sources" / f"{source_name}.source"
            if not _GROUP_NAME.fullmatch(source_name) or not source_path.is_file():
                known = sorted(p.stem for p in (root / "sources").glob("*.source"))
                raise ListError(
                    path,
                    line,
                    f"unknown source {source_name!r}",
                    f"known sources: {', '.join(known) or 'none'}",
                )
            sources.append(
                parse_source(source_name, source_path, source_path.read_text(encoding="utf-8"))
            )

    line, expected_text = fields["expected_installed"]
    if not expected_text.isdigit() or int(expected_text) <= 0:
        raise ListError(
            path, line, f"expected_installed must be a positive whole number, got {expected_text!r}"
        )
    tolerance = _parse_tolerance(path, *fields["tolerance"])
    return Profile(
        name=name,
        path=path,
        description=fields["description"][1],
        distros=distros,
        groups=tuple(groups),
        sources=tuple(sources),
        expected_installed=int(expected_text),
        tolerance=tolerance,
        checks=_load_checks(path.with_suffix(".checks")),
    )


def _load_checks(path: Path) -> tuple[Check, ...]:
    return parse_checks(path, path.read_text(encoding="utf-8")) if path.is_file() else ()


def parse_checks(path: Path, text: str) -> tuple[Check, ...]:
    """``name | regex | command`` lines; a bad regex or a repeated name names file and line."""
    checks: list[Check] = []
    for line, content in _content_lines(text):
        parts = [p.strip() for p in content.split("|", 2)]
        if len(parts) != 3 or not all(parts):
            raise ListError(path, line, f"expected 'name | regex | command', got {content!r}")
        name, expect, command = parts
        try:
            re.compile(expect)
        except re.error as exc:
            raise ListError(path, line, f"bad regular expression {expect!r}: {exc}") from None
        if any(c.name == name for c in checks):
            raise ListError(path, line, f"check {name!r} given twice")
        checks.append(Check(name, expect, command, path, line))
    return tuple(checks)


@dataclass(frozen=True)
class DistroMap:
    """``distros/<distro>.map``: what a profile becomes on a distribution other than jammy.

    Lines (``#`` comments; say why on each):
        apt NAME NEW            install NEW where the lists say NAME (``-``: leave it out)
        check NAME REGEX        the check NAME expects REGEX instead
        expected PROFILE N T    the dpkg count PROFILE is expected to reach, ± T (e.g. 3%)
    """

    distro: str
    path: Path
    apt: dict[str, str | None]
    checks: dict[str, str]
    expected: dict[str, tuple[int, float]]


# Long on purpose: three line kinds, each checked where it stands.
def parse_distro_map(distro: str, path: Path, text: str) -> DistroMap:
    apt: dict[str, str | None] = {}
    checks: dict[str, str] = {}
    expected: dict[str, tuple[int, float]] = {}
    for line, content in _content_lines(text):
        kind, _, rest = content.partition(" ")
        words = rest.split()
        if kind == "apt" and len(words) == 2:
            name, new = words
            for value in (name, new):
                if value != "-" and not _APT_NAME.fullmatch(value):
                    raise ListError(path, line, f"not a Debian package name: {value!r}")
            if name in apt:
                raise ListError(path, line, f"{name!r} mapped twice")
            apt[name] = None if new == "-" else new
        elif kind == "check" and len(words) >= 2:
            name, regex = words[0], rest.strip()[len(words[0]) :].strip()
            try:
                re.compile(regex)
            except re.error as exc:
                raise ListError(path, line, f"bad regular expression {regex!r}: {exc}") from None
            checks[name] = regex
        elif kind == "expected" and len(words) == 3:
            profile, count, tolerance = words
            if not count.isdigit() or int(count) <= 0:
                raise ListError(path, line, f"not a positive count: {count!r}")
            expected[profile] = (int(count), _parse_tolerance(path, line, tolerance))
        else:
            raise ListError(
                path, line, f"cannot read {content!r}",
                "lines are 'apt NAME NEW', 'check NAME REGEX' or 'expected PROFILE N T%'",
            )  # fmt: skip
    return DistroMap(distro, path, apt, checks, expected)


def load_distro_map(distro: str, root: Path = PACKAGE_LISTS) -> DistroMap | None:
    path = root / "distros" / f"{distro}.map"
    if not path.is_file():
        return None
    return parse_distro_map(distro, path, path.read_text(encoding="utf-8"))


def for_distro(profile: Profile, mapping: DistroMap) -> Profile:
    """The profile with the map's names, checks and expected count."""
    groups = []
    for group in profile.groups:
        if group.kind != "apt":
            groups.append(group)
            continue
        entries = []
        for entry in group.entries:
            if entry.name not in mapping.apt:
                entries.append(entry)
            elif (new := mapping.apt[entry.name]) is not None:
                entries.append(dataclasses.replace(entry, name=new, spec=new, key=new))
        groups.append(dataclasses.replace(group, entries=tuple(entries)))
    checks = tuple(
        dataclasses.replace(c, expect=mapping.checks[c.name]) if c.name in mapping.checks else c
        for c in profile.checks
    )
    count, tolerance = mapping.expected.get(
        profile.name, (profile.expected_installed, profile.tolerance)
    )
    return dataclasses.replace(
        profile, groups=tuple(groups), checks=checks, expected_installed=count,
        tolerance=tolerance,
    )  # fmt: skip


def with_sources(profile: Profile, overrides: Iterable[AptSource]) -> Profile:
    """The profile with some of its sources replaced (``build-image --source-file``).

    A source file for a source the profile does not use changes nothing (the
    mirror's line names its NodeSource stand-in for every profile); it is logged.
    """
    sources = {s.name: s for s in profile.sources}
    for source in overrides:
        if source.name not in sources:
            log.info("%s: profile %s uses no source %r; not used", source.path, profile.name,
                     source.name)  # fmt: skip
            continue
        sources[source.name] = source
    return dataclasses.replace(profile, sources=tuple(sources.values()))


def resolve_profile(
    name: str, root: Path = PACKAGE_LISTS, distro: str = "ubuntu",
    sources: Iterable[AptSource] = (),
) -> Profile:  # fmt: skip
    """The profile as a build on ``distro`` installs it: mapped names, given sources."""
    profile = load_profile(name, root)
    if distro != "ubuntu":
        mapping = load_distro_map(distro, root)
        if mapping is not None:
            profile = for_distro(profile, mapping)
    return with_sources(profile, sources)


def list_profiles(root: Path = PACKAGE_LISTS) -> list[str]:
    return sorted(p.stem for p in (root / "profiles").glob("*.profile"))


def format_summary(profile: Profile) -> str:
    """The human view of ``./inv packages``."""
    low, high = profile.expected_range
    lines = [
        f"profile {profile.name}: {profile.description}",
        f"  distros: {', '.join(profile.distros)}",
    ]
    for g in profile.groups:
        lines.append(f"  {g.kind:<3} {g.name:<14} {len(g.entries):>4}  ({_shown(g.path)})")
    for s in profile.sources:
        lines.append(f"  source {s.name}: {s.uri} {s.suite} (key {s.fingerprint})")
    counts = ", ".join(f"{kind} {len(profile._specs(kind))}" for kind in KINDS)
    lines.append(f"  explicit: {counts}")
    if profile.pip_constraints:
        lines.append(f"  pip dependencies pinned: {len(profile.pip_constraints)}")
    lines.append(
        f"  expected installed (dpkg): {profile.expected_installed} "
        f"± {profile.tolerance:.0%} -> {low}..{high}"
    )
    return "\n".join(lines)
