"""SQLite specifics: WAL (switched once, by the store's first connection), PRAGMAs on every connection, explicit
BEGIN modes, and a pool sized to the threads that use it.

pysqlite's own implicit transaction handling is switched off (``isolation_level = None``) so that the ``begin``
event decides how a transaction starts: ``BEGIN IMMEDIATE`` for writers; readers run no ``BEGIN`` at all (every
read is one statement, which SQLite runs on its own WAL snapshot; the pool's ROLLBACK on return is then a no-op in
pysqlite: no statement either). Taking the write lock up front is what makes a claim atomic across processes (a
deferred transaction that reads and then writes can fail to upgrade its lock), and what serialises processes that
open (and migrate) a fresh database together.

The pool: SQLAlchemy's default (5 kept, 10 more opened on demand and *closed* when returned) made every burst of
API requests open new connections, each running the PRAGMAs again. A SQLite connection is a file handle and a page
cache, so the pool keeps as many as there are threads that can use one at once (:data:`POOL_SIZE`: anyio's
default worker threads plus the process's own background threads), none beyond that, and hands out the most
recently used one first (its cache is warm; the others may sit idle).
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
#: Execution option marking a connection that runs one read (→ no ``BEGIN``).
READ_OPTION = "photomaker_read"
#: Connections kept: anyio's default worker-thread limit (40: the API's sync routes and its trips to threads) plus
#: the background threads of a process (housekeeper, key cache, webhook dispatcher, worker heartbeats and logs).
POOL_SIZE = 40 + 8


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
        else:
            kwargs.update(pool_size=POOL_SIZE, max_overflow=0, pool_use_lifo=True)
        self._wal_done = False
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
            if not self._wal_done:
                # WAL is the file's, not the connection's: switched by the store's first connection (the one that
                # checks and upgrades the schema at open), not again by every connection after it.
                self._switch_to_wal(cursor)
                self._wal_done = True
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
        options = conn.get_execution_options()
        if options.get(READ_OPTION):
            return  # one statement: its own snapshot, no transaction around it
        mode = "IMMEDIATE" if options.get(WRITE_OPTION) else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")

    # -- what the store asks of a backend --

    @staticmethod
    def prepare_read(conn: Connection) -> None:
        """A read is one statement: no ``BEGIN`` (SQLite gives the statement its own WAL snapshot, no lock)."""
        conn.execution_options(**{READ_OPTION: True})

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
