"""build-image: the pipeline as one flat list of steps (read ``build_image`` top to bottom).

Mutable build state lives in ``BuildContext``; the ``BuildConfig`` stays frozen.
Outputs are staged in ``<out>/.staging-<id>`` and renamed into ``<out>`` only at
the end (build-info.json last), so a failed, interrupted or killed build leaves
no artifact in ``<out>``, no QEMU process, and the cache as it was. The build's
logs (serial console, cloud-init logs) are kept: in ``<out>/logs/`` on success,
in ``<cache>/logs/<build-id>/`` on failure, and the error says where.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import image
from image import hosttools, run
from image.build import (
    cloudinit,
    layercache,
    lockfile,
    manifest,
    output,
    packagecache,
    packages,
    skills,
    stages,
    trust,
)
from image.build import inputs as build_inputs
from image.build import mirrors as mirrors_
from image.config import BuildConfig, format_size
from image.console import step
from image.contract import guest, vmstate
from image.egress import guestnet
from image.errors import ImageError
from image.files import sha256_file
from image.release import provenance, report, signatures
from image.sandbox import guestfiles
from image.source import fetch, standin
from image.vm import accel, qemu, ssh
from image.vm.firmware import find_firmware
from image.vm.guestagent import GuestAgent

log = logging.getLogger(__name__)
# The toolkit's checkout: its git revision goes into every build's provenance.
TOOLKIT_ROOT = Path(image.__file__).resolve().parent.parent

BUILD_USER = "build"
# Written by the seed as its last step: the system stage ran to its end.
SYSTEM_MARKER = cloudinit.SYSTEM_MARKER
GUEST_LOGS = ("/var/log/cloud-init.log", "/var/log/cloud-init-output.log")
# What the next boot of the published image should do: no re-provisioning, and
# no long wait for a cloud datasource that a sandbox VM will never have.
RUNTIME_CLOUD_CFG = "datasource_list: [NoCloud, None]\n"
# The build proxy's audit log: the record of everything the build downloaded.
EGRESS_LOG = "egress.jsonl"
SPDX_SBOM = "sbom.spdx.json"
# The console of the VM that provisioned (kept in its layer); serial.log: the resumed VM's.
PROVISION_SERIAL = "serial-provision.log"


@dataclass(frozen=True)
class BuildRequest:
    """What one build is asked to make, resolved once (``resolve``): the config and
    the options that are not config (they do not come from the environment)."""

    cfg: BuildConfig
    distro: str = "ubuntu"
    offline: bool = False
    insecure_skip_signature: bool = False
    raw: bool = False
    package_lists: Path = packages.PACKAGE_LISTS
    egress_policy: guestnet.PolicyChoice = guestnet.DEFAULT_BUILD
    lock: lockfile.Lock | None = None
    package_cache: bool = True
    # Replacements for the profile's third-party apt sources (--source-file).
    sources: tuple[packages.AptSource, ...] = ()
    # Ship the project's skills/ (cfg.skills adds a folder on top).
    default_skills: bool = True
    # CA certificates the build VM trusts besides its own (--ca-cert).
    ca_certs: tuple[trust.CACert, ...] = ()
    # Private mirrors instead of the public archives (--apt-mirror, --pip-index, ...).
    mirrors: mirrors_.Mirrors = field(default_factory=mirrors_.Mirrors)
    # --keep-failed: a VM whose provisioning or verification fails stays up, with an
    # SSH way in on 127.0.0.1, until Ctrl-C/SIGTERM; then the build fails as usual.
    keep_failed: bool = False
    # --sign-key: sign SHA256SUMS and the provenance (image.release.signatures).
    sign_key: str | None = None
    # The provenance's builder.id (--builder-id) and the toolkit's source URL (--source;
    # default: the checkout's origin remote).
    builder_id: str | None = None
    source_url: str | None = None

    @classmethod
    def resolve(cls, cfg: BuildConfig, **options: Any) -> BuildRequest:
        """Apply what follows from the options: a lock pins the release, arch and
        profile; the Debian stand-in may install from a local mirror; the egress
        policy admits the source files' hosts (of the ones the profile uses)."""
        request = cls(cfg, **options)
        if request.lock is not None:
            request = dataclasses.replace(
                request, cfg=_locked_config(cfg, request.lock, request.distro),
                mirrors=request.mirrors.or_from(request.lock.mirrors),
            )  # fmt: skip
        if request.mirrors:
            policy = request.mirrors.policy(request.egress_policy)
            request = dataclasses.replace(request, egress_policy=policy)
        if request.distro == "debian":
            # The offline stand-in installs from Debian's archive, which this host's
            # resolver may send to a local mirror (a non-public address).
            policy = guestnet.with_local_addresses(request.egress_policy, [standin.ARCHIVE_HOST])
            request = dataclasses.replace(request, egress_policy=policy)
        if request.sources:
            used = [s for s in request.profile().sources if s in request.sources]
            policy = guestnet.with_urls(
                request.egress_policy, [url for s in used for url in (s.uri, s.key_url)]
            )
            request = dataclasses.replace(request, sources=tuple(used), egress_policy=policy)
        return request

    def check(self) -> None:
        """What the inputs alone can get wrong, found before any download, boot or log
        folder: the profile and its lists (as this distro installs them), the distro
        itself, the skills folders."""
        if not self.package_lists.is_dir():
            raise ImageError(
                f"no package lists folder at {self.package_lists}",
                hint="--package-lists takes a folder laid out like the project's "
                "package-lists/ (apt/, pip/, npm/, profiles/)",
            )
        profile = self.profile()
        if self.distro not in profile.distros:
            raise ImageError(
                f"profile {profile.name!r} is for {', '.join(profile.distros)}, "
                f"not {self.distro!r}",
                hint="--distro ubuntu builds jammy; --distro debian the offline stand-in",
            )
        skills.describe(build_inputs.skills_dirs(self.default_skills, self.cfg.skills))
        if self.sign_key is not None:
            signatures.try_key(self.sign_key)  # a wrong key or passphrase fails now, not at the end
        provenance.toolkit_source(TOOLKIT_ROOT, self.source_url)

    def profile(self) -> packages.Profile:
        """The profile as this build installs it (the distro's names, the given sources)."""
        return packages.resolve_profile(
            self.cfg.profile, self.package_lists, self.distro, self.sources
        )

    @property
    def cache_key(self) -> str:
        return packagecache.key(self.distro, self.cfg.release, self.cfg.arch)


