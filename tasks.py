"""The invoke tasks: parse flags -> load the config once -> call image.*.

Keep this file thin: logic lives in the image package where it can be tested
without invoke. User errors (ImageError) become a clean message and exit 1;
a stage that does not exist yet exits 2. Tracebacks only with --debug.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from image import config, console, hosttools, run
from image.errors import ImageError, NotBuiltYet
from image.vm import accel

ROOT = Path(__file__).resolve().parent


def _debug() -> bool:
    return bool(os.environ.get("SANDBOX_IMAGE_DEBUG")) or logging.getLogger().isEnabledFor(
        logging.DEBUG
    )


class _Terminated(KeyboardInterrupt):
    """SIGTERM unwinds like Ctrl-C, so every `finally` and context manager runs."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    console.setup_logging(_debug())
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    except NotBuiltYet as exc:
        if _debug():
            raise
        console.err.print(f"[bold yellow]not available:[/] {exc.message}\nhint: {exc.hint}")
        raise Exit(code=2) from None
    except ImageError as exc:
        if _debug():
            raise
        # Messages may quote a guest (serial log, cloud-init output): shown, not obeyed.
        console.err.print(f"[bold red]error:[/] {console.markup_safe(exc.message)}",
                          markup=True, highlight=False)  # fmt: skip
        if exc.hint:
            console.err.print(f"[bold]hint:[/] {console.markup_safe(exc.hint)}")
        raise Exit(code=1) from None
    except _Terminated:
        console.err.print("terminated (SIGTERM); cleaned up")
        raise Exit(code=143) from None
    except KeyboardInterrupt:
        console.err.print("interrupted; cleaned up")
        raise Exit(code=130) from None


def _config(c: Context, **cli: Any) -> config.Resolved:
    section = c.config.get("sandbox_image", None)
    file_values = dict(section) if section else {}
    return config.load(cli, file_values)


CONFIG_HELP = {
    "arch": "guest architecture: arm64 (default) or amd64",
    "release": "Ubuntu release code name (jammy)",
    "serial": "cloud image serial YYYYMMDD or latest",
    "mirror": "base URL (https, http, file) laid out like cloud-images.ubuntu.com/releases",
    "keyring": "keyring (armored or binary) that signs SHA256SUMS; needs --fingerprint",
    "fingerprint": "accepted signer fingerprint(s), comma-separated",
    "profile": "package profile: full, minimal, smoke",
    "cpus": "vCPUs of the VM",
    "memory": "guest RAM, e.g. 4G",
    "disk_size": "root disk size, e.g. 10G",
    "cache_dir": "cache directory",
    "output_dir": "output directory",
    "accel": "auto, kvm, hvf or tcg",
    "json": "print a JSON result as the last line",
}


EGRESS_HELP = {
    "policy": "egress policy file (docs/proxy.md); flags below add to it",
    "allow": "also allow this name or *.suffix (repeatable)",
    "deny": "also deny this name or *.suffix (repeatable)",
    "allow_address": "also allow connecting to this address/CIDR (repeatable)",
    "allow_port": "also allow this port besides 80 and 443 (repeatable)",
    "audit_log": "append the egress audit log (JSON lines) here",
}


def _policy_choice(
    policy: str | None, default: Path, allow: list[str] | None, deny: list[str] | None,
    allow_address: list[str] | None, allow_port: list[str] | None,
) -> Any:  # fmt: skip
    from image.egress import guestnet

    return guestnet.PolicyChoice(
        Path(policy) if policy else default, tuple(allow or ()), tuple(deny or ()),
        tuple(allow_address or ()), tuple(allow_port or ()),
    )  # fmt: skip


@task(help={"json": CONFIG_HELP["json"], **{k: v for k, v in CONFIG_HELP.items() if k != "json"}})
def config_(
    c: Context,
    arch: str | None = None,
    release: str | None = None,
    serial: str | None = None,
    mirror: str | None = None,
    keyring: str | None = None,
    fingerprint: str | None = None,
    profile: str | None = None,
    cpus: int | None = None,
    memory: str | None = None,
    disk_size: str | None = None,
    cache_dir: str | None = None,
    output_dir: str | None = None,
    accel: str | None = None,
    json: bool = False,
) -> None:
    """Print the effective configuration and where each value came from."""
    with _user_errors():
        resolved = _config(
            c,
            arch=arch,
            release=release,
            serial=serial,
            mirror=mirror,
            keyring=keyring,
            fingerprints=fingerprint,
            profile=profile,
            cpus=cpus,
            memory=memory,
            disk_size=disk_size,
            cache_dir=cache_dir,
            output_dir=output_dir,
            accel=accel,
        )
        values = resolved.config.to_json()
        if json:
            console.print_json({"config": values, "sources": dict(resolved.sources)})
            return
        width = max(map(len, values))
        for name, value in values.items():
            shown = config.format_size(value) if name in ("memory", "disk_size") else value
            print(f"{name:<{width}}  {shown!s:<48}  ({resolved.sources[name]})")


config_.__name__ = "config"


