"""The one place that turns a storage URL into a storage: local files or an S3-compatible bucket.

``None``, ``""``, ``file:///some/dir`` or a plain path → :class:`LocalStorage` (files in that directory, default
``data_dir/files``; only processes sharing the disk can share it). ``s3://bucket/prefix`` → :class:`S3Storage`
(every API replica and worker shares the bucket). boto3 is imported only for S3, so a local deployment never
loads it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from photomaker_server.settings import Settings
from photomaker_server.storage.base import FileStorage

__all__ = ["open_storage", "storage_from_settings"]


def open_storage(
    url: str | None,
    *,
    data_dir: Path,
    secret: bytes,
    base_url: str | None = None,
    max_upload_bytes: int | None = None,
    public_url: str | None = None,
    presign_ttl_s: float | None = None,
    clock: Callable[[], float] = time.time,
) -> FileStorage:
    """The storage named by ``url``.

    ``secret`` signs upload URLs (the same on every process accepting uploads); ``base_url`` is the API's public
    URL, the default for ``/files/`` URLs (a worker may pass its settings' value: it is only used to recognise
    URLs there); ``public_url`` / ``presign_ttl_s`` make S3 storage hand out CDN or presigned URLs instead.
    Raises ValueError for a URL or option combination that cannot work.
    """
    url = (url or "").strip()
    if url.startswith("s3://"):
        from photomaker_server.storage.s3 import S3Storage

        return S3Storage(url, base_url, secret=secret, clock=clock, max_upload_bytes=max_upload_bytes,
                         public_url=public_url, presign_ttl_s=presign_ttl_s)
    if public_url or presign_ttl_s:
        raise ValueError("public or presigned file URLs need S3 storage (an s3://bucket/prefix storage URL)")
    from photomaker_server.storage.local import LocalStorage

    if not url:
        root = Path(data_dir) / "files"
    elif url.startswith("file://"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"a file:// storage URL names a local directory, not host {parts.netloc!r}: {url!r}")
        root = Path(unquote(parts.path))
    elif "://" in url:
        raise ValueError(f"unsupported storage URL {url!r}: use a directory, file:///dir or s3://bucket/prefix")
    else:
        root = Path(url).expanduser()
    return LocalStorage(root, base_url, secret=secret, clock=clock, max_upload_bytes=max_upload_bytes)


def storage_from_settings(settings: Settings, secret: bytes) -> FileStorage:
    """:func:`open_storage` as the API and the worker configure it (``PHOTOMAKER_STORAGE_URL`` and friends).

    ``secret``: the deployment's upload-signing key (``shared_secrets``), the same in every process.
    """
    return open_storage(
        settings.storage_url or None,
        data_dir=settings.data_dir,
        secret=secret,
        base_url=settings.base_url,
        max_upload_bytes=settings.max_download_bytes,
        public_url=settings.storage_public_url or None,
        presign_ttl_s=settings.storage_presign_seconds or None,
    )
