"""Database URLs → a backend (SQLite or PostgreSQL) and its engine; database errors → :class:`StoreUnavailable`."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..records import StoreUnavailable
from .postgres import PostgresBackend
from .sqlite import SQLiteBackend

__all__ = ["Backend", "backend_for", "database_url", "unavailable"]


class Backend(Protocol):
    """What the SQL store needs from a dialect module."""

    name: str

    def create_engine(self, url: sa.URL) -> Engine: ...

    def prepare_read(self, conn: Connection) -> None: ...

    def prepare_write(self, conn: Connection) -> None: ...

    def server_time(self) -> sa.TextClause | None:
        """A statement reading the server's clock (epoch seconds), or None when it is this machine's."""
        ...

    def next_seq_expression(self) -> sa.ColumnElement[int]: ...

    def insert(self, table: sa.Table) -> sa.Insert: ...

    def notify(self, conn: Connection, channel: str, topics: list[str]) -> None: ...

    def lock_migrations(self, conn: Connection) -> None: ...


def database_url(url_or_path: str | Path) -> sa.URL:
    """Normalise what an operator writes: a filesystem path or ``sqlite:///path`` (SQLite), ``":memory:"``, or
    ``postgresql://…`` / ``postgres://…`` / ``postgresql+psycopg://…`` (PostgreSQL through psycopg 3).

    ValueError for anything else, including other PostgreSQL drivers (only psycopg 3 is installed).
    """
    text = str(url_or_path)
    if isinstance(url_or_path, Path) or "://" not in text:
        if text == ":memory:":
            return sa.URL.create("sqlite")
        path = Path(text).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return sa.URL.create("sqlite", database=str(path))
    try:
        url = sa.make_url(text)
    except sa.exc.ArgumentError as exc:
        raise ValueError(f"invalid database URL: {exc}") from None
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return url.set(drivername="postgresql+psycopg")
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return url
    raise ValueError(
        f"unsupported database {url.drivername!r}: use a file path, sqlite:///PATH or postgresql://…"
    )


def backend_for(url: sa.URL) -> Backend:
    if url.get_backend_name() == "sqlite":
        return SQLiteBackend()
    if url.get_backend_name() == "postgresql":
        return PostgresBackend()
    raise ValueError(f"unsupported database {url.get_backend_name()!r}")


def unavailable(exc: BaseException, *, connecting: bool = False) -> StoreUnavailable | None:
    """The :class:`StoreUnavailable` to raise for ``exc``, or None when it is an ordinary database error.

    Unreachable means: no connection could be made (``connecting``), or SQLAlchemy recognised the error as a
    disconnect (it then invalidates the pool, so the next call reconnects to a restarted server).
    """
    if isinstance(exc, sa.exc.DisconnectionError):
        return StoreUnavailable(f"the database is unreachable: {exc}")
    if isinstance(exc, sa.exc.DBAPIError) and (exc.connection_invalidated or connecting):
        if connecting and not isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
            return None
        return StoreUnavailable(f"the database is unreachable: {exc.orig or exc}")
    return None