@task(
    help={"install": "apt-get install the missing tools (needs root)", "json": CONFIG_HELP["json"]}
)
def doctor(c: Context, install: bool = False, json: bool = False) -> None:
    """Check every host tool the pipeline uses, and which accelerator really works."""
    from rich.table import Table

    with _user_errors():
        if install:
            installed = hosttools.install_missing()
            if installed:
                console.log.info("installed: %s", ", ".join(sorted({t.package for t in installed})))
        table = Table(title="host tools")
        for col in ("tool", "status", "version", "used for", "install"):
            table.add_column(col)
        rows = []
        for tool in hosttools.TOOLS:
            found = tool.found()
            version = tool.version() if found else ""
            fix = "" if found else hosttools.fix_for(tool)
            rows.append(
                {
                    "tool": tool.name,
                    "found": found,
                    "version": version,
                    "used_for": tool.used_for,
                    "install": fix,
                }
            )
            table.add_row(
                tool.name,
                "[green]found[/]" if found else "[red]missing[/]",
                version,
                tool.used_for,
                fix,
            )
        arch = accel.host_arch()
        try:
            verdict = accel.probe(arch)
            summary = verdict.summary()
        except ImageError as exc:  # no firmware: the probe cannot run
            verdict, summary = None, f"not probed: {exc.message}"
        if json:
            console.print_json(
                {
                    "tools": rows,
                    "accel": {
                        "summary": summary,
                        "verdict": verdict.verdict.value if verdict else None,
                    },
                }
            )
        else:
            console.err.print(table)
            console.err.print(f"accelerator ({arch} guests): {summary}")
            absent = [r for r in rows if not r["found"]]
            if absent:
                console.err.print(f"missing {len(absent)} tool(s); as root: ./inv doctor --install")
        if any(not r["found"] for r in rows):
            raise Exit(code=1)


def _not_built(stage: str, issue: int) -> None:
    with _user_errors():
        raise NotBuiltYet(stage, issue)


# No auto short flags: --insecure-skip-signature must never be one typo ("-i") away.
@task(
    auto_shortflags=False,
    help={
        **{
            k: CONFIG_HELP[k]
            for k in (
                "arch",
                "release",
                "serial",
                "mirror",
                "keyring",
                "fingerprint",
                "cache_dir",
                "json",
            )
        },
        "offline": "use only cached SHA256SUMS and images; no network",
        "insecure_skip_signature": "do NOT check the signature of SHA256SUMS (loud; recorded)",
    },
)
def fetch(
    c: Context,
    arch: str | None = None,
    release: str | None = None,
    serial: str | None = None,
    mirror: str | None = None,
    keyring: str | None = None,
    fingerprint: str | None = None,
    cache_dir: str | None = None,
    offline: bool = False,
    insecure_skip_signature: bool = False,
    json: bool = False,
) -> None:
    """Download and verify the Ubuntu cloud image (cached, resumable); print its path."""
    from image.source.fetch import fetch as fetch_image

    with _user_errors():
        resolved = _config(
            c,
            arch=arch,
            release=release,
            serial=serial,
            mirror=mirror,
            keyring=keyring,
            fingerprints=fingerprint,
            cache_dir=cache_dir,
        )
        result = fetch_image(
            resolved.config, offline=offline, insecure_skip_signature=insecure_skip_signature
        )
        if json:
            console.print_json(result.to_json())
        else:
            print(result.path)


@task(help={"profile": CONFIG_HELP["profile"], "json": CONFIG_HELP["json"]})
def packages(c: Context, profile: str | None = None, json: bool = False) -> None:
    """Show a package profile: groups, explicit counts, expected installed count."""
    from image.build import packages as package_lists

    with _user_errors():
        cfg = _config(c, profile=profile).config
        loaded = package_lists.load_profile(cfg.profile)
        if json:
            console.print_json(loaded.summary())
        else:
            print(package_lists.format_summary(loaded))


def _render_inputs(
    cfg: config.BuildConfig,
    distro: str,
    ssh_key: str | None,
    hostname: str,
    apt_mirror: str | None,
    apt_proxy: str | None,
    apt_snapshot: str | None,
    skills_url: str | None,
    skills_sha256: str | None,
) -> Any:
    from image.build import cloudinit, skills

    skills_dir = cfg.skills
    if skills_url or skills_sha256:
        if not (skills_url and skills_sha256):
            raise ImageError("--skills-url needs --skills-sha256 (and the other way round)")
        if skills_dir is not None:
            raise ImageError("give --skills DIR or --skills-url, not both")
        skills_dir = skills.fetch(skills_url, skills_sha256, cfg.cache_dir)
    key = ""
    if ssh_key:
        try:
            key = Path(ssh_key).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ImageError(
                f"cannot read the SSH public key {ssh_key}: {exc.strerror}",
                hint="pass the path of a .pub file",
            ) from None
    return cloudinit.RenderInputs(
        profile=cfg.profile,
        arch=cfg.arch,
        distro=distro,
        build_ssh_public_key=key,
        hostname=hostname,
        apt_mirror=apt_mirror,
        apt_proxy=apt_proxy,
        apt_snapshot=apt_snapshot,
        skills_dir=skills_dir,
    )


