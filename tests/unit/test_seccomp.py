"""Seccomp profiles compile with the real libseccomp (in-process, no subprocess)."""

from __future__ import annotations

import errno
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from image import seccomp
from image.errors import ImageError
from image.seccomp import ProfileError

ROOT = Path(__file__).resolve().parents[2]
PROBE_SOURCE = ROOT / "tests" / "fixtures" / "escape_probe.c"
BENCH_PROFILE = ROOT / "bench" / "profiles" / "docker-like.json"

X86_64_TOKEN = "3221225534"  # AUDIT_ARCH_X86_64, as libseccomp's PFC prints it
AARCH64_TOKEN = "3221225655"  # AUDIT_ARCH_AARCH64


def _agent() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(seccomp.shipped()["agent"].read_text())
    return document


def _compile(document: dict[str, Any], arch: str = "x86_64", name: str = "t") -> seccomp.Compiled:
    return seccomp.compile_profile(seccomp.parse(name, document), arch)


@pytest.mark.parametrize("arch", seccomp.ARCHES)
@pytest.mark.parametrize("name", ["agent", "unix-block"])
def test_shipped_profiles_compile_to_identical_bytes_twice(name: str, arch: str) -> None:
    first = seccomp.compile_named(name, arch)
    second = seccomp.compile_named(name, arch)
    assert first.bpf == second.bpf
    assert first.pfc == second.pfc
    assert len(first.bpf) % 8 == 0 and 0 < len(first.bpf) // 8 < 4096  # kernel's BPF_MAXINSNS


def test_shipped_profiles_are_the_two_the_sandbox_loads() -> None:
    assert sorted(seccomp.shipped()) == ["agent", "unix-block"]


def test_x86_64_filter_holds_only_the_native_abi_and_kills_the_rest() -> None:
    pfc = seccomp.compile_named("agent", "x86_64").pfc
    assert re.findall(r"# filter for arch (\S+)", pfc) == ["x86_64"]
    assert f"if ($arch == {X86_64_TOKEN})" in pfc
    # Everything that is not x86_64 (i386 via int 0x80) meets the bad-arch action.
    assert pfc.rstrip().splitlines()[-4:-3] == ["action KILL_PROCESS;"]
    assert "# invalid architecture action" in pfc


def test_aarch64_filter_is_aarch64_only_with_its_own_numbers() -> None:
    compiled = seccomp.compile_named("agent", "aarch64")
    assert re.findall(r"# filter for arch (\S+)", compiled.pfc) == ["aarch64"]
    assert f"if ($arch == {AARCH64_TOKEN})" in compiled.pfc
    # clone is 220 and ioctl 29 on aarch64 (56 and 16 on x86_64): numbers are per arch.
    assert '# filter for syscall "clone" (220)' in compiled.pfc
    assert '# filter for syscall "ioctl" (29)' in compiled.pfc
    # x86-only calls are reported as skipped, not compiled as pseudo numbers.
    assert {"iopl", "ioperm"} <= set(compiled.skipped)
    assert '"iopl"' not in compiled.pfc


@pytest.mark.parametrize("arch", seccomp.ARCHES)
def test_ioctl_and_clone_compare_only_the_low_32_bits(arch: str) -> None:
    pfc = seccomp.compile_named("agent", arch).pfc
    assert "if ($a1.hi32 & 0x00000000 == 0)" in pfc
    assert "if ($a1.lo32 & 0xffffffff == 21522)" in pfc  # TIOCSTI
    assert "if ($a1.lo32 & 0xffffffff == 21532)" in pfc  # TIOCLINUX
    assert "if ($a0.lo32 & 0x10000000 == 268435456)" in pfc  # clone CLONE_NEWUSER


@pytest.mark.parametrize("arch", seccomp.ARCHES)
def test_clone3_gets_enosys_so_libc_falls_back_to_clone(arch: str) -> None:
    pfc = seccomp.compile_named("agent", arch).pfc
    block = pfc[pfc.index('"clone3"') :]
    assert block.splitlines()[2].strip() == f"action ERRNO({errno.ENOSYS});"


def test_unix_block_denies_af_unix_only() -> None:
    pfc = seccomp.compile_named("unix-block", "x86_64").pfc
    assert '# filter for syscall "socket" (41)' in pfc
    assert "if ($a0.lo32 & 0xffffffff == 1)" in pfc


def _socketpair_denied(type_: int) -> bool:
    """Evaluate unix-block's socketpair rules (AF_UNIX; OR-ed masks on the type)."""
    document = json.loads(seccomp.shipped()["unix-block"].read_text())
    rules = [e for e in document["syscalls"] if e["names"] == ["socketpair"]]
    for rule in rules:
        domain, kind = rule["args"]
        assert (domain["index"], domain["value"], domain["valueTwo"]) == (0, 0xFFFFFFFF, 1)
        if type_ & kind["value"] == kind["valueTwo"]:
            return True
    return False


