"""The accelerator probe's three verdicts; the broken case is real on machines like CI's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from image.vm import accel
from image.vm.accel import Verdict
from tests.hosttools import need


def test_absent_when_no_device() -> None:
    result = accel.probe("amd64", device=Path("/nonexistent/kvm"))
    assert result.verdict is Verdict.ABSENT
    assert "TCG" in result.summary()


def test_absent_for_a_foreign_arch_guest() -> None:
    foreign = "arm64" if accel.host_arch() == "amd64" else "amd64"
    result = accel.probe(foreign, device=Path("/dev/null"))
    assert result.verdict is Verdict.ABSENT


def test_probe_argv_uses_the_build_machine_and_firmware() -> None:
    argv = accel.probe_argv("amd64", "kvm", Path("/fw.fd"), Path("/s"), Path("/q"))
    assert argv[:5] == ["qemu-system-x86_64", "-machine", "q35", "-accel", "kvm"]
    assert "if=pflash,format=raw,readonly=on,file=/fw.fd" in argv
    arm = accel.probe_argv("arm64", "tcg", Path("/fw.fd"), Path("/s"), Path("/q"))
    assert arm[:5] == ["qemu-system-aarch64", "-machine", "virt", "-cpu", "max"]


def _qemu_processes() -> set[str]:
    out = subprocess.run(
        ["pgrep", "-f", "accel-probe-"], capture_output=True, text=True, check=False
    )
    return set(out.stdout.split())


@pytest.mark.allow_subprocess
def test_usable_verdict_for_a_working_accelerator() -> None:
    """TCG always works: the same probe guest must be judged usable under it."""
    need("qemu-system-x86_64", "OVMF")
    # A generous timeout: the verdict is the point here, and a loaded host can make
    # OVMF under TCG slower than the production probe's limit (which only KVM meets).
    result = accel.probe("amd64", accel="tcg", timeout=60)
    assert result.verdict is Verdict.USABLE, result
    assert not _qemu_processes()


@pytest.mark.allow_subprocess
def test_real_kvm_verdict_and_no_process_left() -> None:
    """On this machine /dev/kvm exists and KVM guests die: 'present but unusable'."""
    need("qemu-system-x86_64", "OVMF")
    if not Path("/dev/kvm").exists() or accel.host_arch() != "amd64":
        pytest.fail("this test expects an x86_64 host with /dev/kvm (as CI has)")
    result = accel.probe("amd64")
    assert result.seconds < accel.PROBE_TIMEOUT + 2
    assert result.verdict in (Verdict.BROKEN, Verdict.USABLE)
    if result.verdict is Verdict.BROKEN:
        assert "present but unusable — using TCG" in result.summary()
    assert not _qemu_processes()


@pytest.mark.allow_subprocess
def test_a_hanging_guest_is_broken_within_the_timeout() -> None:
    """A guest that never prints (firmware that is not there to run) must time out cleanly."""
    need("qemu-system-x86_64", "OVMF")
    result = accel.probe("amd64", accel="tcg", timeout=0.5)
    assert result.verdict is Verdict.BROKEN
    assert "hangs" in result.detail
    assert not _qemu_processes()


def test_accel_argv_honours_an_explicit_choice(tmp_path: Path) -> None:
    assert accel.accel_argv("tcg", "amd64", tmp_path)[0] == ["-accel", "tcg,thread=multi"]
    assert accel.accel_argv("kvm", "amd64", tmp_path)[0] == ["-accel", "kvm"]


def test_timeouts_follow_the_accelerator_unless_given() -> None:
    tcg, kvm = ["-accel", "tcg,thread=multi"], ["-accel", "kvm"]
    assert accel.timeouts(kvm, None, None) == accel.DEFAULT_TIMEOUTS["hardware"]
    assert accel.timeouts(["-accel", "hvf"], None, None) == accel.DEFAULT_TIMEOUTS["hardware"]
    assert accel.timeouts(tcg, None, None) == accel.DEFAULT_TIMEOUTS["tcg"]
    # TCG emulates every instruction: its defaults are longer, both of them.
    assert all(t > h for t, h in zip(accel.DEFAULT_TIMEOUTS["tcg"],
                                     accel.DEFAULT_TIMEOUTS["hardware"], strict=True))  # fmt: skip
    # Given values are used as given, whatever the accelerator.
    assert accel.timeouts(tcg, 60.0, None) == (60.0, accel.DEFAULT_TIMEOUTS["tcg"][1])
    assert accel.timeouts(kvm, None, 7.0) == (accel.DEFAULT_TIMEOUTS["hardware"][0], 7.0)