RENDER_HELP = {
    "profile": CONFIG_HELP["profile"],
    "arch": CONFIG_HELP["arch"],
    "distro": "ubuntu (jammy, default) or debian (the offline stand-in: smoke profile only)",
    "ssh_key": "OpenSSH public key file authorized for the 'build' user (none: no build user)",
    "hostname": "guest host name (default sandbox)",
    "apt_mirror": "archive mirror URL for the guest (default: the image's own sources)",
    "apt_proxy": "HTTP proxy URL apt uses in the guest during the build",
    "apt_snapshot": "pin the Ubuntu archive to a snapshot.ubuntu.com time, YYYYMMDDTHHMMSSZ",
    "skills": "skills folder put read-only at /opt/skills",
    "skills_url": "download the skills folder as a .tar.gz from this URL instead",
    "skills_sha256": "SHA-256 the --skills-url download must have",
    "no_validate": "skip 'cloud-init schema' (it needs cloud-init on this host)",
    "json": CONFIG_HELP["json"],
}


def _rendered(inputs: Any, validate: bool) -> dict[str, bytes]:
    """The cloud-init documents, checked with cloud-init's own schema unless told not to."""
    from image.build import cloudinit

    files = cloudinit.render(inputs)
    if validate:
        cloudinit.validate_schema(files["user-data"])
    return files


# Long flags only: with this many options invoke's automatic short flags
# collide (one would even shadow -h, --help).
@task(
    auto_shortflags=False,
    help={
        **RENDER_HELP,
        "out": "directory for user-data, meta-data, network-config (default OUTPUT_DIR/cloud-init)",
    },
)
def render(
    c: Context,
    profile: str | None = None,
    arch: str | None = None,
    distro: str = "ubuntu",
    out: str | None = None,
    ssh_key: str | None = None,
    hostname: str = "sandbox",
    apt_mirror: str | None = None,
    apt_proxy: str | None = None,
    apt_snapshot: str | None = None,
    skills: str | None = None,
    skills_url: str | None = None,
    skills_sha256: str | None = None,
    no_validate: bool = False,
    json: bool = False,
) -> None:
    """Render cloud-init user-data, meta-data and network-config."""
    from image.build import cloudinit

    with _user_errors():
        cfg = _config(c, profile=profile, arch=arch, skills=skills).config
        inputs = _render_inputs(
            cfg, distro, ssh_key, hostname, apt_mirror, apt_proxy, apt_snapshot,
            skills_url, skills_sha256,
        )  # fmt: skip
        files = _rendered(inputs, validate=not no_validate)
        out_dir = Path(out) if out else cfg.output_dir / "cloud-init"
        written = cloudinit.write_rendered(files, out_dir)
        if json:
            console.print_json(
                {
                    "profile": cfg.profile,
                    "arch": cfg.arch,
                    "distro": distro,
                    "files": [str(p) for p in written],
                    "schema_validated": not no_validate,
                }
            )
        else:
            for path in written:
                print(path)


@task(
    auto_shortflags=False,
    help={**RENDER_HELP, "out": "seed ISO to write (default OUTPUT_DIR/seed.iso)"},
)
def seed(
    c: Context,
    profile: str | None = None,
    arch: str | None = None,
    distro: str = "ubuntu",
    out: str | None = None,
    ssh_key: str | None = None,
    hostname: str = "sandbox",
    apt_mirror: str | None = None,
    apt_proxy: str | None = None,
    apt_snapshot: str | None = None,
    skills: str | None = None,
    skills_url: str | None = None,
    skills_sha256: str | None = None,
    no_validate: bool = False,
    json: bool = False,
) -> None:
    """Pack the NoCloud seed ISO (CIDATA)."""
    import hashlib

    from image.build import cloudinit

    with _user_errors():
        cfg = _config(c, profile=profile, arch=arch, skills=skills).config
        inputs = _render_inputs(
            cfg, distro, ssh_key, hostname, apt_mirror, apt_proxy, apt_snapshot,
            skills_url, skills_sha256,
        )  # fmt: skip
        files = _rendered(inputs, validate=not no_validate)
        target = Path(out) if out else cfg.output_dir / "seed.iso"
        cloudinit.write_seed_iso(files, target)
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        if json:
            console.print_json(
                {
                    "seed": str(target),
                    "sha256": digest,
                    "profile": cfg.profile,
                    "arch": cfg.arch,
                    "distro": distro,
                    "schema_validated": not no_validate,
                }
            )
        else:
            print(f"{target}  sha256 {digest}")


@task(
    name="compile-seccomp",
    help={
        "out": "output directory (default: <output_dir>/seccomp); writes <out>/<arch>/<name>.bpf",
        "arch": "x86_64, aarch64 (or amd64, arm64); comma-separated; default both",
        "profile": "only these seccomp profiles, comma-separated (default: all shipped)",
        "json": CONFIG_HELP["json"],
    },
)
def compile_seccomp(
    c: Context,
    out: str | None = None,
    arch: str | None = None,
    profile: str | None = None,
    json: bool = False,
) -> None:
    """Compile the seccomp profiles to BPF (+ PFC dump, sha256) for x86_64 and aarch64."""
    from image.sandbox import seccomp

    with _user_errors():
        out_dir = Path(out) if out else _config(c).config.output_dir / "seccomp"
        arches = [seccomp.target_arch(a) for a in arch.split(",")] if arch else seccomp.ARCHES
        names = profile.split(",") if profile else None
        results = seccomp.write_all(out_dir, names, arches)
        rows = [
            {
                "profile": r.profile,
                "arch": r.arch,
                "instructions": len(r.bpf) // 8,
                "sha256": r.sha256,
                "skipped": list(r.skipped),
                "bpf": str(out_dir / r.arch / f"{r.profile}.bpf"),
            }
            for r in results
        ]
        if json:
            console.print_json({"out": str(out_dir), "filters": rows})
            return
        for r in results:
            print(
                f"{out_dir / r.arch / r.profile}.bpf  {len(r.bpf) // 8:>4} insns  "
                f"sha256 {r.sha256[:16]}"
            )