@dataclass
class BuildContext:
    """One build's state as its steps fill it in; ``info`` is build-info.json in the making."""

    request: BuildRequest
    build_id: str
    work: Path  # scratch: overlay disk, the new layer, seed, logs
    sockets: Path  # the VM's sockets: proxy, QMP, guest agent (guestnet.make_socket_dir)
    staging: Path  # becomes the outputs
    out: Path
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    started: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc)
    )
    # Filled in by the steps, in this order.
    base: fetch.FetchResult | None = None
    # Seconds to wait for SSH and for cloud-init: given, or by the accelerator (_plan_vm).
    boot_timeout: float = 0.0
    provision_timeout: float = 0.0
    client_key: ssh.KeyPair | None = None
    host_key: ssh.KeyPair | None = None
    inputs: cloudinit.RenderInputs | None = None
    plan: VMPlan | None = None

    @property
    def cfg(self) -> BuildConfig:
        return self.request.cfg

    @property
    def serial_log(self) -> Path:
        return self.work / "serial.log"

    @property
    def egress_log(self) -> Path:
        return self.work / EGRESS_LOG


@dataclass(frozen=True)
class VMPlan:
    """The build VM to boot, and the provisioned layer that would stand for it."""

    spec: qemu.VMSpec
    firmware: Any  # image.vm.firmware.Firmware
    shares: packagecache.BuildShares | None
    profile: packages.Profile
    slot: str
    stages: list[stages.Stage]  # lowest first; stages[0] is "system" (cloud-init)


@dataclass(frozen=True)
class BuildResult:
    image: Path
    raw: Path | None
    manifest: Path
    sbom: Path
    sbom_spdx: Path
    build_info: Path
    sha256sums: Path
    timings: dict[str, float]
    egress_log: Path
    provenance: Path
    signed_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "image": str(self.image), "raw": str(self.raw) if self.raw else None,
            "manifest": str(self.manifest), "sbom": str(self.sbom),
            "sbom_spdx": str(self.sbom_spdx), "provenance": str(self.provenance),
            "build_info": str(self.build_info), "sha256sums": str(self.sha256sums),
            "timings": self.timings, "egress_log": str(self.egress_log),
            "signed_by": self.signed_by,
        }  # fmt: skip


def output_name(cfg: BuildConfig) -> str:
    return output.output_name(cfg.release, cfg.arch, cfg.profile)


def build_image(cfg: BuildConfig, **options: Any) -> BuildResult:
    """``build(BuildRequest.resolve(cfg, **options))``: options as in BuildRequest."""
    return build(BuildRequest.resolve(cfg, **options))


def build(request: BuildRequest) -> BuildResult:
    """Fetch, render, provision (or find a provisioned layer), resume, verify,
    describe, generalize, compact, publish.

    Provisioning runs in stages (stages.py), each saved as a layer
    (layercache.py) and the next run in a VM resumed from it; the build goes on
    in a VM resumed from the last one. A rebuild resumes the deepest layer its
    inputs still match and runs only the stages above. The build VM's only
    network is a proxy on the host with the build policy (package archives,
    PyPI, npm); its audit log is published as egress.jsonl.
    """
    cfg = request.cfg
    request.check()
    hosttools.require([*hosttools.vm_tools(cfg.arch), "gpgv"], "build-image")
    policy = request.egress_policy.load()  # a bad policy fails before anything is fetched
    ctx = _new_context(request)
    with _build_scope(ctx):
        with step("fetch", ctx.timings):
            _fetch(ctx)
        with step("render", ctx.timings):
            seed_iso = _render(ctx)
        with step("disk", ctx.timings):
            plan = ctx.plan = _plan_vm(ctx, seed_iso)
        layers: list[layercache.Layer] = []  # the chain in use, lowest first
        if request.package_cache:
            with step("layer", ctx.timings):
                keys = [(s.name, s.key) for s in plan.stages]
                layers += layercache.lookup_chain(cfg.cache_dir, plan.slot, keys)
        try:
            with guestnet.serve_for_vm(policy, ctx.sockets, ctx.egress_log):
                running = contextlib.ExitStack()
                vm, session = _provision_or_resume(ctx, running, layers)
                layer = layers[-1]
                with running:
                    with _held_on_failure(ctx, vm, layer.meta.host_public_key):
                        with step("verify", ctx.timings):
                            ctx.info["guest"] = _guest_facts(session)
                            ctx.info["verify"] = _verify(ctx, session, plan.profile)
                        with step("manifest", ctx.timings):
                            found = _describe(ctx, session)
                    _save_guest_logs(ctx, session)
                    with step("generalize", ctx.timings):
                        _generalize(session)
                    session.close()
                    with step("shutdown", ctx.timings):
                        vm.shutdown(timeout=300)
            with step("compact", ctx.timings):
                image_path, raw_path = _compact(ctx)
            with step("publish", ctx.timings):
                result = _publish(ctx, layers, image_path, raw_path)
            if request.package_cache:
                with step("cache", ctx.timings):
                    if plan.shares is not None:
                        _fill_cache(cfg.cache_dir, request.cache_key, plan.shares, found)
                    _keep_layers(cfg.cache_dir, layers, plan.stages)
        finally:
            for held in layers:
                held.release()
        return result


def _fetch(ctx: BuildContext) -> None:
    request = ctx.request
    ctx.base = base = fetch.fetch(
        request.cfg, offline=request.offline,
        insecure_skip_signature=request.insecure_skip_signature,
    )  # fmt: skip
    ctx.info["base"] = base.to_json()
    lock = request.lock
    if lock is not None:
        lockfile.check_base(lock, base.sha256)
        ctx.info["lock"] = {
            "apt": len(lock.apt), "pip": len(lock.pip), "npm": len(lock.npm),
            "snapshot": lock.snapshot,
        }  # fmt: skip


def _render(ctx: BuildContext) -> Path:
    """This build's keys, the cloud-init documents, and the seed ISO holding them."""
    request = ctx.request
    ctx.client_key = ssh.KeyPair.generate(f"{BUILD_USER}@sandbox-image-{ctx.build_id}")
    ctx.host_key = ssh.KeyPair.generate(f"host@sandbox-image-{ctx.build_id}")
    ctx.inputs = dataclasses.replace(
        build_inputs.build_inputs(
            request.cfg, request.distro, host_key=ctx.host_key,
            package_lists=request.package_lists, sources=request.sources,
            default_skills=request.default_skills, ca_certs=request.ca_certs,
            build_ssh_public_key=ctx.client_key.public_openssh,
        ),
        lock=request.lock,
        apt_snapshot=request.mirrors.apt_snapshot or _lock_snapshot(request.lock),
        apt_mirror=request.mirrors.apt, apt_mirror_key=request.mirrors.apt_key,
        pip_index=request.mirrors.pip, npm_registry=request.mirrors.npm,
        package_cache=request.package_cache,
    )  # fmt: skip
    files = cloudinit.render(ctx.inputs)
    cloudinit.validate_schema(files["user-data"])
    ctx.info["skills"] = [s.to_json() for s in skills.describe(ctx.inputs.skills_dirs)]
    ctx.info["ca_certs"] = [c.to_json() for c in request.ca_certs]
    seed_iso = ctx.work / "seed.iso"
    cloudinit.write_seed_iso(files, seed_iso)
    ctx.info["seed_sha256"] = sha256_file(seed_iso)
    return seed_iso


