"""The invoke tasks: parse flags -> load the config once -> call image.*.

Keep this file thin: logic lives in the image package where it can be tested
without invoke. User errors (ImageError) become a clean message and exit 1;
a stage that does not exist yet exits 2. Tracebacks only with --debug.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from invoke import Context, Exit, task

from image import accel, config, console, hosttools, run
from image.errors import ImageError, NotBuiltYet

ROOT = Path(__file__).resolve().parent


def _debug() -> bool:
    return bool(os.environ.get("SANDBOX_IMAGE_DEBUG")) or logging.getLogger().isEnabledFor(
        logging.DEBUG
    )


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    console.setup_logging(_debug())
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
        console.err.print(f"[bold red]error:[/] {exc.message}", markup=True, highlight=False)
        if exc.hint:
            console.err.print(f"[bold]hint:[/] {exc.hint}")
        raise Exit(code=1) from None
    except KeyboardInterrupt:
        console.err.print("interrupted")
        raise Exit(code=130) from None


def _config(c: Context, **cli: Any) -> config.Resolved:
    section = c.config.get("sandbox_image", None)
    file_values = dict(section) if section else {}
    return config.load(cli, file_values)


CONFIG_HELP = {
    "arch": "guest architecture: arm64 (default) or amd64",
    "release": "Ubuntu release code name (jammy)",
    "serial": "cloud image serial YYYYMMDD or latest",
    "mirror": "base URL (https://, http://, file://) laid out like cloud-images.ubuntu.com/releases",
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


@task(help={"json": CONFIG_HELP["json"], **{k: v for k, v in CONFIG_HELP.items() if k != "json"}})
def config_(
    c: Context, arch: str | None = None, release: str | None = None, serial: str | None = None,
    mirror: str | None = None, keyring: str | None = None, fingerprint: str | None = None,
    profile: str | None = None, cpus: int | None = None, memory: str | None = None,
    disk_size: str | None = None, cache_dir: str | None = None, output_dir: str | None = None,
    accel: str | None = None, json: bool = False,
) -> None:
    """Print the effective configuration and where each value came from."""
    with _user_errors():
        resolved = _config(
            c, arch=arch, release=release, serial=serial, mirror=mirror, keyring=keyring,
            fingerprints=fingerprint, profile=profile, cpus=cpus, memory=memory,
            disk_size=disk_size, cache_dir=cache_dir, output_dir=output_dir, accel=accel,
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


@task(help={"install": "apt-get install the missing tools (needs root)",
            "json": CONFIG_HELP["json"]})
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
            rows.append({"tool": tool.name, "found": found, "version": version,
                         "used_for": tool.used_for, "install": fix})
            table.add_row(tool.name, "[green]found[/]" if found else "[red]missing[/]",
                          version, tool.used_for, fix)
        arch = accel.host_arch()
        try:
            verdict = accel.probe(arch)
            summary = verdict.summary()
        except ImageError as exc:  # no firmware: the probe cannot run
            verdict, summary = None, f"not probed: {exc.message}"
        if json:
            console.print_json({"tools": rows, "accel": {
                "summary": summary,
                "verdict": verdict.verdict.value if verdict else None,
            }})
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


@task
def fetch(c: Context) -> None:
    """Download and verify the Ubuntu cloud image (cached, resumable)."""
    _not_built("fetch", 3)


@task
def packages(c: Context) -> None:
    """Show a package profile: groups, explicit counts, expected installed count."""
    _not_built("packages", 4)


@task
def render(c: Context) -> None:
    """Render cloud-init user-data, meta-data and network-config."""
    _not_built("render", 4)


@task
def seed(c: Context) -> None:
    """Pack the NoCloud seed ISO (CIDATA)."""
    _not_built("seed", 4)


@task(name="compile-seccomp")
def compile_seccomp(c: Context) -> None:
    """Compile the seccomp profiles to BPF for x86_64 and aarch64."""
    _not_built("compile-seccomp", 5)


@task(name="sandbox-run")
def sandbox_run(c: Context) -> None:
    """Run a command under the in-guest sandbox launcher, on this host."""
    _not_built("sandbox-run", 5)


@task(name="build-image")
def build_image(c: Context) -> None:
    """Boot, provision, verify and publish the image."""
    _not_built("build-image", 6)


@task
def snapshot(c: Context) -> None:
    """Boot the built image until ready and save the VM state."""
    _not_built("snapshot", 7)


@task
def launch(c: Context) -> None:
    """Resume a sandbox VM from a snapshot."""
    _not_built("launch", 7)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so cleanup (children, scratch dirs) runs on both."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@task(help={"arch": "amd64 or arm64 (default: the configured arch)",
            "cache_dir": CONFIG_HELP["cache_dir"], "json": CONFIG_HELP["json"]})
def standin(c: Context, arch: str | None = None, cache_dir: str | None = None,
            json: bool = False) -> None:
    """Build (or reuse) the Debian stand-in base image for offline runs (needs root)."""
    from image import standin as standin_image

    with _user_errors(), _sigterm_as_interrupt():
        cfg = _config(c, arch=arch, cache_dir=cache_dir).config
        image = standin_image.ensure(cfg.cache_dir, cfg.arch)
        if json:
            console.print_json({"arch": image.arch, "path": str(image.path),
                                "recipe_hash": image.recipe_hash, "info": image.info})
        else:
            print(image.path)


@task(help={
    "arch": "serve these stand-ins (comma-separated; built if missing). "
            "Default: every cached one",
    "port": "port on 127.0.0.1 (0: any free port)",
    "release": CONFIG_HELP["release"],
    "serial": "serial the mirror publishes (default 20990101)",
    "cache_dir": CONFIG_HELP["cache_dir"],
})
def mirror(c: Context, arch: str | None = None, port: int = 0, release: str | None = None,
           serial: str | None = None, cache_dir: str | None = None) -> None:
    """Serve the stand-in image(s) on 127.0.0.1 like cloud-images.ubuntu.com, until Ctrl-C."""
    from image import mirror as local_mirror
    from image import standin as standin_image

    with _user_errors():
        cfg = _config(c, release=release, serial=serial, cache_dir=cache_dir).config
        images = standin_image.images_for(cfg.cache_dir, arch.split(",") if arch else None)
        published = local_mirror.DEFAULT_SERIAL if cfg.serial == "latest" else cfg.serial
        with local_mirror.serve_mirror(images, cfg.cache_dir, cfg.release, published,
                                       port) as served:
            print(served.cli_args(), flush=True)
            local_mirror.wait_for_stop_signal()


@task
def demo(c: Context) -> None:
    """Run the whole pipeline offline against a local stand-in mirror."""
    _not_built("demo", 6)


@task(help={
    "fast": "unit tier only",
    "arm64": "the arm64 end-to-end tier only (slow under TCG)",
    "k": "only tests matching this pytest -k expression",
})
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
