"""The base image: fetch it, or build and serve the offline stand-in."""

from __future__ import annotations

from invoke.context import Context

from image import console
from tasks._common import (
    CONFIG_HELP,
    _config,
    _port,
    _user_errors,
    task,
)


# No auto short flags: --insecure-skip-signature must never be one typo ("-i") away.
@task(
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
        cfg = _config(c, only=("arch", "cache_dir"), arch=arch, cache_dir=cache_dir).config
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
        "thirdparty": "also serve the stand-in for NodeSource: a signed apt repository with "
        "nodejs 22 (made once from the npm registry's Node.js binaries, then cached) and "
        "a .source for build-image --source-file (default on; --no-thirdparty: images only)",
    }
)
def mirror(
    c: Context,
    arch: str | None = None,
    port: str = "0",
    release: str | None = None,
    serial: str | None = None,
    cache_dir: str | None = None,
    thirdparty: bool = True,
) -> None:
    """Serve the stand-in image(s) on 127.0.0.1 like cloud-images.ubuntu.com, until Ctrl-C."""
    from image.source import mirror as local_mirror
    from image.source import standin as standin_image
    from image.source import thirdparty as thirdparty_repo

    with _user_errors():
        cfg = _config(
            c, only=("release", "serial", "cache_dir"), release=release, serial=serial,
            cache_dir=cache_dir,
        ).config  # fmt: skip
        images = standin_image.images_for(cfg.cache_dir, arch.split(",") if arch else None)
        published = local_mirror.DEFAULT_SERIAL if cfg.serial == "latest" else cfg.serial
        repo = thirdparty_repo.ensure(cfg.cache_dir, tuple(sorted(images))) if thirdparty else None
        with local_mirror.serve_mirror(
            images, cfg.cache_dir, cfg.release, published, _port(port, "--port"), repo
        ) as served:
            print(served.build_args(), flush=True)
            local_mirror.wait_for_stop_signal()
