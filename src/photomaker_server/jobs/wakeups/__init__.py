"""Wake-ups without polling: the job store announces changes, waiters sleep until one happens.

The store announces a topic once a transaction commits (``publish(topic)`` after the commit, or on PostgreSQL a
``NOTIFY`` sent inside the transaction): ``"work"`` when a job became claimable, ``f"job:{job_id}"`` when a job's
status or cancel flag changed, ``f"logs:{job_id}"`` when it got log lines. An idle worker, an SSE status stream or a
synchronous ``/run`` request subscribes to its topics *before* reading the store, then waits::

    with wakeups.subscribe(f"job:{job_id}") as sub:
        while not (job := store.get(job_id)).done:
            sub.wait(timeout=5.0)   # the timeout is only a safety net; events wake it at once

Transports (pick with :func:`open_wakeups`): :class:`PostgresWakeups` (``LISTEN``/``NOTIFY``, any number of
machines), :class:`LocalWakeups` (Unix datagram sockets, the processes of one machine sharing a SQLite file),
:class:`NullWakeups` (in-process only).

One instance per process, opened after any ``fork`` (its thread and sockets do not survive one), shared by every
thread and event loop of that process; close it at shutdown.
"""

from __future__ import annotations

from pathlib import Path

from ..database import JobDatabase, parse_database_url
from .base import WAKE_ALL, NullWakeups, Subscription, Wakeups
from .local import LocalWakeups, socket_directory
from .postgres import CHANNEL, PostgresWakeups, libpq_url

__all__ = [
    "CHANNEL",
    "WAKE_ALL",
    "LocalWakeups",
    "NullWakeups",
    "PostgresWakeups",
    "Subscription",
    "Wakeups",
    "libpq_url",
    "open_wakeups",
    "socket_directory",
]


def open_wakeups(database_url: str | Path | JobDatabase, *, local_dir: Path | None = None) -> Wakeups:
    """The wake-ups that match the job store at ``database_url``.

    * ``postgresql://…``, ``postgres://…``, ``postgresql+psycopg://…`` → :class:`PostgresWakeups`.
    * ``sqlite:///path/jobs.db`` or a plain path → :class:`LocalWakeups` in ``local_dir``, by default
      ``<db file>.wakeups`` next to the database (every process opening that file finds the others there).
    * An in-memory SQLite URL without ``local_dir`` → :class:`NullWakeups` (one process can use it anyway).
    """
    database = parse_database_url(database_url)  # the store reads the same URL the same way
    if database.kind == "postgresql":
        return PostgresWakeups(database.url_text())
    db_file = database.sqlite_file
    if db_file is None:
        return LocalWakeups(local_dir) if local_dir is not None else NullWakeups()
    return LocalWakeups(local_dir if local_dir is not None else db_file.with_name(db_file.name + ".wakeups"))
