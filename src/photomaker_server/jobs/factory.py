"""The one place that turns a database setting into a job store.

Accepted: a filesystem path or ``sqlite:///path`` (SQLite, one host), ``postgresql://…`` / ``postgres://…`` /
``postgresql+psycopg://…`` (PostgreSQL through psycopg 3; replicas and workers on several hosts).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .protocol import JobStore
from .sql import SQLJobStore

__all__ = ["open_job_store"]


def open_job_store(
    url: str | Path,
    *,
    clock: Callable[[], float] | None = None,
    publish: Callable[[str], None] | None = None,
    notify_channel: str | None = None,
) -> JobStore:
    """Open (creating or upgrading the schema as needed) the job store at ``url``.

    Change topics (see :class:`~photomaker_server.jobs.sql.SQLJobStore`) go to ``publish`` after each commit, or,
    PostgreSQL only, with ``NOTIFY`` on ``notify_channel`` inside the transaction (what
    :class:`~photomaker_server.jobs.wakeups.PostgresWakeups` listens to): give one or the other.

    ValueError for an unsupported URL; :class:`~photomaker_server.jobs.records.SchemaTooNew` when a newer release
    migrated the database; :class:`~photomaker_server.jobs.records.StoreUnavailable` when it cannot be reached.
    """
    return SQLJobStore(url, clock=clock, publish=publish, notify_channel=notify_channel)
