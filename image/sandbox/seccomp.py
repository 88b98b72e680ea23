"""Seccomp profiles (OCI runtime-spec JSON, Docker's includes/excludes) -> BPF with libseccomp.

One host compiles for every guest architecture: libseccomp builds a filter for any
architecture it knows, so the filter for a target holds only that target's ABI and
the bad-architecture action (kill the process) catches every other ABI: i386 and
x32 on x86_64, arm32 on aarch64.

Output per target: ``<out>/<arch>/<name>.bpf`` (what the kernel loads),
``<name>.pfc`` (libseccomp's readable pseudo code, reviewed and diffed) and
``<name>.bpf.sha256``. The bytes depend only on the profile and the libseccomp
version, so two compilations compare equal.
"""

from __future__ import annotations

import errno
import hashlib
import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyseccomp

from image.errors import ImageError
from image.files import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[2]
PROFILE_DIR = ROOT / "seccomp-profiles"

# Target architectures, in libseccomp's names; the build config's names map onto them.
ARCHES = ("x86_64", "aarch64")
ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "x86_64": "x86_64", "aarch64": "aarch64"}

_SCMP_ARCH = {
    "SCMP_ARCH_X86_64": pyseccomp.Arch.X86_64,
    "SCMP_ARCH_X86": pyseccomp.Arch.X86,
    "SCMP_ARCH_X32": pyseccomp.Arch.X32,
    "SCMP_ARCH_AARCH64": pyseccomp.Arch.AARCH64,
    "SCMP_ARCH_ARM": pyseccomp.Arch.ARM,
}
# Which SCMP arch is the target itself, and which are its secondary ABIs: those are
# only added when a profile lists them (Docker's profile does; ours does not).
_TARGET_SCMP = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}
_SUB_ABIS = {"x86_64": ("SCMP_ARCH_X86", "SCMP_ARCH_X32"), "aarch64": ("SCMP_ARCH_ARM",)}
# Docker's includes/excludes name architectures the Go way.
_DOCKER_ARCH = {
    "amd64": "x86_64",
    "x86_64": "x86_64",
    "arm64": "aarch64",
    "aarch64": "aarch64",
    "x86": "x86",
    "x32": "x32",
    "arm": "arm",
}

_OPS = {
    "SCMP_CMP_NE": pyseccomp.NE,
    "SCMP_CMP_LT": pyseccomp.LT,
    "SCMP_CMP_LE": pyseccomp.LE,
    "SCMP_CMP_EQ": pyseccomp.EQ,
    "SCMP_CMP_GE": pyseccomp.GE,
    "SCMP_CMP_GT": pyseccomp.GT,
    "SCMP_CMP_MASKED_EQ": pyseccomp.MASKED_EQ,
}
_U64 = (1 << 64) - 1
# libseccomp's resolver answers -1 for names it has never heard of, and a negative
# "pseudo syscall" number (<= -10000) for real syscalls absent on that architecture.
_UNKNOWN = -1
# SCMP_FLTATR_CTL_OPTIMIZE (libseccomp >= 2.5): 2 = a binary tree over syscall numbers,
# so an allowed call walks ~log2(n) compares instead of a chain of ~60.
_OPTIMIZE_BINARY_TREE = 2


class ProfileError(ImageError):
    """A seccomp profile that cannot be compiled: names the profile and the entry."""

    def __init__(self, profile: str, where: str, problem: str) -> None:
        super().__init__(
            f"seccomp profile {profile!r}, {where}: {problem}",
            hint=f"fix {where} in the profile (OCI seccomp format: names, action, errnoRet, args)",
        )


@dataclass(frozen=True)
class ArgCompare:
    index: int
    op: str
    value: int
    value_two: int


@dataclass(frozen=True)
class Rule:
    """One syscalls[] entry, resolved: the action as libseccomp's number."""

    where: str
    names: tuple[str, ...]
    action: int
    args: tuple[ArgCompare, ...]
    include_arches: tuple[str, ...] | None
    exclude_arches: tuple[str, ...]


@dataclass(frozen=True)
class Profile:
    name: str
    default_action: int
    architectures: tuple[str, ...]
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Compiled:
    profile: str
    arch: str
    bpf: bytes
    pfc: str
    skipped: tuple[str, ...]  # syscall names the profile lists that this arch does not have

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.bpf).hexdigest()


def target_arch(name: str) -> str:
    try:
        return ARCH_ALIASES[name]
    except KeyError:
        raise ImageError(
            f"unknown architecture {name!r}", hint=f"use one of {', '.join(sorted(ARCH_ALIASES))}"
        ) from None


