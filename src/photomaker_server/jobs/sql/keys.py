"""API keys in the job database: create, list, revoke, change limits, register configured keys, usage.

Every change announces :data:`~photomaker_server.jobs.keys.KEYS_TOPIC` after its commit, which makes every
replica reload its key cache (``api/keyring.py``): a revocation is refused everywhere within milliseconds, with
no database read per request. Limits are read from the key's row inside each submit's transaction (``store.py``)
and by the claim, so they hold across replicas however fresh a cache is.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..keys import (
    CONFIG_KIND,
    KEYS_TOPIC,
    MANAGED_KIND,
    ApiKey,
    KeyExists,
    KeyLimits,
    KeyUsage,
    UnknownKey,
    check_key_name,
    hash_secret,
    owner_of,
    secret_prefix,
)
from ..records import WORK_TOPIC
from .base import SQLStoreBase
from .schema import api_keys, jobs, key_usage

_k = api_keys.c


def _to_key(row: sa.Row[Any]) -> ApiKey:
    m = row._mapping
    limits = KeyLimits(**{name: m[name] for name in KeyLimits.names()})
    return ApiKey(name=m["name"], owner=m["owner"], kind=m["kind"], prefix=m["prefix"], admin=bool(m["admin"]),
                  limits=limits, created_at=m["created_at"], last_used_at=m["last_used_at"],
                  revoked_at=m["revoked_at"], secret_hash=m["secret_hash"])


class KeysMixin(SQLStoreBase):
    def create_key(self, name: str, secret: str, limits: KeyLimits = KeyLimits(), *, admin: bool = False) -> ApiKey:
        """Store a managed key (its hash, never ``secret``). :class:`KeyExists` when the name is taken."""
        check_key_name(name)
        values = {"name": name, "owner": owner_of(secret), "kind": MANAGED_KIND, "secret_hash": hash_secret(secret),
                  "prefix": secret_prefix(secret), "admin": admin, "created_at": self._clock(), **limits.as_dict()}
        try:
            with self._write() as conn:
                if conn.execute(sa.select(_k.name).where(_k.name == name)).first() is not None:
                    raise KeyExists(f"a key named {name!r} exists already")
                conn.execute(api_keys.insert().values(**values))
                self._notify(KEYS_TOPIC)
        except sa.exc.IntegrityError:  # PostgreSQL: a concurrent create of the same name won
            raise KeyExists(f"a key named {name!r} exists already") from None
        return self.key(name)

    def key(self, name: str) -> ApiKey:
        """The key of that name (managed or configured); :class:`UnknownKey` otherwise."""
        with self._read() as conn:
            row = conn.execute(sa.select(api_keys).where(_k.name == name)).first()
        if row is None:
            raise UnknownKey(f"no key named {name!r}")
        return _to_key(row)

    def list_keys(self) -> list[ApiKey]:
        """Every key, configured ones first, then by name."""
        with self._read() as conn:
            rows = conn.execute(sa.select(api_keys).order_by(_k.kind.desc(), _k.name)).all()
        return [_to_key(r) for r in rows]

    def revoke_key(self, name: str) -> ApiKey:
        """Refuse the managed key ``name`` from now on (its jobs stay, and are still run). Revoking twice is
        harmless. :class:`UnknownKey` for an unknown or configured key (remove those from the configuration)."""
        with self._write() as conn:
            self._managed(conn, name)
            conn.execute(
                sa.update(api_keys).where(_k.name == name, _k.revoked_at.is_(None)).values(revoked_at=self._clock())
            )
            self._notify(KEYS_TOPIC)
        return self.key(name)

    def set_key_limits(self, name: str, changes: dict[str, int | None]) -> ApiKey:
        """Change some of a managed key's limits (None: unlimited); effective for the next submit and claim."""
        with self._write() as conn:
            current = self._managed(conn, name)
            limits = current.limits.updated(changes)
            conn.execute(sa.update(api_keys).where(_k.name == name).values(**limits.as_dict()))
            self._notify(KEYS_TOPIC)
            self._notify(WORK_TOPIC)  # a raised max_concurrent may make queued jobs claimable for idle workers
        return self.key(name)

    @staticmethod
    def _managed(conn: Connection, name: str) -> ApiKey:
        row = conn.execute(sa.select(api_keys).where(_k.name == name).with_for_update()).first()
        if row is None:
            raise UnknownKey(f"no key named {name!r}")
        key = _to_key(row)
        if key.kind != MANAGED_KIND:
            raise UnknownKey(f"{name!r} is a configured key: change or remove it in the configuration "
                             "(--api-key, PHOTOMAKER_API_KEYS), not here")
        return key

    def register_configured_keys(self, secrets: list[str]) -> dict[str, str]:
        """Give each configured key a row (no limits, never revoked) under a stable name; returns owner → name.

        A key keeps the name it got first (``config-N``, N its 1-based place in the configuration when that name
        is free, else the next free one), so reordering the configuration renames nothing.
        """
        owners = list(dict.fromkeys(owner_of(s) for s in secrets))
        if not owners:
            return {}
        with self._write() as conn:
            rows = conn.execute(sa.select(_k.name, _k.owner)).all()
            names = {owner: name for name, owner in rows}
            taken = set(names.values())
            added = False
            for place, owner in enumerate(owners, start=1):
                if owner in names:
                    continue
                number = place
                while f"config-{number}" in taken:
                    number += 1
                name = f"config-{number}"
                conn.execute(
                    self._backend.insert(api_keys)
                    .values(name=name, owner=owner, kind=CONFIG_KIND, secret_hash=None, prefix="", admin=False,
                            created_at=self._clock())
                    .on_conflict_do_nothing()  # another process registered it meanwhile
                )
                names[owner] = name
                taken.add(name)
                added = True
            if added:
                self._notify(KEYS_TOPIC)
        # Re-read: a concurrent registration may have named a key differently.
        with self._read() as conn:
            rows = conn.execute(sa.select(_k.owner, _k.name).where(_k.owner.in_(owners))).all()
        return dict(rows)

    def usage(self, since: date | None = None) -> list[KeyUsage]:
        """Per key (by name; every key, zeros included), the totals of the UTC days from ``since`` on (None: all).

        Usage of owners without a key row (jobs submitted through the store directly) is left out."""
        sums = [sa.func.coalesce(sa.func.sum(key_usage.c[n]), 0).label(n) for n in
                ("jobs_submitted", "jobs_completed", "jobs_failed", "jobs_cancelled", "images", "inference_seconds")]
        joined = key_usage.c.owner == _k.owner
        if since is not None:
            joined = sa.and_(joined, key_usage.c.day >= since.isoformat())
        query = (
            sa.select(_k.name, *sums)
            .select_from(api_keys.outerjoin(key_usage, joined))
            .group_by(_k.name)
            .order_by(_k.name)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [KeyUsage(name=r.name, jobs_submitted=int(r.jobs_submitted), jobs_completed=int(r.jobs_completed),
                         jobs_failed=int(r.jobs_failed), jobs_cancelled=int(r.jobs_cancelled), images=int(r.images),
                         inference_seconds=round(float(r.inference_seconds), 3)) for r in rows]

    def key_load(self) -> dict[str, dict[str, int]]:
        """Queued and running jobs per key name (for ``/metrics``)."""
        query = (
            sa.select(_k.name, jobs.c.status, sa.func.count())
            .select_from(api_keys.join(jobs, jobs.c.owner == _k.owner))
            .where(jobs.c.status.in_(("queued", "running")))
            .group_by(_k.name, jobs.c.status)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        out: dict[str, dict[str, int]] = {}
        for name, status, n in rows:
            out.setdefault(name, {"queued": 0, "running": 0})[status] = int(n)
        return out
