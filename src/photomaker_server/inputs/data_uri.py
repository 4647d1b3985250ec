"""Decoding ``data:`` URIs (RFC 2397): the request's own bytes, checked strictly and decoded in one pass.

Two places read data URIs: the API at submit (``api/data_uris.py``, which moves them to file storage) and the
worker's fetcher (``inputs/fetch.py``) for a data URI it still meets. Both go through :func:`decode_data_uri`, so a
URI the API accepted is never refused later for a rule the worker knows and the API does not.

Why the two paths in :func:`_decode_base64`: a photo arrives as megabytes of base64, and on the submit path every
pass over it counts (a whitespace regex over 2.5 MB cost more than the rest of the submit together). Nearly every
client sends plain, padded, standard base64; that is decoded directly by ``binascii.a2b_base64`` in strict mode,
which itself refuses anything outside the alphabet, misplaced or excess padding and data after the padding. Only
when that fails is the text normalised the way tolerant encoders need (percent-encoding, MIME line breaks, the
URL-safe alphabet, missing padding) and decoded strictly again; what still fails is not base64.
"""

from __future__ import annotations

import binascii
import math
from dataclasses import dataclass
from urllib.parse import unquote, unquote_to_bytes

from .errors import InputError

__all__ = ["DataUri", "decode_data_uri", "is_data_uri"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class DataUri:
    """A decoded data URI: its bytes and the media type it declared (lower-cased; None when it named none)."""

    data: bytes
    content_type: str | None


def is_data_uri(value: object) -> bool:
    """Whether ``value`` is a string that starts like a data URI (``data:``, any case). Looks at five characters:
    ``value.lower().startswith(...)`` would copy a 30 MB URI to answer."""
    return isinstance(value, str) and value[:5].lower() == "data:"


def limit_text(max_bytes: int) -> str:
    """A byte limit as people read it ("32 MB", "1000 bytes")."""
    return f"{max_bytes / MiB:.0f} MB" if max_bytes >= MiB else f"{max_bytes} bytes"


def decode_data_uri(url: str, max_bytes: int) -> DataUri:
    """Decode ``data:[<mime>][;params][;base64],<payload>`` with the size checked before and after decoding.

    Base64 is checked strictly: every character must belong to the alphabet (standard or URL-safe; line breaks,
    percent-encoding and missing padding are tolerated, as MIME encoders and some clients produce them), so
    garbage is refused rather than silently skipped. Every refusal is an :class:`InputError`; one whose message
    says "holds more than" is the size cap.
    """
    comma = url.find(",", 5)  # not ``url[5:].partition``: that copies a 30 MB payload twice
    if comma < 0:
        raise InputError("the data URI is malformed: expected 'data:<mime type>;base64,<data>'")
    header, payload = url[5:comma], url[comma + 1 :]
    params = [p.strip() for p in header.split(";")]
    is_base64 = len(params) > 1 and params[-1].lower() == "base64"
    if is_base64:
        params = params[:-1]
    mime = params[0].lower() if params and "/" in params[0] else None
    too_big = InputError(
        f"the data URI holds more than {limit_text(max_bytes)}; give larger files by http(s) URL instead"
    )
    if is_base64:
        # 4 characters per 3 bytes; the slack allows line breaks and percent-encoded padding.
        if len(payload) > 4 * math.ceil(max_bytes / 3) * 1.1 + 1024:
            raise too_big
        data = _decode_base64(payload)
    else:
        if len(payload) > 3 * max_bytes:  # percent-encoding only ever grows the text
            raise too_big
        data = unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise too_big
    if not data:
        raise InputError("the data URI is empty")
    return DataUri(data=data, content_type=mime)


def _decode_base64(payload: str) -> bytes:
    """The bytes of a base64 payload: strict, one pass for well-formed text (see the module's docstring)."""
    try:
        return binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):  # ValueError: text that is not ASCII
        pass
    compact = _normalised(payload)
    try:
        return binascii.a2b_base64(compact, strict_mode=True)
    except (binascii.Error, ValueError):
        raise InputError("the data URI's base64 payload is not valid base64") from None


def _normalised(payload: str) -> str:
    """What tolerant encoders send, as plain padded standard base64 (or something that still fails to decode)."""
    if "%" in payload:
        payload = unquote(payload)
    compact = "".join(payload.split())  # every Unicode space, as MIME line breaks (\r\n) and indentation
    if "-" in compact or "_" in compact:  # the URL-safe alphabet
        compact = compact.replace("-", "+").replace("_", "/")
    return compact + "=" * (-len(compact) % 4)
