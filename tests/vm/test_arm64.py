"""arm64, the product's default, end to end under TCG (``./inv test --arm64``).

One demo run on the arm64 stand-in (AAVMF on ``-machine virt``): build-image
publishes a verified smoke image, snapshot saves it, a launch runs a command.
Then the escape suite runs INSIDE a sandbox VM launched from that snapshot: the
probe is cross-compiled for aarch64 here, the image's own filters (compiled on
this host for aarch64 by the build) answer it, and the same three runs as the
host suite (filtered, control without seccomp, marker errno) prove that the
filter, not the guest kernel, decided. An AArch32 probe proves the arm32 compat
ABI is killed. The guest reports everything as one JSON object; the assertions
are all here, host-side.
"""

from __future__ import annotations

import json
import shutil
import signal
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from image import run
from image.config import BuildConfig
from image.contract import vmstate
from image.runtime import snapshot
from image.sandbox import bwrap, seccomp
from tests.fixtures import escape_cases
from tests.hosttools import need
from tests.vm.conftest import demo_outputs, qemu_processes, run_demo, tier_config

pytestmark = pytest.mark.arm64

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
GUEST_RUNNER = "escape_guest_run.py"
AUDIT_ARCH_ARM = "arch=40000028"
BLOCKED = escape_cases.blocked("aarch64")
Cases = dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def arm64_config(tmp_path_factory: pytest.TempPathFactory) -> BuildConfig:
    # Timeouts: an arm64 TCG guest is ~2x slower than amd64 here (docs/arm64.md).
    tools = ("qemu-system-aarch64", "AAVMF", "qemu-aarch64-static", "arch-test", "binfmt aarch64")
    return tier_config(tmp_path_factory.mktemp("arm64-out"), "arm64", tools, 1800, 3600)


@pytest.fixture(scope="module")
def arm64_demo(arm64_config: BuildConfig) -> dict[str, Any]:
    return run_demo(arm64_config)


@pytest.fixture(scope="module")
def outputs(arm64_demo: dict[str, Any]) -> dict[str, Path]:
    return demo_outputs(arm64_demo)


# --- build-image, snapshot, launch ---------------------------------------------------


def test_build_image_published_a_verified_arm64_image(outputs: dict[str, Path]) -> None:
    out = outputs["image"].parent
    assert outputs["image"].name == "sandbox-image-jammy-arm64-smoke.qcow2"
    assert {"manifest.json", "sbom.json", "SHA256SUMS", "build-info.json"} <= {
        p.name for p in out.iterdir()
    }
    info = json.loads(outputs["build_info"].read_text())
    assert info["config"]["arch"] == "arm64"
    assert all(v["ok"] for v in info["verify"].values() if isinstance(v, dict) and "ok" in v)
    assert info["verify"]["sandbox_self_test"]["arch"] == "aarch64"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["arch"] == "arm64"
    archs = {p["arch"] for p in manifest["dpkg"]}
    assert archs <= {"arm64", "all"} and "arm64" in archs


def test_snapshot_is_of_the_virt_machine(outputs: dict[str, Path]) -> None:
    meta = snapshot.load_meta(outputs["snapshot"])
    assert meta.arch == "arm64"
    assert meta.machine[:2] == ["-machine", "virt"]
    assert meta.qemu_version == vmstate.qemu_version("arm64")
    assert meta.sizes["state"] < 256 << 20  # device state + firmware flash; RAM is the file


def test_the_demo_launch_ran_its_command(arm64_demo: dict[str, Any]) -> None:
    assert arm64_demo["sandbox_output"] == "hello from sandbox"  # bwrap's fixed host name


