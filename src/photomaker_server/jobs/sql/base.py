"""Plumbing of the SQL job store: engine and schema on open, transactions, error mapping, publishing.

Every public store method runs in :meth:`SQLStoreBase._write` (a transaction that may write: SQLite takes the
database lock up front, PostgreSQL locks rows as it goes) or :meth:`SQLStoreBase._read` (a snapshot). Both turn
an unreachable database into :class:`StoreUnavailable`. Change notifications collected during a write transaction
(:meth:`_notify`) reach listeners only once it commits, so a listener that wakes up and reads sees the change: on
PostgreSQL with ``notify_channel`` they are sent with ``pg_notify`` as the transaction's last statement (delivered
at commit, dropped with a rollback, no extra round trip); otherwise ``publish`` is called after the commit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...contract.errors import ErrorType
from ...contract.result import StoredOutput
from ..health import DatabaseHealth
from ..records import (
    MAX_LOG_MESSAGE_CHARS,
    LogLine,
    StoreUnavailable,
    job_topic,
    log_topic,
    normalise_level,
    topics_to_announce,
)
from .clock import DatabaseClock
from .connect import backend_for, database_url, unavailable
from .schema import key_usage, webhook_deliveries
from .schema_version import upgrade_engine
from .statements import FINISH_HELD, INSERT_LOG, finish_where, insert_job

log = logging.getLogger(__name__)

#: Topics to publish once the current write transaction commits (per thread: a ContextVar).
_TOPICS: ContextVar[list[str] | None] = ContextVar("photomaker_store_topics", default=None)

class SQLStoreBase:
    def __init__(
        self,
        url_or_path: str | Path,
        *,
        clock: Callable[[], float] | None = None,
        local_clock: Callable[[], float] = time.time,
        publish: Callable[[str], None] | None = None,
        notify_channel: str | None = None,
    ) -> None:
        self.url = database_url(url_or_path)
        self._backend = backend_for(self.url)
        if notify_channel is not None and self._backend.name != "postgresql":
            raise ValueError("notify_channel needs PostgreSQL (it sends NOTIFY inside the store's transactions)")
        self._notify_channel = notify_channel
        #: When ``claim`` last did housekeeping (store clock); -inf: at the next claim.
        self._housekept_at = float("-inf")
        #: ``health.reconnects`` when expired leases were last kept through an outage (said once per outage).
        self._kept_leases_after = -1
        #: The one statement on the job path that depends on the backend (how it numbers submissions).
        self._insert_job = insert_job(self._backend.next_seq_expression())
        self._add_usage = _usage_upsert(self._backend.insert(key_usage))
        self._engine = self._backend.create_engine(self.url)
        # The store's clock: given (tests), else the database server's as seen from here (``clock.py``; on
        # SQLite, one host, that is this machine's own).
        server_time = self._backend.server_time()
        self._db_clock = None if clock is not None or server_time is None else DatabaseClock(server_time, local_clock)
        self._clock = clock or self._db_clock or local_clock
        #: This process's view of the database (reachable since when, outages): see ``jobs.health``.
        self.health = DatabaseHealth(self._clock)
        self._publish = publish
        try:
            upgrade_engine(self._engine, self._backend)  # logs what it changes
        except Exception as exc:
            self._engine.dispose()
            mapped = unavailable(exc, connecting=True) if isinstance(exc, sa.exc.SQLAlchemyError) else None
            if mapped is not None:
                raise mapped from exc
            raise
        if self._db_clock is not None:
            self._sample_clock()
            self.health.reachable_since = self._clock()
            self.health.on_reconnect(self._sample_clock)

    def _sample_clock(self) -> None:
        """Measure the database clock's offset (at open, and after each reconnect: it may be another host now)."""
        assert self._db_clock is not None
        try:
            with self._read() as conn:
                self._db_clock.sample(conn)
        except StoreUnavailable:  # gone again: the next reconnect measures it
            pass

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._backend.name

    # -- transactions --

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        """A pooled connection; an unreachable database raises ``StoreUnavailable`` and is reported to
        :attr:`health`, as is the first call that works again."""
        try:
            conn = self._engine.connect()
        except sa.exc.SQLAlchemyError as exc:
            mapped = unavailable(exc, connecting=True)
            if mapped is not None:
                self.health.failed(mapped)
                raise mapped from exc
            raise
        # Reached (a pooled connection is checked at checkout): reported before the work, so that the first
        # transaction after an outage already knows the outage is over, and how long it lasted.
        self.health.succeeded()
        try:
            yield conn
        except sa.exc.SQLAlchemyError as exc:
            mapped = unavailable(exc)
            if mapped is not None:
                self.health.failed(mapped)
                raise mapped from exc
            raise
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A transaction that may write (SQLite: holds the database write lock from its first statement)."""
        topics: list[str] = []
        token = _TOPICS.set(topics)
        try:
            with self._connect() as conn:
                self._backend.prepare_write(conn)
                with conn.begin():
                    yield conn
                    announced = topics_to_announce(topics)
                    if announced and self._notify_channel is not None:
                        self._backend.notify(conn, self._notify_channel, announced)
        finally:
            _TOPICS.reset(token)
        self._announce(announced)  # only reached after a commit

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read (every read is one statement). SQLite: a deferred transaction, a WAL snapshot. PostgreSQL: in
        autocommit mode; at READ COMMITTED a statement sees its own snapshot anyway, so BEGIN and ROLLBACK would
        only add two round trips."""
        with self._connect() as conn:
            self._backend.prepare_read(conn)
            yield conn

    @staticmethod
    def _notify(topic: str) -> None:
        """Announce ``topic`` once the current write transaction has committed."""
        pending = _TOPICS.get()
        assert pending is not None, "_notify outside a write transaction"
        pending.append(topic)

    def _announce(self, topics: list[str]) -> None:
        if self._publish is None:
            return
        for topic in topics:
            try:
                self._publish(topic)
            except Exception:  # a lost wake-up costs latency (pollers catch up), a raised one would cost the call
                log.exception("publishing %r failed", topic)

    def now(self) -> float:
        """The store's clock (tests inject a fake one)."""
        return self._clock()

    def ping(self) -> None:
        """One round trip (``SELECT 1``): StoreUnavailable while the database cannot be reached. What a waiting
        request probes with while the database reconnects."""
        with self._read() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- shared steps of several operations --

    def _insert_log(
        self, conn: Connection, job_id: str, message: str, level: str, ts: float, *, announce: bool = True
    ) -> LogLine:
        """Add a log line; ``announce=False`` for a job nobody can follow yet (its id not handed out)."""
        message = str(message)
        if len(message) > MAX_LOG_MESSAGE_CHARS:
            message = message[: MAX_LOG_MESSAGE_CHARS - 1] + "…"
        level = normalise_level(level)
        res = conn.execute(INSERT_LOG, {"job_id": job_id, "ts": ts, "level": level, "message": message})
        if announce:
            self._notify(log_topic(job_id))
        return LogLine(id=int(res.inserted_primary_key[0]), ts=ts, level=level, message=message)

    def _count_usage(self, conn: Connection, owner: str, now: float, **deltas: float) -> None:
        """Add ``deltas`` (``jobs_submitted=1``, ``images=2``, …) to ``owner``'s usage of ``now``'s UTC day, in
        the caller's transaction: the one that changes the job's state, so the counts cannot drift from it."""
        values = dict.fromkeys(_USAGE_COUNTERS, 0)
        values.update(deltas)
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        conn.execute(self._add_usage, {"p_owner": owner, "p_day": day, **{f"p_{k}": v for k, v in values.items()}})

    def _finish(
        self,
        conn: Connection,
        job_id: str,
        now: float,
        *,
        guard: sa.ColumnElement[bool] | None = None,
        held_by: str | None = None,
        result: StoredOutput | None = None,
        error: str | None = None,
        error_type: ErrorType | None = None,
        inference_time: float | None = None,
    ) -> bool:
        """Move a job to ``completed`` if ``guard`` still holds (or, the usual case, the worker ``held_by``
        still holds its lease), and queue its webhook. False: lost the race."""
        params = {"p_job_id": job_id, "p_now": now, "p_result": None if result is None else result.to_json(),
                  "p_error": error, "p_error_type": error_type, "p_inference_time": inference_time}
        if guard is None:
            statement, params["p_worker"] = FINISH_HELD, held_by
        else:
            statement = finish_where(guard)
        row = conn.execute(statement, params).first()
        if row is None:
            return False
        self._notify(job_topic(job_id))
        owner, url = row
        # A job reaches ``completed`` once (every finish is guarded), so it is counted once however often it ran.
        outcome = ("jobs_completed" if error is None else
                   "jobs_cancelled" if error_type == ErrorType.CLIENT_CANCELLED else "jobs_failed")
        images = len(result.images) if result is not None and error is None else 0
        self._count_usage(conn, owner, now, **{outcome: 1}, images=images,
                          inference_seconds=float(inference_time or 0.0))
        if url:
            # Only the address: the dispatcher renders the body when it posts (see photomaker_server.webhooks).
            conn.execute(
                webhook_deliveries.insert().values(
                    job_id=job_id, owner=owner, url=url, attempts=0, next_attempt_at=now, given_up=False
                )
            )
        return True


_USAGE_COUNTERS = ("jobs_submitted", "jobs_completed", "jobs_failed", "jobs_cancelled", "images", "inference_seconds")


def _usage_upsert(insert: Any) -> Any:
    """``INSERT … ON CONFLICT (owner, day) DO UPDATE`` adding the ``p_*`` deltas to a usage row (built once per
    store: the backend's INSERT construct)."""
    stmt = insert.values(
        owner=sa.bindparam("p_owner"), day=sa.bindparam("p_day"),
        **{k: sa.bindparam(f"p_{k}") for k in _USAGE_COUNTERS},
    )
    return stmt.on_conflict_do_update(
        index_elements=[key_usage.c.owner, key_usage.c.day],
        set_={k: key_usage.c[k] + stmt.excluded[k] for k in _USAGE_COUNTERS},
    )
