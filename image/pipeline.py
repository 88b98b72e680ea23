"""build-image: the pipeline as one flat list of steps (read ``build_image`` top to bottom).

Mutable build state lives in ``BuildContext``; the ``BuildConfig`` stays frozen.
Outputs are staged in ``<out>/.staging-<id>`` and renamed into ``<out>`` only at
the end (build-info.json last), so a failed, interrupted or killed build leaves
no artifact in ``<out>``, no QEMU process, and the cache as it was. The build's
logs (serial console, cloud-init logs) are kept: in ``<out>/logs/`` on success,
in ``<cache>/logs/<build-id>/`` on failure, and the error says where.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import image
from image import (
    accel,
    cloudinit,
    egress,
    fetch,
    lockfile,
    manifest,
    packagecache,
    packages,
    qemu,
    report,
    run,
    sandbox,
    ssh,
    standin,
)
from image.config import BuildConfig
from image.console import step
from image.errors import ImageError
from image.firmware import find_firmware

log = logging.getLogger("image.pipeline")

BUILD_USER = "build"
PROVISIONED_MARKER = "/var/lib/sandbox-image/provisioned"
GUEST_LOGS = ("/var/log/cloud-init.log", "/var/log/cloud-init-output.log")
# What the next boot of the published image should do: no re-provisioning, and
# no long wait for a cloud datasource that a sandbox VM will never have.
RUNTIME_CLOUD_CFG = "datasource_list: [NoCloud, None]\n"
# The build proxy's audit log: the record of everything the build downloaded.
EGRESS_LOG = "egress.jsonl"


@dataclass
class BuildContext:
    cfg: BuildConfig
    build_id: str
    work: Path  # scratch: overlay disk, VARS, QEMU's sockets, seed
    egress_sockets: Path  # the build proxy's sockets (a short path: see egress.make_socket_dir)
    staging: Path  # becomes the outputs
    out: Path
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def serial_log(self) -> Path:
        return self.work / "serial.log"

    @property
    def egress_log(self) -> Path:
        return self.work / EGRESS_LOG


@dataclass(frozen=True)
class BuildResult:
    image: Path
    raw: Path | None
    manifest: Path
    sbom: Path
    build_info: Path
    sha256sums: Path
    timings: dict[str, float]
    egress_log: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "image": str(self.image), "raw": str(self.raw) if self.raw else None,
            "manifest": str(self.manifest), "sbom": str(self.sbom),
            "egress_log": str(self.egress_log),
            "build_info": str(self.build_info), "sha256sums": str(self.sha256sums),
            "timings": self.timings,
        }  # fmt: skip


def output_name(cfg: BuildConfig) -> str:
    return f"sandbox-image-{cfg.release}-{cfg.arch}-{cfg.profile}"


def build_image(
    cfg: BuildConfig,
    *,
    distro: str = "ubuntu",
    offline: bool = False,
    insecure_skip_signature: bool = False,
    raw: bool = False,
    package_lists: Path = packages.PACKAGE_LISTS,
    egress_policy: egress.PolicyChoice = egress.DEFAULT_BUILD,
    lock: lockfile.Lock | None = None,
    package_cache: bool = True,
) -> BuildResult:
    """Fetch, render, boot, provision, verify, describe, generalize, compact, publish.

    The build VM's only network is a proxy on the host with the build policy
    (package archives, PyPI, npm); its audit log is published as egress.jsonl.
    """
    if lock is not None:
        cfg = _locked_config(cfg, lock, distro)
    if distro == "debian":
        # The offline stand-in installs from Debian's archive, which this host's
        # resolver may send to a local mirror (a non-public address).
        egress_policy = egress.with_local_addresses(egress_policy, [standin.ARCHIVE_HOST])
    policy = egress_policy.load()  # a bad policy fails before anything is fetched
    ctx = _new_context(cfg)
    ctx.info["egress_policy"] = {
        "file": str(egress_policy.file), "sha256": _sha256(egress_policy.file),
        "allow": list(egress_policy.allow), "deny": list(egress_policy.deny),
        "allow_addresses": list(egress_policy.allow_addresses),
        "allow_ports": list(egress_policy.allow_ports),
    }  # fmt: skip
    cache_key = packagecache.key(distro, cfg.release, cfg.arch)
    ctx.info["package_cache"] = {"enabled": package_cache, "key": cache_key}
    with _build_scope(ctx):
        with step("fetch", ctx.timings):
            base = fetch.fetch(cfg, offline=offline,
                               insecure_skip_signature=insecure_skip_signature)  # fmt: skip
            ctx.info["base"] = base.to_json()
            if lock is not None:
                lockfile.check_base(lock, base.sha256)
                ctx.info["lock"] = {
                    "apt": len(lock.apt),
                    "pip": len(lock.pip),
                    "npm": len(lock.npm),
                    "snapshot": lock.snapshot,
                }
        with step("render", ctx.timings):
            client_key = ssh.KeyPair.generate(f"{BUILD_USER}@sandbox-image-{ctx.build_id}")
            host_key = ssh.KeyPair.generate(f"host@sandbox-image-{ctx.build_id}")
            inputs = dataclasses.replace(
                _render_inputs(cfg, distro, client_key, host_key, package_lists),
                lock=lock,
                apt_snapshot=lock.snapshot if lock else None,
                package_cache=package_cache,
            )
            files = cloudinit.render(inputs)
            cloudinit.validate_schema(files["user-data"])
            seed_iso = ctx.work / "seed.iso"
            cloudinit.write_seed_iso(files, seed_iso)
            ctx.info["seed_sha256"] = _sha256(seed_iso)
        with step("disk", ctx.timings):
            disk = ctx.work / "disk.qcow2"
            qemu.create_overlay(base.path, disk, cfg.disk_size)
            firmware = find_firmware(cfg.arch)
            vars_copy = qemu.copy_vars(firmware.vars_template, ctx.work / "VARS.fd")
            accel_args, accel_reason = accel.accel_argv(cfg.accel, cfg.arch, cfg.cache_dir)
            ctx.info["accel"] = accel_reason
            log.info("accelerator: %s", accel_reason)
            shares = (
                packagecache.prepare(cfg.cache_dir, cache_key, ctx.work) if package_cache else None
            )
        ssh_port = qemu.free_port()
        spec = qemu.VMSpec(
            arch=cfg.arch, cpus=cfg.cpus, memory=cfg.memory, disk=disk,
            firmware_code=firmware.code, firmware_vars=vars_copy, accel=tuple(accel_args),
            serial_log=ctx.serial_log, qmp_socket=ctx.work / "qmp.sock",
            qga_socket=ctx.work / "qga.sock", seed_iso=seed_iso, ssh_port=ssh_port,
            net_restrict=True, guestfwd=egress.guest_forwards(ctx.egress_sockets),
            # The build VM is thrown away if anything fails: no need to make
            # every guest write durable, and TCG builds spend less time in I/O.
            disk_cache="unsafe",
            shares=(shares.cache, shares.new) if shares else (),
        )  # fmt: skip
        with (
            egress.serve_for_vm(policy, ctx.egress_sockets, ctx.egress_log),
            qemu.VM(spec, ctx.work / "qemu.log") as vm,
        ):
            with step("boot", ctx.timings):
                session = ssh.wait_for_ssh(
                    "127.0.0.1", ssh_port, BUILD_USER, client_key, host_key,
                    timeout=cfg.boot_timeout, alive=vm.alive,
                    describe_failure=lambda: _serial_report(ctx),
                )  # fmt: skip
            try:
                with step("provision", ctx.timings):
                    try:
                        _wait_for_cloud_init(ctx, session)
                    except ImageError as exc:
                        if lock is not None:
                            _explain_locked_failure(ctx, exc)
                        raise
                with step("verify", ctx.timings):
                    profile = packages.load_profile(cfg.profile, package_lists)
                    ctx.info["verify"] = _verify(ctx, session, profile)
                with step("manifest", ctx.timings):
                    found = _collect_manifest(ctx, session)
                    if lock is not None:
                        _check_against_lock(lock, found)
                    _write_json(ctx.staging / "manifest.json", found.to_json())
                    (ctx.staging / "sbom.json").write_text(
                        manifest.sbom(found, output_name(cfg), image.__version__)
                    )
                _save_guest_logs(ctx, session)
                with step("generalize", ctx.timings):
                    _generalize(session)
            finally:
                session.close()
            with step("shutdown", ctx.timings):
                vm.shutdown(timeout=300)
        with step("compact", ctx.timings):
            name = output_name(cfg)
            image_path = ctx.staging / f"{name}.qcow2"
            _run_qemu_img(compact_argv(disk, image_path))
            raw_path = None
            if raw:
                raw_path = ctx.staging / f"{name}.raw"
                _run_qemu_img(["convert", "-O", "raw", str(disk), str(raw_path)])
        with step("publish", ctx.timings):
            result = _publish(ctx, image_path, raw_path)
        if shares is not None:
            with step("cache", ctx.timings):
                _fill_cache(cfg.cache_dir, cache_key, shares, found)
        return result


def _locked_config(cfg: BuildConfig, lock: lockfile.Lock, distro: str) -> BuildConfig:
    """The lock decides the base image serial; a different one asked for is an error."""
    lockfile.check_build_matches(
        lock, distro=distro, release=cfg.release, arch=cfg.arch, profile=cfg.profile
    )
    if cfg.serial not in (fetch.LATEST, lock.base_serial):
        raise ImageError(
            f"--serial {cfg.serial} contradicts the lock's base serial {lock.base_serial}",
            hint="drop --serial when building from a lock",
        )
    return dataclasses.replace(cfg, serial=lock.base_serial)


def _explain_locked_failure(ctx: BuildContext, exc: ImageError) -> None:
    """apt's "Version 'v' for 'p' was not found" becomes the error: the lock is stale."""
    try:
        output = (ctx.staging / "logs" / "cloud-init-output.log").read_text(errors="replace")
    except OSError:
        return
    missing = lockfile.unavailable_versions(output)
    if missing:
        raise ImageError(
            f"locked version(s) not available from the archive: {', '.join(missing)}",
            hint="the archive no longer offers what the lock names: make a new lock from a "
            "build without --lock (for jammy, a lock with a snapshot timestamp keeps working)",
        ) from exc


