"""How the toolkit talks to people: step logs with timings, progress, results for CI."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.logging import RichHandler

err = Console(stderr=True, highlight=False)
if not err.is_terminal:  # CI logs: do not wrap tables at 80 columns
    err = Console(stderr=True, highlight=False, width=160)
log = logging.getLogger("image")


def setup_logging(debug: bool = False) -> None:
    level = logging.DEBUG if debug else logging.INFO
    root = logging.getLogger("image")
    root.setLevel(level)
    if root.handlers:
        return
    handler: logging.Handler
    if err.is_terminal and not os.environ.get("CI"):
        handler = RichHandler(console=err, show_path=False, markup=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root.addHandler(handler)


@contextlib.contextmanager
def step(name: str, timings: dict[str, float] | None = None) -> Iterator[None]:
    """Log the start and the duration of a step; record it in ``timings``."""
    log.info("==> %s", name)
    start = time.monotonic()
    try:
        yield
    finally:
        seconds = time.monotonic() - start
        if timings is not None:
            timings[name] = round(seconds, 2)
        log.info("<== %s (%.1f s)", name, seconds)


def print_json(result: dict[str, Any]) -> None:
    """The machine-readable result: one JSON object, always the last line on stdout."""
    sys.stdout.write(json.dumps(result, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def progress_enabled() -> bool:
    return err.is_terminal and not os.environ.get("CI")


def print_summary(title: str, timings: dict[str, float]) -> None:
    """A table of steps and their seconds, on stderr (stdout stays for results)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for name, seconds in timings.items():
        table.add_row(name, f"{seconds:.1f}")
    table.add_row("total", f"{sum(timings.values()):.1f}", style="bold")
    err.print(table)