def _remainder(c: Context) -> list[str]:
    # invoke joins the words after "--" with spaces, losing their quoting
    # ("sh -c 'a b'"); the process's own argv still has them intact.
    if "--" in sys.argv:
        return sys.argv[sys.argv.index("--") + 1 :]
    return shlex.split(c.remainder)


@task(
    name="sandbox-run",
    help={
        "profile": "bwrap profile (default: agent)",
        "workspace": "directory bound read-write at /workspace (default: current directory)",
        "self_test": "run the launcher's self-test instead of a command (prints one JSON line)",
        "policy": "egress policy of the proxy the bridges lead to "
        "(default: proxy-policies/launch.policy)",
        "user": "started as root: run the sandbox as this user "
        "(default: the workspace's owner, or nobody)",
        "audit_log": "append the proxy's audit records here "
        "(default: out/sandbox-run/egress.jsonl)",
    },
)
def sandbox_run(
    c: Context, profile: str = "agent", workspace: str | None = None, self_test: bool = False,
    policy: str | None = None, user: str | None = None, audit_log: str | None = None,
) -> None:  # fmt: skip
    """Run a command under the in-guest sandbox launcher on this host: -- CMD [ARG...].

    The bridges lead to an egress proxy this task starts on 127.0.0.1, never to the
    VM-only 10.0.2.100 the shipped profile names: on a host that can be a real machine.
    """
    from image.egress import proxy as egress
    from image.sandbox import bwrap, seccomp

    with _user_errors():
        cmd = _remainder(c)
        if not cmd and not self_test:
            raise ImageError("no command given", hint="./inv sandbox-run -- CMD [ARG...]")
        hosttools.require(["bwrap", "socat", "libseccomp"], "sandbox-run")
        host_arch = seccomp.target_arch(os.uname().machine)
        base = _config(c).config.output_dir / "sandbox-run"
        seccomp.write_all(base / "seccomp", arches=[host_arch])
        profile_json = base / "bwrap" / f"{profile}.json"
        profile_json.parent.mkdir(parents=True, exist_ok=True)
        tmp = profile_json.with_name(f".{profile_json.name}.{os.getpid()}")
        tmp.write_bytes(bwrap.compile_named(profile))
        tmp.replace(profile_json)
        rules = egress.load_policy(Path(policy) if policy else ROOT / "proxy-policies" /
                                   "launch.policy")  # fmt: skip
        log = Path(audit_log) if audit_log else base / "egress.jsonl"
        # ./inv changes into the checkout; the shell's PWD is where the user was.
        where = Path(os.environ.get("PWD") or Path.cwd())
        with egress.serve_proxy(rules, 0, 0, log) as served:
            ports = {
                "http": served.http_url.rpartition(":")[2],
                "socks": served.socks_url.rpartition(":")[2],
            }
            argv = [
                sys.executable,
                str(ROOT / "image" / "guest" / "sandbox_exec.py"),
                "--profile",
                str(profile_json),
                "--seccomp-dir",
                str(base / "seccomp" / host_arch),
                "--workspace",
                str((where / workspace).resolve() if workspace else where),
            ]
            for bridge in bwrap.load(bwrap.shipped()[profile]).bridges:
                if bridge.name not in ports:
                    raise ImageError(
                        f"profile {profile!r} has a bridge {bridge.name!r} this task has "
                        "no proxy for", hint="bridges named http and socks are supported",
                    )  # fmt: skip
                argv += ["--bridge", f"{bridge.name}=tcp:127.0.0.1:{ports[bridge.name]}"]
            argv += ["--user", user] if user else []
            argv += ["--self-test"] if self_test else ["--", *cmd]
            console.log.info("+ %s", shlex.join(argv))
            console.log.info("egress audit log: %s", log)
            code = run.run(argv, check=False, capture=False).returncode
    raise Exit(code=code)


BUILD_HELP = {
    **{k: v for k, v in CONFIG_HELP.items() if k not in ("output_dir",)},
    "out": "output directory (default: out/)",
    "boot_timeout": "seconds until the guest must answer SSH",
    "provision_timeout": "seconds for cloud-init to finish",
    "skills": "a skills folder to put read-only at /opt/skills",
    "distro": "ubuntu (the real image) or debian (only for the offline stand-in)",
    "offline": "use only cached SHA256SUMS and images",
    "insecure_skip_signature": "do NOT check the SHA256SUMS signature (loud, recorded)",
    "raw": "also write a raw image (Apple Virtualization.framework)",
    "package_lists": "a package-lists directory of your own (default: the project's)",
    "lock": "install exactly the versions of this lock (from ./inv lock) on its base image",
    "cache": "use and fill the build caches: apt, pip, npm and provisioned layers "
    "(--no-cache: off)",
    **{k: v for k, v in EGRESS_HELP.items() if k != "audit_log"},
}


