"""Plumbing of the SQL job store: engine and schema on open, transactions, error mapping, publishing.

Every public store method runs in :meth:`SQLStoreBase._write` (a transaction that may write: SQLite takes the
database lock up front, PostgreSQL locks rows as it goes) or :meth:`SQLStoreBase._read` (a snapshot). Both turn
an unreachable database into :class:`StoreUnavailable`. Change notifications collected during a write transaction
(:meth:`_notify`) are published only after it commits, so a listener that wakes up and reads sees the change.
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

from ..records import JobStatus, LogLine, MAX_LOG_MESSAGE_CHARS, Job, normalise_level
from .connect import backend_for, database_url, unavailable
from .rows import dumps, to_job
from .schema import WITHOUT_INPUT, job_logs, jobs, webhook_deliveries
from .schema_version import upgrade_engine

log = logging.getLogger(__name__)

#: Topics to publish once the current write transaction commits (per thread: a ContextVar).
_TOPICS: ContextVar[list[str] | None] = ContextVar("photomaker_store_topics", default=None)

#: The topic published when a job became claimable.
WORK_TOPIC = "work"


def job_topic(job_id: str) -> str:
    """The topic published after any change of a job's status, logs or cancel flag."""
    return f"job:{job_id}"


class SQLStoreBase:
    def __init__(
        self,
        url_or_path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        publish: Callable[[str], None] | None = None,
    ) -> None:
        self.url = database_url(url_or_path)
        self._backend = backend_for(self.url)
        self._engine = self._backend.create_engine(self.url)
        self._clock = clock
        self._publish = publish
        try:
            upgrade_engine(self._engine, self._backend)  # logs what it changes
        except Exception as exc:
            self._engine.dispose()
            mapped = unavailable(exc, connecting=True) if isinstance(exc, sa.exc.SQLAlchemyError) else None
            if mapped is not None:
                raise mapped from exc
            raise

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._backend.name

    # -- transactions --

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        try:
            conn = self._engine.connect()
        except sa.exc.SQLAlchemyError as exc:
            mapped = unavailable(exc, connecting=True)
            if mapped is not None:
                raise mapped from exc
            raise
        try:
            yield conn
        except sa.exc.SQLAlchemyError as exc:
            mapped = unavailable(exc)
            if mapped is not None:
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
        finally:
            _TOPICS.reset(token)
        self._announce(list(dict.fromkeys(topics)))  # only reached after a commit

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only snapshot (rolled back on exit)."""
        with self._connect() as conn:
            yield conn

    @staticmethod
    def _notify(topic: str) -> None:
        """Publish ``topic`` once the current write transaction has committed."""
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

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- shared steps of several operations --

    @staticmethod
    def _fetch_job(conn: Connection, job_id: str, with_input: bool = True) -> Job | None:
        query = sa.select(jobs) if with_input else sa.select(*WITHOUT_INPUT)
        row = conn.execute(query.where(jobs.c.id == job_id)).first()
        return None if row is None else to_job(row)

    def _insert_log(self, conn: Connection, job_id: str, message: str, level: str, ts: float) -> LogLine:
        message = str(message)
        if len(message) > MAX_LOG_MESSAGE_CHARS:
            message = message[: MAX_LOG_MESSAGE_CHARS - 1] + "…"
        level = normalise_level(level)
        res = conn.execute(job_logs.insert().values(job_id=job_id, ts=ts, level=level, message=message))
        self._notify(job_topic(job_id))
        return LogLine(id=int(res.inserted_primary_key[0]), ts=ts, level=level, message=message)

    def _finish(
        self,
        conn: Connection,
        job_id: str,
        now: float,
        *,
        guard: sa.ColumnElement[bool],
        result: dict[str, Any] | None = None,
        error: str | None = None,
        error_type: str | None = None,
        inference_time: float | None = None,
    ) -> bool:
        """Move a job to ``completed`` if ``guard`` still holds, and queue its webhook. False: lost the race."""
        res = conn.execute(
            sa.update(jobs)
            .where(jobs.c.id == job_id, guard)
            .values(
                status=JobStatus.COMPLETED.value,
                finished_at=now,
                result=None if result is None else dumps(result),
                error=error,
                error_type=error_type,
                inference_time=inference_time,
                lease_owner=None,
                lease_expires_at=None,
            )
        )
        if res.rowcount != 1:
            return False
        self._notify(job_topic(job_id))
        owner, url = conn.execute(sa.select(jobs.c.owner, jobs.c.webhook_url).where(jobs.c.id == job_id)).one()
        if url:
            # Only the address: the dispatcher renders the body when it posts (see jobs.webhooks).
            conn.execute(
                webhook_deliveries.insert().values(
                    job_id=job_id, owner=owner, url=url, attempts=0, next_attempt_at=now, given_up=False
                )
            )
        return True
