"""Building an image: package profiles, cloud-init, the seed, the build, locks, caches."""

from __future__ import annotations

import dataclasses
from typing import Any

from invoke.context import Context

from image import config, console
from image.errors import ImageError
from image.release.signatures import PASSPHRASE_ENV
from tasks._common import (
    CONFIG_HELP,
    EGRESS_HELP,
    _config,
    _key_spec,
    _out_path,
    _policy_choice,
    _user_errors,
    _user_path,
    task,
)


@task(
    help={
        "profile": CONFIG_HELP["profile"],
        "distro": "show the profile as it installs on ubuntu (jammy, default) or debian "
        "(the offline stand-in: package-lists/distros/debian.map applied)",
        "resolve": "prove the pip set resolves (wheels only, CPython 3.10, manylinux x86_64 "
        "and aarch64, every package pinned) and every npm pin installs on the image's "
        "Node.js 22; asks PyPI and the npm registry",
        "json": CONFIG_HELP["json"],
    }
)
def packages(
    c: Context, profile: str | None = None, distro: str = "ubuntu", resolve: bool = False,
    json: bool = False,
) -> None:  # fmt: skip
    """Show a package profile: groups, explicit counts, expected installed count."""
    from image.build import packages as package_lists
    from image.build import resolve as resolver

    with _user_errors():
        cfg = _config(c, only=("profile", "cache_dir"), profile=profile).config
        if distro not in package_lists.DISTROS:
            raise ImageError(f"unknown distro {distro!r}",
                             hint=f"use one of: {', '.join(package_lists.DISTROS)}")  # fmt: skip
        loaded = package_lists.resolve_profile(cfg.profile, distro=distro)
        outcomes: list[resolver.Outcome] = []
        if resolve:
            from image.source import thirdparty

            outcomes = resolver.resolve_pip(loaded)
            outcomes += resolver.resolve_npm(loaded, *thirdparty.host_node(cfg.cache_dir))
        if json:
            console.print_json({**loaded.summary(), "resolve": [o.to_json() for o in outcomes]})
        else:
            print(package_lists.format_summary(loaded))
            if outcomes:
                print(resolver.summary(outcomes))
        resolver.require_all(outcomes)


RENDER_HELP = {
    "profile": CONFIG_HELP["profile"],
    "arch": CONFIG_HELP["arch"],
    "distro": "ubuntu (jammy, default) or debian (the offline stand-in: smoke profile only)",
    "ssh_key": "OpenSSH public key file authorized for the 'build' user (none: no build user)",
    "hostname": "guest host name (default sandbox)",
    "apt_mirror": "archive mirror URL for the guest (default: the image's own sources)",
    "apt_proxy": "HTTP proxy URL apt uses in the guest during the build",
    "apt_snapshot": "pin the Ubuntu archive to a snapshot.ubuntu.com time, YYYYMMDDTHHMMSSZ",
    "apt_mirror_key": "armored OpenPGP key that signs --apt-mirror's Release (a mirror "
    "re-signed by its owner; default: the distribution's keys)",
    "pip_index": "a PEP 503 simple index the build's pip uses instead of PyPI",
    "npm_registry": "an npm registry the build's npm uses instead of registry.npmjs.org",
    **config.flag_help("skills"),
    "skills_url": "download the skills folder as a .tar.gz from this URL instead",
    "skills_sha256": "SHA-256 the --skills-url download must have",
    "no_validate": "skip 'cloud-init schema' (it needs cloud-init on this host)",
    "source_file": "a NAME.source that replaces the profile's apt source NAME (repeatable; "
    "./inv mirror writes one for its NodeSource stand-in)",
    "default_skills": "ship the project's skills/ (default; --no-default-skills: only --skills)",
    "ca_cert": "a CA certificate (PEM file, or a folder of *.crt) the guest trusts besides its "
    "own, for a proxy that inspects TLS (repeatable; kept in the image)",
    "json": CONFIG_HELP["json"],
}