def _action(profile: str, where: str, name: Any, errno_ret: Any) -> int:
    if errno_ret is not None and (not isinstance(errno_ret, int) or not 0 < errno_ret < 4096):
        raise ProfileError(profile, where, f"errnoRet {errno_ret!r} is not an errno number")
    simple = {
        "SCMP_ACT_ALLOW": pyseccomp.ALLOW,
        "SCMP_ACT_KILL": pyseccomp.KILL_THREAD,
        "SCMP_ACT_KILL_THREAD": pyseccomp.KILL_THREAD,
        "SCMP_ACT_KILL_PROCESS": pyseccomp.KILL_PROCESS,
        "SCMP_ACT_TRAP": pyseccomp.TRAP,
        "SCMP_ACT_LOG": pyseccomp.LOG,
    }
    if name in simple:
        return int(simple[name])
    if name == "SCMP_ACT_ERRNO":
        return int(pyseccomp.ERRNO(errno.EPERM if errno_ret is None else errno_ret))
    if name == "SCMP_ACT_TRACE":
        return int(pyseccomp.TRACE(errno.EPERM if errno_ret is None else errno_ret))
    raise ProfileError(
        profile,
        where,
        f"unsupported action {name!r}; use one of "
        f"{', '.join([*simple, 'SCMP_ACT_ERRNO', 'SCMP_ACT_TRACE'])}",
    )


def _u64(profile: str, where: str, key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U64:
        raise ProfileError(profile, where, f"{key} {value!r} is not an unsigned 64-bit integer")
    return value


def _arg(profile: str, where: str, raw: Any) -> ArgCompare:
    if not isinstance(raw, dict):
        raise ProfileError(profile, where, "an argument compare must be an object")
    unknown = set(raw) - {"index", "value", "valueTwo", "op"}
    if unknown:
        raise ProfileError(profile, where, f"unknown keys {sorted(unknown)}")
    index = raw.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= 5:
        raise ProfileError(profile, where, f"index {index!r} is not 0..5")
    op = raw.get("op")
    if op not in _OPS:
        raise ProfileError(profile, where, f"op {op!r} is not one of {', '.join(_OPS)}")
    return ArgCompare(
        index,
        op,
        _u64(profile, where, "value", raw.get("value", 0)),
        _u64(profile, where, "valueTwo", raw.get("valueTwo", 0)),
    )


def _arch_filter(profile: str, where: str, raw: Any, key: str) -> tuple[str, ...] | None:
    """Docker's includes/excludes: only 'arches' and 'caps' change what we compile.

    The sandbox holds no capabilities, so an entry that needs one is left out and an
    entry excluded for a capability stays in. minKernel is accepted and ignored:
    the guest kernels (jammy 5.15, Debian 12 6.1) are newer than any Docker uses.
    """
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"arches", "caps", "minKernel"}:
        raise ProfileError(profile, where, f"{key} must be an object of arches, caps, minKernel")
    arches = raw.get("arches")
    if arches is None:
        return None
    if not isinstance(arches, list) or any(a not in _DOCKER_ARCH for a in arches):
        raise ProfileError(profile, where, f"{key}.arches {arches!r}: unknown architecture")
    return tuple(_DOCKER_ARCH[a] for a in arches)


def parse(name: str, document: Mapping[str, Any]) -> Profile:
    """Validate a profile document (pure; names resolve at compile time)."""
    known = {
        "comment",
        "defaultAction",
        "defaultErrnoRet",
        "architectures",
        "archMap",
        "syscalls",
        "flags",
        "listenerPath",
        "listenerMetadata",
    }
    unknown = set(document) - known
    if unknown:
        raise ProfileError(name, "top level", f"unknown keys {sorted(unknown)}")
    default = _action(
        name, "defaultAction", document.get("defaultAction"), document.get("defaultErrnoRet")
    )
    arches = list(document.get("architectures") or [])
    for entry in document.get("archMap") or []:  # Docker's form: arch + its sub-ABIs
        if not isinstance(entry, dict) or not isinstance(entry.get("subArchitectures", []), list):
            raise ProfileError(name, "archMap", "entries are {architecture, subArchitectures}")
        arches += [entry.get("architecture"), *entry.get("subArchitectures", [])]
    for arch in arches:
        if arch not in _SCMP_ARCH:
            raise ProfileError(name, "architectures", f"unknown architecture {arch!r}")
    rules = []
    for i, entry in enumerate(document.get("syscalls") or []):
        where = f"syscalls[{i}]"
        if not isinstance(entry, dict):
            raise ProfileError(name, where, "must be an object")
        unknown = set(entry) - {
            "names",
            "name",
            "action",
            "errnoRet",
            "args",
            "comment",
            "includes",
            "excludes",
        }
        if unknown:
            raise ProfileError(name, where, f"unknown keys {sorted(unknown)}")
        names = entry.get("names") or ([entry["name"]] if "name" in entry else [])
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ProfileError(name, where, "names must be a non-empty list of syscall names")
        where = f"{where} ({names[0]}{', ...' if len(names) > 1 else ''})"
        action = _action(name, where, entry.get("action"), entry.get("errnoRet"))
        if action == default:
            raise ProfileError(
                name,
                where,
                "action equals defaultAction; libseccomp rejects such rules (drop the entry)",
            )
        args = tuple(_arg(name, where, a) for a in entry.get("args") or [])
        include = _arch_filter(name, where, entry.get("includes"), "includes")
        if (entry.get("includes") or {}).get("caps"):
            continue
        exclude = _arch_filter(name, where, entry.get("excludes"), "excludes") or ()
        rules.append(Rule(where, tuple(names), action, args, include, exclude))
    return Profile(name, default, tuple(dict.fromkeys(arches)), tuple(rules))