def _lock_snapshot(lock: lockfile.Lock | None) -> str | None:
    return lock.snapshot if lock is not None else None


def _plan_vm(ctx: BuildContext, seed_iso: Path) -> VMPlan:
    """The provisioning VM (writing straight into a new layer) and that layer's key."""
    request, cfg = ctx.request, ctx.cfg
    assert ctx.inputs is not None
    firmware = find_firmware(cfg.arch)
    accel_args, accel_reason = accel.accel_argv(cfg.accel, cfg.arch, cfg.cache_dir)
    ctx.info["accel"] = accel_reason
    log.info("accelerator: %s", accel_reason)
    ctx.boot_timeout, ctx.provision_timeout = accel.timeouts(
        accel_args, cfg.boot_timeout, cfg.provision_timeout
    )
    ctx.info["timeouts"] = {"boot": ctx.boot_timeout, "provision": ctx.provision_timeout}
    shares = (
        packagecache.prepare(cfg.cache_dir, request.cache_key, ctx.work)
        if request.package_cache
        else None
    )
    new_layer = ctx.work / "layers" / stages.SYSTEM
    new_layer.mkdir(parents=True)
    spec = qemu.VMSpec(
        arch=cfg.arch, cpus=cfg.cpus, memory=cfg.memory, disk=new_layer / layercache.DISK,
        firmware_code=firmware.code, firmware_vars=new_layer / layercache.VARS,
        accel=tuple(accel_args), serial_log=ctx.work / PROVISION_SERIAL,
        qmp_socket=ctx.sockets / "qmp.sock", qga_socket=ctx.sockets / "qga.sock",
        seed_iso=seed_iso, ssh_port=qemu.free_port(), net_restrict=True,
        guestfwd=guestnet.guest_forwards(ctx.sockets),
        # The build VM is thrown away if anything fails: no need to make
        # every guest write durable, and TCG builds spend less time in I/O.
        disk_cache="unsafe",
        shares=(shares.cache, shares.new) if shares else (),
    )  # fmt: skip
    layer_inputs = _layer_inputs(ctx, ctx.inputs, spec, firmware.code)
    profile = request.profile()
    ctx.info["apt_sources"] = [s.to_json() for s in profile.sources]
    return VMPlan(
        spec=spec, firmware=firmware, shares=shares,
        profile=profile,
        slot=layercache.slot(request.distro, cfg.release, cfg.arch, cfg.profile),
        stages=stages.plan(layer_inputs, cloudinit.render_stages(ctx.inputs),
                           locked=request.lock is not None),
    )  # fmt: skip


class _ResumeFailed(ImageError):
    """A layer's saved VM did not come back (damaged, or made by another QEMU)."""


class _StageFailed(ImageError):
    """A stage's script ended with an error."""


def _provision_or_resume(
    ctx: BuildContext, running: contextlib.ExitStack, layers: list[layercache.Layer]
) -> tuple[qemu.VM, ssh.Session]:
    """Run every stage ``layers`` (the cached chain, lowest first) lacks, each
    saved as a layer appended to ``layers``, then resume the build VM from the top.

    A cached layer that does not resume is removed and the build goes on from
    the layer below it (or provisions from scratch) instead of failing.
    """
    plan, base = ctx.plan, ctx.base
    assert plan is not None and base is not None and ctx.client_key and ctx.host_key
    for _attempt in range(len(plan.stages) + 1):
        try:
            while len(layers) < len(plan.stages):
                stage = plan.stages[len(layers)]
                if not layers:
                    layers.append(_provision(
                        ctx, plan.spec, base.path, plan.firmware.vars_template,
                        ctx.client_key, ctx.host_key, ctx.request.lock, plan.slot,
                        stage.key, stage.inputs))  # fmt: skip
                else:
                    layers.append(_next_stage(ctx, layers[-1], stage))
            _record_stages(ctx, layers)
            with step("resume", ctx.timings):
                return _resume(ctx, running, plan.spec, layers[-1], ctx.client_key)
        except _ResumeFailed as exc:
            running.close()
            layer = layers[-1]
            if not layer.cached:
                raise
            log.warning("provisioned layer %s (%s) did not resume: %s; removed, going on "
                        "from the stage below", layer.meta.key[:12], layer.meta.stage,
                        exc)  # fmt: skip
            layers.pop().release()
            layercache.remove(layer.path)
    raise AssertionError("unreachable: the last attempt runs every stage afresh")


def _record_stages(ctx: BuildContext, layers: list[layercache.Layer]) -> None:
    """build-info.json: which layer was resumed, which stages ran."""
    ctx.info["stages"] = [
        {"stage": layer.meta.stage, "key": layer.meta.key, "ran": not layer.cached,
         "made_by": layer.meta.build_id, "seconds": layer.meta.seconds,
         "rerun_of": layer.meta.rerun_of}
        for layer in layers
    ]  # fmt: skip
    cached = [layer.meta.stage for layer in layers if layer.cached]
    ctx.info["resumed_stage"] = cached[-1] if cached else None


def _next_stage(ctx: BuildContext, below: layercache.Layer,
                stage: stages.Stage) -> layercache.Layer:  # fmt: skip
    """Run ``stage`` on ``below``; or, when the cache holds this stage's layer of
    other inputs on the same ``below`` that the stage can be re-run on (a locked
    "libraries" of another lock: stages.py), its re-run form on that layer.
    A re-run that fails, or a layer that does not resume, falls back to the
    stage run on ``below``."""
    assert ctx.plan is not None
    earlier = None
    if ctx.request.package_cache and stage.rerun_key:
        earlier = layercache.lookup_rerunnable(ctx.request.cfg.cache_dir, ctx.plan.slot,
                                               stage.name, stage.rerun_key, below)  # fmt: skip
    if earlier is not None:
        try:
            layer = _run_stage(ctx, below, stage, on=earlier)
        except _ResumeFailed as exc:
            log.warning("provisioned layer %s (%s) did not resume: %s; removed, running the "
                        "stage on the stage below", earlier.meta.key[:12], stage.name,
                        exc)  # fmt: skip
            earlier.release()
            layercache.remove(earlier.path)
        except _StageFailed as exc:
            log.warning("re-running stage %s on layer %s failed (%s); running it on the stage "
                        "below", stage.name, earlier.meta.key[:12], exc.message)  # fmt: skip
            earlier.release()
        else:
            layer.holds = earlier  # its disk is an overlay on the earlier one until kept
            return layer
    return _run_stage(ctx, below, stage)


