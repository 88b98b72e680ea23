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
