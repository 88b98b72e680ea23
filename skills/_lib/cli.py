"""What every skill script says on bad input: one ``error:`` line, exit status 1.

Standard library only; imported by the skills' scripts from ``../_lib``.
"""

from __future__ import annotations

import sys


def fail(message: object) -> int:
    """Print ``message`` as one ``error:`` line to stderr; return the exit status 1."""
    text = " ".join(str(message).split()) or "unknown error"
    print(f"error: {text}", file=sys.stderr)
    return 1