def _run_stage(ctx: BuildContext, below: layercache.Layer, stage: stages.Stage, *,
               on: layercache.Layer | None = None) -> layercache.Layer:  # fmt: skip
    """Resume the build VM from ``below``, run ``stage``'s script, save it as a new layer.

    ``on``: resume from this layer of the same stage instead (made on ``below``)
    and run the stage's re-run form there."""
    assert ctx.plan is not None and ctx.client_key is not None and stage.script is not None
    script = stage.script if on is None else stage.script.rerun
    assert script is not None
    start = below if on is None else on
    path = ctx.work / "layers" / stage.name
    shutil.rmtree(path, ignore_errors=True)  # an attempt on a layer that did not resume
    path.mkdir(parents=True)
    serial = ctx.work / f"serial-{stage.name}.log"
    egress_start = ctx.egress_log.stat().st_size if ctx.egress_log.exists() else 0
    timing = f"stage {stage.name}"
    with step(timing, ctx.timings), contextlib.ExitStack() as stack:
        vm, session = _resume(ctx, stack, ctx.plan.spec, start, ctx.client_key, into=path,
                              serial_log=serial)  # fmt: skip
        with contextlib.ExitStack() as hold:
            if on is None:  # a failed re-run is not the build's failure: it goes on
                hold.enter_context(_held_on_failure(ctx, vm, below.meta.host_public_key))
            output = _run_stage_script(ctx, session, script)
        session.close()
        vm.save_state(path / layercache.STATE)
        vm.quit()
    with (path / layercache.SERIAL).open("wb") as out:
        with serial.open("rb") as console:
            shutil.copyfileobj(console, out)
        form = "" if on is None else f", re-run on layer {on.meta.key[:12]}"
        out.write(f"\n--- stage {stage.name}{form}: the script's output ---\n".encode())
        out.write(output.encode())
    with ctx.egress_log.open("rb") as log_in, (path / layercache.EGRESS).open("wb") as log_out:
        log_in.seek(egress_start)
        shutil.copyfileobj(log_in, log_out)
    meta = layercache.LayerMeta(
        format=layercache.FORMAT, key=stage.key, slot=below.meta.slot,
        build_id=ctx.build_id, created=layercache.now_utc(), device_hash=below.meta.device_hash,
        host_public_key=below.meta.host_public_key, archive=[],
        locked=ctx.request.lock is not None, seconds={timing: ctx.timings[timing]},
        inputs=stage.inputs, stage=stage.name, parent=layercache.parent_ref(below.meta),
        rerun_key=stage.rerun_key, rerun_of=None if on is None else layercache.parent_ref(on.meta),
    )  # fmt: skip
    layercache.write_meta(path, meta)
    return layercache.Layer(path, meta, cached=False)


STAGE_DIR = "/var/tmp/sandbox-image-stage"


def _run_stage_script(ctx: BuildContext, session: ssh.Session,
                      script: cloudinit.StageScript) -> str:  # fmt: skip
    """Put the script and its payload in the guest, run it as root; its output."""
    session.run(f"rm -rf {STAGE_DIR} && install -d -m 0700 {STAGE_DIR}")
    session.write_file(f"{STAGE_DIR}/stage.sh", script.script)
    for name, data in sorted(script.payload.items()):
        session.write_file(f"{STAGE_DIR}/{name}", data)
    result = session.run(
        f"sudo -n sh {STAGE_DIR}/stage.sh {STAGE_DIR} 2>&1; status=$?; "
        f"sudo -n rm -rf {STAGE_DIR}; exit $status",
        timeout=ctx.provision_timeout, check=False,
    )  # fmt: skip
    if result.exit_status != 0:
        tail = "\n".join(result.stdout.strip().splitlines()[-30:])
        raise _StageFailed(
            f"stage {script.name} failed (exit code {result.exit_status}):\n{tail}",
            hint=f"the script is cloud-init/stage-{script.name}.sh.j2 as rendered for this "
            "build; build-image --keep-failed keeps the VM for a look",
        )
    return result.stdout


def _describe(ctx: BuildContext, session: ssh.Session) -> manifest.Manifest:
    """manifest.json and the SBOM from what the guest holds (checked against a lock)."""
    found = _collect_manifest(ctx, session)
    if ctx.request.lock is not None:
        _check_against_lock(ctx.request.lock, found)
    _write_json(ctx.staging / "manifest.json", {**found.to_json(), "skills": ctx.info["skills"]})
    # Two SBOM formats from the same manifest: CycloneDX and SPDX 2.3.
    name = output_name(ctx.cfg)
    (ctx.staging / "sbom.json").write_text(manifest.sbom(found, name, image.__version__))
    (ctx.staging / SPDX_SBOM).write_text(
        manifest.spdx(found, name, image.__version__, created=ctx.started)
    )
    return found


def _compact(ctx: BuildContext) -> tuple[Path, Path | None]:
    name = output_name(ctx.cfg)
    image_path = ctx.staging / f"{name}.qcow2"
    _run_qemu_img(compact_argv(ctx.work / "disk.qcow2", image_path))
    raw_path = None
    if ctx.request.raw:
        raw_path = ctx.staging / f"{name}.raw"
        _run_qemu_img(["convert", "-O", "raw", str(ctx.work / "disk.qcow2"), str(raw_path)])
    return image_path, raw_path


