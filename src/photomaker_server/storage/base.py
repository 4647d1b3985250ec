"""The file storage contract shared by the API (serving, uploads) and the worker (storing outputs).

Keys have one form in every backend, ``<token>/<file name>``: the token (32 url-safe random characters) is the
capability, the name is sanitised. What is stored in results and job records is the key; URLs are rendered from it
by whoever hands them out (:meth:`FileStorage.url_for`), so a worker never needs the API's public address and a
change of public URL, CDN or presigning does not invalidate stored results.
"""

from __future__ import annotations

import mimetypes
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote

from ..urls import http_url_or_none

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "MAX_FILE_NAME",
    "FileStorage",
    "StorageUnavailable",
    "StoredFile",
    "UploadError",
    "api_file_key",
    "api_file_url",
    "checked_token",
    "clean_content_type",
    "file_key",
    "is_valid_key",
    "is_valid_token",
    "new_token",
    "sanitize_file_name",
]

#: Longest stored file name; long enough for real names, short enough for every filesystem and URL.
MAX_FILE_NAME = 128
DEFAULT_CONTENT_TYPE = "application/octet-stream"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_TOKEN = r"[A-Za-z0-9_-]{16,64}"
_NAME = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
_KEY_RE = re.compile(rf"{_TOKEN}/{_NAME}")
_TOKEN_RE = re.compile(_TOKEN)
_CONTENT_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,127}")


def new_token() -> str:
    """A fresh unguessable token (192 random bits, 32 url-safe characters)."""
    return secrets.token_urlsafe(24)


def is_valid_token(token: object) -> bool:
    return isinstance(token, str) and _TOKEN_RE.fullmatch(token) is not None


def checked_token(token: str | None) -> str:
    """``token`` to store a file under: a fresh one for None, else the given one if it is a token (never a path)."""
    if token is None:
        return new_token()
    if not is_valid_token(token):
        raise ValueError(f"not a storage token: {token!r}")
    return token


def is_valid_key(key: object) -> bool:
    """Whether ``key`` has the ``<token>/<name>`` form; anything else (traversal, odd characters) is refused."""
    return isinstance(key, str) and _KEY_RE.fullmatch(key) is not None


def clean_content_type(content_type: str | None, file_name: str) -> str:
    """``type/subtype`` without parameters, or a guess from the name; never anything header-breaking."""
    ct = (content_type or "").split(";", 1)[0].strip().lower()
    if _CONTENT_TYPE_RE.fullmatch(ct):
        return ct
    return mimetypes.guess_type(file_name)[0] or DEFAULT_CONTENT_TYPE


def api_file_url(key: str, base_url: str | None) -> str:
    """The API's own route for a stored file: ``{base_url}/files/<key>`` (a path alone without a base URL)."""
    return f"{(base_url or '').rstrip('/')}/files/{key}"


def api_file_key(url: str, base_url: str | None) -> str | None:
    """The key in a URL of the API's ``/files/`` route, else None.

    Matching is by path only — ``<base path>/files/<token>/<name>`` with the path of ``base_url`` — so a client
    that reached us as ``localhost`` while we call ourselves ``127.0.0.1`` (or via a proxy hostname) still gets its
    file read from storage instead of fetched over the network.
    """
    parts = http_url_or_none(url)
    if parts is None:
        return None
    base = http_url_or_none(base_url) if base_url else None
    base_path = unquote(base.path_only).rstrip("/") if base is not None else ""
    prefix = f"{base_path}/files/"
    path = unquote(parts.path_only)
    if not path.startswith(prefix):
        return None
    key = path[len(prefix) :]
    return key if is_valid_key(key) else None


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


def file_key(token: str, file_name: str | None) -> str:
    """The key :meth:`FileStorage.put` stores a file named ``file_name`` under with ``token``: ``<token>/<name>``,
    the name sanitised. Known before the write, so the file can be charged by its key first."""
    return f"{token}/{sanitize_file_name(file_name)}"


@dataclass(frozen=True)
class StoredFile:
    """A stored file. ``key`` is the storage's own name for it (``<token>/<file name>``, what results keep);
    ``url`` is where clients fetch it, rendered with the storage's default base URL when it was made (store the
    key, not this)."""

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


class StorageUnavailable(Exception):
    """The storage backend cannot be reached or refused the operation (object store down, bucket missing and not
    creatable, credentials refused). Raised instead of the backend's own exceptions; the API answers 503."""


class FileStorage(Protocol):
    """Store bytes under unguessable keys and render URLs for them.

    Keys and URLs are capabilities: anyone holding the URL may read the file (as on fal's CDN), so keys
    must never be derivable from anything public. Every method taking a key accepts untrusted input: a
    malformed key is treated as absent.

    ``base_url`` arguments are the API's public URL (``Settings.base_url``); each storage also has a default one
    (possibly none, in a worker). URLs of the API's ``/files/`` route need it; presigned or CDN URLs do not.
    """

    def put(self, data: bytes, content_type: str, file_name: str, token: str | None = None) -> StoredFile:
        """Store ``data`` under ``token`` (a fresh one when None; a caller that needs the key before writing makes
        one with :func:`new_token`), at the key :func:`file_key` gives. A token that is not one raises ValueError."""
        ...

    def read(self, key: str) -> bytes | None: ...

    def open(self, key: str) -> tuple[StoredFile, Iterator[bytes]] | None:
        """What :meth:`info` says and the bytes in chunks (for streaming), or None when absent."""
        ...

    def info(self, key: str) -> StoredFile | None: ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def delete_older_than(self, seconds: float) -> int: ...

    def url_for(self, key: str, base_url: str | None = None) -> str: ...

    def key_from_url(self, url: str, base_url: str | None = None) -> str | None: ...

    def create_upload(
        self, content_type: str, file_name: str, ttl_s: float = 3600, base_url: str | None = None
    ) -> tuple[str, str]: ...

    def check_upload(self, upload_id: str, sig: str) -> str:
        """Raise :class:`UploadError` unless an upload URL is known, correctly signed, unexpired and unused: the API
        calls it before reading the body, so a bad URL costs the client nothing to find out and us nothing to read.
        Returns the key the upload will be stored under (what its owner's quota is charged by)."""
        ...

    def accept_upload(self, upload_id: str, sig: str, data: bytes) -> StoredFile: ...

    def purge_uploads(self, grace_s: float = 86400) -> int: ...
