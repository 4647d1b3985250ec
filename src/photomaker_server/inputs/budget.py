"""What one request's inputs may cost the worker all together, counted as the costs arise.

Per-input limits (download size, archive limits, pixels per image) do not bound a request: the same archive named
in ``image_urls`` 64 times, each unpacked with the full per-archive cap, was 15 GiB from one 5 MB upload. The
worker therefore keeps one :class:`RequestBudget` per request and charges it before the cost exists: every
decompressed chunk before it is kept, every image's decoded size before the decoder runs. What exceeds the budget
is refused with an :class:`InputError` naming the request field that crossed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable

    from photomaker_server.settings import Settings

MiB = 1024 * 1024


def over_unpack_budget(max_bytes: int, by_headers: bool = False, field: str | None = None) -> str:
    """The refusal of a request whose inputs unpack to more than ``max_bytes`` (counted, or declared by headers);
    ``field``, where the message must say itself which input crossed it (a job's error has no ``loc``)."""
    how = ", by their headers" if by_headers else ""
    where = f", passed while reading {field}" if field else ""
    return (f"the request's inputs unpack to more than {max_bytes / MiB:.0f} MB in all (archive, image_urls and "
            f"initial image together{how}){where}; send fewer or smaller photos")


@dataclass
class RequestBudget:
    """The request's budgets and what has been spent so far; ``peak_pixels`` is the most ever held at once."""

    max_bytes: int
    max_pixels: int
    bytes_read: int = 0
    pixels_held: int = 0
    peak_pixels: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestBudget:
        return cls(max_bytes=settings.max_request_input_bytes, max_pixels=settings.max_request_pixels)

    def add_bytes(self, count: int, field: str) -> None:
        """Charge ``count`` bytes unpacked from an input of ``field``; refuse once the total passes the budget."""
        self.bytes_read += count
        if self.bytes_read > self.max_bytes:
            raise InputError(over_unpack_budget(self.max_bytes, field=field), field=field)

    def reserve_pixels(self, count: int, field: str) -> None:
        """Check that decoding ``count`` more pixels keeps the request within its pixel budget (before decoding)."""
        if self.pixels_held + count > self.max_pixels:
            raise InputError(
                f"the request's images need more than {self.max_pixels / 1_000_000:g} megapixels decoded at once "
                f"(photos and initial image together), passed while decoding {field}; send fewer or smaller images",
                field=field,
            )
        self.peak_pixels = max(self.peak_pixels, self.pixels_held + count)

    def hold_pixels(self, count: int) -> None:
        """Record that ``count`` decoded pixels are now kept for the rest of the request."""
        self.pixels_held += count
        self.peak_pixels = max(self.peak_pixels, self.pixels_held)

    def byte_counter(self, field: str) -> Callable[[int], None]:
        return lambda count: self.add_bytes(count, field)

    def pixel_reservation(self, field: str) -> Callable[[int], None]:
        return lambda count: self.reserve_pixels(count, field)
