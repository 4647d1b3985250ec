"""The one place that turns a database setting into a job store and its wake-ups.

:func:`~photomaker_server.jobs.database.parse_database_url` decides what the setting names (SQLite or PostgreSQL);
this module opens the pair that belongs to it: on PostgreSQL the store sends ``NOTIFY`` inside its own
transactions and the wake-ups ``LISTEN``; on SQLite the store publishes after each commit through the wake-ups'
local sockets.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .database import JobDatabase, parse_database_url
from .protocol import JobStore
from .sql import SQLJobStore
from .wakeups import PostgresWakeups, Wakeups, open_wakeups

__all__ = ["open_job_database", "open_job_store"]


def open_job_store(
    url: str | Path | JobDatabase,
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
    return SQLJobStore(parse_database_url(url).url, clock=clock, publish=publish, notify_channel=notify_channel)


def open_job_database(url: str | Path | JobDatabase) -> tuple[JobStore, Wakeups]:
    """The job store and the wake-ups that belong to it, for every process of a deployment. ValueError for an
    unsupported URL (before anything is opened)."""
    database = parse_database_url(url)
    wakeups = open_wakeups(database)
    try:
        if database.kind == "postgresql":
            assert isinstance(wakeups, PostgresWakeups)
            return open_job_store(database, notify_channel=wakeups.channel), wakeups
        return open_job_store(database, publish=wakeups.publish), wakeups
    except BaseException:
        wakeups.close()
        raise
