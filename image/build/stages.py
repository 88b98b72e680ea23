"""The build's stages, by how often their inputs change, and the key of each one's layer.

    system     cloud-init on the base image: users, apt, third-party sources,
               the apt packages (the seed, cloud-init/user-data.j2)
    libraries  pip and npm (cloud-init/stage-libraries.sh.j2); none for a
               profile without either
    config     the sandbox's own files, the skills, the final marker
               (cloud-init/stage-config.sh.j2)

Generalizing is not a stage: every build does it after the last layer, so
that layers stay resumable build VMs (see layercache.py).

Each stage's key is made of its own inputs and the key of the stage below,
so a change reruns its stage and every stage above it, never one below.
Running a stage on top of the layer below in a later build is exactly what a
cold build does too (it also saves each stage and resumes from it), so an
incremental rebuild and a cold build of the same inputs run the same steps on
the same guest state.

One stage can also be re-run on a layer of its own: a locked build's
"libraries" brings that stage's layer of another lock (on the same layer
below) to its own lock, removing and adding only the packages that differ
(cloudinit.render_stages). A locked build checks every pip and npm package
against the lock, so such a layer holds what a cold run would have installed;
``rerun_key`` says which layers qualify (those whose re-run script is the
same: only the package lists differ).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from image.build import layercache
from image.build.cloudinit import StageScript

SYSTEM = layercache.SYSTEM
NAMES = (SYSTEM, "libraries", "config")


@dataclass(frozen=True)
class Stage:
    name: str
    key: str
    inputs: dict[str, Any]  # what the key was made of (kept in the layer's layer.json)
    script: StageScript | None  # None: the system stage (cloud-init runs it)
    keep: bool  # whether a later build may reuse its layer (its inputs are all pinned)
    why_not_kept: str = ""
    rerun_key: str = ""  # "": no re-run form; else what a layer of it to re-run on must match


def plan(system_inputs: Mapping[str, Any], scripts: Sequence[StageScript], *,
         locked: bool) -> list[Stage]:  # fmt: skip
    """The stages of one build, lowest first, keyed.

    ``system_inputs``: what the system layer's key is made of (the pipeline's
    ``_layer_inputs``). An unlocked build cannot tell whether PyPI or npm would
    now give other versions: its "libraries" layer, and every one above it, is
    not kept (the system layer is, checked against the apt archive's state)."""
    out = [Stage(SYSTEM, layercache.make_key(system_inputs), dict(system_inputs), None, True)]
    keep, why = True, ""
    for script in scripts:
        if script.name not in NAMES[1:]:
            raise ValueError(f"unknown stage {script.name!r}")
        if script.name == "libraries" and not locked:
            keep, why = False, "an unlocked build's pip/npm packages cannot be checked for " \
                               "newer versions (build with --lock to keep this layer)"  # fmt: skip
        inputs = {
            "format": layercache.FORMAT,
            "stage": script.name,
            "below": out[-1].key,
            "script_sha256": hashlib.sha256(script.script).hexdigest(),
            "payload": {
                name: hashlib.sha256(data).hexdigest()
                for name, data in sorted(script.payload.items())
            },
        }
        rerun_key = ""
        if script.rerun is not None and keep:
            rerun_key = layercache.make_key({
                "format": layercache.FORMAT, "stage": script.name,
                "rerun_sha256": hashlib.sha256(script.rerun.script).hexdigest(),
            })  # fmt: skip
        out.append(Stage(script.name, layercache.make_key(inputs), inputs, script, keep, why,
                         rerun_key))  # fmt: skip
    return out
