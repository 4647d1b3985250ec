"""Which job database a setting names: decided here, once, for the store and the wake-ups alike.

``PHOTOMAKER_DATABASE_URL`` is a filesystem path or ``sqlite:///path`` (SQLite: one host, the processes find each
other through a socket directory beside the file), ``:memory:``, or ``postgresql://…`` / ``postgres://…`` /
``postgresql+psycopg://…`` (PostgreSQL through psycopg 3: any number of hosts, LISTEN/NOTIFY). The store picks its
SQL dialect and the wake-ups their transport from the same :class:`JobDatabase`, so the two can never disagree
about what a URL means.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import sqlalchemy as sa

__all__ = ["JobDatabase", "database_url", "parse_database_url"]


@dataclass(frozen=True)
class JobDatabase:
    #: SQLAlchemy's URL, normalised (``postgresql+psycopg`` for PostgreSQL; an absolute path for SQLite files).
    url: sa.URL
    kind: Literal["sqlite", "postgresql"]

    @property
    def sqlite_file(self) -> Path | None:
        """The SQLite database file, None in memory or on PostgreSQL."""
        if self.kind != "sqlite" or self.url.database in (None, "", ":memory:"):
            return None
        return Path(self.url.database)

    def url_text(self) -> str:
        """The URL as text, password included (for libpq)."""
        return self.url.render_as_string(hide_password=False)


def parse_database_url(url_or_path: str | Path | JobDatabase) -> JobDatabase:
    """What an operator wrote, normalised; ValueError for anything else (other PostgreSQL drivers too: only
    psycopg 3 is installed). Creates a SQLite file's directory."""
    if isinstance(url_or_path, JobDatabase):
        return url_or_path
    text = str(url_or_path)
    if isinstance(url_or_path, Path) or "://" not in text:
        if text == ":memory:":
            return JobDatabase(sa.URL.create("sqlite"), "sqlite")
        path = Path(text).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JobDatabase(sa.URL.create("sqlite", database=str(path)), "sqlite")
    try:
        url = sa.make_url(text)
    except sa.exc.ArgumentError as exc:
        raise ValueError(f"invalid database URL: {exc}") from None
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return JobDatabase(url.set(drivername="postgresql+psycopg"), "postgresql")
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return JobDatabase(url, "sqlite")
    raise ValueError(
        f"unsupported database {url.drivername!r}: use a file path, sqlite:///PATH or postgresql://…"
    )


def database_url(url_or_path: str | Path | JobDatabase) -> sa.URL:
    """SQLAlchemy's URL for the database (see :func:`parse_database_url`)."""
    return parse_database_url(url_or_path).url