def _provision(
    ctx: BuildContext, spec: qemu.VMSpec, base: Path, vars_template: Path,
    client_key: ssh.KeyPair, host_key: ssh.KeyPair, lock: lockfile.Lock | None,
    slot: str, key: str, inputs: dict[str, Any],
) -> layercache.Layer:  # fmt: skip
    """Boot the base image with the seed, wait for cloud-init, save the VM as a new layer."""
    cfg = ctx.cfg
    path = spec.disk.parent
    qemu.create_overlay(base, spec.disk, cfg.disk_size)
    qemu.copy_vars(vars_template, spec.firmware_vars)
    with qemu.VM(spec, ctx.work / "qemu-provision.log") as vm:
        with step("boot", ctx.timings):
            session = ssh.wait_for_ssh(
                "127.0.0.1", spec.ssh_port, BUILD_USER, client_key,  # type: ignore[arg-type]
                host_key.public_openssh, timeout=ctx.boot_timeout, alive=vm.alive,
                describe_failure=lambda: _serial_report(spec.serial_log),
            )  # fmt: skip
        try:
            with step("provision", ctx.timings), _held_on_failure(ctx, vm, host_key.public_openssh):
                try:
                    _wait_for_cloud_init(ctx, session)
                except ImageError as exc:
                    if lock is not None:
                        _explain_locked_failure(ctx, exc)
                    raise
                archive = layercache.parse_archive_state(
                    session.run(layercache.ARCHIVE_STATE_SCRIPT).stdout)  # fmt: skip
        finally:
            session.close()
        with step("checkpoint", ctx.timings):
            vm.save_state(path / layercache.STATE)
            vm.quit()
    shutil.copyfile(spec.serial_log, path / layercache.SERIAL)
    shutil.copyfile(ctx.egress_log, path / layercache.EGRESS)
    meta = layercache.LayerMeta(
        format=layercache.FORMAT, key=key, slot=slot,
        build_id=ctx.build_id, created=layercache.now_utc(), device_hash=inputs["device_hash"],
        host_public_key=host_key.public_openssh, archive=archive, locked=lock is not None,
        seconds={k: ctx.timings[k] for k in ("boot", "provision") if k in ctx.timings},
        inputs=inputs,
    )  # fmt: skip
    layercache.write_meta(path, meta)
    return layercache.Layer(path, meta, cached=False)


# Stand-ins for the per-build SSH keys when the seed becomes part of a layer key:
# one fixed ed25519 key (all-zero seed; the OpenSSH format's random check bytes
# fixed too, so the text is the same in every process).
PLACEHOLDER_KEY = ssh.KeyPair(
    private_openssh="-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtz\n"
    "c2gtZWQyNTUxOQAAACA7aie8zrakLWKjqNAqbw1zZTIVdx3iQ6Y6wEihi1naKQAA\n"
    "AIhVJT1/VSU9fwAAAAtzc2gtZWQyNTUxOQAAACA7aie8zrakLWKjqNAqbw1zZTIV\n"
    "dx3iQ6Y6wEihi1naKQAAAEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"
    "ADtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdopAAAAAAECAwQF\n"
    "-----END OPENSSH PRIVATE KEY-----\n",
    public_openssh="ssh-ed25519 "
    "AAAAC3NzaC1lZDI1NTE5AAAAIDtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop placeholder",
)


def seed_digests(inputs: cloudinit.RenderInputs) -> dict[str, str]:
    """SHA-256 of each seed file as rendered with the placeholder keys: the seed
    without what is new in every build."""
    key = PLACEHOLDER_KEY
    files = cloudinit.render(dataclasses.replace(
        inputs, build_ssh_public_key=key.public_openssh,
        ssh_host_ed25519=(key.private_openssh, key.public_openssh)))  # fmt: skip
    return {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}


def _layer_inputs(
    ctx: BuildContext, inputs: cloudinit.RenderInputs, spec: qemu.VMSpec, firmware_code: Path
) -> dict[str, Any]:
    """Everything that decides what a provisioned guest holds, or whether its state loads."""
    request, cfg, lock = ctx.request, ctx.cfg, ctx.request.lock
    assert ctx.base is not None
    policy = {k: v for k, v in _policy_record(request.egress_policy).items() if k != "file"}
    return {
        "format": layercache.FORMAT, "toolkit": image.__version__,
        "distro": request.distro, "release": cfg.release, "arch": cfg.arch,
        "profile": cfg.profile, "base_sha256": ctx.base.sha256, "disk_size": cfg.disk_size,
        "seed": seed_digests(inputs),
        # The lock's apt part: its pip and npm pins are the "libraries" stage's.
        "lock_sha256": hashlib.sha256(lockfile.render(
            dataclasses.replace(lock, pip=(), npm=())).encode()).hexdigest() if lock else None,
        "egress_policy": policy,
        "qemu": vmstate.qemu_version(cfg.arch), "device_hash": vmstate.device_hash(spec),
        "firmware_sha256": sha256_file(firmware_code),
    }  # fmt: skip


def _policy_record(choice: guestnet.PolicyChoice) -> dict[str, Any]:
    """The egress policy as build-info.json records it."""
    return {
        "file": str(choice.file), "sha256": sha256_file(choice.file),
        "allow": list(choice.allow), "deny": list(choice.deny),
        "allow_addresses": list(choice.allow_addresses),
        "allow_ports": list(choice.allow_ports),
    }  # fmt: skip


def _resume(
    ctx: BuildContext, stack: contextlib.ExitStack, spec: qemu.VMSpec, layer: layercache.Layer,
    client_key: ssh.KeyPair, *, into: Path | None = None, serial_log: Path | None = None,
) -> tuple[qemu.VM, ssh.Session]:  # fmt: skip
    """Run the build VM again from ``layer`` with this build's own key, clock and entropy.

    ``into``: the folder of the layer a stage will write (its disk an overlay on
    ``layer``'s); by default the build's own disk, the one it publishes.
    _ResumeFailed: the saved VM did not come back."""
    final = into is None
    folder = ctx.work if into is None else into
    run_spec = dataclasses.replace(
        spec, disk=folder / ("disk.qcow2" if final else layercache.DISK),
        firmware_vars=folder / ("VARS.fd" if final else layercache.VARS),
        serial_log=serial_log or ctx.serial_log, incoming="defer",
    )  # fmt: skip
    qemu_log = ctx.work / ("qemu.log" if final else f"qemu-{folder.name}.log")
    try:
        layercache.check_resumable(layer.meta, vmstate.device_hash(run_spec))
        qemu.create_overlay(layer.path / layercache.DISK, run_spec.disk)
        qemu.copy_vars(layer.path / layercache.VARS, run_spec.firmware_vars)
        run_spec.firmware_vars.chmod(0o600)
        vm = stack.enter_context(qemu.VM(run_spec, qemu_log))
        vm.resume_from(layer.path / layercache.STATE)
        with GuestAgent(run_spec.qga_socket) as agent:  # type: ignore[arg-type]
            agent.wait_ready(120, vm.alive)
            script = resume_script(client_key.public_openssh, time.time_ns())
            result = agent.exec(["/bin/sh", "-c", script], input=os.urandom(64), timeout=120)
            if result.exit_code != 0:
                raise ImageError(
                    "preparing the resumed build VM failed: "
                    f"{result.stderr.decode(errors='replace').strip()[-500:]}"
                )
        session = ssh.wait_for_ssh(
            "127.0.0.1", run_spec.ssh_port, BUILD_USER, client_key,  # type: ignore[arg-type]
            layer.meta.host_public_key, timeout=120, alive=vm.alive,
            describe_failure=lambda: _serial_report(run_spec.serial_log),
        )  # fmt: skip
    except ImageError as exc:
        raise _ResumeFailed(exc.message, exc.hint) from exc
    stack.callback(session.close)
    if final:
        ctx.info["provisioned_layer"] = {
            "key": layer.meta.key, "stage": layer.meta.stage, "reused": layer.cached,
            "made_by": layer.meta.build_id, "created": layer.meta.created,
            "archive": layer.meta.archive, "locked": layer.meta.locked,
            "provision_seconds": layer.meta.seconds,
        }  # fmt: skip
    return vm, session


