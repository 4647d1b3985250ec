"""What replicas and workers on several hosts share besides the queue: the worker registry and secrets."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..records import WorkerInfo
from .base import SQLStoreBase
from .rows import to_worker, worker_values
from .schema import secrets, workers

#: Registry rows without a heartbeat for this long are deleted by ``cleanup`` (crashed workers never say bye).
WORKER_RETENTION_S = 86_400.0


class ClusterMixin(SQLStoreBase):
    # -- worker registry --

    def heartbeat(self, info: WorkerInfo) -> None:
        """Insert or refresh ``info``'s row; ``heartbeat_at`` is the store's clock, not the worker's."""
        values = {**worker_values(info), "heartbeat_at": self._clock()}
        stmt = self._backend.insert(workers).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[workers.c.id], set_={k: v for k, v in values.items() if k != "id"}
        )
        with self._write() as conn:
            conn.execute(stmt)

    def remove_worker(self, worker_id: str) -> None:
        """Drop a worker's row (it is shutting down); nothing happens for an unknown id."""
        with self._write() as conn:
            conn.execute(sa.delete(workers).where(workers.c.id == worker_id))

    def workers(self, max_age_s: float | None = 15.0) -> list[WorkerInfo]:
        """Registered workers whose last heartbeat is at most ``max_age_s`` old (None: all), by id."""
        query = sa.select(workers).order_by(workers.c.id)
        if max_age_s is not None:
            query = query.where(workers.c.heartbeat_at >= self._clock() - max_age_s)
        with self._read() as conn:
            return [to_worker(r) for r in conn.execute(query).all()]

    @staticmethod
    def _prune_workers(conn: Connection, now: float) -> None:
        conn.execute(sa.delete(workers).where(workers.c.heartbeat_at < now - WORKER_RETENTION_S))

    # -- shared secrets --

    def shared_secret(self, name: str, create: Callable[[], bytes]) -> bytes:
        """The cluster's value of secret ``name``; the first caller's ``create()`` result wins.

        Insert-if-absent in one statement, so processes racing to create it all return the one stored value.
        """
        query = sa.select(secrets.c.value).where(secrets.c.name == name)
        with self._read() as conn:
            stored = conn.execute(query).scalar()
        if stored is not None:
            return bytes(stored)
        value = create()
        if not isinstance(value, bytes | bytearray) or not value:
            raise ValueError(f"secret {name!r}: create() must return non-empty bytes")
        stmt = self._backend.insert(secrets).values(name=name, value=bytes(value), created_at=self._clock())
        with self._write() as conn:
            conn.execute(stmt.on_conflict_do_nothing(index_elements=[secrets.c.name]))
            stored = conn.execute(query).scalar_one()
        return bytes(stored)
