"""File storage in a local directory, served by the API at ``/files/<token>/<file name>``.

Layout under ``root`` (``data_dir/files``)::

    <token>/<file name>       the bytes (token: 32 url-safe random characters, the capability)
    <token>/.meta.json        content type, original name, size (names never start with "." so never served)
    .uploads/<id>.json        a pending signed upload (what it will become, when it expires)
    .uploads/<id>.used        marker making the upload URL one-time (created with O_EXCL)

The HMAC key of upload URLs is passed in (``secret``); every process accepting uploads must get the same one
(``shared_secrets``: configuration, else the job database).

Serving note for the API: stored content types come from clients (uploads), so serve files with
``X-Content-Type-Options: nosniff`` and ``Content-Security-Policy: sandbox`` — an uploaded ``text/html`` must
not run script on this origin.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from photomaker_server.storage.base import (
    StoredFile,
    UploadError,
    api_file_key,
    api_file_url,
    checked_token,
    clean_content_type,
    file_key,
    is_valid_key,
    is_valid_token,
)
from photomaker_server.storage.uploads import PendingUpload, UploadSigner, upload_url

__all__ = ["LocalStorage"]

_META = ".meta.json"
_UPLOADS = ".uploads"
_CHUNK = 256 * 1024


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write via a temp file and rename, so readers see the whole file or none of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


class LocalStorage:
    """:class:`~photomaker_server.storage.base.FileStorage` in a directory.

    ``base_url`` is the default public URL prefix of the API (``Settings.base_url``) for rendering and
    recognising URLs; file URLs are ``{base_url}/files/<token>/<name>`` and upload URLs
    ``{base_url}/storage/upload/<id>?sig=<hmac>``. ``secret`` is the HMAC key of upload URLs.
    """

    def __init__(
        self,
        root: Path,
        base_url: str | None = None,
        *,
        secret: bytes,
        clock: Callable[[], float] = time.time,
        max_upload_bytes: int | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.base_url = (base_url or "").rstrip("/")
        self._clock = clock
        self._signer = UploadSigner(secret, max_upload_bytes)

    @property
    def max_upload_bytes(self) -> int | None:
        return self._signer.max_upload_bytes

    # -- keys, paths and URLs --

    is_valid_key = staticmethod(is_valid_key)

    def path_for(self, key: str) -> Path | None:
        """The file behind ``key``, or None when the key is malformed (traversal, absolute paths, odd
        characters) or nothing is stored there. Safe to call with untrusted input."""
        if not is_valid_key(key):
            return None
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():  # also defeats planted symlinks
            return None
        return path

    def url_for(self, key: str, base_url: str | None = None) -> str:
        return api_file_url(key, base_url if base_url is not None else self.base_url)

    def key_from_url(self, url: str, base_url: str | None = None) -> str | None:
        """The key of a URL this storage's files are served at (the API's ``/files/`` route, matched by path
        under the path of ``base_url``, default ours), else None."""
        return api_file_key(url, base_url if base_url is not None else self.base_url)

    # -- reading and writing --

    def _store(self, token: str, data: bytes, content_type: str | None, file_name: str | None) -> StoredFile:
        key = file_key(token, file_name)
        name = key.partition("/")[2]
        ctype = clean_content_type(content_type, name)
        directory = self.root / token
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(directory / name, data)
        meta = {"content_type": ctype, "file_name": name, "size": len(data)}
        _atomic_write(directory / _META, json.dumps(meta).encode("utf-8"))
        return StoredFile(key=key, url=self.url_for(key), file_name=name, content_type=ctype, size=len(data))

    def put(self, data: bytes, content_type: str, file_name: str, token: str | None = None) -> StoredFile:
        """Store ``data`` under ``token`` (default: a fresh unguessable one); the name is sanitised."""
        return self._store(checked_token(token), data, content_type, file_name)

    def read(self, key: str) -> bytes | None:
        path = self.path_for(key)
        return None if path is None else path.read_bytes()

    def info(self, key: str) -> StoredFile | None:
        """What :meth:`put` returned for ``key`` (content type for serving), or None."""
        path = self.path_for(key)
        if path is None:
            return None
        try:
            meta = json.loads((path.parent / _META).read_text())
            ctype = meta["content_type"]
        except (OSError, ValueError, KeyError):
            ctype = clean_content_type(None, path.name)
        size = path.stat().st_size
        return StoredFile(key=key, url=self.url_for(key), file_name=path.name, content_type=ctype, size=size)

    def open(self, key: str) -> tuple[StoredFile, Iterator[bytes]] | None:
        info = self.info(key)
        path = self.path_for(key) if info else None
        if info is None or path is None:
            return None
        return info, _chunks(path)

    def delete(self, key: str) -> None:
        """Remove a file (and its token directory once empty). Unknown or malformed keys are ignored."""
        path = self.path_for(key)
        if path is None:
            return
        path.unlink(missing_ok=True)
        directory = path.parent
        try:
            if not any(p.name != _META for p in directory.iterdir()):
                shutil.rmtree(directory, ignore_errors=True)
        except FileNotFoundError:  # removed concurrently
            pass

    def delete_prefix(self, prefix: str) -> None:
        """Remove everything under one token (``"<token>"`` or ``"<token>/"``); anything else is ignored."""
        token = prefix.rstrip("/")
        if not is_valid_token(token):
            return
        directory = self.root / token
        if directory.is_dir() and not directory.is_symlink():
            shutil.rmtree(directory, ignore_errors=True)

    def delete_older_than(self, seconds: float) -> int:
        """Remove every stored file (uploads and outputs alike) last written more than ``seconds`` ago.

        Outputs are also removed with their request; this catches what no request names: uploaded inputs.
        Returns how many token directories went."""
        cutoff = self._clock() - seconds
        removed = 0
        for directory in self.root.iterdir():
            if not is_valid_token(directory.name) or not directory.is_dir() or directory.is_symlink():
                continue
            newest = max((f.stat().st_mtime for f in directory.iterdir()), default=directory.stat().st_mtime)
            if newest < cutoff:
                self.delete_prefix(directory.name)
                removed += 1
        return removed

    # -- one-time signed uploads (fal's storage/upload/initiate) --

    def _uploads_dir(self) -> Path:
        directory = self.root / _UPLOADS
        directory.mkdir(exist_ok=True)
        return directory

    def create_upload(
        self, content_type: str, file_name: str, ttl_s: float = 3600, base_url: str | None = None
    ) -> tuple[str, str]:
        """Prepare a one-time upload: returns ``(upload_url, file_url)``.

        The client PUTs the raw bytes to ``upload_url`` and then uses ``file_url``, which is known in advance.
        """
        upload_id, pending, sig = self._signer.new(content_type, file_name, ttl_s, self._clock())
        _atomic_write(self._uploads_dir() / f"{upload_id}.json", json.dumps(pending.to_json()).encode("utf-8"), 0o600)
        base = base_url if base_url is not None else self.base_url
        return upload_url(base, upload_id, sig), self.url_for(pending.key, base)

    def _pending(self, upload_id: str) -> PendingUpload:
        upload_id = UploadSigner.check_id(upload_id)
        try:
            return PendingUpload.from_json(json.loads((self.root / _UPLOADS / f"{upload_id}.json").read_text()))
        except (OSError, ValueError):
            raise UploadError("not_found", "Unknown upload URL") from None

    def check_upload(self, upload_id: str, sig: str) -> str:
        """What :meth:`accept_upload` would refuse, without a body: unknown, badly signed, expired or used.
        Returns the key the upload will be stored under."""
        pending = self._pending(upload_id)
        self._signer.check(upload_id, sig, pending, 0, self._clock())
        if (self.root / _UPLOADS / f"{upload_id}.used").exists():
            raise UploadError("used", "The upload URL has already been used")
        return pending.key

    def accept_upload(self, upload_id: str, sig: str, data: bytes) -> StoredFile:
        """Store the body of a PUT to an upload URL. Raises :class:`UploadError` for an unknown id, a wrong
        signature, an expired URL, a second use, or (``max_upload_bytes``) a body too large."""
        pending = self._pending(upload_id)
        directory = self.root / _UPLOADS
        self._signer.check(upload_id, sig, pending, len(data), self._clock())
        try:  # the one-time check: exactly one request creates the marker
            os.close(os.open(directory / f"{upload_id}.used", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            raise UploadError("used", "The upload URL has already been used") from None
        return self._store(pending.token, data, pending.content_type, pending.file_name)

    def purge_uploads(self, grace_s: float = 86400) -> int:
        """Forget upload records that expired more than ``grace_s`` ago (until then a reuse is reported as
        ``used``/``expired`` rather than ``not_found``). Returns how many were removed."""
        directory = self.root / _UPLOADS
        if not directory.is_dir():
            return 0
        cutoff = self._clock() - grace_s
        removed = 0
        for record_path in directory.glob("*.json"):
            try:
                expires_at = float(json.loads(record_path.read_text())["expires_at"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if expires_at < cutoff:
                record_path.unlink(missing_ok=True)
                (directory / f"{record_path.stem}.used").unlink(missing_ok=True)
                removed += 1
        return removed
