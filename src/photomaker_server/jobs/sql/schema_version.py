"""Schema versions: bring a database to the code's schema with Alembic when the store opens it.

* An empty database is created by the migrations; an older revision is upgraded (logged).
* A database written by the SQLite-only releases (tables, no ``alembic_version``) is stamped ``0001``, whose
  schema it has exactly, then upgraded.
* A revision this code does not know was written by a newer release: :class:`SchemaTooNew`, nothing touched.

The check and the upgrade run in ONE transaction that first takes a lock (SQLite: ``BEGIN IMMEDIATE``;
PostgreSQL: an advisory lock; both databases have transactional DDL), so processes opening a fresh database at
the same moment queue up and the later ones find it current.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import sqlalchemy as sa

# Alembic announces its context on import and every open at INFO; our own line says when something actually changed.
for _name in ("alembic.runtime.migration", "alembic.runtime.plugins"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)

from alembic import command  # noqa: E402 (after the logger levels above)
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from ..migrations import SCRIPT_LOCATION
from ..records import SchemaTooNew
from .connect import Backend, backend_for, database_url, unavailable

__all__ = ["LEGACY_REVISION", "current_revision", "head_revision", "upgrade_database", "upgrade_engine"]

log = logging.getLogger(__name__)

#: The revision whose schema the SQLite-only releases created without recording a version.
LEGACY_REVISION = "0001"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    return config


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    head = _script().get_current_head()
    assert head is not None
    return head


def _known_revisions() -> set[str]:
    return {rev.revision for rev in _script().walk_revisions()}


def upgrade_engine(engine: Engine, backend: Backend, target: str | None = None) -> tuple[str | None, str]:
    """Upgrade the database behind ``engine`` to ``target`` (default: the head revision); returns (revision
    before, revision after)."""
    head = head_revision()
    target = target or head
    with engine.connect() as conn:
        backend.prepare_write(conn)
        with conn.begin():
            backend.lock_migrations(conn)
            before = MigrationContext.configure(conn).get_current_revision()
            config = _config()
            config.attributes["connection"] = conn
            if before is None and sa.inspect(conn).has_table("jobs"):
                log.info("job store: a database of an earlier release; recording it as revision %s", LEGACY_REVISION)
                command.stamp(config, LEGACY_REVISION)
                before = LEGACY_REVISION
            if before is not None and before not in _known_revisions():
                raise SchemaTooNew(
                    f"database schema {before} is newer than this version of photomaker-server "
                    f"(knows up to {head}); upgrade the software"
                )
            if before != target:
                log.info("job store: upgrading the database schema from %s to %s", before or "nothing", target)
                command.upgrade(config, target)
    return before, target


def upgrade_database(url: str | Path, target: str | None = None) -> tuple[str | None, str]:
    """:func:`upgrade_engine` for a database URL or SQLite path (for operators and tests)."""
    sa_url = database_url(url)
    backend = backend_for(sa_url)
    engine = backend.create_engine(sa_url)
    try:
        return upgrade_engine(engine, backend, target)
    except sa.exc.SQLAlchemyError as exc:
        problem = unavailable(exc, connecting=True)
        if problem is None:
            raise
        raise problem from None
    finally:
        engine.dispose()


def current_revision(url: str | Path) -> str | None:
    """The revision recorded in the database (None: empty, or written by a release before migrations)."""
    sa_url = database_url(url)
    engine = backend_for(sa_url).create_engine(sa_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
