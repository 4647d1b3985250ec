"""What replicas and workers on several hosts share besides the queue: the worker registry and secrets."""

from __future__ import annotations

import logging
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..records import WorkerInfo
from .base import SQLStoreBase
from .rows import to_worker, worker_values
from .schema import ops_counters, secrets, workers

log = logging.getLogger(__name__)

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

    def forget_lost_workers(self, stale_after_s: float, grace_s: float = 0.0) -> list[WorkerInfo]:
        """Delete the registry rows of workers silent for ``stale_after_s`` (killed: they never said goodbye), so
        no row stays ``ready`` with a ``current_job`` it no longer runs; each one counts as a lost worker.

        Nothing is judged until the database has been reachable for ``grace_s`` (from this process): while it was
        down nobody could heartbeat. Returns the rows removed.
        """
        if self.health.reachable_for() < max(grace_s, stale_after_s):
            return []
        now = self._clock()
        stale = workers.c.heartbeat_at < now - stale_after_s
        with self._write() as conn:
            lost = [to_worker(r) for r in conn.execute(sa.delete(workers).where(stale).returning(*workers.c))]
            if lost:
                self._count(conn, "workers_lost", len(lost))
        for worker in lost:
            job = f", running {worker.current_job}" if worker.current_job else ""
            log.warning("worker %s (host %s, pid %s) stopped heartbeating %.0f s ago (last state %s%s); removed "
                        "from the registry", worker.id, worker.host, worker.pid, now - worker.heartbeat_at,
                        worker.state, job)
        return sorted(lost, key=lambda w: w.id)

    # -- fault counters --

    def _count(self, conn: Connection, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name`` in the caller's transaction (counted exactly when the event commits)."""
        stmt = self._backend.insert(ops_counters).values(name=name, value=n)
        conn.execute(stmt.on_conflict_do_update(index_elements=[ops_counters.c.name],
                                                set_={"value": ops_counters.c.value + n}))

    def ops_counts(self) -> dict[str, int]:
        """The cluster's fault counters (``lease_expiries``, ``jobs_rerun``, ``workers_lost``; absent: 0)."""
        with self._read() as conn:
            rows = conn.execute(sa.select(ops_counters.c.name, ops_counters.c.value)).all()
        return {name: int(value) for name, value in rows}

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
