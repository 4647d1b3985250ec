"""A database URL (``jobs.database``) → the SQL dialect module and its engine; database errors → :class:`StoreUnavailable`."""

from __future__ import annotations

from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..database import database_url
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