@task(
    name="build-image", help=BUILD_HELP,
    iterable=["allow", "deny", "allow_address", "allow_port"],
)  # fmt: skip
def build_image(
    c: Context, arch: str | None = None, release: str | None = None, serial: str | None = None,
    mirror: str | None = None, keyring: str | None = None, fingerprint: str | None = None,
    profile: str | None = None, cpus: int | None = None, memory: str | None = None,
    disk_size: str | None = None, cache_dir: str | None = None, out: str | None = None,
    accel: str | None = None, boot_timeout: float | None = None,
    provision_timeout: float | None = None, skills: str | None = None, distro: str = "ubuntu",
    offline: bool = False, insecure_skip_signature: bool = False, raw: bool = False,
    package_lists: str | None = None, lock: str | None = None, cache: bool = True,
    json: bool = False, policy: str | None = None,
    allow: list[str] | None = None, deny: list[str] | None = None,
    allow_address: list[str] | None = None, allow_port: list[str] | None = None,
) -> None:  # fmt: skip
    """Boot the cloud image with the seed, provision, verify, describe, compact and publish.

    The build VM reaches the network only through an egress proxy with the build
    policy (proxy-policies/build.policy); its log is published as egress.jsonl.
    """
    from image.build import lockfile, pipeline
    from image.build.packages import PACKAGE_LISTS
    from image.egress import guestnet

    with _user_errors():
        cfg = _config(
            c, arch=arch, release=release, serial=serial, mirror=mirror, keyring=keyring,
            fingerprints=fingerprint, profile=profile, cpus=cpus, memory=memory,
            disk_size=disk_size, cache_dir=cache_dir, output_dir=out, accel=accel,
            boot_timeout=boot_timeout, provision_timeout=provision_timeout, skills=skills,
        ).config  # fmt: skip
        result = pipeline.build_image(
            cfg, distro=distro, offline=offline,
            insecure_skip_signature=insecure_skip_signature, raw=raw,
            package_lists=Path(package_lists).resolve() if package_lists else PACKAGE_LISTS,
            egress_policy=_policy_choice(
                policy, guestnet.BUILD_POLICY, allow, deny, allow_address, allow_port
            ),
            lock=lockfile.load(_user_path(lock)) if lock else None, package_cache=cache,
        )  # fmt: skip
        console.print_summary("build-image", result.timings)
        if json:
            console.print_json(result.to_json())
        else:
            print(result.image)


def _user_path(text: str) -> Path:
    # ./inv changes into the checkout; relative paths are the user's, from PWD.
    return (Path(os.environ.get("PWD") or Path.cwd()) / Path(text).expanduser()).resolve()


@task(
    name="lock",
    help={
        "output": "a build-image output directory (holds manifest.json and build-info.json)",
        "out": "where to write the lock (default: OUTPUT/sandbox-image.lock)",
        "snapshot_timestamp": "also pin jammy's archive to snapshot.ubuntu.com at YYYYMMDDTHHMMSSZ",
        "json": CONFIG_HELP["json"],
    },
)
def lock(
    c: Context,
    output: str,
    out: str | None = None,
    snapshot_timestamp: str | None = None,
    json: bool = False,
) -> None:
    """Write a lock (exact apt/pip/npm versions, base serial and sha256) from a build's output."""
    import json as json_module

    from image.build import lockfile
    from image.source import imagecache

    with _user_errors():
        where = _user_path(output)
        documents = {}
        for name in ("manifest.json", "build-info.json"):
            try:
                documents[name] = json_module.loads((where / name).read_text())
            except (OSError, ValueError) as exc:
                raise ImageError(
                    f"cannot read {where / name}: {exc}",
                    hint="pass the output directory of a finished build-image",
                ) from None
        made = lockfile.from_build(
            documents["manifest.json"], documents["build-info.json"], snapshot=snapshot_timestamp
        )
        target = _user_path(out) if out else where / "sandbox-image.lock"
        imagecache.atomic_write(target, lockfile.render(made).encode())
        summary = {
            "lock": str(target),
            "apt": len(made.apt),
            "pip": len(made.pip),
            "npm": len(made.npm),
            "base_serial": made.base_serial,
            "base_sha256": made.base_sha256,
            "snapshot": made.snapshot,
        }
        if json:
            console.print_json(summary)
        else:
            print(target)


