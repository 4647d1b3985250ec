"""Storing files on a key's behalf, within its storage quota: the only way the API writes to file storage.

Every route that stores bytes for a client goes through :class:`QuotaStorage` (the three upload routes, data URIs at
submit, signed upload URLs), which charges the file in the job database first (``JobStore.charge_files``: the quota
is checked there, in one transaction, across replicas) and writes the bytes only once that succeeded. Refusals
raise :class:`~photomaker_server.limits.QuotaExceeded` (the API answers 413) and leave nothing stored.

Signed upload URLs count as a file from the moment they are handed out (a key cannot mint unlimited pending
uploads) and are charged their bytes when the PUT arrives; only one PUT per URL can be charged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..jobs.protocol import JobStore
from ..limits import LimitsPolicy, StorageQuota, UploadAlreadyCharged
from ..storage.base import FileStorage, StoredFile, UploadError, file_key, new_token

__all__ = ["NewFile", "QuotaStorage"]

log = logging.getLogger(__name__)

#: How long a signed upload URL stays usable (fal's clients upload at once).
UPLOAD_URL_TTL_S = 3600


@dataclass(frozen=True)
class NewFile:
    data: bytes
    content_type: str
    file_name: str


class QuotaStorage:
    """File storage as the API uses it for clients' files: every write charged to its owner's quota first."""

    def __init__(self, store: JobStore, storage: FileStorage, limits: LimitsPolicy, retention_s: float,
                 declared_unpacked: Callable[[bytes], int | None] = lambda data: None) -> None:
        self.store, self.storage, self.limits, self.retention_s = store, storage, limits, retention_s
        #: What the worker would unpack from a file, by its headers: recorded with the file, so a submit that uses
        #: it checks the request's unpack budget without reading it again (``api/input_budget.py``).
        self.declared_unpacked = declared_unpacked

    def quota(self, owner: str) -> StorageQuota:
        return self.limits.for_owner(owner).storage

    def put_all(self, owner: str, files: Sequence[NewFile]) -> list[StoredFile]:
        """Store ``files`` for ``owner``, all or none: charged together (their keys chosen first, so each charge
        row names its file from the start: one transaction, no second one to record the key), then written. A
        write that fails undoes the charges and removes what was written (a half-stored request is no request)."""
        tokens = [new_token() for _ in files]
        keys = [file_key(token, new.file_name) for token, new in zip(tokens, files)]
        ids = self.store.charge_files(owner, [len(f.data) for f in files], self.quota(owner), self.retention_s,
                                      keys=keys, unpacked=[self.declared_unpacked(f.data) for f in files])
        stored: list[StoredFile] = []
        try:
            for token, new in zip(tokens, files):
                stored.append(self.storage.put(new.data, new.content_type, new.file_name, token))
        except BaseException:
            # The key whose write failed too: it may be there in part (S3 may have stored it before the error).
            self._undo(ids, keys[: len(stored) + 1])
            raise
        return stored

    def _undo(self, ids: Sequence[int], written: Sequence[str]) -> None:
        """Remove what a failed :meth:`put_all` may have written (``written``: the keys of its first files), then
        forget its charges. A file whose removal fails stays charged: it may still be stored, and it expires with
        its charge like any stored file."""
        kept = set()
        for file_id, key in zip(ids, written):
            try:
                self.storage.delete(key)
            except Exception:
                log.exception("could not remove %s after a failed write; it stays charged until it expires", key)
                kept.add(file_id)
        self.store.drop_files([file_id for file_id in ids if file_id not in kept])

    def put(self, owner: str, data: bytes, content_type: str, file_name: str) -> StoredFile:
        return self.put_all(owner, [NewFile(data, content_type, file_name)])[0]

    def create_upload(self, owner: str, content_type: str, file_name: str, base_url: str | None) -> tuple[str, str]:
        """A signed one-time upload URL and its file URL; the pending upload counts as one file of the owner's
        quota until it is used or expires."""
        (file_id,) = self.store.charge_files(owner, [0], self.quota(owner), UPLOAD_URL_TTL_S, pending=True)
        try:
            upload_url, file_url = self.storage.create_upload(content_type, file_name, UPLOAD_URL_TTL_S, base_url)
            key = self.storage.key_from_url(file_url, base_url)
            if key is None:
                raise RuntimeError(f"the storage did not recognise its own upload file URL {file_url!r}")
            self.store.settle_file(file_id, key)
        except BaseException:
            self.store.drop_files([file_id])
            raise
        return upload_url, file_url

    def accept_upload(self, key: str, upload_id: str, sig: str, data: bytes) -> StoredFile:
        """Charge, then store, the bytes PUT to a signed upload URL whose file key is ``key``."""
        try:
            file_id = self.store.charge_upload(key, len(data), self.quota, self.retention_s,
                                               self.declared_unpacked(data))
        except UploadAlreadyCharged:
            raise UploadError("used", "The upload URL has already been used") from None
        try:
            return self.storage.accept_upload(upload_id, sig, data)
        except BaseException:
            if file_id is not None:
                self.store.uncharge_upload(file_id, UPLOAD_URL_TTL_S)
            raise