def test_a_launch_runs_a_sandboxed_command_on_aarch64(
    outputs: dict[str, Path], arm64_config: BuildConfig
) -> None:
    options = snapshot.LaunchOptions()
    with snapshot.launch(outputs["snapshot"], arm64_config, options) as sandbox:
        script = "uname -m; id -un; grep Seccomp_f /proc/self/status"
        # The first through the exec channel: the standby sandbox the snapshot saved.
        first = sandbox.spawn_sandboxed(sandbox.session, ["sh", "-c", script])
        first.close_stdin()
        claimed = first.wait(300)
        result = sandbox.sandboxed(["sh", "-c", script])
        # The snapshot was saved after start-up: a launch has no boot left to finish.
        system = sandbox.exec(["/usr/bin/systemctl", "is-system-running"])
        cloud_init = sandbox.exec(["/usr/bin/cloud-init", "status"])
    assert system.stdout.decode().strip() in ("running", "degraded")  # not "starting"
    assert cloud_init.stdout.decode().split() == ["status:", "done"]
    assert result.exit_code == 0, result.stderr.decode(errors="replace")
    assert result.stdout.decode().split() == ["aarch64", "agent", "Seccomp_filters:", "2"]
    assert (first.standby, claimed.code, claimed.stdout) == (True, 0, result.stdout)
    assert qemu_processes() == []


def test_two_launches_from_one_snapshot_draw_different_randomness(
    outputs: dict[str, Path], arm64_config: BuildConfig
) -> None:
    # -machine virt has no vmgenid device (QEMU 7.2): only the host randomness the
    # launch mixes in separates two resumed copies of one kernel RNG state. Both
    # reads on vCPU 0, so that per-CPU RNG state cannot differ by scheduling alone.
    read = ["/bin/sh", "-c", "taskset -c 0 head -c 32 /dev/urandom | od -An -tx1"]
    with ExitStack() as stack:
        a, b = (stack.enter_context(snapshot.launch(outputs["snapshot"], arm64_config,
                                                    snapshot.LaunchOptions()))
                for _ in range(2))  # fmt: skip
        first, second = a.exec(read), b.exec(read)
    assert first.exit_code == second.exit_code == 0
    assert first.stdout != second.stdout


# --- the escape suite inside the arm64 guest -----------------------------------------


def _share_for_the_guest(share: Path) -> None:
    """Probes cross-compiled here, marker filters, a no-filter profile, the runner."""
    need("aarch64-linux-gnu-gcc", "aarch64 libc.a", "arm-linux-gnueabihf-gcc")
    run.run(["aarch64-linux-gnu-gcc", "-static", "-O1", "-Wall", "-Werror",
             "-o", str(share / "escape_probe"), str(FIXTURES / "escape_probe.c")])  # fmt: skip
    run.run(["arm-linux-gnueabihf-gcc", "-static", "-nostdlib", "-ffreestanding", "-marm", "-O2",
             "-Wall", "-Werror", "-o", str(share / "arm32_probe"),
             str(FIXTURES / "arm32_probe.c")])  # fmt: skip
    (share / "marker").mkdir()
    for name in seccomp.shipped():
        (share / "marker" / f"{name}.bpf").write_bytes(escape_cases.marked_filter(name, "aarch64"))
    document = bwrap.load(bwrap.shipped()["agent"]).to_document()
    document["seccomp"] = {"bwrap": [], "launcher": []}
    (share / "profiles").mkdir()
    (share / "profiles" / "nofilter.json").write_text(json.dumps(document))
    shutil.copyfile(FIXTURES / GUEST_RUNNER, share / GUEST_RUNNER)
    for path in [share, *share.rglob("*")]:
        path.chmod(0o755 if path.is_dir() or path.name.endswith("_probe") else 0o644)


