"""The one exception type of the inputs layer."""

from __future__ import annotations


class InputError(ValueError):
    """A user-supplied input was refused.

    The message is shown to the end user verbatim, so it says what was wrong and what is accepted, and never
    carries internal details (stack traces, resolved addresses of internal hosts, library error text).
    ``field`` optionally names the request field the input came from (e.g. ``"image_archive_url"``) so the
    API can point at it.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message
