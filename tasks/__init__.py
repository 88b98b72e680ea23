"""The invoke tasks, one module per area; every task sits at the top level (``./inv
build-image``, ``./inv snapshot``): users' CI scripts call these names.

    setup     config, doctor, test
    source    fetch, standin, mirror
    build     packages, render, seed, build-image, lock, cache
    sandbox   compile-seccomp, sandbox-run
    runtime   snapshot, proxy, launch, demo, bench-resume
    release   publish, pull, diff, report, registry

A new task goes into its area's module; it appears here by itself.
"""

from __future__ import annotations

from invoke.collection import Collection
from invoke.tasks import Task

from tasks import build, release, runtime, sandbox, setup, source
from tasks._common import _user_errors

__all__ = ["_user_errors", "ns"]

ns = Collection()
for _area in (setup, source, build, sandbox, runtime, release):
    for _value in vars(_area).values():
        if isinstance(_value, Task):
            ns.add_task(_value)