APT_TIMERS = ("apt-daily.timer", "apt-daily-upgrade.timer")


def resume_script(build_public_key: str, now_ns: int) -> str:
    """One guest-agent round trip: fresh entropy, the clock, this build's SSH key."""
    keys = f"/home/{BUILD_USER}/.ssh/authorized_keys"
    return " && ".join([
        # A layer may be resumed by many builds: each mixes in the host's bytes.
        vmstate.RESEED_RNG,
        # The clock is about to jump by as long as the layer was kept: apt's
        # daily timers would fire and could upgrade packages mid-build. Stopped
        # for this boot only (the image's units stay enabled).
        f"{{ systemctl stop {' '.join(APT_TIMERS)} 2>/dev/null || true; }}",
        f"date -u -s @{now_ns // 1_000_000_000}.{now_ns % 1_000_000_000:09d} > /dev/null",
        # Only this build's key logs in (the file is the build user's already).
        f"printf '%s\\n' {shlex.quote(build_public_key)} > {keys}",
    ])  # fmt: skip


def _keep_layers(cache_dir: Path, layers: list[layercache.Layer],
                 planned: list[stages.Stage]) -> None:  # fmt: skip
    """The build published: keep the layers it made that a later build may reuse,
    lowest first (one whose layer below was not kept is not either)."""
    below: Path | None = None
    for layer, stage in zip(layers, planned, strict=True):
        if layer.cached:
            below = layer.path
            continue
        if not stage.keep:
            log.info("provisioned layer (%s) not kept, nor any above it: %s", stage.name,
                     stage.why_not_kept)  # fmt: skip
            return
        try:
            kept = layercache.commit(layer, cache_dir, below=below)
        except (OSError, ImageError) as exc:
            log.warning("provisioned layer (%s) not kept: %s", stage.name, exc)
            return
        if kept is None:
            log.info("provisioned layer (%s) not kept: another build keeps one for the same "
                     "inputs (and the layers above this one are overlays on this build's)",
                     stage.name)  # fmt: skip
            return
        log.info("provisioned layer (%s) kept: %s (%s)", stage.name, kept,
                 format_size(layercache.allocated(kept)))  # fmt: skip
        below = kept


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


def _new_context(request: BuildRequest) -> BuildContext:
    cfg = request.cfg
    build_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    out = cfg.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = cfg.cache_dir / "work" / build_id
    work.mkdir(parents=True)
    staging = out / f".staging-{build_id}"
    staging.mkdir()
    ctx = BuildContext(request, build_id, work, guestnet.make_socket_dir(), staging, out)
    ctx.info.update(build_id=build_id, toolkit_version=image.__version__,
                    config=cfg.to_json(), egress_policy=_policy_record(request.egress_policy),
                    package_cache={"enabled": request.package_cache,
                                   "key": request.cache_key},
                    mirrors=request.mirrors.to_json())  # fmt: skip
    return ctx


@contextlib.contextmanager
def _build_scope(ctx: BuildContext) -> Iterator[None]:
    """On any failure or interruption: logs kept, staging and scratch removed.

    Signals are the caller's business (tasks/ turns SIGTERM into an unwinding
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
        shutil.rmtree(ctx.sockets, ignore_errors=True)


def _keep_logs(ctx: BuildContext, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in (PROVISION_SERIAL, "serial.log", "qemu-provision.log", "qemu.log", EGRESS_LOG):
        with contextlib.suppress(OSError):
            shutil.copyfile(ctx.work / name, dest / name)
    for path in (ctx.staging / "logs").glob("*"):
        with contextlib.suppress(OSError):
            shutil.copyfile(path, dest / path.name)


@contextlib.contextmanager
def _held_on_failure(ctx: BuildContext, vm: qemu.VM, host_public_key: str) -> Iterator[None]:
    """With --keep-failed, a failure here keeps ``vm`` up for a shell before it unwinds."""
    try:
        yield
    except ImageError as exc:
        if ctx.request.keep_failed and vm.alive() and vm.spec.ssh_port:
            _hold_for_debugging(ctx, vm.spec.ssh_port, host_public_key, exc)
        raise


def _hold_for_debugging(ctx: BuildContext, port: int, host_public_key: str,
                        exc: ImageError) -> None:  # fmt: skip
    """Print how to get a shell in the failed VM (loopback only; this build's own key,
    its host key pinned), then wait for Ctrl-C or SIGTERM. The key goes with the
    build's work folder."""
    from image.source.mirror import wait_for_stop_signal

    assert ctx.client_key is not None
    way_in = ctx.work / "keep-failed"
    way_in.mkdir(mode=0o700, exist_ok=True)
    key = way_in / "build_key"
    key.touch(mode=0o600)
    key.write_text(ctx.client_key.private_openssh)
    known = way_in / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {' '.join(host_public_key.split()[:2])}\n")
    command = shlex.join(["ssh", "-i", str(key), "-o", f"UserKnownHostsFile={known}",
                          "-o", "IdentitiesOnly=yes", "-p", str(port),
                          f"{BUILD_USER}@127.0.0.1"])  # fmt: skip
    first_line = exc.message.splitlines()[0] if exc.message else "the build failed"
    print(f"build failed: {first_line}\n"
          f"--keep-failed: the build VM is still running; a shell in it (sudo works):\n"
          f"  {command}\n"
          f"  cloud-init's logs: /var/log/cloud-init.log, /var/log/cloud-init-output.log\n"
          f"Ctrl-C (or SIGTERM) stops the VM and ends the build.",
          file=sys.stderr, flush=True)  # fmt: skip
    wait_for_stop_signal()


def _serial_report(serial_log: Path) -> str:
    return f"--- serial console (tail) ---\n{qemu.serial_tail(serial_log)}"


