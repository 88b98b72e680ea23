"""Set-up: the effective configuration, host tools, the test tiers."""

from __future__ import annotations

import os
import sys

from invoke.context import Context
from invoke.exceptions import Exit

from image import config, console, hosttools, run
from image.errors import ImageError
from image.vm import accel
from tasks._common import (
    CONFIG_HELP,
    ROOT,
    _config,
    _user_errors,
    task,
)


@task(
    name="config",
    help={"json": CONFIG_HELP["json"], **{k: v for k, v in CONFIG_HELP.items() if k != "json"}},
)
def config_(
    c: Context,
    arch: str | None = None,
    release: str | None = None,
    serial: str | None = None,
    mirror: str | None = None,
    keyring: str | None = None,
    fingerprint: str | None = None,
    profile: str | None = None,
    cpus: str | None = None,
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
            if value is None and name.endswith("_timeout"):
                shown = "by accelerator"
            print(f"{name:<{width}}  {shown!s:<48}  ({resolved.sources[name]})")


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


@task(
    help={
        "fast": "unit tier only",
        "arm64": "the arm64 end-to-end tier only (slow under TCG)",
        "full": "the full-profile tier only: builds the Cowork set on the stand-in (hours "
        "under TCG)",
        "k": "only tests matching this pytest -k expression",
    }
)
def test(
    c: Context, fast: bool = False, arm64: bool = False, full: bool = False, k: str | None = None
) -> None:
    """Run the test tiers: unit, integration, vm (installs missing host tools as root)."""
    with _user_errors():
        if sum((fast, arm64, full)) > 1:
            raise ImageError(
                "--fast, --arm64 and --full each pick one tier: give one",
                hint="./inv test runs the default tiers; the others by hand",
            )
        if not fast and os.geteuid() == 0 and hosttools.missing():
            hosttools.install_missing()
        if not fast and not arm64 and not full:
            # The skills' scripts run in the integration tier with the image's pip set:
            # a venv made once per pin set (from PyPI) before any test starts.
            run.run([sys.executable, "-m", "tests.fixtures.skillsenv"], capture=False, cwd=ROOT)
        tiers = ["tests/unit"] if fast else ["tests/unit", "tests/integration", "tests/vm"]
        argv = [sys.executable, "-m", "pytest", *tiers]
        # The long tiers print the figures the docs record: show passing tests' output.
        if arm64:
            argv += ["-m", "arm64", "-rP"]
        elif full:
            argv += ["-m", "full", "-rP"]
        else:
            argv += ["-m", "not arm64 and not full"]
        if k:
            argv += ["-k", k]
        result = run.run(argv, check=False, capture=False, cwd=ROOT)
        raise Exit(code=result.returncode)
