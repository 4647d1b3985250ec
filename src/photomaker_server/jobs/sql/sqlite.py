"""SQLite specifics: WAL and PRAGMAs on every connection, and explicit BEGIN modes.

pysqlite's own implicit transaction handling is switched off (``isolation_level = None``) so that the ``begin``
event decides how a transaction starts: ``BEGIN IMMEDIATE`` for writers, a plain deferred ``BEGIN`` (a consistent
WAL snapshot, no lock) for readers. Taking the write lock up front is what makes a claim atomic across processes
(a deferred transaction that reads and then writes can fail to upgrade its lock), and what serialises processes
that open (and migrate) a fresh database together.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from .schema import jobs

#: Pause between tries of the switch to WAL while another process holds the fresh file (see ``_switch_to_wal``).
WAL_SWITCH_RETRY_S = 0.02

#: Execution option marking a connection whose transaction will write (→ ``BEGIN IMMEDIATE``).
WRITE_OPTION = "photomaker_write"


class SQLiteBackend:
    name = "sqlite"

    def __init__(self, busy_timeout_s: float = 30.0) -> None:
        self.busy_timeout_s = busy_timeout_s

    def create_engine(self, url: sa.URL) -> Engine:
        kwargs: dict[str, Any] = {
            "connect_args": {"check_same_thread": False, "timeout": self.busy_timeout_s},
        }
        if url.database in (None, "", ":memory:"):
            # One shared connection, or every checkout would see its own empty database.
            kwargs["poolclass"] = StaticPool
        engine = sa.create_engine(url, **kwargs)
        event.listen(engine, "connect", self._on_connect)
        event.listen(engine, "begin", self._on_begin)
        return engine

    def _on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL itself needs a lock another process may hold.
            cursor.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            self._switch_to_wal(cursor)
            # WAL + NORMAL: durable across process crashes; only an OS crash may lose the last commits.
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    def _switch_to_wal(self, cursor: Any) -> None:
        """WAL is a property of the file, set by the first process to open it. When several open a fresh file at
        once, the switch can meet "database is locked" without SQLite's busy handler being asked: try again
        (briefly) until the busy timeout, as any other lock wait would."""
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                cursor.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(WAL_SWITCH_RETRY_S)

    @staticmethod
    def _on_begin(conn: Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")

    # -- what the store asks of a backend --

    @staticmethod
    def prepare_read(conn: Connection) -> None:
        """Nothing: a read is a deferred ``BEGIN`` (a WAL snapshot, no lock)."""

    @staticmethod
    def prepare_write(conn: Connection) -> None:
        """Before ``begin()``: make the transaction take the write lock at once."""
        conn.execution_options(**{WRITE_OPTION: True})

    @staticmethod
    def server_time() -> None:
        """None: the database is a file on this machine, so its clock is ours."""
        return None

    @staticmethod
    def next_seq_expression() -> sa.ColumnElement[int]:
        """The next submission number, as SQL evaluated inside the INSERT (safe: the writer holds the lock)."""
        return sa.select(sa.func.coalesce(sa.func.max(jobs.c.seq), 0) + 1).scalar_subquery()

    @staticmethod
    def insert(table: sa.Table) -> Any:
        """An INSERT that supports ``on_conflict_do_update`` / ``on_conflict_do_nothing``."""
        return sqlite_insert(table)

    @staticmethod
    def notify(conn: Connection, channel: str, topics: list[str]) -> None:
        raise NotImplementedError("SQLite has no NOTIFY: its store publishes after the commit")

    @staticmethod
    def lock_migrations(conn: Connection) -> None:
        """Nothing to do: the migration transaction is BEGIN IMMEDIATE (see :meth:`prepare_write`)."""

    @staticmethod
    def lock_key(conn: Connection, owner: str) -> None:
        """Nothing to do: every writing transaction holds the database lock."""
