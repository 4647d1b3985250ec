"""Alembic migrations of the job store (both SQLite and PostgreSQL), shipped inside the package.

Configured in code by :mod:`photomaker_server.jobs.sql.schema_version` (no ``alembic.ini`` at runtime); the store
upgrades a database when it opens it. Revision ``0001`` is the schema of the SQLite-only releases exactly, so their
data directories are stamped with it and upgraded. Write new revisions by hand, for both dialects: use
``op.batch_alter_table`` for any ALTER (SQLite rebuilds the table).
"""

from pathlib import Path

#: Where ``env.py`` and ``versions/`` live (Alembic's ``script_location``).
SCRIPT_LOCATION = Path(__file__).resolve().parent