@pytest.fixture(scope="module")
def report(
    outputs: dict[str, Path], arm64_config: BuildConfig, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    share = tmp_path_factory.mktemp("escape-share")
    _share_for_the_guest(share)
    options = snapshot.LaunchOptions(share=share, share_readonly=True)
    with snapshot.launch(outputs["snapshot"], arm64_config, options) as sandbox:
        result = sandbox.exec(
            ["/usr/bin/python3", f"{snapshot.SHARE_MOUNT}/{GUEST_RUNNER}", snapshot.SHARE_MOUNT],
            timeout=1800,
        )
    assert result.exit_code == 0, result.stderr.decode(errors="replace")[-3000:]
    data: dict[str, Any] = json.loads(result.stdout.decode().strip().splitlines()[-1])
    # Kept next to the build's outputs: the figures in docs/arm64.md come from it.
    (arm64_config.output_dir / "escape-report.json").write_text(json.dumps(data, indent=2))
    return data


@pytest.fixture(scope="module")
def filtered(report: dict[str, Any]) -> Cases:
    return dict(report["probe"]["filtered"]["cases"])


@pytest.fixture(scope="module")
def control(report: dict[str, Any]) -> Cases:
    return dict(report["probe"]["control"]["cases"])


@pytest.fixture(scope="module")
def marked(report: dict[str, Any]) -> Cases:
    return dict(report["probe"]["marked"]["cases"])


def test_the_suite_ran_in_an_aarch64_guest(report: dict[str, Any]) -> None:
    assert report["uname"] == "aarch64"
    for run_name in ("filtered", "control", "marked"):
        probe = report["probe"][run_name]
        assert probe["returncode"] == 0, (run_name, probe["stderr"])


def test_every_probe_case_is_classified(filtered: Cases) -> None:
    assert set(filtered) == set(BLOCKED) | escape_cases.ALLOWED


@pytest.mark.parametrize("case", sorted(BLOCKED))
def test_blocked_call_gets_the_profiles_answer(case: str, filtered: Cases) -> None:
    assert escape_cases.outcome(filtered[case]) == BLOCKED[case]


@pytest.mark.parametrize("case", sorted(set(BLOCKED) - escape_cases.KERNEL_SAYS_EPERM_FIRST))
def test_without_the_filter_the_kernel_answers_differently(case: str, control: Cases) -> None:
    assert escape_cases.outcome(control[case]) != BLOCKED[case]


@pytest.mark.parametrize("case", escape_cases.marked(BLOCKED))
def test_the_filter_decides_every_errno(case: str, marked: Cases) -> None:
    assert escape_cases.outcome(marked[case]) == "EBADSLT"


@pytest.mark.parametrize("case", sorted(escape_cases.ALLOWED))
def test_allowed_call_gets_the_kernels_own_answer(
    case: str, filtered: Cases, control: Cases
) -> None:
    assert escape_cases.outcome(filtered[case]) == escape_cases.outcome(control[case])


def test_no_direct_network_only_loopback(filtered: Cases) -> None:
    assert escape_cases.outcome(filtered["tcp_connect"]) == "ENETUNREACH"


def test_arm32_code_runs_in_this_guest_without_the_filter(report: dict[str, Any]) -> None:
    control_run = report["arm32"]["control"]
    assert control_run["returncode"] == 0, control_run["stderr"]
    assert json.loads(control_run["stdout"])["arm32_getpid"] > 0


def test_the_arm32_compat_abi_is_killed_by_the_filter(report: dict[str, Any]) -> None:
    filtered_run = report["arm32"]["filtered"]
    # bwrap reports a child killed by signal N as 128+N; nothing was printed.
    assert filtered_run["returncode"] == 128 + signal.SIGSYS, filtered_run
    assert filtered_run["stdout"] == ""


def test_the_kernel_names_the_arm32_abi_and_its_first_call_in_the_kill(
    report: dict[str, Any],
) -> None:
    # seccomp logs every KILL_PROCESS (kernel.seccomp.actions_logged) as audit type 1326.
    (line,) = report["audit"]
    assert AUDIT_ARCH_ARM in line
    assert "syscall=20 " in line  # getpid in the arm32 table: the probe's first call
    assert "sig=31 " in line and "compat=1 " in line


def test_the_in_guest_self_test_passes(report: dict[str, Any]) -> None:
    assert report["self_test"]["ok"] is True, report["self_test"]
    assert report["self_test"]["arch"] == "aarch64"