# How the seed's own shell steps start a line they print (the apt-source key script).
OWN_NOTE = "sandbox-image: "
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
    result = session.run("cloud-init status --wait --long", timeout=ctx.provision_timeout,
                         check=False)  # fmt: skip
    marker = session.run(f"test -e {SYSTEM_MARKER}", check=False).exit_status == 0
    if result.exit_status == 0 and marker:
        return
    status_text = session.sudo("cat /run/cloud-init/status.json", check=False).stdout
    try:
        modules = failing_modules(json.loads(status_text))
    except json.JSONDecodeError:
        modules = []
    output_tail = session.sudo("tail -n 40 /var/log/cloud-init-output.log", check=False).stdout
    # What the seed's own steps said (e.g. a third-party key refused) may lie further up.
    said = session.sudo(
        f"grep -h '^{OWN_NOTE}' /var/log/cloud-init-output.log | tail -n 10", check=False
    ).stdout.strip()
    _save_guest_logs(ctx, session)
    what = f"module(s) {', '.join(modules)} failed" if modules else "provisioning did not finish"
    if result.exit_status == 0 and not marker:
        what = f"cloud-init finished but {SYSTEM_MARKER} was not written"
    hint = "fix the package list or template named above; full guest logs are kept"
    denied = guestnet.summarize(ctx.egress_log).denied
    if denied:
        hint = (f"the build proxy denied {'; '.join(denied)}: if the build needs it, add "
                "it with --allow NAME, or --allow-address CIDR for an internal-address "
                f"rule (or --policy FILE); {hint}")  # fmt: skip
    notes = f"--- what the build's steps said ---\n{said}\n" if said else ""
    raise ImageError(
        f"cloud-init: {what}\n{result.stdout.strip()}\n{notes}"
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
    # The guest's own-arch filters, exercised as the unprivileged agent user, and the
    # skills seen from inside the sandbox: two sandboxes at once (each is mostly
    # interpreter start-up, and the build VM has two vCPUs).
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        skills_check = pool.submit(_verify_skills, session, [s["name"] for s in ctx.info["skills"]])
        self_test = session.run(
            f"sudo -n -u agent {shlex.join(guestfiles.SELF_TEST_COMMAND)}", check=False
        )
        skills_result = skills_check.result()
    outcome = parse_self_test(self_test.stdout)
    results["sandbox_self_test"] = outcome
    if self_test.exit_status != 0 or not outcome.get("ok"):
        raise ImageError(
            f"verify: the in-guest sandbox self-test failed (exit {self_test.exit_status}):\n"
            f"{self_test.stdout[-2000:]}{self_test.stderr[-2000:]}",
            hint="see docs/sandbox.md; the guest needs bwrap, socat, python3 and user namespaces",
        )
    results["skills"] = skills_result
    return results


# Run as the agent inside the sandbox: the variable is set there, the index lists
# the skills, each SKILL.md is readable, and nothing under the folder is writable.
SKILLS_CHECK = (
    'd="${SKILLS_DIR:?SKILLS_DIR is not set}"; cat "$d/index.json"; '
    'for f in "$d"/*/SKILL.md; do test -r "$f" || exit 3; done; '
    'if touch "$d/.w" 2>/dev/null || touch "$d/pdf/.w" 2>/dev/null; then exit 4; fi'
)


def _verify_skills(session: ssh.Session, expected: list[str]) -> dict[str, Any]:
    """The skills are in place, indexed, read-only, and found from inside the sandbox."""
    agent = guest.AGENT_USER
    done = session.sudo(
        f"w=$(runuser -u {agent} -- mktemp -d) && runuser -u {agent} -- {guest.LAUNCHER} "
        f'--profile agent --workspace "$w" -- sh -c {shlex.quote(SKILLS_CHECK)}',
        check=False,
    )
    try:
        index = json.loads(done.stdout)
        listed = [s["name"] for s in index["skills"]]
    except (json.JSONDecodeError, KeyError, TypeError):
        listed = None
    if done.exit_status != 0 or listed != expected:
        raise ImageError(
            f"verify: skills: expected {expected} indexed and read-only in the sandbox "
            f"(exit {done.exit_status}), index lists {listed}: {done.stderr.strip()[-300:]}",
            hint="see docs/skills.md; the config stage unpacks them from skills.tar.gz",
        )
    return {"ok": True, "skills": listed, "index": f"{skills.GUEST_DIR}/{skills.INDEX_JSON}"}


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


# What build-info records of the provisioned guest: the cloud-init that ran the
# seed (behaviour differs across 22.x/24.x/25.x), the system and its kernel.
GUEST_FACTS = {
    # Its version module alone: `cloud-init --version` imports all of cloud-init
    # first, ~4 s in a just-resumed TCG guest.
    "cloud_init": "python3 -c 'from cloudinit import version; print(version.version_string())' "
    "2>/dev/null || cloud-init --version 2>&1 | sed 's/^[^0-9]*//'",
    "os": '. /etc/os-release && echo "$PRETTY_NAME"',
    "kernel": "uname -r",
}


def _guest_facts(session: ssh.Session) -> dict[str, str]:
    return {
        name: session.run(command, check=False).stdout.strip()[:200]
        for name, command in GUEST_FACTS.items()
    }


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


GUEST_LOGS_COPY = "/var/tmp/sandbox-image-logs"  # generalize empties /var/tmp


def _save_guest_logs(ctx: BuildContext, session: ssh.Session) -> None:
    """The guest's cloud-init logs into the output's logs/ (one sudo: copies the
    build user may read, then SFTP; a missing log is saved empty)."""
    logs = ctx.staging / "logs"
    logs.mkdir(exist_ok=True)
    copy = GUEST_LOGS_COPY
    session.sudo(
        f"rm -rf {copy} && install -d -o {BUILD_USER} -m 0700 {copy} && "
        f"for f in {' '.join(GUEST_LOGS)}; do "
        f'if [ -f "$f" ]; then install -o {BUILD_USER} -m 0600 "$f" {copy}/; fi; done',
        check=False,
    )  # fmt: skip
    for path in GUEST_LOGS:
        name = Path(path).name
        try:
            data = session.read_file(f"{copy}/{name}")
        except OSError:
            data = b""
        (logs / name).write_text(data.decode(errors="replace"))


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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _provenance(ctx: BuildContext, sums: dict[str, str]) -> str:
    """The build's in-toto Statement: SHA256SUMS' files and what made them (see provenance.py)."""
    request, cfg, base, inputs = ctx.request, ctx.cfg, ctx.base, ctx.inputs
    assert base is not None and inputs is not None
    public = provenance.without_credentials  # a provenance is public: no user:token@ in URLs
    deps: list[dict[str, Any]] = [
        {"name": "base-image", "uri": public(base.url), "digest": {"sha256": base.sha256},
         "annotations": {"serial": base.serial, "signer": base.signer or "(not checked)"}},
    ]  # fmt: skip
    if base.sums is not None:
        deps.append({"name": "base-image/SHA256SUMS", "uri": public(base.sums.url),
                     "digest": {"sha256": base.sums.sha256}})  # fmt: skip
        if base.sums.signature_sha256:
            deps.append({"name": "base-image/SHA256SUMS.gpg",
                         "uri": public(base.sums.signature_url),
                         "digest": {"sha256": base.sums.signature_sha256}})  # fmt: skip
    # The seed as anyone can re-render it: with placeholder keys for the per-build ones.
    deps += [
        {"name": f"seed/{n}", "digest": {"sha256": h}} for n, h in seed_digests(inputs).items()
    ]
    lists = request.package_lists
    deps += [
        {"name": f"package-lists/{p.relative_to(lists).as_posix()}",
         "digest": {"sha256": sha256_file(p)}}
        for p in sorted(lists.rglob("*")) if p.is_file()
    ]  # fmt: skip
    if request.lock is not None:
        text = lockfile.render(request.lock).encode()
        deps.append({"name": "lock", "digest": {"sha256": hashlib.sha256(text).hexdigest()}})
    policy = ctx.info["egress_policy"]
    deps.append({"name": "egress-policy", "digest": {"sha256": policy["sha256"]},
                 "annotations": {"file": Path(policy["file"]).name}})  # fmt: skip
    deps += [{"name": f"skills/{s['name']}", "digest": {"sha256": s["sha256"]}}
             for s in ctx.info.get("skills") or []]  # fmt: skip
    deps += [{"name": f"ca-cert/{c.name}", "digest": {"sha256": c.sha256}}
             for c in request.ca_certs]  # fmt: skip
    source = provenance.toolkit_source(TOOLKIT_ROOT, request.source_url)
    if source is not None:
        deps.append(source.dependency())
    staging = ctx.staging
    byproducts = {"build-info.json": sha256_file(staging / "build-info.json")}
    byproducts |= {f"logs/{p.name}": sha256_file(p)
                   for p in sorted((staging / "logs").iterdir()) if p.is_file()}  # fmt: skip
    qemu_version = vmstate.qemu_version(cfg.arch)
    layer = ctx.info.get("provisioned_layer") or {}
    return provenance.statement(
        subjects=sums,
        external={
            "distro": request.distro, "release": cfg.release, "arch": cfg.arch,
            "profile": cfg.profile, "serial": base.serial, "mirror": public(cfg.mirror),
            "insecure_skip_signature": request.insecure_skip_signature,
            "raw": request.raw, "default_skills": request.default_skills,
            "mirrors": request.mirrors.to_json(),
        },
        internal={"accel": str(ctx.info.get("accel", "")), "qemu": qemu_version,
                  "cpus": cfg.cpus, "memory": cfg.memory, "disk_size": cfg.disk_size,
                  "package_cache": request.package_cache,
                  "provisioned_layer": {k: v for k, v in layer.items()
                                        if k in ("key", "reused", "made_by")},
                  # Which build made each stage's layer: an incremental build's
                  # lower stages came from an earlier one.
                  "stages": [{k: s.get(k) for k in ("stage", "key", "ran", "made_by", "rerun_of")}
                             for s in ctx.info.get("stages") or []]},
        dependencies=deps,
        builder_id=request.builder_id or provenance.default_builder_id(),
        builder_version={"sandbox-image": image.__version__, "qemu": qemu_version},
        invocation_id=ctx.build_id,
        started=ctx.started,
        finished=datetime.datetime.now(datetime.timezone.utc),
        byproducts=byproducts,
    )  # fmt: skip


def _join(parts: list[Path], dest: Path, separator: bytes = b"") -> None:
    with dest.open("wb") as out:
        for number, part in enumerate(parts):
            if number:
                out.write(separator)
            with part.open("rb") as f:
                shutil.copyfileobj(f, out)


def _publish(
    ctx: BuildContext, layers: list[layercache.Layer], image_path: Path, raw_path: Path | None
) -> BuildResult:
    staging = ctx.staging
    # The records of the whole build: each stage's (kept in its layer, also when
    # an earlier build made it) and this build's own after the last resume.
    layer = layers[-1]
    parts = [(f"--- stage {held.meta.stage}: layer {held.meta.key[:12]} "
              f"(build {held.meta.build_id}) ---\n", held.path / layercache.SERIAL)
             for held in layers]  # fmt: skip
    parts.append(
        (
            f"--- build {ctx.build_id}: resumed from provisioned layer "
            f"{layer.meta.key[:12]} (build {layer.meta.build_id}) ---\n",
            ctx.serial_log,
        )
    )
    with (staging / "logs" / "serial.log").open("wb") as joined:
        for header, part in parts:
            joined.write(("\n" if joined.tell() else "").encode() + header.encode())
            with part.open("rb") as f:
                shutil.copyfileobj(f, joined)
    # The downloads: those of the stages this build resumed, then its own (the
    # stages it ran included).
    _join(
        [held.path / layercache.EGRESS for held in layers if held.cached] + [ctx.egress_log],
        staging / EGRESS_LOG,
    )
    ctx.info["egress"] = guestnet.summarize(staging / EGRESS_LOG).to_json()
    artifacts = [p for p in (image_path, raw_path) if p is not None]
    artifacts += [staging / "manifest.json", staging / "sbom.json", staging / SPDX_SBOM,
                  staging / EGRESS_LOG]  # fmt: skip
    sums = {p.name: sha256_file(p) for p in artifacts}
    ctx.info["outputs"] = sums
    ctx.info["timings"] = ctx.timings
    ctx.info["steps"] = output.steps_record(ctx.timings)
    # The report shows the hashes above, so it is made after them and listed last.
    (staging / report.REPORT).write_text(report.render_output(staging, ctx.info), "utf-8")
    sums[report.REPORT] = sha256_file(staging / report.REPORT)
    (staging / "SHA256SUMS").write_text("".join(f"{h} *{n}\n" for n, h in sums.items()))
    sign_key = ctx.request.sign_key
    with signatures.signer(sign_key) if sign_key else contextlib.nullcontext() as who:
        ctx.info["provenance"] = provenance.FILE
        ctx.info["signed_by"] = who.fingerprint if who else None
        _write_json(staging / "build-info.json", ctx.info)
        (staging / provenance.FILE).write_text(_provenance(ctx, sums))
        if who is not None:
            for signed in ("SHA256SUMS", provenance.FILE):
                signatures.sign(who, staging / signed)
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
        manifest=out / "manifest.json", sbom=out / "sbom.json", sbom_spdx=out / SPDX_SBOM,
        egress_log=out / EGRESS_LOG, provenance=out / provenance.FILE,
        signed_by=ctx.info.get("signed_by"),
        build_info=out / "build-info.json", sha256sums=out / "SHA256SUMS",
        timings=ctx.timings,
    )  # fmt: skip