@task(
    help={
        "stats": "show files and bytes per cache (the default)",
        "prune": "delete cached files: with --older-than and/or --max-size",
        "max_size": "with --prune: keep at most this much (e.g. 5G), least recently used go first",
        "older_than": "with --prune: delete what no build used for this long (e.g. 30d, 12h)",
        "cache_dir": CONFIG_HELP["cache_dir"],
        "json": CONFIG_HELP["json"],
    }
)
def cache(
    c: Context,
    stats: bool = False,
    prune: bool = False,
    max_size: str | None = None,
    older_than: str | None = None,
    cache_dir: str | None = None,
    json: bool = False,
) -> None:
    """Show (--stats) or trim (--prune) the build caches: apt, pip, npm, provisioned layers."""
    import time

    from image.build import layercache, packagecache

    with _user_errors():
        cfg = _config(c, cache_dir=cache_dir).config
        removed: list[packagecache.Item] = []
        freed = 0
        if prune:
            if max_size is None and older_than is None:
                raise ImageError(
                    "--prune needs --max-size and/or --older-than",
                    hint="e.g. ./inv cache --prune --older-than 30d --max-size 5G",
                )
            try:
                limit = config.parse_size(max_size) if max_size is not None else None
                age = packagecache.parse_duration(older_than) if older_than is not None else None
            except ValueError as exc:
                raise ImageError(str(exc)) from None
            removed = packagecache.select_prune(
                packagecache.items(cfg.cache_dir) + layercache.items(cfg.cache_dir),
                max_size=limit, older_than=age, now=time.time(),
            )  # fmt: skip
            layers = [item for item in removed if item.kind == "layer"]
            freed = packagecache.prune(cfg.cache_dir, [i for i in removed if i not in layers])
            freed += layercache.prune(layers)
        elif max_size is not None or older_than is not None:
            raise ImageError("--max-size and --older-than go with --prune")
        rows = packagecache.stats(
            packagecache.items(cfg.cache_dir) + layercache.items(cfg.cache_dir)
        )
        if json:
            console.print_json(
                {
                    "cache_dir": str(cfg.cache_dir),
                    "caches": [r.to_json() for r in rows],
                    "pruned": {"files": len(removed), "bytes": freed},
                }
            )
            return
        if prune:
            print(
                f"pruned {len(removed)} item(s), {config.format_size(freed) if freed else 0} bytes"
            )
        if not rows:
            print(f"no build caches under {cfg.cache_dir}")
        for r in rows:
            print(
                f"{r.key:<28} {r.kind:<5} {r.files:>6} file(s) {r.bytes / (1 << 20):>10.1f} MiB  "
                f"last used {time.strftime('%Y-%m-%d %H:%M', time.localtime(r.newest))}"
            )


@task(
    help={
        "image": "the built image (qcow2) to snapshot",
        "out": "the snapshot directory to create (must not exist)",
        "cpus": CONFIG_HELP["cpus"],
        "memory": CONFIG_HELP["memory"],
        "arch": CONFIG_HELP["arch"],
        "accel": CONFIG_HELP["accel"],
        "cache_dir": CONFIG_HELP["cache_dir"],
        "timeout": "seconds until the guest must be ready",
        "json": CONFIG_HELP["json"],
    }
)
def snapshot(
    c: Context, image: str, out: str, cpus: int | None = None, memory: str | None = None,
    arch: str | None = None, accel: str | None = None, cache_dir: str | None = None,
    timeout: float | None = None, json: bool = False,
) -> None:  # fmt: skip
    """Boot a built image in the runtime shape until ready, and save the VM."""
    from image.runtime import snapshot as snap

    with _user_errors():
        cfg = _config(c, cpus=cpus, memory=memory, arch=arch, accel=accel,
                      cache_dir=cache_dir).config  # fmt: skip
        path, meta = snap.snapshot(cfg, Path(image), Path(out), timeout=timeout)
        console.log.info("snapshot: %s", snap.format_meta(meta))
        if json:
            console.print_json({"snapshot": str(path), **meta.__dict__})
        else:
            print(path)


@task(
    help={
        "arch": "amd64 or arm64 (default: the configured arch)",
        "cache_dir": CONFIG_HELP["cache_dir"],
        "json": CONFIG_HELP["json"],
    }
)
def standin(
    c: Context, arch: str | None = None, cache_dir: str | None = None, json: bool = False
) -> None:
    """Build (or reuse) the Debian stand-in base image for offline runs (needs root)."""
    from image.source import standin as standin_image

    with _user_errors():
        cfg = _config(c, arch=arch, cache_dir=cache_dir).config
        image = standin_image.ensure(cfg.cache_dir, cfg.arch)
        if json:
            console.print_json(
                {
                    "arch": image.arch,
                    "path": str(image.path),
                    "recipe_hash": image.recipe_hash,
                    "info": image.info,
                }
            )
        else:
            print(image.path)


@task(
    help={
        "arch": "serve these stand-ins (comma-separated; built if missing). "
        "Default: every cached one",
        "port": "port on 127.0.0.1 (0: any free port)",
        "release": CONFIG_HELP["release"],
        "serial": "serial the mirror publishes (default 20990101)",
        "cache_dir": CONFIG_HELP["cache_dir"],
    }
)
def mirror(
    c: Context,
    arch: str | None = None,
    port: int = 0,
    release: str | None = None,
    serial: str | None = None,
    cache_dir: str | None = None,
) -> None:
    """Serve the stand-in image(s) on 127.0.0.1 like cloud-images.ubuntu.com, until Ctrl-C."""
    from image.source import mirror as local_mirror
    from image.source import standin as standin_image

    with _user_errors():
        cfg = _config(c, release=release, serial=serial, cache_dir=cache_dir).config
        images = standin_image.images_for(cfg.cache_dir, arch.split(",") if arch else None)
        published = local_mirror.DEFAULT_SERIAL if cfg.serial == "latest" else cfg.serial
        with local_mirror.serve_mirror(
            images, cfg.cache_dir, cfg.release, published, port
        ) as served:
            print(served.cli_args(), flush=True)
            local_mirror.wait_for_stop_signal()


