"""File storage in an S3-compatible object store (AWS S3, SeaweedFS, MinIO, …), shared by every API replica and
worker: the only disk they have in common.

Configured by a URL, ``s3://bucket/prefix``. Endpoint, credentials and region come from boto3's standard chain
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_PROFILE`` and the
config files, instance roles); nothing here reads its own variables.

Objects under ``<prefix>/``::

    <token>/<file name>        the bytes, with their Content-Type (token: 32 url-safe random characters)
    _uploads/<id>.json         a pending signed upload (what it will become, when it expires)
    _uploads/<id>.used         marker making the upload URL one-time

(Not ``.uploads`` as on local disk: SeaweedFS leaves names starting with a dot out of listings. ``_uploads`` is
too short to be a token, so it never collides with a key.)

**One-time uploads across replicas.** The marker is written with ``PutObject`` and ``If-None-Match: *``: the store
creates it only if no object has that name, atomically, so of any number of PUTs to one upload URL, on any number
of API replicas, exactly one gets past it (the others get ``412 Precondition Failed``, or ``409`` for a concurrent
conditional write on AWS). AWS S3, SeaweedFS (checked with 4.48) and MinIO implement conditional writes; a store
that ignores the header would let a URL be used twice, so use one that does. No lock service or database row is
needed for it.

**Bucket.** A missing bucket is created on first use (convenient for a self-hosted SeaweedFS/MinIO); when that is
not allowed (a cloud account without ``s3:CreateBucket``), every operation raises :class:`StorageUnavailable`
naming the bucket, so the operator sees what to fix instead of a botocore traceback.

**Errors.** An unreachable store, refused credentials or a server error raise
:class:`~photomaker_server.storage.base.StorageUnavailable`; a missing object is ``None`` as with local files.

**Retention** uses each object's ``LastModified``: a token's objects go when the newest of them is older than the
retention time.

**URLs** are rendered at read time: by default the API's own ``{base_url}/files/<key>`` route (the API streams
the object), or ``{public_url}/<key>`` when a CDN or public bucket serves ``<prefix>/``, or presigned GET URLs
valid for ``presign_ttl_s``. :meth:`S3Storage.key_from_url` recognises all three forms, so a URL we handed out
is read from the store, not fetched over the network.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from photomaker_server.storage.base import (
    StorageUnavailable,
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
from photomaker_server.urls import http_url_or_none

__all__ = ["S3Storage", "parse_s3_url"]

_UPLOADS = "_uploads/"
_MISSING = {"404", "NoSuchKey", "NotFound"}
_NO_BUCKET = {"NoSuchBucket"}
_TAKEN = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_CHUNK = 256 * 1024


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix/")`` (the prefix empty or ending in ``/``)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an S3 storage URL (s3://bucket/prefix): {url!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Storage:
    """:class:`~photomaker_server.storage.base.FileStorage` in a bucket.

    ``base_url``: the API's public URL, default for ``/files/`` URLs. ``secret``: HMAC key of upload URLs, the
    same on every replica. ``public_url``: a CDN or public-bucket URL serving ``<prefix>/`` (files are then
    ``{public_url}/<key>``). ``presign_ttl_s``: hand out presigned GET URLs valid this long instead.
    ``client``: a boto3 S3 client (default: one from the standard AWS configuration chain).
    """

    def __init__(
        self,
        url: str,
        base_url: str | None = None,
        *,
        secret: bytes,
        clock: Callable[[], float] = time.time,
        max_upload_bytes: int | None = None,
        public_url: str | None = None,
        presign_ttl_s: float | None = None,
        create_bucket: bool = True,
        client: Any = None,
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.base_url = (base_url or "").rstrip("/")
        self.public_url = (public_url or "").rstrip("/") or None
        if presign_ttl_s is not None and presign_ttl_s <= 0:
            raise ValueError("presign_ttl_s must be positive")
        self.presign_ttl_s = presign_ttl_s
        self._clock = clock
        self._signer = UploadSigner(secret, max_upload_bytes)
        self._create_bucket = create_bucket
        self._client = client or boto3.session.Session().client(
            "s3",
            config=Config(
                connect_timeout=5,
                read_timeout=60,
                retries={"mode": "standard", "max_attempts": 3},
                signature_version="s3v4",
            ),
        )
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    @property
    def max_upload_bytes(self) -> int | None:
        return self._signer.max_upload_bytes

    def __repr__(self) -> str:
        return f"S3Storage(s3://{self.bucket}/{self.prefix}, endpoint={self._client.meta.endpoint_url})"

    # -- plumbing --

    def _object(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def _where(self) -> str:
        return f"bucket {self.bucket!r} at {self._client.meta.endpoint_url}"

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """botocore's exceptions → StorageUnavailable. ClientErrors a caller handles (missing object,
        precondition) must be caught inside the ``with``."""
        try:
            yield
        except ClientError as exc:
            raise StorageUnavailable(f"Object storage refused {what} ({self._where()}): {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"Object storage unreachable for {what} ({self._where()}): {exc}") from exc

    def _ready(self) -> Any:
        """The client, after making sure the bucket exists (once per instance; retried after a failure)."""
        if self._bucket_ready:
            return self._client
        with self._bucket_lock:
            if self._bucket_ready:
                return self._client
            with self._errors("checking the bucket"):
                try:
                    self._client.head_bucket(Bucket=self.bucket)
                except ClientError as exc:
                    if _code(exc) not in _MISSING | _NO_BUCKET:
                        raise
                    self._make_bucket()
            self._bucket_ready = True
        return self._client

    def _make_bucket(self) -> None:
        if not self._create_bucket:
            raise StorageUnavailable(f"The {self._where()} does not exist; create it or let the service create it")
        region = self._client.meta.region_name
        args: dict[str, Any] = {"Bucket": self.bucket}
        if region and region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(**args)
        except ClientError as exc:
            if _code(exc) in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return  # another replica was first
            raise StorageUnavailable(f"The {self._where()} does not exist and could not be created: {exc}") from exc

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        client = self._ready()
        with self._errors("listing objects"):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                yield from page.get("Contents", [])

    def _delete_objects(self, names: list[str]) -> None:
        client = self._ready()
        with self._errors("deleting objects"):
            for i in range(0, len(names), 1000):
                batch = [{"Key": name} for name in names[i : i + 1000]]
                client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def _get(self, name: str) -> dict[str, Any] | None:
        client = self._ready()
        with self._errors("reading an object"):
            try:
                return client.get_object(Bucket=self.bucket, Key=name)
            except ClientError as exc:
                if _code(exc) in _MISSING:
                    return None
                raise

    def _body(self, response: dict[str, Any], what: str) -> bytes:
        body = response["Body"]
        try:
            with self._errors(what):
                return body.read()
        finally:
            body.close()

    def _stored(self, key: str, content_type: str | None, size: int) -> StoredFile:
        name = key.split("/", 1)[1]
        return StoredFile(key=key, url=self.url_for(key), file_name=name,
                          content_type=clean_content_type(content_type, name), size=size)

    # -- URLs --

    def url_for(self, key: str, base_url: str | None = None) -> str:
        """The URL a client reads ``key`` at: CDN/public, presigned, or the API's ``/files/`` route."""
        if self.public_url:
            return f"{self.public_url}/{key}"
        if self.presign_ttl_s:
            with self._errors("presigning a URL"):
                return self._client.generate_presigned_url(
                    "get_object", Params={"Bucket": self.bucket, "Key": self._object(key)},
                    ExpiresIn=int(self.presign_ttl_s),
                )
        return api_file_url(key, base_url if base_url is not None else self.base_url)

    def key_from_url(self, url: str, base_url: str | None = None) -> str | None:
        """The key of a URL naming one of our objects — the API's ``/files/`` route (by path, under the path of
        ``base_url``), the public URL, or the bucket itself (presigned, path or virtual-host style) — else None."""
        key = api_file_key(url, base_url if base_url is not None else self.base_url)
        if key is not None:
            return key
        parts = http_url_or_none(url)
        if parts is None:
            return None
        path = unquote(parts.path_only)
        public = http_url_or_none(self.public_url) if self.public_url else None
        if public is not None:
            public_path = unquote(public.path_only).rstrip("/") + "/"
            if parts.origin == public.origin and path.startswith(public_path):
                key = path[len(public_path) :]
                return key if is_valid_key(key) else None
        endpoint = http_url_or_none(self._client.meta.endpoint_url or "")
        if endpoint is None:
            return None
        virtual_host = (endpoint.scheme, f"{self.bucket}.{endpoint.host}", endpoint.port)
        if parts.origin == endpoint.origin and path.startswith(f"/{self.bucket}/{self.prefix}"):
            key = path[len(f"/{self.bucket}/{self.prefix}") :]
        elif parts.origin == virtual_host and path.startswith(f"/{self.prefix}"):
            key = path[len(f"/{self.prefix}") :]
        else:
            return None
        return key if is_valid_key(key) else None

    # -- reading and writing --

    def _store(self, token: str, data: bytes, content_type: str | None, file_name: str | None) -> StoredFile:
        key = file_key(token, file_name)
        name = key.partition("/")[2]
        ctype = clean_content_type(content_type, name)
        client = self._ready()
        with self._errors("storing a file"):
            client.put_object(Bucket=self.bucket, Key=self._object(key), Body=data, ContentType=ctype)
        return StoredFile(key=key, url=self.url_for(key), file_name=name, content_type=ctype, size=len(data))

    def put(self, data: bytes, content_type: str, file_name: str, token: str | None = None) -> StoredFile:
        """Store ``data`` under ``token`` (default: a fresh unguessable one); the name is sanitised."""
        return self._store(checked_token(token), data, content_type, file_name)

    def read(self, key: str) -> bytes | None:
        if not is_valid_key(key):
            return None
        response = self._get(self._object(key))
        if response is None:
            return None
        return self._body(response, "reading an object")

    def info(self, key: str) -> StoredFile | None:
        if not is_valid_key(key):
            return None
        client = self._ready()
        with self._errors("reading object metadata"):
            try:
                head = client.head_object(Bucket=self.bucket, Key=self._object(key))
            except ClientError as exc:
                if _code(exc) in _MISSING:
                    return None
                raise
        return self._stored(key, head.get("ContentType"), int(head.get("ContentLength", 0)))

    def open(self, key: str) -> tuple[StoredFile, Iterator[bytes]] | None:
        if not is_valid_key(key):
            return None
        response = self._get(self._object(key))
        if response is None:
            return None
        info = self._stored(key, response.get("ContentType"), int(response.get("ContentLength", 0)))

        def chunks() -> Iterator[bytes]:
            body = response["Body"]
            try:
                with self._errors("reading an object"):
                    yield from body.iter_chunks(_CHUNK)
            finally:
                body.close()

        return info, chunks()

    def delete(self, key: str) -> None:
        """Remove a file. Unknown or malformed keys are ignored."""
        if not is_valid_key(key):
            return
        client = self._ready()
        with self._errors("deleting an object"):
            client.delete_object(Bucket=self.bucket, Key=self._object(key))

    def delete_prefix(self, prefix: str) -> None:
        """Remove everything under one token (``"<token>"`` or ``"<token>/"``); anything else is ignored."""
        token = prefix.rstrip("/")
        if not is_valid_token(token):
            return
        names = [obj["Key"] for obj in self._list(self._object(f"{token}/"))]
        if names:
            self._delete_objects(names)

    def delete_older_than(self, seconds: float) -> int:
        """Remove every token's objects whose newest ``LastModified`` is more than ``seconds`` ago (uploads and
        outputs alike). Returns how many tokens went."""
        cutoff = self._clock() - seconds
        newest: dict[str, float] = {}
        names: dict[str, list[str]] = {}
        for obj in self._list(self.prefix):
            token = obj["Key"][len(self.prefix) :].split("/", 1)[0]
            if not is_valid_token(token):
                continue  # .uploads/ and anything not ours
            newest[token] = max(newest.get(token, 0.0), obj["LastModified"].timestamp())
            names.setdefault(token, []).append(obj["Key"])
        old = [token for token, at in newest.items() if at < cutoff]
        if old:
            self._delete_objects([name for token in old for name in names[token]])
        return len(old)

    # -- one-time signed uploads (fal's storage/upload/initiate) --

    def create_upload(
        self, content_type: str, file_name: str, ttl_s: float = 3600, base_url: str | None = None
    ) -> tuple[str, str]:
        """Prepare a one-time upload: returns ``(upload_url, file_url)`` (see ``LocalStorage.create_upload``)."""
        upload_id, pending, sig = self._signer.new(content_type, file_name, ttl_s, self._clock())
        client = self._ready()
        with self._errors("recording an upload"):
            client.put_object(Bucket=self.bucket, Key=self._object(f"{_UPLOADS}{upload_id}.json"),
                              Body=json.dumps(pending.to_json()).encode("utf-8"), ContentType="application/json")
        base = base_url if base_url is not None else self.base_url
        return upload_url(base, upload_id, sig), self.url_for(pending.key, base)

    def _pending(self, upload_id: str) -> PendingUpload:
        upload_id = UploadSigner.check_id(upload_id)
        response = self._get(self._object(f"{_UPLOADS}{upload_id}.json"))
        if response is None:
            raise UploadError("not_found", "Unknown upload URL")
        raw = self._body(response, "reading an upload record")
        try:
            return PendingUpload.from_json(json.loads(raw))
        except ValueError:
            raise UploadError("not_found", "Unknown upload URL") from None

    def check_upload(self, upload_id: str, sig: str) -> str:
        """What :meth:`accept_upload` would refuse, without a body: unknown, badly signed, expired or used.
        Returns the key the upload will be stored under."""
        pending = self._pending(upload_id)
        self._signer.check(upload_id, sig, pending, 0, self._clock())
        if self._get(self._object(f"{_UPLOADS}{upload_id}.used")) is not None:
            raise UploadError("used", "The upload URL has already been used")
        return pending.key

    def accept_upload(self, upload_id: str, sig: str, data: bytes) -> StoredFile:
        """Store the body of a PUT to an upload URL; :class:`UploadError` as for local files. The one-time
        marker is a conditional create (``If-None-Match: *``), atomic across replicas."""
        pending = self._pending(upload_id)
        self._signer.check(upload_id, sig, pending, len(data), self._clock())
        marker = self._object(f"{_UPLOADS}{upload_id}.used")
        client = self._ready()
        with self._errors("marking an upload used"):
            try:
                client.put_object(Bucket=self.bucket, Key=marker, Body=b"", IfNoneMatch="*")
            except ClientError as exc:
                if _code(exc) in _TAKEN:
                    raise UploadError("used", "The upload URL has already been used") from None
                raise
        try:
            return self._store(pending.token, data, pending.content_type, pending.file_name)
        except StorageUnavailable:  # give the client its URL back for a retry
            with self._errors("releasing an upload"):
                client.delete_object(Bucket=self.bucket, Key=marker)
            raise

    def purge_uploads(self, grace_s: float = 86400) -> int:
        """Forget upload records that expired more than ``grace_s`` ago. Only records last written before the
        cutoff can have expired before it, so only those are read."""
        cutoff = self._clock() - grace_s
        gone: list[str] = []
        for obj in self._list(self._object(_UPLOADS)):
            name = obj["Key"]
            if not name.endswith(".json") or obj["LastModified"].timestamp() >= cutoff:
                continue
            response = self._get(name)
            if response is None:
                continue
            raw = self._body(response, "reading an upload record")
            try:
                expires_at = float(json.loads(raw)["expires_at"])
            except (ValueError, KeyError, TypeError):
                continue
            if expires_at < cutoff:
                gone += [name, name.removesuffix(".json") + ".used"]
        if gone:
            self._delete_objects(gone)
        return len(gone) // 2
