"""The file storage contract shared by the API (serving, uploads) and the worker (storing outputs)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

__all__ = ["MAX_FILE_NAME", "FileStorage", "StoredFile", "UploadError", "sanitize_file_name"]

#: Longest stored file name; long enough for real names, short enough for every filesystem and URL.
MAX_FILE_NAME = 128
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_file_name(name: str | None, default: str = "file") -> str:
    """A file name safe as one path component and in a URL without quoting.

    Keeps only ``[A-Za-z0-9._-]`` (anything else becomes ``_``), drops any directory part, never starts with
    ``.`` or ``-`` (no hidden files, ``..``, or option-like names), and is at most :data:`MAX_FILE_NAME`
    characters with the extension preserved. Empty results become ``default``.
    """
    base = re.split(r"[\\/]", name or "")[-1]
    clean = _UNSAFE.sub("_", base).lstrip(".-")
    if not clean.strip("_."):
        return default
    if len(clean) > MAX_FILE_NAME:
        stem, dot, ext = clean.rpartition(".")
        if dot and stem and 0 < len(ext) <= 16:
            clean = stem[: MAX_FILE_NAME - len(ext) - 1] + "." + ext
        else:
            clean = clean[:MAX_FILE_NAME]
    return clean


@dataclass(frozen=True)
class StoredFile:
    """A stored file. ``key`` is the storage's own name for it (``<token>/<file name>`` locally);
    ``url`` is the absolute URL clients fetch it from."""

    key: str
    url: str
    file_name: str
    content_type: str
    size: int


class UploadError(Exception):
    """A signed upload URL was refused. ``reason`` is one of ``not_found``, ``bad_signature``, ``expired``,
    ``used``, ``too_large`` (the API maps them to 404, 403, 410, 409, 413)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class FileStorage(Protocol):
    """Store bytes under unguessable keys and hand out URLs for them.

    Keys and URLs are capabilities: anyone holding the URL may read the file (as on fal's CDN), so keys
    must never be derivable from anything public.
    """

    def put(self, data: bytes, content_type: str, file_name: str) -> StoredFile: ...

    def read(self, key: str) -> bytes | None: ...

    def info(self, key: str) -> StoredFile | None: ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def url_for(self, key: str) -> str: ...

    def key_from_url(self, url: str) -> str | None: ...

    def create_upload(self, content_type: str, file_name: str, ttl_s: float = 3600) -> tuple[str, str]: ...

    def check_upload(self, upload_id: str, sig: str) -> None:
        """Raise :class:`UploadError` unless an upload URL is known, correctly signed, unexpired and unused: the API
        calls it before reading the body, so a bad URL costs the client nothing to find out and us nothing to read."""
        ...

    def accept_upload(self, upload_id: str, sig: str, data: bytes) -> StoredFile: ...
