"""./inv demo: the whole pipeline, offline, as a newcomer's first command.

stand-in base image (cached) -> local signed mirror -> build-image (smoke profile)
-> snapshot -> one launch running a command in the sandbox. Every step is the
production code path; only the mirror and its throwaway key are stand-ins.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from typing import Any

from image import hosttools
from image.build import pipeline
from image.config import BuildConfig
from image.console import step
from image.errors import ImageError
from image.runtime import snapshot
from image.source import mirror, standin

log = logging.getLogger(__name__)

DEMO_COMMAND = ("python3", "-c", "import platform; print('hello from', platform.node())")


def run_demo(cfg: BuildConfig) -> dict[str, Any]:
    timings: dict[str, float] = {}
    out = cfg.output_dir.resolve()
    # A fresh machine: as root, everything the demo runs is installed up front.
    hosttools.require([*standin.TOOLS, *hosttools.vm_tools(cfg.arch), "gpgv"], "the demo")
    with step("stand-in image", timings):
        base = standin.ensure(cfg.cache_dir, cfg.arch)
    with mirror.serve_mirror({cfg.arch: base.path}, cfg.cache_dir) as served:
        build_cfg = dataclasses.replace(
            cfg, mirror=served.url, keyring=served.keyring, fingerprints=(served.fingerprint,),
            serial="latest", profile="smoke", output_dir=out / "image",
        )  # fmt: skip
        with step("build-image", timings):
            built = pipeline.build_image(build_cfg, distro="debian")
    timings.update({f"build: {k}": v for k, v in built.timings.items()})
    snapdir = out / "snapshot"
    # The demo owns out/demo: its previous snapshot goes (snapshots are never overwritten).
    shutil.rmtree(snapdir, ignore_errors=True)
    with step("snapshot", timings):
        _, meta = snapshot.snapshot(cfg, built.image, snapdir)
    options = snapshot.LaunchOptions(command=DEMO_COMMAND, command_timeout=300)
    with step("launch", timings), snapshot.launch(snapdir, cfg, options) as sandbox:
        result = sandbox.sandboxed(list(DEMO_COMMAND), timeout=300)
        resume = sandbox.timings
    output = result.stdout.decode(errors="replace").strip()
    if result.exit_code != 0:
        raise ImageError(f"the demo command failed in the sandbox: {result.stderr.decode()}")
    log.info("sandbox said: %s", output)
    log.info(
        "cold boot to ready %.1f s; resume to ready %.2f s (%.1f %% of cold)",
        meta.ready_seconds, resume["ready"], 100 * resume["ready"] / meta.ready_seconds,
    )  # fmt: skip
    return {
        "timings": timings,
        "outputs": {
            "image": str(built.image),
            "build_info": str(built.build_info),
            "snapshot": str(snapdir),
        },
        "cold_ready_seconds": meta.ready_seconds,
        "resume_ready_seconds": resume["ready"],
        "sandbox_output": output,
    }
