"""File storage in a local directory, served by the API at ``/files/<token>/<file name>``.

Layout under ``root`` (``data_dir/files``)::

    <token>/<file name>       the bytes (token: 32 url-safe random characters, the capability)
    <token>/.meta.json        content type, original name, size (names never start with "." so never served)
    .uploads/<id>.json        a pending signed upload (what it will become, when it expires)
    .uploads/<id>.used        marker making the upload URL one-time (created with O_EXCL)

and ``root/../upload-secret`` (0600): the HMAC key of upload URLs, shared by every process using the directory.

Serving note for the API: stored content types come from clients (uploads), so serve files with
``X-Content-Type-Options: nosniff`` and ``Content-Security-Policy: sandbox`` — an uploaded ``text/html`` must
not run script on this origin.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import mimetypes
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from photomaker_server.storage.base import StoredFile, UploadError, sanitize_file_name

__all__ = ["LocalStorage"]

_TOKEN = r"[A-Za-z0-9_-]{16,64}"
_NAME = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
_KEY_RE = re.compile(rf"(?P<token>{_TOKEN})/(?P<name>{_NAME})")
_TOKEN_RE = re.compile(_TOKEN)
_CONTENT_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,127}")
_META = ".meta.json"
_UPLOADS = ".uploads"
DEFAULT_CONTENT_TYPE = "application/octet-stream"


def _clean_content_type(content_type: str | None, file_name: str) -> str:
    """``type/subtype`` without parameters, or a guess from the name; never anything header-breaking."""
    ct = (content_type or "").split(";", 1)[0].strip().lower()
    if _CONTENT_TYPE_RE.fullmatch(ct):
        return ct
    return mimetypes.guess_type(file_name)[0] or DEFAULT_CONTENT_TYPE


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


def _load_or_create_secret(path: Path) -> bytes:
    """The HMAC key, created once (0600). Linking a finished temp file into place makes creation atomic,
    so processes starting together agree on one key."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    secret = path.read_text().strip()
    if len(secret) < 32:
        raise ValueError(f"{path} holds no usable upload secret")
    return secret.encode("ascii")


