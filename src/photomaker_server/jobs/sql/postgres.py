"""PostgreSQL specifics (psycopg 3): engine options, the submission sequence, the migration lock.

Concurrency comes from row locks rather than a database-wide lock: claims take a queued row with
``SELECT … FOR UPDATE SKIP LOCKED`` (the store's portable query carries it; SQLite ignores the clause), and every
state change is a guarded ``UPDATE … WHERE status = …`` that PostgreSQL re-checks after waiting for a row lock, so
a lost race shows up as a row count of 0. Transactions run at READ COMMITTED.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from .schema import JOBS_SEQUENCE

#: Key of the advisory lock held while a process checks and upgrades the schema (any constant unique to us).
MIGRATION_LOCK_KEY = 0x70686F746F6D6B  # "photomk"


class PostgresBackend:
    name = "postgresql"

    def __init__(self, pool_size: int = 5, max_overflow: int = 10, connect_timeout_s: int = 10) -> None:
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        self.connect_timeout_s = connect_timeout_s

    def create_engine(self, url: sa.URL) -> Engine:
        return sa.create_engine(
            url,
            # A connection the server dropped (restart, failover, idle timeout) is noticed at checkout and
            # replaced, instead of failing the next request.
            pool_pre_ping=True,
            pool_size=self.pool_size,
            max_overflow=self.max_overflow,
            pool_recycle=1800,
            connect_args={"connect_timeout": self.connect_timeout_s, "application_name": "photomaker-server"},
        )

    @staticmethod
    def prepare_write(conn: Connection) -> None:
        """Nothing: writers lock only the rows they touch."""

    @staticmethod
    def next_seq(conn: Connection) -> int:
        return int(conn.execute(sa.select(sa.func.nextval(JOBS_SEQUENCE))).scalar_one())

    @staticmethod
    def insert(table: sa.Table) -> Any:
        return pg_insert(table)

    @staticmethod
    def lock_migrations(conn: Connection) -> None:
        """Serialise schema checks and upgrades across processes until this transaction ends."""
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