def _check_against_lock(lock: lockfile.Lock, found: manifest.Manifest) -> None:
    changes = lockfile.differences(lock, found)
    if changes:
        shown = "\n  ".join(changes[:30])
        more = f"\n  ... and {len(changes) - 30} more" if len(changes) > 30 else ""
        raise ImageError(
            f"the image does not match the lock ({len(changes)} package(s)):\n  {shown}{more}",
            hint="a locked version the archive no longer has is skipped by apt's pin and "
            "replaced by another; make a new lock, or pin the archive (--snapshot-timestamp)",
        )


def _fill_cache(
    cache_dir: Path, cache_key: str, shares: packagecache.BuildShares, found: manifest.Manifest
) -> None:
    """The build succeeded: keep its downloads. A cache that cannot be written is no failure."""
    try:
        filled = packagecache.fill_back(cache_dir, cache_key, shares.new_dir)
        packagecache.mark_used(cache_dir, cache_key, found)
    except OSError as exc:
        log.warning("package cache not updated: %s", exc)
        return
    log.info(
        "package cache %s: added %s (%d bytes)",
        cache_key,
        ", ".join(f"{k} {n}" for k, n in filled.added.items()),
        filled.bytes_added,
    )


def _render_inputs(
    cfg: BuildConfig, distro: str, client_key: ssh.KeyPair, host_key: ssh.KeyPair,
    package_lists: Path,
) -> cloudinit.RenderInputs:  # fmt: skip
    return cloudinit.RenderInputs(
        profile=cfg.profile, arch=cfg.arch, distro=distro,
        build_ssh_public_key=client_key.public_openssh,
        ssh_host_ed25519=(host_key.private_openssh, host_key.public_openssh),
        guest_files=sandbox.guest_files(cfg.arch), skills_dir=cfg.skills,
        package_lists=package_lists, apt_proxy=egress.GUEST_HTTP_PROXY,
    )  # fmt: skip


