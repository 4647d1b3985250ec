"""The webhook outbox: rows queued by a job's completion, taken and marked by the webhook dispatcher."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ..records import Delivery
from .base import SQLStoreBase
from .rows import to_delivery
from .schema import webhook_deliveries


class OutboxMixin(SQLStoreBase):
    def due_webhooks(self, now: float | None = None, limit: int = 20, lease_seconds: float = 120.0) -> list[Delivery]:
        """Take up to ``limit`` deliveries that are due, oldest first.

        Taking them pushes their ``next_attempt_at`` ``lease_seconds`` ahead in the same transaction, so two
        dispatchers (in any processes, on any hosts) never post the same delivery at once, and a dispatcher that
        dies mid-delivery has its rows picked up again later. The returned rows carry the values as taken.
        """
        now = self._clock() if now is None else now
        d = webhook_deliveries.c
        with self._write() as conn:
            rows = conn.execute(
                sa.select(webhook_deliveries)
                .where(d.delivered_at.is_(None), d.given_up.is_(False), d.next_attempt_at <= now)
                .order_by(d.next_attempt_at, d.id)
                .limit(limit)
                .with_for_update(skip_locked=True)  # PostgreSQL: a concurrent taker skips these rows
            ).all()
            taken = [to_delivery(r) for r in rows]
            if taken and lease_seconds > 0:
                conn.execute(
                    sa.update(webhook_deliveries)
                    .where(d.id.in_([t.id for t in taken]))
                    .values(next_attempt_at=now + lease_seconds)
                )
        return taken

    def mark_webhook(
        self, delivery_id: int, ok: bool, error: str | None = None, next_attempt_at: float | None = None
    ) -> None:
        """Record one attempt: delivered (``ok``), retry at ``next_attempt_at``, or given up (neither)."""
        now = self._clock()
        values: dict[str, Any] = {"attempts": webhook_deliveries.c.attempts + 1}
        if ok:
            values.update(delivered_at=now, last_error=None)
        elif next_attempt_at is not None:
            values.update(next_attempt_at=next_attempt_at, last_error=error)
        else:
            values.update(given_up=True, last_error=error)
        with self._write() as conn:
            conn.execute(sa.update(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id).values(**values))

    def webhook_deliveries(self, job_id: str) -> list[Delivery]:
        """Every delivery row of a job (for operators and tests)."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(webhook_deliveries)
                .where(webhook_deliveries.c.job_id == job_id)
                .order_by(webhook_deliveries.c.id)
            ).all()
        return [to_delivery(r) for r in rows]