def load(path: Path) -> Profile:
    name = path.name.removesuffix(".json")
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ImageError(
            f"cannot read seccomp profile {path}: {exc.strerror}",
            hint="pass a path to an existing profile",
        ) from None
    except json.JSONDecodeError as exc:
        raise ProfileError(name, f"line {exc.lineno}", f"invalid JSON: {exc.msg}") from None
    if not isinstance(document, dict):
        raise ProfileError(name, "top level", "must be a JSON object")
    return parse(name, document)


def shipped() -> dict[str, Path]:
    """The profiles this project ships, by name."""
    return {p.name.removesuffix(".json"): p for p in sorted(PROFILE_DIR.glob("*.json"))}


def _rule_groups(rule: Rule) -> list[tuple[ArgCompare, ...]]:
    """runc's rule: compares on distinct arguments are AND-ed into one libseccomp rule;
    if an argument index repeats, each compare becomes its own rule (OR-ed)."""
    indexes = [a.index for a in rule.args]
    if len(set(indexes)) == len(indexes):
        return [rule.args]
    return [(a,) for a in rule.args]


def _resolve(arch_token: int, syscall: str) -> int:
    return int(pyseccomp.resolve_syscall(arch_token, syscall))


def compile_profile(profile: Profile, arch: str) -> Compiled:
    """Build the filter for one target architecture and export BPF + PFC."""
    arch = target_arch(arch)
    target = _TARGET_SCMP[arch]
    if target not in profile.architectures:
        raise ProfileError(
            profile.name,
            "architectures",
            f"does not list {target}; it cannot be compiled for {arch}",
        )
    token = _SCMP_ARCH[target]
    flt = pyseccomp.SyscallFilter(profile.default_action)
    # A new filter holds the host's own arch; swap it for the target when they differ.
    if token != pyseccomp.system_arch():
        flt.add_arch(token)
        flt.remove_arch(pyseccomp.Arch.NATIVE)
    for sub in _SUB_ABIS[arch]:
        if sub in profile.architectures:
            flt.add_arch(_SCMP_ARCH[sub])
    flt.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
    flt.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, _OPTIMIZE_BINARY_TREE)
    every_abi = [_SCMP_ARCH[a] for a in _SCMP_ARCH]
    skipped: list[str] = []
    for rule in profile.rules:
        if rule.include_arches is not None and arch not in rule.include_arches:
            continue
        if arch in rule.exclude_arches:
            continue
        for name in rule.names:
            if all(_resolve(t, name) == _UNKNOWN for t in every_abi):
                raise ProfileError(
                    profile.name,
                    rule.where,
                    f"unknown syscall {name!r} (libseccomp does not know it)",
                )
            if _resolve(token, name) < 0:
                skipped.append(name)  # e.g. iopl on aarch64: nothing to filter
                continue
            for group in _rule_groups(rule):
                compares = [pyseccomp.Arg(a.index, _OPS[a.op], a.value, a.value_two) for a in group]
                try:
                    flt.add_rule(rule.action, name, *compares)
                except OSError as exc:
                    raise ProfileError(
                        profile.name,
                        rule.where,
                        f"libseccomp rejected the rule for {name!r}: {exc.strerror}",
                    ) from None
    return Compiled(
        profile.name,
        arch,
        _export(flt, "bpf"),
        _export(flt, "pfc").decode(),
        tuple(dict.fromkeys(skipped)),
    )


def _export(flt: pyseccomp.SyscallFilter, kind: str) -> bytes:
    # libseccomp writes to a file descriptor; a temp file holds any size (a pipe would
    # block once the program outgrows its buffer).
    with tempfile.TemporaryFile() as tmp:
        if kind == "bpf":
            flt.export_bpf(tmp)
        else:
            flt.export_pfc(tmp)
        tmp.seek(0)
        data: bytes = tmp.read()
    return data


def compile_named(name: str, arch: str) -> Compiled:
    profiles = shipped()
    if name not in profiles:
        raise ImageError(
            f"no seccomp profile named {name!r}", hint=f"shipped profiles: {', '.join(profiles)}"
        )
    return compile_profile(load(profiles[name]), arch)


def outputs(compiled: Compiled) -> dict[str, bytes]:
    """File name -> bytes for one compiled profile (pure: the caller decides where)."""
    return {
        f"{compiled.profile}.bpf": compiled.bpf,
        f"{compiled.profile}.pfc": compiled.pfc.encode(),
        f"{compiled.profile}.bpf.sha256": f"{compiled.sha256}  {compiled.profile}.bpf\n".encode(),
    }


def write_all(
    out: Path, names: Sequence[str] | None = None, arches: Sequence[str] = ARCHES
) -> list[Compiled]:
    """Compile every shipped profile (or ``names``) for every arch into ``out/<arch>/``."""
    wanted = list(names) if names else list(shipped())
    results = [compile_named(n, a) for a in arches for n in wanted]  # all or nothing
    for compiled in results:
        for file_name, data in outputs(compiled).items():
            atomic_write_bytes(out / compiled.arch / file_name, data)
    return results