def _new_context(cfg: BuildConfig) -> BuildContext:
    build_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    out = cfg.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = cfg.cache_dir / "work" / build_id
    work.mkdir(parents=True)
    staging = out / f".staging-{build_id}"
    staging.mkdir()
    ctx = BuildContext(cfg, build_id, work, egress.make_socket_dir(), staging, out)
    ctx.info.update(build_id=build_id, toolkit_version=image.__version__,
                    config=cfg.to_json())  # fmt: skip
    return ctx


@contextlib.contextmanager
def _build_scope(ctx: BuildContext) -> Iterator[None]:
    """On any failure or interruption: logs kept, staging and scratch removed.

    Signals are the caller's business (tasks.py turns SIGTERM into an unwinding
    exception); whatever unwinds through here gets the same cleanup.
    """
    try:
        yield
    except BaseException as exc:
        logs = ctx.cfg.cache_dir / "logs" / ctx.build_id
        _keep_logs(ctx, logs)
        shutil.rmtree(ctx.staging, ignore_errors=True)
        if isinstance(exc, ImageError):
            exc.message += f"\nbuild logs: {logs}"
        raise
    finally:
        shutil.rmtree(ctx.work, ignore_errors=True)
        shutil.rmtree(ctx.egress_sockets, ignore_errors=True)


