"""build-image on the amd64 stand-in: outputs, verification, and failures that leave nothing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from image import config
from image.build import pipeline
from image.build.packages import PACKAGE_LISTS
from image.errors import ImageError
from image.release import provenance
from image.source import mirror, standin
from image.source.checksums import parse_sha256sums
from tests.vm.conftest import attach_logs, qemu_processes

ROOT = Path(__file__).resolve().parents[2]
# cloud-init on the Debian stand-in warns about these on every boot; they say nothing about us.
BENIGN_WARNINGS = ("Used fallback datasource",)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_outputs_are_complete_and_checksummed(built: dict[str, Path]) -> None:
    out = built["image"].parent
    names = {p.name for p in out.iterdir()}
    assert {"sandbox-image-jammy-amd64-smoke.qcow2", "manifest.json", "sbom.json",
            "SHA256SUMS", "build-info.json", "logs"} <= names  # fmt: skip
    assert not [n for n in names if n.startswith(".staging")]
    for line in (out / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(" *")
        assert _sha256(out / name) == digest, name


def test_image_is_a_standalone_compressed_qcow2(built: dict[str, Path]) -> None:
    info = json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", str(built["image"])],
        capture_output=True, check=True, text=True).stdout)  # fmt: skip
    assert info["format"] == "qcow2"
    assert "backing-filename" not in info  # flattened: no dependency on the cache
    assert info["virtual-size"] == 2 << 30 or info["virtual-size"] >= 1 << 30


def test_build_info_records_inputs_verification_and_timings(built: dict[str, Path]) -> None:
    info = json.loads(built["build_info"].read_text())
    assert info["base"]["serial"] == mirror.DEFAULT_SERIAL  # 'latest' resolved and recorded
    assert info["base"]["signer"]  # the signature was checked
    assert len(info["base"]["sha256"]) == 64
    assert set(info["timings"]) >= {"fetch", "render", "boot", "provision", "verify",
                                    "manifest", "generalize", "shutdown", "compact"}  # fmt: skip
    verify = info["verify"]
    assert all(v["ok"] for k, v in verify.items() if isinstance(v, dict) and "ok" in v)
    assert verify["python3"]["output"].startswith("Python 3.")
    self_test = verify["sandbox_self_test"]
    assert self_test["ok"] is True
    assert self_test["arch"] in ("x86_64", "amd64")
    low, high = verify["installed_count"]["expected"]
    assert low <= verify["installed_count"]["count"] <= high


def test_manifest_and_sbom_describe_the_guest(built: dict[str, Path]) -> None:
    out = built["image"].parent
    manifest = json.loads((out / "manifest.json").read_text())
    names = {p["name"] for p in manifest["dpkg"]}
    assert {"jq", "curl", "bubblewrap", "socat", "qemu-guest-agent", "python3"} <= names
    assert manifest["distro"] == "debian"
    sbom = json.loads((out / "sbom.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    assert len(sbom["components"]) == manifest["counts"]["dpkg"] + manifest["counts"]["pip"]


def test_provenance_and_spdx_describe_the_real_build(built: dict[str, Path]) -> None:
    out = built["image"].parent
    info = json.loads((out / "build-info.json").read_text())
    prov = provenance.parse((out / provenance.FILE).read_text())
    sums = parse_sha256sums((out / "SHA256SUMS").read_text())
    assert prov.subjects == sums and "sbom.spdx.json" in sums
    present = {n: _sha256(out / n) for n in prov.byproducts}
    provenance.check(prov, sums, present, base_sha256=info["base"]["sha256"])
    assert {"build-info.json", "logs/serial.log"} <= set(prov.byproducts)
    deps = {d["name"]: d for d in prov.dependencies}
    # The base image and the signed SHA256SUMS that vouched for it, by digest.
    assert deps["base-image"]["digest"]["sha256"] == info["base"]["sha256"]
    assert deps["base-image"]["annotations"]["signer"] == info["base"]["signer"]
    assert deps["base-image/SHA256SUMS"]["digest"]["sha256"] == info["base"]["sums"]["sha256"]
    assert (
        deps["base-image/SHA256SUMS.gpg"]["digest"]["sha256"]
        == (info["base"]["sums"]["signature_sha256"])
    )
    assert (
        _sha256(PACKAGE_LISTS / "profiles" / "smoke.profile")
        == (deps["package-lists/profiles/smoke.profile"]["digest"]["sha256"])
    )
    assert {"seed/user-data", "seed/meta-data", "egress-policy"} <= set(deps)
    assert deps["sandbox-image"]["digest"]["gitCommit"] == subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
        check=True).stdout.strip()  # fmt: skip
    assert prov.invocation_id == info["build_id"]
    # SPDX 2.3, valid by the SPDX tools' own parser and validator, the same packages and
    # purls as the CycloneDX SBOM.
    document = parse_file(str(out / "sbom.spdx.json"))
    assert validate_full_spdx_document(document, "SPDX-2.3") == []
    spdx_purls = {ref.locator for pkg in document.packages for ref in pkg.external_references}
    cyclonedx = json.loads((out / "sbom.json").read_text())
    assert spdx_purls == {c["purl"] for c in cyclonedx["components"]}
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(spdx_purls) == sum(manifest["counts"].values())


def test_cloud_init_log_has_no_unexpected_warnings(built: dict[str, Path]) -> None:
    log = (built["image"].parent / "logs" / "cloud-init.log").read_text(errors="replace")
    assert "Cloud-init v." in log  # the log really is there
    bad = [line for line in log.splitlines()
           if ("WARNING" in line or "Traceback" in line)
           and not any(b in line for b in BENIGN_WARNINGS)]  # fmt: skip
    assert bad == [], "\n".join(bad[:20])


def test_demo_resumed_far_faster_than_a_cold_boot(demo_run: dict[str, Any]) -> None:
    assert demo_run["sandbox_output"] == "hello from sandbox"  # the bwrap profile's hostname
    assert demo_run["resume_ready_seconds"] < demo_run["cold_ready_seconds"]


# --- failures: clear error, no artifact, no QEMU, cache untouched --------------------


def _cache_state(cache: Path) -> dict[str, tuple[int, int]]:
    """The cached images themselves (their provenance notes may gain a source on a hit)."""
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in (cache / "images").rglob("*.img")
    }


def _work_dirs(cache: Path) -> set[str]:
    work = cache / "work"
    return {p.name for p in work.iterdir()} if work.exists() else set()


def _artifacts(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def _mirror_config(cfg: config.BuildConfig, served: mirror.Mirror) -> config.BuildConfig:
    return dataclasses.replace(cfg, mirror=served.url, keyring=served.keyring,
                               fingerprints=(served.fingerprint,))  # fmt: skip


def test_a_package_that_does_not_exist_fails_quoting_apt_and_keep_failed_gives_a_shell(
    fresh_config: config.BuildConfig, tmp_path: Path, built: dict[str, Path]
) -> None:
    """Through ./inv: the failed VM stays up for `ssh` with --keep-failed; Ctrl-C ends
    the build with the error it would have had, and nothing is left behind."""
    lists = tmp_path / "package-lists"
    shutil.copytree(PACKAGE_LISTS, lists)
    with (lists / "apt" / "smoke.list").open("a") as f:
        f.write("no-such-package-sandbox-image\n")
    base = standin.ensure(fresh_config.cache_dir, "amd64")
    before = _cache_state(fresh_config.cache_dir)
    out, log = tmp_path / "out", tmp_path / "build.log"
    with mirror.serve_mirror({"amd64": base.path}, fresh_config.cache_dir) as served:
        argv = [str(ROOT / "inv"), "build-image", "--arch", "amd64", "--profile", "smoke",
                "--distro", "debian", "--cpus", "2", "--memory", "2G", "--keep-failed",
                "--package-lists", str(lists), "--out", str(out),
                "--cache-dir", str(fresh_config.cache_dir), *served.cli_args().split()]  # fmt: skip
        with log.open("wb") as sink:
            proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT,
                                    stdin=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + 1200
            while "the build VM is still running" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(1)
            text = log.read_text()
            ssh_line = text[text.index("the build VM is still running") :].splitlines()[1]
            shell = subprocess.run(
                [*shlex.split(ssh_line), "-o", "BatchMode=yes",
                 "sudo cat /var/log/cloud-init-output.log; hostname"],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert shell.returncode == 0, shell.stderr
            assert "no-such-package-sandbox-image" in shell.stdout
            assert qemu_processes(), "the failed VM should still run"
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            assert proc.wait(timeout=120) == 1, log.read_text()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    attach_logs(log)
    message = log.read_text()
    assert "error:" in message and "no-such-package-sandbox-image" in message
    assert re.search(r"Unable to locate package|packages not installed", message)
    assert "build logs:" in message
    assert _artifacts(out) == []
    assert qemu_processes() == []
    assert _cache_state(fresh_config.cache_dir) == before


def test_an_image_that_never_boots_times_out_with_the_serial_tail(
    fresh_config: config.BuildConfig, tmp_path: Path, built: dict[str, Path]
) -> None:
    # A valid qcow2 with nothing on it: the firmware finds nothing to boot.
    blank = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "1G"], check=True)
    with mirror.serve_mirror({"amd64": blank}, fresh_config.cache_dir) as served:
        cfg = dataclasses.replace(_mirror_config(fresh_config, served), boot_timeout=45)
        start = time.monotonic()
        with pytest.raises(ImageError) as info:
            pipeline.build_image(cfg, distro="debian")
    assert time.monotonic() - start < 300
    message = info.value.message
    assert "SSH did not come up within 45 s" in message
    assert "--- serial console (tail) ---" in message
    assert _artifacts(cfg.output_dir) == []
    assert qemu_processes() == []


def test_sigterm_mid_build_leaves_nothing(
    fresh_config: config.BuildConfig, tmp_path: Path, built: dict[str, Path]
) -> None:
    base = standin.ensure(fresh_config.cache_dir, "amd64")
    before = _cache_state(fresh_config.cache_dir)
    work_before = _work_dirs(fresh_config.cache_dir)
    with mirror.serve_mirror({"amd64": base.path}, fresh_config.cache_dir) as served:
        out = tmp_path / "out"
        log = tmp_path / "build.log"
        # --no-cache: the demo's provisioned layer would skip the boot this test interrupts.
        argv = [str(ROOT / "inv"), "build-image", "--arch", "amd64", "--profile", "smoke",
                "--distro", "debian", "--no-cache", "--cpus", "2", "--memory", "2G",
                "--out", str(out), "--cache-dir", str(fresh_config.cache_dir),
                *served.cli_args().split()]  # fmt: skip
        with log.open("wb") as sink:
            proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT,
                                    stdin=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while "==> boot" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()[-2000:]
                time.sleep(0.5)
            time.sleep(5)  # QEMU is up and booting
            assert qemu_processes(), "QEMU should be running mid-build"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 143, log.read_text()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    attach_logs(log)
    assert "terminated (SIGTERM); cleaned up" in log.read_text()
    assert qemu_processes() == []
    assert [n for n in _artifacts(out) if n != "logs"] == []
    assert _cache_state(fresh_config.cache_dir) == before
    assert _work_dirs(fresh_config.cache_dir) == work_before
