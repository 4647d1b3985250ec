"""A value this process read from the job database a moment ago, answered again until it is :data:`TTL_S` old.

For what load balancers and monitors poll many times a second (the worker registry behind ``/health`` and
``/ready``): the registry changes on heartbeats every few seconds and is judged stale only after 15 s, so half a
second of memory changes no answer that matters and spares a database read (and a thread hop) per probe. Nothing
is answered from memory while the database is known to be unreachable: the probe reads, fails and says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

from ..jobs.health import DatabaseHealth

T = TypeVar("T")

#: How long a read is answered again.
TTL_S = 0.5


class Recent(Generic[T]):
    def __init__(self, health: DatabaseHealth, ttl_s: float = TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._health, self._ttl_s, self._clock = health, ttl_s, clock
        self._value: T | None = None
        self._expires = float("-inf")

    def get(self) -> T | None:
        """The value if it is fresh and the database is reachable, else None (read it, then :meth:`put`)."""
        if self._value is None or self._clock() >= self._expires or not self._health.up:
            return None
        return self._value

    def put(self, value: T) -> None:
        self._value, self._expires = value, self._clock() + self._ttl_s
