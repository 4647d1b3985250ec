"""Stored files per key (the truth of storage quotas) and one-time tokens, in the job database.

Why here and not in the storage: the job database is the one thing every API replica shares whatever the storage
backend (a local directory, S3), it has transactions, and a quota must hold when two replicas take uploads from
the same key at the same moment. A file is *charged* (its row inserted, the quota checked) in one transaction
before its bytes are written, so a refused request stores nothing; the owner's ``storage_owners`` row is locked
for that transaction, which serialises charges per key on PostgreSQL (SQLite's write lock already does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...limits import QuotaExceeded, StorageQuota, StorageUsage, UploadAlreadyCharged
from .base import SQLStoreBase
from .rows import chunks
from .schema import storage_owners, stored_files, used_tokens


_p = sa.bindparam
#: The statements of every charge, built once (see ``statements.py`` for why).
_USAGE = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(stored_files.c.size), 0)).where(
    stored_files.c.owner == _p("p_owner"), stored_files.c.expires_at > _p("p_now"))
_USAGE_EXCLUDING = _USAGE.where(stored_files.c.id != _p("p_excluding"))
_INSERT_FILE = stored_files.insert().values(
    owner=_p("p_owner"), key=_p("p_key"), size=_p("p_size"), unpacked=_p("p_unpacked"), pending=_p("p_pending"),
    created_at=_p("p_now"), expires_at=_p("p_expires_at"))


class QuotaMixin(SQLStoreBase):
    @cached_property
    def _lock_owner_stmt(self) -> sa.Insert:
        """The owner's row, inserted or "updated" to itself: either way locked (PostgreSQL) until the transaction
        ends, in one statement. The backend's INSERT construct, so built once per store."""
        stmt = self._backend.insert(storage_owners).values(owner=_p("p_owner"))
        return stmt.on_conflict_do_update(index_elements=[storage_owners.c.owner],
                                          set_={"owner": stmt.excluded.owner})

    def _lock_owner(self, conn: Connection, owner: str) -> None:
        conn.execute(self._lock_owner_stmt, {"p_owner": owner})

    @staticmethod
    def _usage(conn: Connection, owner: str, now: float, excluding: int | None = None) -> StorageUsage:
        params = {"p_owner": owner, "p_now": now}
        if excluding is None:
            files, size = conn.execute(_USAGE, params).one()
        else:
            files, size = conn.execute(_USAGE_EXCLUDING, {**params, "p_excluding": excluding}).one()
        return StorageUsage(owner, int(files), int(size))

    @staticmethod
    def _check(usage: StorageUsage, quota: StorageQuota, files: int, size: int) -> None:
        if quota.max_files is not None and usage.files + files > quota.max_files:
            raise QuotaExceeded("files", usage, quota, files, size)
        if quota.max_bytes is not None and usage.bytes + size > quota.max_bytes:
            raise QuotaExceeded("bytes", usage, quota, files, size)

    def charge_files(self, owner: str, sizes: Sequence[int], quota: StorageQuota, ttl_s: float, *,
                     keys: Sequence[str | None] | None = None, pending: bool = False,
                     unpacked: Sequence[int | None] | None = None) -> list[int]:
        """Record files about to be stored for ``owner`` (one row per size, expiring in ``ttl_s``), or raise
        :class:`QuotaExceeded` and record nothing. ``keys``: the files' storage keys, when they are known before
        the write (else :meth:`settle_file` records each once written). Returns the rows' ids, for
        :meth:`settle_file` or for :meth:`drop_files` when writing failed."""
        now = self._clock()
        keys = list(keys) if keys is not None else [None] * len(sizes)
        unpacked = list(unpacked) if unpacked is not None else [None] * len(sizes)
        with self._write() as conn:
            self._lock_owner(conn, owner)
            self._check(self._usage(conn, owner, now), quota, len(sizes), sum(sizes))
            ids = []
            for size, key, declared in zip(sizes, keys, unpacked):
                result = conn.execute(_INSERT_FILE, {
                    "p_owner": owner, "p_key": key, "p_size": size, "p_unpacked": declared, "p_pending": pending,
                    "p_now": now, "p_expires_at": now + ttl_s})
                ids.append(int(result.inserted_primary_key[0]))
        return ids

    def settle_file(self, file_id: int, key: str) -> None:
        """The key a charged file was written under (what operators see, and what a signed upload is found by)."""
        with self._write() as conn:
            conn.execute(sa.update(stored_files).where(stored_files.c.id == file_id).values(key=key))

    def drop_files(self, file_ids: Sequence[int]) -> None:
        """Forget charged files that were never written (the storage failed): they no longer count."""
        with self._write() as conn:
            for chunk in chunks(list(file_ids)):
                conn.execute(sa.delete(stored_files).where(stored_files.c.id.in_(chunk)))

    def charge_upload(self, key: str, size: int, quota_for: Callable[[str], StorageQuota], ttl_s: float,
                      unpacked: int | None = None) -> int | None:
        """Charge the bytes of the pending signed upload that will be stored under ``key``: its row (made when the
        URL was handed out) gets ``size`` and the retention time. Raises :class:`QuotaExceeded` (the URL stays
        unused) or :class:`UploadAlreadyCharged` (another PUT got there first: only one can). None: no row (a URL
        made before quotas existed), nothing is charged."""
        now = self._clock()
        with self._write() as conn:
            row = conn.execute(sa.select(stored_files.c.id, stored_files.c.owner, stored_files.c.pending)
                               .where(stored_files.c.key == key)).first()
            if row is None:
                return None
            self._lock_owner(conn, row.owner)
            self._check(self._usage(conn, row.owner, now, excluding=row.id), quota_for(row.owner), 1, size)
            done = conn.execute(sa.update(stored_files)
                                .where(stored_files.c.id == row.id, stored_files.c.pending.is_(True))
                                .values(size=size, unpacked=unpacked, pending=False,
                                        expires_at=now + ttl_s)).rowcount
            if done != 1:
                raise UploadAlreadyCharged(key)
        return int(row.id)

    def uncharge_upload(self, file_id: int, pending_ttl_s: float) -> None:
        """Undo :meth:`charge_upload` when the bytes could not be stored: back to a pending URL."""
        now = self._clock()
        with self._write() as conn:
            conn.execute(sa.update(stored_files).where(stored_files.c.id == file_id)
                         .values(size=0, pending=True, expires_at=now + pending_ttl_s))

    def declared_unpacked(self, keys: Sequence[str]) -> dict[str, int | None]:
        """For each of ``keys`` that is a stored file, the bytes it unpacks to by its headers (None: not known, as
        for files stored before this was recorded); keys of no stored file are absent."""
        found: dict[str, int | None] = {}
        with self._read() as conn:
            for chunk in chunks(list(dict.fromkeys(keys))):
                rows = conn.execute(sa.select(stored_files.c.key, stored_files.c.unpacked)
                                    .where(stored_files.c.key.in_(chunk))).all()
                found.update({key: None if value is None else int(value) for key, value in rows})
        return found

    def storage_usage(self, owner: str | None = None) -> list[StorageUsage]:
        """Unexpired stored files per key (one key with ``owner``), most bytes first."""
        now = self._clock()
        total = sa.func.coalesce(sa.func.sum(stored_files.c.size), 0)
        query = (sa.select(stored_files.c.owner, sa.func.count(), total)
                 .where(stored_files.c.expires_at > now).group_by(stored_files.c.owner)
                 .order_by(total.desc(), stored_files.c.owner))
        if owner is not None:
            query = query.where(stored_files.c.owner == owner)
        with self._read() as conn:
            return [StorageUsage(o, int(n), int(b)) for o, n, b in conn.execute(query).all()]

    def expire_stored_files(self) -> int:
        """Delete the rows of expired files and used tokens (the files themselves go by the storage's own age
        rule, ``delete_older_than``). Returns how many file rows went."""
        now = self._clock()
        with self._write() as conn:
            removed = conn.execute(sa.delete(stored_files).where(stored_files.c.expires_at <= now)).rowcount
            conn.execute(sa.delete(used_tokens).where(used_tokens.c.expires_at <= now))
        return int(removed or 0)

    def use_token_once(self, nonce: str, expires_at: float) -> bool:
        """True for the first use of a one-time token's ``nonce``, False ever after (until it expires)."""
        stmt = (self._backend.insert(used_tokens).values(nonce=nonce, expires_at=expires_at)
                .on_conflict_do_nothing(index_elements=[used_tokens.c.nonce]).returning(used_tokens.c.nonce))
        with self._write() as conn:
            return conn.execute(stmt).first() is not None
