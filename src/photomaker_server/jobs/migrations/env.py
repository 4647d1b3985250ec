"""Alembic environment: runs on the connection the store hands over (``config.attributes["connection"]``), inside
the caller's transaction, so the caller's lock (BEGIN IMMEDIATE / advisory lock) covers the whole upgrade.

For a developer's ``alembic`` command line, ``sqlalchemy.url`` in the config is used instead.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from photomaker_server.jobs.sql.schema import metadata

config = context.config
connection = config.attributes.get("connection")


def _run(conn: sa.engine.Connection) -> None:
    context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    _run(connection)
else:  # pragma: no cover - developer tooling
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