def _render_files(
    c: Context, profile: str | None, arch: str | None, skills: str | None, distro: str,
    ssh_key: str | None, hostname: str, apt_mirror: str | None, apt_proxy: str | None,
    apt_snapshot: str | None, skills_url: str | None, skills_sha256: str | None,
    source_file: list[str] | None, default_skills: bool, ca_cert: list[str] | None,
    mirrors: Any, *, validate: bool,
) -> tuple[config.BuildConfig, dict[str, bytes]]:  # fmt: skip
    """render's and seed's shared part: the config, and the documents a build would render."""
    from image.build import inputs as build_inputs

    cfg = _config(c, profile=profile, arch=arch, skills=skills).config
    inputs = build_inputs.render_inputs(
        cfg, distro, str(_user_path(ssh_key)) if ssh_key else None, hostname, apt_mirror,
        apt_proxy, apt_snapshot, skills_url,
        skills_sha256, [str(_user_path(f)) for f in source_file or ()], default_skills,
        [str(_user_path(f)) for f in ca_cert or ()],
    )  # fmt: skip
    inputs = dataclasses.replace(
        inputs, apt_mirror_key=mirrors.apt_key, pip_index=mirrors.pip, npm_registry=mirrors.npm
    )
    return cfg, build_inputs.rendered(inputs, validate=validate)


def _mirrors(
    apt_mirror: str | None, apt_mirror_key: str | None, apt_snapshot: str | None,
    pip_index: str | None, npm_registry: str | None,
) -> Any:  # fmt: skip
    from image.build.mirrors import Mirrors

    return Mirrors.given(apt_mirror, _user_path(apt_mirror_key) if apt_mirror_key else None,
                         apt_snapshot, pip_index, npm_registry)  # fmt: skip


# Long flags only: with this many options invoke's automatic short flags
# collide (one would even shadow -h, --help).
@task(
    iterable=["source_file", "ca_cert"],
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
    apt_mirror_key: str | None = None,
    pip_index: str | None = None,
    npm_registry: str | None = None,
    skills: str | None = None,
    skills_url: str | None = None,
    skills_sha256: str | None = None,
    source_file: list[str] | None = None,
    default_skills: bool = True,
    ca_cert: list[str] | None = None,
    no_validate: bool = False,
    json: bool = False,
) -> None:
    """Render cloud-init user-data, meta-data and network-config."""
    from image.build import cloudinit

    with _user_errors():
        cfg, files = _render_files(
            c, profile, arch, skills, distro, ssh_key, hostname, apt_mirror, apt_proxy,
            apt_snapshot, skills_url, skills_sha256, source_file, default_skills, ca_cert,
            _mirrors(apt_mirror, apt_mirror_key, apt_snapshot, pip_index, npm_registry),
            validate=not no_validate,
        )  # fmt: skip
        out_dir = _out_path(out or str(cfg.output_dir / "cloud-init"), "--out", directory=True)
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
    iterable=["source_file", "ca_cert"],
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
    apt_mirror_key: str | None = None,
    pip_index: str | None = None,
    npm_registry: str | None = None,
    skills: str | None = None,
    skills_url: str | None = None,
    skills_sha256: str | None = None,
    source_file: list[str] | None = None,
    default_skills: bool = True,
    ca_cert: list[str] | None = None,
    no_validate: bool = False,
    json: bool = False,
) -> None:
    """Pack the NoCloud seed ISO (CIDATA)."""
    from image.build import cloudinit
    from image.files import sha256_file

    with _user_errors():
        cfg, files = _render_files(
            c, profile, arch, skills, distro, ssh_key, hostname, apt_mirror, apt_proxy,
            apt_snapshot, skills_url, skills_sha256, source_file, default_skills, ca_cert,
            _mirrors(apt_mirror, apt_mirror_key, apt_snapshot, pip_index, npm_registry),
            validate=not no_validate,
        )  # fmt: skip
        target = _out_path(out or str(cfg.output_dir / "seed.iso"), "--out", directory=False)
        cloudinit.write_seed_iso(files, target)
        digest = sha256_file(target)
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


