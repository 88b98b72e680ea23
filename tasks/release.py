"""Releasing: publish and pull OCI artifacts, compare builds, report, a local registry."""

from __future__ import annotations

from invoke.context import Context
from invoke.exceptions import Exit

from image import console
from image.errors import ImageError
from tasks._common import (
    CONFIG_HELP,
    _config,
    _out_path,
    _port,
    _user_errors,
    _user_path,
    task,
)


@task(
    positional=["build"],
    help={
        "build": "the build output to publish (build-image's --out)",
        "to": "REGISTRY/REPOSITORY:TAG to push to",
        "snapshot": "also push this snapshot directory (./inv snapshot's --out)",
        "insecure": "allow plain HTTP to a registry that is not on this machine",
        "source": "org.opencontainers.image.source annotation (e.g. the repository URL)",
        "revision": "org.opencontainers.image.revision annotation (e.g. the commit)",
        "json": CONFIG_HELP["json"],
    },
)
def publish(
    c: Context, build: str, to: str | None = None, snapshot: str | None = None,
    insecure: bool = False, source: str | None = None, revision: str | None = None,
    json: bool = False,
) -> None:  # fmt: skip
    """Push a build output (and optionally its snapshot) to an OCI registry as one artifact."""
    from image.release import oci

    with _user_errors():
        if not to:
            raise ImageError("no destination", hint="./inv publish BUILD --to REGISTRY/REPO:TAG")
        snap = _user_path(snapshot) if snapshot else None
        result = oci.publish(_user_path(build), to, snapshot=snap, insecure=insecure,
                             source=source, revision=revision)  # fmt: skip
        if json:
            console.print_json(result.to_json())
        else:
            print(f"{result.reference}@{result.digest}")


@task(
    positional=["ref"],
    help={
        "ref": "REGISTRY/REPOSITORY:TAG (or @sha256:...) to pull",
        "out": "directory to create with the verified build output",
        "insecure": "allow plain HTTP to a registry that is not on this machine",
        "json": CONFIG_HELP["json"],
    },
)
def pull(
    c: Context, ref: str, out: str | None = None, insecure: bool = False, json: bool = False
) -> None:
    """Pull a published build output; every file is checked before OUT appears."""
    from image.release import oci

    with _user_errors():
        if not out:
            raise ImageError("pull needs --out DIR", hint=f"./inv pull {ref} --out pulled/")
        result = oci.pull(ref, _out_path(out, "--out", directory=True), insecure=insecure)
        if json:
            console.print_json(result.to_json())
        else:
            print(result.out)


@task(
    positional=["old", "new"],
    help={
        "old": "the older build output",
        "new": "the newer build output",
        "exit_code": "exit 1 when a dpkg, pip or npm package was added, removed or changed "
        "(0 when not), as git diff --exit-code: for CI",
        "json": CONFIG_HELP["json"],
    },
)
def diff(c: Context, old: str, new: str, exit_code: bool = False, json: bool = False) -> None:
    """Compare two build outputs: packages, image size, step times."""
    from image.release import builddiff

    with _user_errors():
        result = builddiff.diff_outputs(_user_path(old), _user_path(new))
        if json:
            console.print_json(result.to_json())
        else:
            print(builddiff.format_text(result))
    if exit_code and result.differs:
        raise Exit(code=1)


@task(
    positional=["build"],
    help={
        "build": "the build output to report on",
        "out": "where to write the page (default: BUILD/report.html)",
        "json": CONFIG_HELP["json"],
    },
)
def report(c: Context, build: str, out: str | None = None, json: bool = False) -> None:
    """Write the build's self-contained HTML report (inputs, checks, packages, timeline)."""
    from image.release import report as build_report

    with _user_errors():
        page = _out_path(out, "--out", directory=False) if out else None
        path = build_report.write_report(_user_path(build), page)
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
    c: Context, port: str = "5000", storage: str | None = None, cache_dir: str | None = None
) -> None:
    """Serve a local OCI registry on 127.0.0.1 (for publish/pull), until Ctrl-C."""
    from image.release import localregistry
    from image.source import mirror as local_mirror

    with _user_errors():
        cfg = _config(c, only=("cache_dir",), cache_dir=cache_dir).config
        where = _out_path(storage, "--storage", directory=True) if storage else None
        with localregistry.serve_registry(
            where or cfg.cache_dir / "registry", _port(port, "--port")
        ) as served:
            print(served.host, flush=True)
            local_mirror.wait_for_stop_signal()
