"""The one user-facing error type: what went wrong, and what the user can do about it."""

from __future__ import annotations


class ImageError(Exception):
    """A failure the user can act on. Tasks print it without a traceback."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


class NotBuiltYet(ImageError):
    """A task whose stage does not exist yet. Tasks exit 2 for it, never pretend."""

    def __init__(self, stage: str, issue: int) -> None:
        super().__init__(
            f"'{stage}' is not built yet",
            hint=f"this stage lands with issue #{issue}; see README.md for what works today",
        )