@task(
    iterable=["allow", "deny", "allow_address", "allow_port"],
    help={
        "policy": "policy file (see proxy-policies/build.policy); flags add to it",
        "allow": "allow this name or *.suffix (repeatable)",
        "deny": "deny this name or *.suffix, checked before allow (repeatable)",
        "allow_address": "allow this address or CIDR, literal or resolved (repeatable)",
        "allow_port": "allow this port besides 80 and 443 (repeatable)",
        "http_port": "HTTP proxy port on 127.0.0.1 (0: any free port)",
        "socks_port": "SOCKS5 proxy port on 127.0.0.1 (0: any free port)",
        "audit_log": "append the JSON-lines audit log here (default: stderr)",
    },
)
def proxy(
    c: Context, policy: str | None = None, allow: list[str] | None = None,
    deny: list[str] | None = None, allow_address: list[str] | None = None,
    allow_port: list[str] | None = None, http_port: int = 3128, socks_port: int = 1080,
    audit_log: str | None = None,
) -> None:  # fmt: skip
    """Run the egress proxy (HTTP + SOCKS5) with a domain allowlist until SIGTERM/Ctrl-C."""
    from image.egress import proxy as egress
    from image.source import mirror as local_mirror

    with _user_errors():
        rules = egress.load_policy(Path(policy)) if policy else egress.Policy()
        rules = rules.extended(allow or (), deny or (), allow_address or (), allow_port or ())
        with egress.serve_proxy(
            rules, http_port, socks_port, Path(audit_log) if audit_log else None,
            audit_stream=None if audit_log else sys.stderr,
        ) as served:  # fmt: skip
            print(f"http {served.http_url.removeprefix('http://')}", flush=True)
            print(f"socks5 {served.socks_url.removeprefix('socks5h://')}", flush=True)
            local_mirror.wait_for_stop_signal()


@task(
    iterable=["allow", "deny", "allow_address", "allow_port"],
    help={
        "snapshot": "the snapshot directory (from ./inv snapshot)",
        "share": "HOSTDIR[:ro] to mount at /mnt/share in the guest",
        "session_disk": "size of this launch's session disk at /sessions (default 10G)",
        "hostname": "the launch's host name (default: sandbox-<random>)",
        "timeout": "seconds the command may run",
        "cache_dir": CONFIG_HELP["cache_dir"],
        "json": "print timings and the exit status as JSON (last line)",
        **EGRESS_HELP,
    },
)
def launch(
    c: Context, snapshot: str, share: str | None = None, session_disk: str = "10G",
    hostname: str | None = None, timeout: float = 3600.0, cache_dir: str | None = None,
    json: bool = False, policy: str | None = None, allow: list[str] | None = None,
    deny: list[str] | None = None, allow_address: list[str] | None = None,
    allow_port: list[str] | None = None, audit_log: str | None = None,
) -> None:  # fmt: skip
    """Resume a sandbox VM from a snapshot; with -- CMD, run it sandboxed as the agent user.

    The VM's only network is the egress proxy this launch runs (default policy:
    proxy-policies/launch.policy); every connection is logged to --audit-log.
    """
    from image.egress import guestnet
    from image.runtime import snapshot as snap

    with _user_errors():
        cfg = _config(c, cache_dir=cache_dir).config
        choice = _policy_choice(
            policy, guestnet.LAUNCH_POLICY, allow, deny, allow_address, allow_port
        )
        options = snap.parse_launch_options(
            share, session_disk, hostname, _remainder(c), timeout, choice, audit_log
        )
        code = snap.launch_and_run(Path(snapshot), cfg, options, json_result=json)
    raise Exit(code=code)


@task(
    help={
        "arch": "stand-in architecture (default amd64: fast under TCG)",
        "out": "where the demo's outputs go (default: out/demo)",
        "json": "print each step's seconds and the output paths as JSON (last line)",
    }
)
def demo(c: Context, arch: str = "amd64", out: str | None = None, json: bool = False) -> None:
    """The whole pipeline, offline: stand-in -> mirror -> build-image -> snapshot -> launch."""
    from image.runtime import demo as demo_module

    with _user_errors():
        cfg = _config(c, arch=arch, profile="smoke", output_dir=out or "out/demo").config
        result = demo_module.run_demo(cfg)
        console.print_summary("demo", result["timings"])
        if json:
            console.print_json(result)


