"""PostgreSQL specifics (psycopg 3): engine options, the submission sequence, NOTIFY, the migration lock.

Concurrency comes from row locks rather than a database-wide lock: claims take a queued row with
``SELECT … FOR UPDATE SKIP LOCKED`` (the store's portable query carries it; SQLite ignores the clause), and every
state change is a guarded ``UPDATE … WHERE status = …`` that PostgreSQL re-checks after waiting for a row lock, so
a lost race shows up as a row count of 0. Transactions run at READ COMMITTED.
"""

from __future__ import annotations

import select
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from .schema import JOBS_SEQUENCE

_NOTIFY = sa.text("SELECT pg_notify(:channel, topic) FROM unnest(CAST(:topics AS text[])) AS topic")

_SERVER_TIME = sa.text("SELECT EXTRACT(EPOCH FROM clock_timestamp())")

#: A pooled connection idle for longer than this is pinged before it is handed out, whatever its socket says.
PING_AFTER_IDLE_S = 30.0
_IDLE_SINCE = "photomaker_idle_since"

#: Key of the advisory lock held while a process checks and upgrades the schema (any constant unique to us).
MIGRATION_LOCK_KEY = 0x70686F746F6D6B  # "photomk"


class PostgresBackend:
    name = "postgresql"

    def __init__(self, pool_size: int = 5, max_overflow: int = 10, connect_timeout_s: int = 10) -> None:
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        self.connect_timeout_s = connect_timeout_s

    def create_engine(self, url: sa.URL) -> Engine:
        engine = sa.create_engine(
            url,
            pool_size=self.pool_size,
            max_overflow=self.max_overflow,
            pool_recycle=1800,
            connect_args={"connect_timeout": self.connect_timeout_s, "application_name": "photomaker-server"},
        )
        # A connection the server dropped (restart, failover, idle timeout) is noticed at checkout and replaced,
        # instead of failing the next request; like ``pool_pre_ping``, but without a round trip per checkout (one
        # per statement group on every job's critical path): see ``_check_at_checkout``.
        event.listen(engine, "checkin", _note_idle)
        event.listen(engine, "checkout", _check_at_checkout(engine))
        return engine

    @staticmethod
    def prepare_read(conn: Connection) -> None:
        """Autocommit: one statement needs no transaction around it at READ COMMITTED (see ``_read``)."""
        conn.execution_options(isolation_level="AUTOCOMMIT")

    @staticmethod
    def prepare_write(conn: Connection) -> None:
        """Nothing: writers lock only the rows they touch."""

    @staticmethod
    def server_time() -> sa.TextClause:
        """The server's clock in epoch seconds (the store reads time as the database's: ``clock.py``)."""
        return _SERVER_TIME

    @staticmethod
    def next_seq_expression() -> sa.ColumnElement[int]:
        """The next submission number, as SQL evaluated inside the INSERT (no round trip of its own)."""
        return sa.func.nextval(JOBS_SEQUENCE)

    @staticmethod
    def insert(table: sa.Table) -> Any:
        return pg_insert(table)

    @staticmethod
    def notify(conn: Connection, channel: str, topics: list[str]) -> None:
        """Queue one notification per topic on ``channel``, in one statement; PostgreSQL delivers them when the
        transaction commits (in this order, duplicates folded) and drops them if it rolls back."""
        conn.execute(_NOTIFY, {"channel": channel, "topics": topics})

    @staticmethod
    def lock_migrations(conn: Connection) -> None:
        """Serialise schema checks and upgrades across processes until this transaction ends."""
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))

    @staticmethod
    def lock_key(conn: Connection, owner: str) -> None:
        """Serialise the claims of one owner until this transaction ends (a transaction-scoped advisory lock in
        the second key space, apart from the migration lock's). Not the key's row: a submit holds that while it
        may wait for a job row a claim holds."""
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_KEY_LOCK_SPACE, sa.func.hashtext(owner))))


#: First half of the two-int advisory lock keys that serialise one owner's claims.
_KEY_LOCK_SPACE = 0x504D4B  # "PMK"


def _note_idle(_dbapi_connection: Any, record: Any) -> None:
    record.info[_IDLE_SINCE] = time.monotonic()


def _check_at_checkout(engine: Engine) -> Any:
    """A pool ``checkout`` listener: ping a pooled connection only when there is a reason to doubt it.

    Between statements the server sends nothing on a pooled connection (none of them LISTENs), so a socket with
    something to read means the server spoke on its own: in practice a termination notice before it closed the
    connection (restart, failover, ``pg_terminate_backend``, ``idle_session_timeout``), or the close itself. That
    check is a ``select`` with no timeout, no round trip. A connection idle for ``PING_AFTER_IDLE_S`` is pinged
    anyway (a middlebox may have dropped it without a word). A failed ping makes the pool discard the connection
    and hand out another, reconnecting as needed.
    """

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop(_IDLE_SINCE, None)
        if idle_since is None:
            return  # just connected
        try:
            readable, _, _ = select.select([dbapi_connection.fileno()], [], [], 0)
            if readable or time.monotonic() - idle_since > PING_AFTER_IDLE_S:
                engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise sa.exc.DisconnectionError(f"stale pooled connection: {exc}") from exc

    return checkout
