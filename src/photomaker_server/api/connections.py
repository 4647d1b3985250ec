"""Per-key caps on the responses that hold a connection for a long time: status streams (SSE) and ``/run``.

Both wait on a request for as long as it takes (minutes on a busy queue); without a cap one key could keep
thousands open and with them this process's sockets and memory. Each key gets ``max_streams`` / ``max_held_runs``
at once (its :class:`~photomaker_server.limits.KeyLimits`); past that a 429 in fal's shape says which limit and
to retry later or poll the status URL instead, which costs one short request per poll.

Counted per API process (the connections are this process's), in memory, under a lock: handlers run on the
event loop and in worker threads.
"""

from __future__ import annotations

import threading
from collections import Counter
from types import TracebackType

from fastapi import HTTPException

from ..contract.errors import ErrorType
from ..limits import LimitsPolicy

__all__ = ["ConnectionBudget", "Held"]

#: Seconds a refused client is asked to wait (a stream or run of the same key will likely have ended by then).
RETRY_AFTER_S = 5
_WHAT = {"stream": ("open status streams", "PHOTOMAKER_MAX_STREAMS_PER_KEY", "poll the status URL instead"),
         "run": ("/run calls waiting for their result", "PHOTOMAKER_MAX_HELD_RUNS_PER_KEY",
                 "submit to the queue and poll the status URL instead")}


class Held:
    """One counted connection; released exactly once (by ``with`` or :meth:`release`)."""

    def __init__(self, budget: ConnectionBudget, slot: tuple[str, str]) -> None:
        self._budget, self._slot, self._released = budget, slot, False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._budget._release(self._slot)

    def __enter__(self) -> Held:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


class ConnectionBudget:
    def __init__(self, limits: LimitsPolicy) -> None:
        self._limits = limits
        self._open: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def _limit(self, owner: str, kind: str) -> int | None:
        limits = self._limits.for_owner(owner)
        return limits.max_streams if kind == "stream" else limits.max_held_runs

    def hold(self, owner: str, kind: str) -> Held:
        """Count one more ``kind`` (``"stream"`` or ``"run"``) for ``owner``, or raise a 429 when it has its
        limit open already."""
        limit = self._limit(owner, kind)
        slot = (owner, kind)
        with self._lock:
            if limit is not None and self._open[slot] >= limit:
                what, setting, instead = _WHAT[kind]
                raise HTTPException(
                    429, f"Too many {what} for this key (limit {limit} per API process, {setting}); close one, "
                         f"or {instead}",
                    headers={"X-Fal-Error-Type": ErrorType.TOO_MANY_CONNECTIONS, "Retry-After": str(RETRY_AFTER_S)})
            self._open[slot] += 1
        return Held(self, slot)

    def _release(self, slot: tuple[str, str]) -> None:
        with self._lock:
            self._open[slot] -= 1
            if self._open[slot] <= 0:
                del self._open[slot]

    def open_count(self, owner: str, kind: str) -> int:
        with self._lock:
            return self._open[(owner, kind)]