@settings(max_examples=2000, deadline=None)
@given(st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_unix_block_allows_socketpair_for_stream_only_whatever_the_flags(type_: int) -> None:
    assert _socketpair_denied(type_) == (type_ & 0xF != 1)  # SOCK_TYPE_MASK, SOCK_STREAM


def _personality_denied(args: list[dict[str, Any]], value: int) -> bool:
    """Evaluate the profile's OR-ed masked compares the way the filter does."""
    return any(value & a["value"] == a["valueTwo"] for a in args)


PERSONALITY_ALLOWED = {0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF}


def _personality_args() -> list[dict[str, Any]]:
    (entry,) = [e for e in _agent()["syscalls"] if e["names"] == ["personality"]]
    args: list[dict[str, Any]] = entry["args"]
    assert {a["op"] for a in args} == {"SCMP_CMP_MASKED_EQ"}
    assert all(a["value"] <= 0xFFFFFFFF for a in args)  # the high half is never compared
    return args


def test_personality_allows_exactly_the_harmless_values() -> None:
    args = _personality_args()
    for value in PERSONALITY_ALLOWED:
        assert not _personality_denied(args, value), hex(value)
    for bit in range(32):
        assert _personality_denied(args, 1 << bit) == (1 << bit not in PERSONALITY_ALLOWED)
    assert _personality_denied(args, 0x0040000)  # ADDR_NO_RANDOMIZE
    assert _personality_denied(args, 0x0400000)  # READ_IMPLIES_EXEC
    assert _personality_denied(args, 0xFFFFFFFE)


@settings(max_examples=2000, deadline=None)
@given(st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_personality_denies_every_other_32_bit_value(value: int) -> None:
    assert _personality_denied(_personality_args(), value) == (value not in PERSONALITY_ALLOWED)


def test_every_call_the_agent_profile_denies_has_an_escape_probe() -> None:
    cases = re.findall(r"\bP\((\w+)\)", PROBE_SOURCE.read_text())
    names = {n for e in _agent()["syscalls"] for n in e["names"]}
    missing = {n for n in names if not any(c == n or c.startswith(f"{n}_") for c in cases)}
    assert missing == set()


def test_docker_like_benchmark_profile_compiles_for_both_arches() -> None:
    profile = seccomp.load(BENCH_PROFILE)
    for arch in seccomp.ARCHES:
        compiled = seccomp.compile_profile(profile, arch)
        assert "  # default action\n  action ERRNO(1);\n" in compiled.pfc
        assert '"getpid"' in compiled.pfc and '"ptrace"' not in compiled.pfc


# --- what the compiler does with profile constructs ---------------------------------


def _doc(*syscalls: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
        "syscalls": list(syscalls),
        **top,
    }


def _errno_rule(names: list[str], **more: Any) -> dict[str, Any]:
    return {"names": names, "action": "SCMP_ACT_ERRNO", **more}


def test_compares_on_one_index_are_or_ed_and_on_distinct_indexes_and_ed() -> None:
    same = _compile(
        _doc(
            _errno_rule(
                ["socket"],
                args=[
                    {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"},
                    {"index": 0, "value": 10, "op": "SCMP_CMP_EQ"},
                ],
            )
        )
    ).pfc
    assert "if ($a0.lo32 == 2)" in same and "if ($a0.lo32 == 10)" in same
    distinct = _compile(
        _doc(
            _errno_rule(
                ["socket"],
                args=[
                    {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"},
                    {"index": 1, "value": 3, "op": "SCMP_CMP_EQ"},
                ],
            )
        )
    ).pfc
    lines = [line.strip() for line in distinct.splitlines()]
    assert lines.index("if ($a1.lo32 == 3)") > lines.index("if ($a0.lo32 == 2)")  # nested


def test_errno_defaults_to_eperm_and_errnoret_is_honoured() -> None:
    pfc = _compile(_doc(_errno_rule(["ptrace"]), _errno_rule(["bpf"], errnoRet=38))).pfc
    assert "action ERRNO(1);" in pfc and "action ERRNO(38);" in pfc


def test_includes_and_excludes_arches_select_per_target() -> None:
    document = _doc(
        _errno_rule(["ptrace"], includes={"arches": ["amd64"]}),
        _errno_rule(["bpf"], excludes={"arches": ["amd64"]}),
        _errno_rule(["acct"], includes={"caps": ["CAP_SYS_PACCT"]}),
    )
    x86, arm = _compile(document, "x86_64").pfc, _compile(document, "aarch64").pfc
    assert '"ptrace"' in x86 and '"ptrace"' not in arm
    assert '"bpf"' not in x86 and '"bpf"' in arm
    assert '"acct"' not in x86 + arm  # the sandbox holds no capabilities


def test_listed_secondary_abis_are_compiled_in() -> None:
    pfc = _compile(
        _doc(
            _errno_rule(["ptrace"]),
            architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        )
    ).pfc
    assert re.findall(r"# filter for arch (\S+)", pfc) == ["x86_64", "x86", "x32"]


@pytest.mark.parametrize(
    ("document", "where", "problem"),
    [
        (
            _doc(_errno_rule(["ptrace"]), _errno_rule(["no_such_call"])),
            "syscalls[1] (no_such_call)",
            "unknown syscall 'no_such_call'",
        ),
        (
            _doc(_errno_rule(["ioctl"], args=[{"index": 1, "value": 1, "op": "SCMP_CMP_MAYBE"}])),
            "syscalls[0] (ioctl)",
            "op 'SCMP_CMP_MAYBE'",
        ),
        (
            _doc(_errno_rule(["ioctl"], args=[{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}])),
            "syscalls[0] (ioctl)",
            "index 6 is not 0..5",
        ),
        (
            _doc(_errno_rule(["ioctl"], args=[{"index": 1, "value": -1, "op": "SCMP_CMP_EQ"}])),
            "syscalls[0] (ioctl)",
            "value -1 is not an unsigned 64-bit",
        ),
        (
            _doc(
                _errno_rule(
                    ["ioctl"], args=[{"index": 1, "value": 1, "op": "SCMP_CMP_EQ", "valu3": 1}]
                )
            ),
            "syscalls[0] (ioctl)",
            "unknown keys ['valu3']",
        ),
        (
            _doc({"names": ["ptrace"], "action": "SCMP_ACT_ALLOW"}),
            "syscalls[0] (ptrace)",
            "action equals defaultAction",
        ),
        (
            _doc({"names": ["ptrace"], "action": "SCMP_ACT_NOTIFY"}),
            "syscalls[0] (ptrace)",
            "unsupported action 'SCMP_ACT_NOTIFY'",
        ),
        (
            _doc(_errno_rule(["ptrace"], errnoRet=0)),
            "syscalls[0] (ptrace)",
            "errnoRet 0 is not an errno number",
        ),
        (_doc(_errno_rule([])), "syscalls[0]", "names must be a non-empty list"),
        (_doc(architectures=["SCMP_ARCH_VAX"]), "architectures", "unknown architecture"),
        (
            _doc(architectures=["SCMP_ARCH_AARCH64"]),
            "architectures",
            "does not list SCMP_ARCH_X86_64",
        ),
        (
            {**_doc(), "defaultActon": "SCMP_ACT_ALLOW"},
            "top level",
            "unknown keys ['defaultActon']",
        ),
    ],
)
def test_bad_profiles_are_errors_naming_profile_and_entry(
    document: dict[str, Any], where: str, problem: str
) -> None:
    with pytest.raises(ProfileError) as caught:
        _compile(document, "x86_64", name="broken")
    assert caught.value.message.startswith(f"seccomp profile 'broken', {where}: ")
    assert problem in caught.value.message
    assert caught.value.hint


def test_unknown_target_arch_is_an_error() -> None:
    with pytest.raises(ImageError, match="unknown architecture 'riscv64'"):
        seccomp.compile_named("agent", "riscv64")


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text('{\n  "defaultAction": "SCMP_ACT_ALLOW",\n  oops\n}\n')
    with pytest.raises(ProfileError, match=r"'broken', line 3: invalid JSON"):
        seccomp.load(bad)


def test_write_all_lays_out_arch_dirs_with_checksums(tmp_path: Path) -> None:
    results = seccomp.write_all(tmp_path / "out")
    assert sorted(
        str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*")
    ) == sorted(
        [a for a in seccomp.ARCHES]
        + [
            f"{a}/{n}{ext}"
            for a in seccomp.ARCHES
            for n in ("agent", "unix-block")
            for ext in (".bpf", ".pfc", ".bpf.sha256")
        ]
    )
    for r in results:
        bpf = (tmp_path / "out" / r.arch / f"{r.profile}.bpf").read_bytes()
        sums = (tmp_path / "out" / r.arch / f"{r.profile}.bpf.sha256").read_text()
        assert sums == f"{hashlib.sha256(bpf).hexdigest()}  {r.profile}.bpf\n"


def test_write_all_writes_nothing_when_a_profile_fails(tmp_path: Path) -> None:
    with pytest.raises(ImageError):
        seccomp.write_all(tmp_path / "out", ["agent", "no-such-profile"])
    assert not (tmp_path / "out").exists()