@task(
    auto_shortflags=False,
    help={
        "out": "the build output to publish (build-image's --out)",
        "to": "REGISTRY/REPOSITORY:TAG to push to",
        "snapshot": "also push this snapshot directory (./inv snapshot's OUT)",
        "insecure": "allow plain HTTP to a registry that is not on this machine",
        "source": "org.opencontainers.image.source annotation (e.g. the repository URL)",
        "revision": "org.opencontainers.image.revision annotation (e.g. the commit)",
        "json": CONFIG_HELP["json"],
    },
)
def publish(
    c: Context, out: str, to: str | None = None, snapshot: str | None = None,
    insecure: bool = False, source: str | None = None, revision: str | None = None,
    json: bool = False,
) -> None:  # fmt: skip
    """Push a build output (and optionally its snapshot) to an OCI registry as one artifact."""
    from image.release import oci

    with _user_errors():
        if not to:
            raise ImageError("no destination", hint="./inv publish OUT --to REGISTRY/REPO:TAG")
        result = oci.publish(Path(out), to, snapshot=Path(snapshot) if snapshot else None,
                             insecure=insecure, source=source, revision=revision)  # fmt: skip
        if json:
            console.print_json(result.to_json())
        else:
            print(f"{result.reference}@{result.digest}")


@task(
    auto_shortflags=False,
    help={
        "ref": "REGISTRY/REPOSITORY:TAG (or @sha256:...) to pull",
        "out": "directory to create with the verified build output",
        "insecure": "allow plain HTTP to a registry that is not on this machine",
        "json": CONFIG_HELP["json"],
    },
)
def pull(c: Context, ref: str, out: str, insecure: bool = False, json: bool = False) -> None:
    """Pull a published build output; every file is checked before OUT appears."""
    from image.release import oci

    with _user_errors():
        result = oci.pull(ref, Path(out), insecure=insecure)
        if json:
            console.print_json(result.to_json())
        else:
            print(result.out)


@task(help={"a": "the older build output", "b": "the newer build output",
            "json": CONFIG_HELP["json"]})  # fmt: skip
def diff(c: Context, a: str, b: str, json: bool = False) -> None:
    """Compare two build outputs: packages, image size, step times."""
    from image.release import builddiff

    with _user_errors():
        result = builddiff.diff_outputs(Path(a), Path(b))
        if json:
            console.print_json(result.to_json())
        else:
            print(builddiff.format_text(result))


@task(
    help={
        "out": "the build output to report on",
        "html": "where to write the page (default: OUT/report.html)",
        "json": CONFIG_HELP["json"],
    }
)
def report(c: Context, out: str, html: str | None = None, json: bool = False) -> None:
    """Write the build's self-contained HTML report (inputs, checks, packages, timeline)."""
    from image.release import report as build_report

    with _user_errors():
        path = build_report.write_report(Path(out), Path(html) if html else None)
        if json:
            console.print_json({"report": str(path)})
        else:
            print(path)


@task(
    help={
        "port": "port on 127.0.0.1 (0: any free port)",
        "storage": "directory for the registry's blobs, config and log (default: CACHE/registry)",
        "cache_dir": CONFIG_HELP["cache_dir"],
    }
)
def registry(
    c: Context, port: int = 5000, storage: str | None = None, cache_dir: str | None = None
) -> None:
    """Serve a local OCI registry on 127.0.0.1 (for publish/pull), until Ctrl-C."""
    from image.release import localregistry
    from image.source import mirror as local_mirror

    with _user_errors():
        cfg = _config(c, cache_dir=cache_dir).config
        where = Path(storage) if storage else cfg.cache_dir / "registry"
        with localregistry.serve_registry(where, port) as served:
            print(served.host, flush=True)
            local_mirror.wait_for_stop_signal()


@task(
    name="bench-resume",
    help={
        "image": "a built image (default: the demo's; built through ./inv demo if missing)",
        "runs": "cold boots and resumes to measure (each at least 3)",
    },
)
def bench_resume(c: Context, image: str | None = None, runs: int = 3) -> None:
    """Measure cold boot vs resume, 1 vs 4 GiB RAM, and PSS of concurrent launches."""
    from image.runtime import demo as demo_module

    with _user_errors():
        path = (
            Path(image)
            if image
            else ROOT / "out" / "demo" / "image" / ("sandbox-image-jammy-amd64-smoke.qcow2")
        )
        if not path.is_file():
            if image:
                raise ImageError(f"no image at {path}", hint="build one with ./inv build-image")
            cfg = _config(c, arch="amd64", profile="smoke", output_dir="out/demo").config
            demo_module.run_demo(cfg)
        argv = [sys.executable, str(ROOT / "bench" / "resume.py"), "--image", str(path),
                "--runs", str(max(runs, 3))]  # fmt: skip
        result = run.run(argv, check=False, capture=False, cwd=ROOT)
    raise Exit(code=result.returncode)


@task(
    help={
        "fast": "unit tier only",
        "arm64": "the arm64 end-to-end tier only (slow under TCG)",
        "k": "only tests matching this pytest -k expression",
    }
)
def test(c: Context, fast: bool = False, arm64: bool = False, k: str | None = None) -> None:
    """Run the test tiers: unit, integration, vm (installs missing host tools as root)."""
    with _user_errors():
        if not fast and os.geteuid() == 0 and hosttools.missing():
            hosttools.install_missing()
        tiers = ["tests/unit"] if fast else ["tests/unit", "tests/integration", "tests/vm"]
        argv = [sys.executable, "-m", "pytest", *tiers]
        argv += ["-m", "arm64"] if arm64 else ["-m", "not arm64"]
        if k:
            argv += ["-k", k]
        result = run.run(argv, check=False, capture=False, cwd=ROOT)
        raise Exit(code=result.returncode)
