"""What ``./inv render``, ``./inv seed`` and ``build-image`` are asked to render.

One builder of cloud-init's RenderInputs from the user's flags: the skills folder
(given, or downloaded and checked by SHA-256), the build user's SSH key, host name
and apt settings.
"""

from __future__ import annotations

from pathlib import Path

from image.build import cloudinit, skills
from image.config import BuildConfig
from image.errors import ImageError


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


def rendered(inputs: cloudinit.RenderInputs, validate: bool) -> dict[str, bytes]:
    """The cloud-init documents, checked with cloud-init's own schema unless told not to."""
    files = cloudinit.render(inputs)
    if validate:
        cloudinit.validate_schema(files["user-data"])
    return files
