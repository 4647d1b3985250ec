"""The database's clock, as seen from this process: lease times from several hosts on one time line.

Why: a lease is written by a worker on one host (``now + lease``) and judged by a reclaimer on another (``expires
< now``). Were each to use its own clock, a worker host whose clock runs 20 s behind would hand out leases that
look 20 s older than they are, and a reclaimer whose clock runs ahead would take live workers' jobs. So every
process reads time as the database server's clock: its own clock plus an offset measured with one round trip
(the midpoint of the call, so the error is at most half the round trip), when the store opens and again after
every reconnect (the database may have moved to another host with another clock). The statements keep binding
times as parameters; nothing on the job path pays a round trip for the clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection


class DatabaseClock:
    """``local() + offset``, the offset being the database server's clock minus ours (see :meth:`sample`)."""

    def __init__(self, server_time: sa.TextClause, local: Callable[[], float] = time.time) -> None:
        self._server_time = server_time
        self._local = local
        self.offset = 0.0

    def __call__(self) -> float:
        return self._local() + self.offset

    def sample(self, conn: Connection) -> float:
        """Measure the offset on ``conn``; returns it."""
        before = self._local()
        server = float(conn.execute(self._server_time).scalar_one())
        after = self._local()
        self.offset = server - (before + after) / 2
        return self.offset