def _keep_logs(ctx: BuildContext, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("serial.log", "qemu.log", EGRESS_LOG):
        with contextlib.suppress(OSError):
            shutil.copyfile(ctx.work / name, dest / name)
    for path in (ctx.staging / "logs").glob("*"):
        with contextlib.suppress(OSError):
            shutil.copyfile(path, dest / path.name)


def _serial_report(ctx: BuildContext) -> str:
    return f"--- serial console (tail) ---\n{qemu.serial_tail(ctx.serial_log)}"


_MODULE_IN_ERROR = re.compile(r"\('([a-z0-9_]+)'")


def failing_modules(status: dict[str, Any]) -> list[str]:
    """Module names from cloud-init's status.json errors, e.g. "('scripts_user', ...)"."""
    names: list[str] = []
    for stage in (status.get("v1") or {}).values():
        if isinstance(stage, dict):
            for error in stage.get("errors") or []:
                m = _MODULE_IN_ERROR.search(str(error))
                if m and m.group(1) not in names:
                    names.append(m.group(1))
    return names


def _wait_for_cloud_init(ctx: BuildContext, session: ssh.Session) -> None:
    result = session.run("cloud-init status --wait --long", timeout=ctx.cfg.provision_timeout,
                         check=False)  # fmt: skip
    marker = session.run(f"test -e {PROVISIONED_MARKER}", check=False).exit_status == 0
    if result.exit_status == 0 and marker:
        return
    status_text = session.sudo("cat /run/cloud-init/status.json", check=False).stdout
    try:
        modules = failing_modules(json.loads(status_text))
    except json.JSONDecodeError:
        modules = []
    output_tail = session.sudo("tail -n 40 /var/log/cloud-init-output.log", check=False).stdout
    _save_guest_logs(ctx, session)
    what = f"module(s) {', '.join(modules)} failed" if modules else "provisioning did not finish"
    if result.exit_status == 0 and not marker:
        what = f"cloud-init finished but {PROVISIONED_MARKER} was not written"
    hint = "fix the package list or template named above; full guest logs are kept"
    denied = egress.summarize(ctx.egress_log).denied
    if denied:
        hint = (f"the build proxy denied {'; '.join(denied)}: if the build needs it, add "
                "it with --allow NAME, or --allow-address CIDR for an internal-address "
                f"rule (or --policy FILE); {hint}")  # fmt: skip
    raise ImageError(
        f"cloud-init: {what}\n{result.stdout.strip()}\n"
        f"--- /var/log/cloud-init-output.log (tail) ---\n{output_tail.strip()}",
        hint=hint,
    )


def _verify(ctx: BuildContext, session: ssh.Session, profile: packages.Profile) -> dict[str, Any]:
    """Check the image from outside, as its user would see it."""
    results: dict[str, Any] = {}
    for check in profile.checks:
        out = session.run(f"{check.command} 2>&1", check=False)
        text = out.stdout.strip()
        ok = out.exit_status == 0 and re.search(check.expect, text) is not None
        results[check.name] = {"ok": ok, "output": text.splitlines()[0] if text else ""}
        if not ok:
            raise ImageError(
                f"verify: {check.name}: expected /{check.expect}/ from `{check.command}`, "
                f"got: {text[:300]!r}",
                hint="the profile's package list does not give what its checks expect",
            )
    count = int(session.run("dpkg-query -f '${db:Status-Abbrev}\\n' -W | grep -c '^ii'").stdout)
    low, high = profile.expected_range
    results["installed_count"] = {"count": count, "expected": [low, high]}
    if not low <= count <= high:
        raise ImageError(
            f"verify: {count} packages installed; profile {profile.name} expects {low}..{high}",
            hint=f"if the change is intended, update expected_installed in {profile.path.name}",
        )
    # The guest's own-arch filters, exercised as the unprivileged agent user.
    self_test = session.run(
        f"sudo -n -u agent {shlex.join(sandbox.SELF_TEST_COMMAND)}", check=False
    )
    outcome = parse_self_test(self_test.stdout)
    results["sandbox_self_test"] = outcome
    if self_test.exit_status != 0 or not outcome.get("ok"):
        raise ImageError(
            f"verify: the in-guest sandbox self-test failed (exit {self_test.exit_status}):\n"
            f"{self_test.stdout[-2000:]}{self_test.stderr[-2000:]}",
            hint="see docs/sandbox.md; the guest needs bwrap, socat, python3 and user namespaces",
        )
    if ctx.cfg.skills is not None:
        session.run("test -d /opt/skills && ! test -w /opt/skills")
        results["skills"] = {"ok": True}
    return results


def parse_self_test(stdout: str) -> dict[str, Any]:
    """The launcher's self-test prints one JSON object as its last line."""
    lines = stdout.strip().splitlines()
    try:
        outcome = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        outcome = None
    if not isinstance(outcome, dict) or "ok" not in outcome:
        return {"ok": False, "output": stdout[-500:]}
    return outcome


def _guest_distro(session: ssh.Session) -> str:
    text = session.run(". /etc/os-release && echo $ID").stdout.strip()
    return text or "unknown"


def _collect_manifest(ctx: BuildContext, session: ssh.Session) -> manifest.Manifest:
    return manifest.Manifest(
        distro=_guest_distro(session),
        arch=ctx.cfg.arch,
        dpkg=manifest.parse_dpkg(session.run(manifest.DPKG_QUERY).stdout),
        pip=manifest.parse_pip(session.run(manifest.PIP_QUERY).stdout),
        npm=manifest.parse_npm(session.run(manifest.NPM_QUERY, check=False).stdout),
    )


def _save_guest_logs(ctx: BuildContext, session: ssh.Session) -> None:
    logs = ctx.staging / "logs"
    logs.mkdir(exist_ok=True)
    for path in GUEST_LOGS:
        text = session.sudo(f"cat {path}", check=False).stdout
        (logs / Path(path).name).write_text(text)


GENERALIZE = (
    # cloud-init: forget this instance so a seeded boot provisions afresh, and
    # never wait for a cloud datasource when there is no seed.
    "cloud-init clean --logs",
    f"printf '{RUNTIME_CLOUD_CFG}' > /etc/cloud/cloud.cfg.d/99-sandbox-image-runtime.cfg",
    "apt-get clean",
    "rm -rf /var/lib/apt/lists/*",
    # Host keys are per machine: the next boot makes its own.
    "rm -f /etc/ssh/ssh_host_*",
    "truncate -s 0 /etc/machine-id",
    "rm -f /var/lib/dbus/machine-id",
    "journalctl --rotate >/dev/null 2>&1 || true",
    "journalctl --vacuum-time=1s >/dev/null 2>&1 || true",
    "find /var/log -type f -exec truncate -s 0 {} +",
    "rm -rf /tmp/* /var/tmp/*",
    "fstrim -av || true",
    # Last: the account this very session uses, and its sudo rule.
    f"userdel -rf {BUILD_USER} 2>/dev/null || true",
    "rm -f /etc/sudoers.d/90-cloud-init-users",
    "sync",
)


def _generalize(session: ssh.Session) -> None:
    """One root script: after the build user's sudo rule is gone, no more sudo."""
    script = "set -eu\n" + "\n".join(GENERALIZE) + "\n"
    session.sudo(script, timeout=900)


# zstd instead of qcow2's default zlib: about 3x less time for the same (slightly
# smaller) image here. Readers need QEMU >= 5.1 (jammy has 6.2); the raw output
# (--raw) is for hosts that do not read qcow2 at all.
COMPRESSION = "zstd"


def compact_argv(disk: Path, out: Path) -> list[str]:
    """qemu-img's arguments: the build disk and its backing base, as one compressed qcow2."""
    return ["convert", "-c", "-o", f"compression_type={COMPRESSION}", "-O", "qcow2",
            str(disk), str(out)]  # fmt: skip


def _run_qemu_img(args: list[str]) -> None:
    run.run(["qemu-img", *args], timeout=3600)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _publish(ctx: BuildContext, image_path: Path, raw_path: Path | None) -> BuildResult:
    staging = ctx.staging
    shutil.move(str(ctx.serial_log), staging / "logs" / "serial.log")
    shutil.copyfile(ctx.egress_log, staging / EGRESS_LOG)
    ctx.info["egress"] = egress.summarize(staging / EGRESS_LOG).to_json()
    artifacts = [p for p in (image_path, raw_path) if p is not None]
    artifacts += [staging / "manifest.json", staging / "sbom.json", staging / EGRESS_LOG]
    sums = {p.name: _sha256(p) for p in artifacts}
    ctx.info["outputs"] = sums
    ctx.info["timings"] = ctx.timings
    # The report shows the hashes above, so it is made after them and listed last.
    (staging / report.REPORT).write_text(report.render_output(staging, ctx.info), "utf-8")
    sums[report.REPORT] = _sha256(staging / report.REPORT)
    (staging / "SHA256SUMS").write_text("".join(f"{h} *{n}\n" for n, h in sums.items()))
    _write_json(staging / "build-info.json", ctx.info)
    for path in staging.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    # build-info.json last: its presence marks a complete output set.
    logs_dest = ctx.out / "logs"
    shutil.rmtree(logs_dest, ignore_errors=True)
    (staging / "logs").rename(logs_dest)
    for path in sorted(staging.iterdir(), key=lambda p: p.name == "build-info.json"):
        path.replace(ctx.out / path.name)
    staging.rmdir()
    out = ctx.out
    return BuildResult(
        image=out / image_path.name,
        raw=out / raw_path.name if raw_path else None,
        manifest=out / "manifest.json", sbom=out / "sbom.json", egress_log=out / EGRESS_LOG,
        build_info=out / "build-info.json", sha256sums=out / "SHA256SUMS",
        timings=ctx.timings,
    )  # fmt: skip