BUILD_HELP = {
    **{k: v for k, v in CONFIG_HELP.items() if k not in ("output_dir",)},
    "out": "output directory (default: out/)",
    **config.flag_help("boot_timeout", "provision_timeout", "skills"),
    "distro": "ubuntu (the real image) or debian (only for the offline stand-in)",
    "offline": "use only cached SHA256SUMS and images",
    "insecure_skip_signature": "do NOT check the SHA256SUMS signature (loud, recorded)",
    "raw": "also write a raw image (Apple Virtualization.framework)",
    "package_lists": "a package-lists directory of your own (default: the project's)",
    "lock": "install exactly the versions of this lock (from ./inv lock) on its base image",
    "cache": "use and fill the build caches: apt, pip, npm and provisioned layers "
    "(--no-cache: off)",
    "source_file": RENDER_HELP["source_file"],
    "default_skills": RENDER_HELP["default_skills"],
    "ca_cert": RENDER_HELP["ca_cert"],
    "keep_failed": "when provisioning or verification fails, keep the build VM running and "
    "print an ssh command into it (127.0.0.1 only); Ctrl-C ends it",
    "sign_key": "sign SHA256SUMS and the provenance with this OpenPGP key: a secret-key file, "
    f"or a key id in your GnuPG keyring (passphrase: ${PASSPHRASE_ENV})",
    "builder_id": "who built it, as the provenance's builder.id (default: "
    "urn:sandbox-image:host:HOSTNAME; in CI, e.g. the workflow's URL)",
    "source": "the toolkit's repository URL the provenance names (default: the checkout's "
    "origin remote)",
    **{
        k: RENDER_HELP[k]
        for k in ("apt_mirror", "apt_mirror_key", "apt_snapshot", "pip_index", "npm_registry")
    },
    **{k: v for k, v in EGRESS_HELP.items() if k != "audit_log"},
}


@task(
    name="build-image", help=BUILD_HELP,
    iterable=["allow", "deny", "allow_address", "allow_port", "source_file", "ca_cert"],
)  # fmt: skip
def build_image(
    c: Context, arch: str | None = None, release: str | None = None, serial: str | None = None,
    mirror: str | None = None, keyring: str | None = None, fingerprint: str | None = None,
    profile: str | None = None, cpus: str | None = None, memory: str | None = None,
    disk_size: str | None = None, cache_dir: str | None = None, out: str | None = None,
    accel: str | None = None, boot_timeout: str | None = None,
    provision_timeout: str | None = None, skills: str | None = None, distro: str = "ubuntu",
    offline: bool = False, insecure_skip_signature: bool = False, raw: bool = False,
    package_lists: str | None = None, lock: str | None = None, cache: bool = True,
    json: bool = False, policy: str | None = None,
    allow: list[str] | None = None, deny: list[str] | None = None,
    allow_address: list[str] | None = None, allow_port: list[str] | None = None,
    source_file: list[str] | None = None, default_skills: bool = True,
    ca_cert: list[str] | None = None, keep_failed: bool = False,
    upstream_proxy: str | None = None, apt_mirror: str | None = None,
    apt_mirror_key: str | None = None, apt_snapshot: str | None = None,
    pip_index: str | None = None, npm_registry: str | None = None,
    sign_key: str | None = None, builder_id: str | None = None, source: str | None = None,
) -> None:  # fmt: skip
    """Boot the cloud image with the seed, provision, verify, describe, compact and publish.

    The build VM reaches the network only through an egress proxy with the build
    policy (proxy-policies/build.policy); its log is published as egress.jsonl.
    """
    from image.build import lockfile, pipeline, trust
    from image.build.packages import PACKAGE_LISTS, load_source_file
    from image.egress import guestnet

    with _user_errors():
        cfg = _config(
            c, arch=arch, release=release, serial=serial, mirror=mirror, keyring=keyring,
            fingerprints=fingerprint, profile=profile, cpus=cpus, memory=memory,
            disk_size=disk_size, cache_dir=cache_dir, output_dir=out, accel=accel,
            boot_timeout=boot_timeout, provision_timeout=provision_timeout, skills=skills,
        ).config  # fmt: skip
        _out_path(str(cfg.output_dir), "--out", directory=True)
        result = pipeline.build_image(
            cfg, distro=distro, offline=offline,
            insecure_skip_signature=insecure_skip_signature, raw=raw,
            package_lists=_user_path(package_lists) if package_lists else PACKAGE_LISTS,
            egress_policy=_policy_choice(
                policy, guestnet.BUILD_POLICY, allow, deny, allow_address, allow_port,
                upstream_proxy,
            ),
            lock=lockfile.load(_user_path(lock)) if lock else None, package_cache=cache,
            sources=tuple(load_source_file(_user_path(f)) for f in source_file or ()),
            default_skills=default_skills,
            ca_certs=trust.load([_user_path(f) for f in ca_cert or ()]),
            keep_failed=keep_failed,
            mirrors=_mirrors(apt_mirror, apt_mirror_key, apt_snapshot, pip_index, npm_registry),
            sign_key=_key_spec(sign_key) if sign_key else None, builder_id=builder_id,
            source_url=source,
        )  # fmt: skip
        console.print_summary("build-image", result.timings)
        if json:
            console.print_json(result.to_json())
        else:
            print(result.image)