class LocalStorage:
    """:class:`~photomaker_server.storage.base.FileStorage` in a directory.

    ``base_url`` is the public URL prefix of the API (``Settings.base_url``); file URLs are
    ``{base_url}/files/<token>/<name>`` and upload URLs ``{base_url}/storage/upload/<id>?sig=<hmac>``.
    """

    def __init__(
        self,
        root: Path,
        base_url: str,
        *,
        secret_path: Path | None = None,
        clock: Callable[[], float] = time.time,
        max_upload_bytes: int | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.base_url = base_url.rstrip("/")
        self._clock = clock
        self.max_upload_bytes = max_upload_bytes
        self._secret = _load_or_create_secret(Path(secret_path) if secret_path else self.root.parent / "upload-secret")

    # -- keys, paths and URLs --

    @staticmethod
    def is_valid_key(key: str) -> bool:
        return isinstance(key, str) and _KEY_RE.fullmatch(key) is not None

    def path_for(self, key: str) -> Path | None:
        """The file behind ``key``, or None when the key is malformed (traversal, absolute paths, odd
        characters) or nothing is stored there. Safe to call with untrusted input."""
        if not self.is_valid_key(key):
            return None
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():  # also defeats planted symlinks
            return None
        return path

    def url_for(self, key: str) -> str:
        return f"{self.base_url}/files/{key}"

    def key_from_url(self, url: str, base_url: str | None = None) -> str | None:
        """The key of a URL this storage handed out, else None.

        Matching is by path only — ``<base path>/files/<token>/<name>`` with the path of ``base_url``
        (default: ours) — so a client that reached us as ``localhost`` while we call ourselves ``127.0.0.1``
        (or via a proxy hostname) still gets its file read locally instead of fetched over the network.
        """
        try:
            parts = urlsplit(url)
        except ValueError:
            return None
        if parts.scheme not in ("http", "https"):
            return None
        base_path = urlsplit(base_url if base_url is not None else self.base_url).path.rstrip("/")
        prefix = f"{base_path}/files/"
        path = unquote(parts.path)
        if not path.startswith(prefix):
            return None
        key = path[len(prefix) :]
        return key if self.is_valid_key(key) else None

    # -- reading and writing --

    def _store(self, token: str, data: bytes, content_type: str | None, file_name: str | None) -> StoredFile:
        name = sanitize_file_name(file_name)
        ctype = _clean_content_type(content_type, name)
        directory = self.root / token
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(directory / name, data)
        meta = {"content_type": ctype, "file_name": name, "size": len(data)}
        _atomic_write(directory / _META, json.dumps(meta).encode("utf-8"))
        key = f"{token}/{name}"
        return StoredFile(key=key, url=self.url_for(key), file_name=name, content_type=ctype, size=len(data))

    def put(self, data: bytes, content_type: str, file_name: str) -> StoredFile:
        """Store ``data`` under a fresh unguessable token; the name is sanitised."""
        return self._store(secrets.token_urlsafe(24), data, content_type, file_name)

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
            ctype = _clean_content_type(None, path.name)
        size = path.stat().st_size
        return StoredFile(key=key, url=self.url_for(key), file_name=path.name, content_type=ctype, size=size)

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
        if not _TOKEN_RE.fullmatch(token):
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
            if not _TOKEN_RE.fullmatch(directory.name) or not directory.is_dir() or directory.is_symlink():
                continue
            newest = max((f.stat().st_mtime for f in directory.iterdir()), default=directory.stat().st_mtime)
            if newest < cutoff:
                self.delete_prefix(directory.name)
                removed += 1
        return removed

    # -- one-time signed uploads (fal's storage/upload/initiate) --

    def _sign(self, upload_id: str, token: str, name: str, expires_at: int) -> str:
        message = f"upload\n{upload_id}\n{token}\n{name}\n{expires_at}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def _uploads_dir(self) -> Path:
        directory = self.root / _UPLOADS
        directory.mkdir(exist_ok=True)
        return directory

    def create_upload(self, content_type: str, file_name: str, ttl_s: float = 3600) -> tuple[str, str]:
        """Prepare a one-time upload: returns ``(upload_url, file_url)``.

        The client PUTs the raw bytes to ``upload_url`` (fal's JS client sends no Authorization header there,
        so the URL itself must be the credential: unguessable id, HMAC signature, expiry, single use) and
        then uses ``file_url``, which is known in advance.
        """
        upload_id = secrets.token_urlsafe(24)
        token = secrets.token_urlsafe(24)
        name = sanitize_file_name(file_name)
        expires_at = math.ceil(self._clock() + ttl_s)
        record = {
            "token": token,
            "file_name": name,
            "content_type": _clean_content_type(content_type, name),
            "expires_at": expires_at,
        }
        _atomic_write(self._uploads_dir() / f"{upload_id}.json", json.dumps(record).encode("utf-8"), 0o600)
        sig = self._sign(upload_id, token, name, expires_at)
        return f"{self.base_url}/storage/upload/{upload_id}?sig={sig}", self.url_for(f"{token}/{name}")

    def _upload_record(self, upload_id: str, sig: str) -> dict:
        """The pending upload's record after the id, signature and expiry checks (UploadError otherwise)."""
        if not isinstance(upload_id, str) or not _TOKEN_RE.fullmatch(upload_id):
            raise UploadError("not_found", "Unknown upload URL")
        try:
            record = json.loads((self.root / _UPLOADS / f"{upload_id}.json").read_text())
            token, name, expires_at = record["token"], record["file_name"], int(record["expires_at"])
        except (OSError, ValueError, KeyError, TypeError):
            raise UploadError("not_found", "Unknown upload URL") from None
        expected = self._sign(upload_id, token, name, expires_at)
        if not isinstance(sig, str) or not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "surrogateescape")):
            raise UploadError("bad_signature", "The upload URL's signature is not valid")
        if self._clock() > expires_at:
            raise UploadError("expired", "The upload URL has expired")
        return record

    def check_upload(self, upload_id: str, sig: str) -> None:
        """What :meth:`accept_upload` would refuse, without a body: unknown, badly signed, expired or used."""
        self._upload_record(upload_id, sig)
        if (self.root / _UPLOADS / f"{upload_id}.used").exists():
            raise UploadError("used", "The upload URL has already been used")

    def accept_upload(self, upload_id: str, sig: str, data: bytes) -> StoredFile:
        """Store the body of a PUT to an upload URL. Raises :class:`UploadError` for an unknown id, a wrong
        signature, an expired URL, a second use, or (``max_upload_bytes``) a body too large."""
        record = self._upload_record(upload_id, sig)
        token, name = record["token"], record["file_name"]
        directory = self.root / _UPLOADS
        if self.max_upload_bytes is not None and len(data) > self.max_upload_bytes:
            raise UploadError("too_large", f"The upload is larger than {self.max_upload_bytes} bytes")
        try:  # the one-time check: exactly one request creates the marker
            os.close(os.open(directory / f"{upload_id}.used", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            raise UploadError("used", "The upload URL has already been used") from None
        return self._store(token, data, record.get("content_type"), name)

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
