"""Subscriptions and the in-process fan-out shared by every wake-up transport.

Why a "pending" flag and not a bare event: a waiter first checks the state it cares about (the job store) and
then sleeps. An announcement that lands between the check and the sleep must not be lost, so a
:class:`Subscription` records every event from the moment it is created and :meth:`Subscription.wait` returns
at once when one is pending. Wake-ups carry no data: a woken waiter re-reads the store, so several events
collapse into one wake-up and a spurious wake-up costs one read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Protocol

__all__ = ["WAKE_ALL", "NullWakeups", "Subscription", "Wakeups"]

log = logging.getLogger(__name__)

#: The reserved topic that wakes every subscriber of every topic (sent after missed events, e.g. a reconnect).
WAKE_ALL = "*"


class Subscription:
    """Remembers events that arrive after it was created, so check-then-wait never misses one.

    Thread-safe; :meth:`wait` is for threads, :meth:`wait_async` for asyncio code on any event loop (the
    transport thread sets an :class:`asyncio.Event` through ``loop.call_soon_threadsafe``).
    """

    def __init__(self, hub: Hub, topics: tuple[str, ...]) -> None:
        #: An event on any of these wakes the subscription (a log-following stream: a job's status and its logs).
        self.topics = topics
        self._hub = hub
        self._cond = threading.Condition()
        self._pending = False
        self._closed = False
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def _notify(self) -> None:
        """Called by the transport (any thread): mark an event pending and wake every waiter."""
        with self._cond:
            self._pending = True
            self._cond.notify_all()
            waiters = list(self._async_waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile: nobody left to wake
                loop.call_soon_threadsafe(event.set)

    def _take(self) -> bool:
        """Consume the pending flag (caller holds ``_cond``)."""
        got, self._pending = self._pending, False
        return got

    def wait(self, timeout: float | None) -> bool:
        """Block until an event is pending (True) or ``timeout`` seconds pass (False); consumes the event.

        ``None`` waits without a limit. A closed subscription returns at once.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._pending or self._closed, timeout)
            return self._take()

    async def wait_async(self, timeout: float | None) -> bool:
        """:meth:`wait` for asyncio code: suspends the coroutine, never blocks the loop."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        entry = (loop, event)
        with self._cond:
            if self._pending or self._closed:
                return self._take()
            self._async_waiters.add(entry)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        except BaseException:  # cancelled: leave a pending event for the next wait
            with self._cond:
                self._async_waiters.discard(entry)
            raise
        with self._cond:
            self._async_waiters.discard(entry)
            return self._take()  # the flag is the truth; the event only wakes us

    def close(self) -> None:
        """Stop receiving events and release every waiter (they return whatever is pending)."""
        self._hub.remove(self)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            waiters = list(self._async_waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Hub:
    """Topic → subscriptions of this process; what every transport calls when an event arrives."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._topics: dict[str, set[Subscription]] = {}
        #: Called with every topic this process hears (before its subscribers wake): see :meth:`observe`.
        self._observers: tuple[Callable[[str], None], ...] = ()

    def observe(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(topic)`` for every event from now on (``WAKE_ALL`` after missed ones), from the
        transport's thread, before any subscriber is woken. For per-process caches that must drop what a change
        made stale (``api/job_cache.py``); returns the function that stops it. ``callback`` must be quick and must
        not raise (errors are logged)."""
        with self._lock:
            self._observers = (*self._observers, callback)

        def stop() -> None:
            with self._lock:
                self._observers = tuple(o for o in self._observers if o is not callback)

        return stop

    def subscribe(self, topic: str, *more: str) -> Subscription:
        topics = tuple(dict.fromkeys((topic, *more)))
        for name in topics:
            if not name or name == WAKE_ALL or "\n" in name:
                raise ValueError(f"invalid wake-up topic: {name!r}")
        sub = Subscription(self, topics)
        with self._lock:
            for name in topics:
                self._topics.setdefault(name, set()).add(sub)
        return sub

    def remove(self, sub: Subscription) -> None:
        with self._lock:
            for name in sub.topics:
                subs = self._topics.get(name)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self._topics[name]

    def fan_out(self, topic: str) -> None:
        """Wake the subscribers of ``topic`` (of every topic for :data:`WAKE_ALL`)."""
        for observer in self._observers:
            try:
                observer(topic)
            except Exception:
                log.exception("wake-up observer failed for %r", topic)
        with self._lock:
            if topic == WAKE_ALL:  # a set: a subscription to several topics is woken once
                subs = list({s for group in self._topics.values() for s in group})
            else:
                subs = list(self._topics.get(topic, ()))
        for sub in subs:
            sub._notify()

    def close_all(self) -> None:
        with self._lock:
            subs = list({s for group in self._topics.values() for s in group})
        for sub in subs:
            sub.close()


class Wakeups(Protocol):
    """Announce that something changed (``publish``) and sleep until it does (``subscribe`` + ``wait``).

    Topics used by the job store: ``"work"`` (a job became claimable), ``f"job:{job_id}"`` (a job's status or
    cancel flag changed) and ``f"logs:{job_id}"`` (it got log lines). Delivery is best-effort: waiters re-check
    the store after a wake-up and keep a fallback timeout.
    """

    def publish(self, topic: str) -> None:
        """Announce ``topic``; never raises (failures are logged)."""
        ...

    def subscribe(self, topic: str, *more: str) -> Subscription:
        """Events on ``topic`` (or any of ``more``) from now on wake the subscription."""
        ...

    def close(self) -> None: ...

    def observe(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Every topic this process hears from now on goes to ``callback`` (see :meth:`Hub.observe`)."""
        ...

    @property
    def live(self) -> bool:
        """Whether events reach this process now. False while a transport is reconnecting (events are being
        missed; a ``WAKE_ALL`` follows the reconnect): a cache kept fresh by events must not be trusted then."""
        ...


class HubWakeups:
    """Shared part of the transports: subscriptions live in a :class:`Hub`; subclasses deliver ``publish``."""

    def __init__(self) -> None:
        self._hub = Hub()

    def subscribe(self, topic: str, *more: str) -> Subscription:
        return self._hub.subscribe(topic, *more)

    def observe(self, callback: Callable[[str], None]) -> Callable[[], None]:
        return self._hub.observe(callback)

    @property
    def live(self) -> bool:
        """True: a transport that can miss events while reconnecting says so by overriding this."""
        return True

    def close(self) -> None:
        self._hub.close_all()

    def __enter__(self) -> HubWakeups:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullWakeups(HubWakeups):
    """In-process only (tests, embedding, an in-memory store): ``publish`` wakes this process's subscribers."""

    def publish(self, topic: str) -> None:
        try:
            self._hub.fan_out(topic)
        except Exception:  # a subscriber's loop misbehaving must not reach the store's caller
            log.exception("wake-up fan-out failed for %r", topic)