@task(
    name="lock",
    positional=["build"],
    help={
        "build": "a build-image output directory (holds manifest.json and build-info.json)",
        "out": "where to write the lock (default: BUILD/sandbox-image.lock)",
        "snapshot_timestamp": "also pin jammy's archive to snapshot.ubuntu.com at YYYYMMDDTHHMMSSZ",
        "json": CONFIG_HELP["json"],
    },
)
def lock(
    c: Context,
    build: str,
    out: str | None = None,
    snapshot_timestamp: str | None = None,
    json: bool = False,
) -> None:
    """Write a lock (exact apt/pip/npm versions, base serial and sha256) from a build's output."""
    from image.build import lockfile
    from image.files import atomic_write_text

    with _user_errors():
        where = _user_path(build)
        target = _out_path(out, "--out", directory=False) if out else where / "sandbox-image.lock"
        made = lockfile.from_output(where, snapshot=snapshot_timestamp)
        atomic_write_text(target, lockfile.render(made))
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
        "stats": "show items and bytes on disk per cache (the default)",
        "prune": "delete build caches and logs: with --older-than and/or --max-size (images "
        "and stand-ins are listed, never pruned)",
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
    """Show (--stats) every cache, or trim (--prune) the build caches and logs."""
    import time

    from image.build import caches
    from image.files import format_size

    with _user_errors():
        cfg = _config(c, only=("cache_dir",), cache_dir=cache_dir).config
        pruned = caches.Pruned()
        if prune:
            pruned = caches.prune(cfg.cache_dir, max_size, older_than, now=time.time())
        elif max_size is not None or older_than is not None:
            raise ImageError("--max-size and --older-than go only with --prune",
                             hint="e.g. ./inv cache --prune --older-than 30d")  # fmt: skip
        rows = caches.stats(cfg.cache_dir)
        removed, freed = pruned.items, pruned.bytes
        if json:
            console.print_json(
                {
                    "cache_dir": str(cfg.cache_dir),
                    "caches": [
                        {**r.to_json(), "pruned_by_policy": caches.is_pruned(r.kind)} for r in rows
                    ],
                    "total_bytes": sum(r.bytes for r in rows),
                    "pruned": {"files": len(removed), "bytes": freed},
                }
            )
            return
        if prune:
            print(f"pruned {len(removed)} item(s), {format_size(freed)}")
        if not rows:
            print(f"nothing cached under {cfg.cache_dir}")
            return
        for r in rows:
            kept = "" if caches.is_pruned(r.kind) else "  (kept by --prune)"
            print(
                f"{r.key:<28} {r.kind:<10} {r.files:>6} item(s) {format_size(r.bytes, 'MiB'):>14}  "
                f"last used {time.strftime('%Y-%m-%d %H:%M', time.localtime(r.newest))}{kept}"
            )
        total = format_size(sum(r.bytes for r in rows), "MiB")
        print(f"{'total':<39} {sum(r.files for r in rows):>6} item(s) {total:>14}  "
              f"in {cfg.cache_dir}")  # fmt: skip
