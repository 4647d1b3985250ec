"""Each API process's copy of the key table: authenticating a request is a dictionary lookup, never a database
read, and a change anywhere (``photomaker keys revoke`` on any host, ``/admin/keys`` on any replica) reaches every
replica within milliseconds.

How: every change commits with the ``keys`` wake-up (``jobs.keys.KEYS_TOPIC``; LISTEN/NOTIFY on PostgreSQL, the
data dir's sockets on SQLite); a thread per process sleeps on it and reloads the whole table (one small read).
Wake-ups are best-effort, so it also reloads every :data:`FALLBACK_RELOAD_S` seconds; while the database is down
the last copy stays in use (keys keep working through a restart of the database).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from ..jobs.keys import CONFIG_KIND, KEYS_TOPIC, ApiKey, KeyLimits, hash_secret, same_hash
from ..jobs.protocol import JobStore
from ..jobs.records import StoreUnavailable
from ..jobs.wakeups import Subscription, Wakeups

log = logging.getLogger(__name__)

#: Reload the table this often even without a wake-up (one lost wake-up delays a revocation by at most this).
FALLBACK_RELOAD_S = 5.0


@dataclass(frozen=True)
class Caller:
    """Who made a request: the owner its jobs are stored under, the key's name and what it may do."""

    owner: str
    name: str | None
    admin: bool = False
    limits: KeyLimits = KeyLimits()
    kind: str = CONFIG_KIND


class KeyCache:
    """Managed keys by the hash of their secret, and every key's name by owner. Thread-safe: readers see one
    table or the next (the dictionaries are replaced, never changed in place)."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._by_hash: dict[str, ApiKey] = {}
        self._names: dict[str, ApiKey] = {}
        self.loaded_at: float | None = None

    def reload(self) -> None:
        keys = self._store.list_keys()
        self._by_hash = {k.secret_hash: k for k in keys if k.secret_hash}
        self._names = {k.owner: k for k in keys}
        self.loaded_at = self._store.now()

    def managed(self, secret: str) -> ApiKey | None:
        """The managed key with this secret (revoked ones too: the caller refuses them), else None."""
        digest = hash_secret(secret)
        key = self._by_hash.get(digest)
        if key is None or key.secret_hash is None or not same_hash(digest, key.secret_hash):
            return None
        return key

    def by_owner(self, owner: str) -> ApiKey | None:
        return self._names.get(owner)

    def follow(self, wakeups: Wakeups, stop: threading.Event) -> Subscription:
        """Reload on every ``keys`` wake-up (and every :data:`FALLBACK_RELOAD_S`) until ``stop`` is set; returns
        the subscription, which the caller closes after setting ``stop`` (that ends the thread's wait at once)."""
        subscription = wakeups.subscribe(KEYS_TOPIC)  # before the first reload: no change can slip between

        def run() -> None:
            with subscription:
                while not stop.is_set():
                    try:
                        self.reload()
                    except StoreUnavailable:
                        pass  # keep the last table; the next wake-up or fallback tries again
                    except Exception:
                        log.exception("reloading the API keys failed")
                    subscription.wait(FALLBACK_RELOAD_S)

        threading.Thread(target=run, name="key-cache", daemon=True).start()
        return subscription
