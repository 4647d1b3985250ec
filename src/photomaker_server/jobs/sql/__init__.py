"""The job store on SQL databases (SQLite and PostgreSQL) through SQLAlchemy Core.

``schema`` (tables), ``store`` (the portable implementation, with ``outbox`` and ``cluster``), ``base``
(transactions, errors, publishing), ``sqlite`` / ``postgres`` (dialect specifics), ``connect`` (URLs → backend),
``schema_version`` (Alembic upgrades on open).
"""

from .store import SQLJobStore

__all__ = ["SQLJobStore"]
