"""What ``./inv render``, ``./inv seed`` and ``build-image`` are asked to render.

``build_inputs`` is the one builder of cloud-init's RenderInputs: build-image calls
it with the keys it made; ``render_inputs`` resolves the user's flags (the skills
folder, given or downloaded and checked by SHA-256; the build user's SSH key) and
calls it too, so ``./inv render`` shows exactly what a build renders: the sandbox's
guest files, the apt proxy, a fresh SSH host key. (Its seed is standalone: it runs
the stages after "system" itself, where a build runs them over SSH.)
"""

from __future__ import annotations

from pathlib import Path

from image.build import cloudinit, packages, skills, trust
from image.config import BuildConfig
from image.egress import guestnet
from image.errors import ImageError
from image.sandbox import guestfiles
from image.vm import ssh


def build_inputs(
    cfg: BuildConfig,
    distro: str,
    *,
    host_key: ssh.KeyPair,
    build_ssh_public_key: str = "",
    hostname: str = "sandbox",
    apt_mirror: str | None = None,
    apt_proxy: str | None = guestnet.GUEST_HTTP_PROXY,
    apt_snapshot: str | None = None,
    skills_dir: Path | None = None,
    package_lists: Path = packages.PACKAGE_LISTS,
    sources: tuple[packages.AptSource, ...] = (),
    default_skills: bool = True,
    ca_certs: tuple[trust.CACert, ...] = (),
) -> cloudinit.RenderInputs:
    """RenderInputs as build-image renders them: the project's skills (unless not
    ``default_skills``) and ``skills_dir`` (default cfg.skills) on top."""
    extra = skills_dir if skills_dir is not None else cfg.skills
    return cloudinit.RenderInputs(
        profile=cfg.profile, arch=cfg.arch, distro=distro,
        build_ssh_public_key=build_ssh_public_key,
        ssh_host_ed25519=(host_key.private_openssh, host_key.public_openssh),
        hostname=hostname, apt_mirror=apt_mirror, apt_proxy=apt_proxy,
        apt_snapshot=apt_snapshot, guest_files=guestfiles.guest_files(cfg.arch),
        skills_dirs=skills_dirs(default_skills, extra),
        package_lists=package_lists, sources=sources, ca_certs=ca_certs,
    )  # fmt: skip


def skills_dirs(default_skills: bool, extra: Path | None) -> tuple[Path, ...]:
    """The skills folders a build merges, in order: the project's, then the user's."""
    return (*([skills.PROJECT_SKILLS] if default_skills else []), *([extra] if extra else []))


def render_inputs(
    cfg: BuildConfig,
    distro: str,
    ssh_key: str | None,
    hostname: str,
    apt_mirror: str | None,
    apt_proxy: str | None,
    apt_snapshot: str | None,
    skills_url: str | None,
    skills_sha256: str | None,
    source_files: list[str] | None = None,
    default_skills: bool = True,
    ca_cert_files: list[str] | None = None,
) -> cloudinit.RenderInputs:
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
    return build_inputs(
        cfg, distro, host_key=ssh.KeyPair.generate("host@sandbox-image-render"),
        build_ssh_public_key=key, hostname=hostname, apt_mirror=apt_mirror,
        apt_proxy=apt_proxy or guestnet.GUEST_HTTP_PROXY, apt_snapshot=apt_snapshot,
        skills_dir=skills_dir,
        sources=tuple(packages.load_source_file(Path(f)) for f in source_files or ()),
        default_skills=default_skills,
        ca_certs=trust.load([Path(f) for f in ca_cert_files or ()]),
    )  # fmt: skip


def rendered(inputs: cloudinit.RenderInputs, validate: bool) -> dict[str, bytes]:
    """The cloud-init documents of a standalone seed (the build's seed, and the later
    stages' scripts and payload, which it runs itself), checked with cloud-init's own
    schema unless told not to."""
    files = cloudinit.render(inputs, standalone=True)
    if validate:
        cloudinit.validate_schema(files["user-data"])
    return files
