"""Delivering webhooks: a dispatcher that drains the job store's outbox with retries, in a thread it owns.

Deliveries come from the outbox (``webhook_deliveries``), so they survive restarts, and the dispatcher can run in
any process that opens the store (each API process runs one; the outbox's lease keeps two from posting the same
delivery). The outbox holds only where to post; the dispatcher renders the body from the finished job when it
posts (:mod:`.body`), so the store never builds webhook bodies. Retries: 10 attempts over about two hours
(:func:`backoff_schedule`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from ..inputs.fetch import FetchPolicy
from ..inputs.outbound import safe_post
from ..jobs.protocol import JobStore
from ..jobs.records import Delivery, Job, StoreUnavailable
from ..settings import Settings
from ..storage.base import FileStorage
from .body import job_webhook_body
from .signing import WebhookSigner

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 15.0


def backoff_schedule(max_attempts: int = 10, first_delay: float = 15.0, factor: float = 2.0) -> list[float]:
    """Seconds to wait after failed attempt 1, 2, … (``max_attempts - 1`` gaps; the first attempt is
    immediate).

    With the defaults: 15 s, 30 s, 1 min, 2 min, 4 min, 8 min, 16 min, 32 min, 64 min — 7665 s, about 2 h 8 min
    from the first attempt to the tenth, matching fal's "10 retries over about 2 hours". Doubling keeps the
    early retries quick (a receiver restarting) and the late ones sparse (a receiver down for a while).
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    return [first_delay * factor**i for i in range(max_attempts - 1)]


#: ``post(url, body, headers, timeout) -> HTTP status``; raises on a transport error.
HttpPost = Callable[[str, bytes, Mapping[str, str], float], int]


def httpx_post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
    """Default transport: no redirects (a redirect could point anywhere, past the SSRF check), no proxies
    from the environment. The service plugs in a client that connects to the address it checked."""
    import httpx

    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        return client.post(url, content=body, headers=dict(headers)).status_code


class WebhookDispatcher:
    """Delivers due webhooks from the store's outbox, with retries.

    ``policy_check(url)`` runs before every attempt and raises to refuse (SSRF: private addresses); a refusal
    counts as a failed attempt, since DNS can change. ``http_post`` is injectable so the service can connect
    to the very address ``policy_check`` approved, and tests can record calls. ``render_body(job)`` builds the
    bytes to POST (and sign) for a finished job, at each attempt.
    """

    def __init__(
        self,
        store: JobStore,
        signer: WebhookSigner,
        policy_check: Callable[[str], None] = lambda url: None,
        http_post: HttpPost = httpx_post,
        *,
        render_body: Callable[[Job], bytes] = job_webhook_body,
        max_attempts: int = 10,
        schedule: list[float] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        batch_size: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.signer = signer
        self.policy_check = policy_check
        self.http_post = http_post
        self.render_body = render_body
        self.max_attempts = max_attempts
        self.schedule = backoff_schedule(max_attempts) if schedule is None else list(schedule)
        self.timeout = timeout
        self.batch_size = batch_size
        self.clock = clock
        self._thread: threading.Thread | None = None

    def _delay_after(self, attempt: int) -> float:
        if not self.schedule:
            return 60.0
        return self.schedule[min(attempt - 1, len(self.schedule) - 1)]

    def attempt(self, delivery: Delivery) -> str | None:
        """One POST. None on a 2xx answer, otherwise why it failed."""
        # Outside the try: a database that is down is not the receiver's failed attempt (the pass is retried).
        job = self.store.get(delivery.job_id, with_input=False)
        if job is None:
            return "the request no longer exists"
        try:
            body = self.render_body(job)
            self.policy_check(delivery.url)
            headers = self.signer.headers(delivery.job_id, delivery.owner, body, int(self.clock()))
            headers["User-Agent"] = "photomaker-server-webhooks"
            status = self.http_post(delivery.url, body, headers, self.timeout)
        except Exception as exc:  # any failure is a failed attempt, recorded for operators
            return f"{type(exc).__name__}: {exc}"[:500]
        if 200 <= status < 300:
            return None
        return f"HTTP {status}"

    def run_once(self, now: float | None = None) -> int:
        """Attempt every delivery due at ``now`` (one batch); returns how many were attempted."""
        now = self.clock() if now is None else now
        # The lease covers a whole batch of slow receivers, so no other dispatcher takes them meanwhile.
        lease = self.batch_size * (self.timeout + 5.0) + 30.0
        due = self.store.due_webhooks(now, limit=self.batch_size, lease_seconds=lease)
        for delivery in due:
            error = self.attempt(delivery)
            attempt_no = delivery.attempts + 1
            if error is None:
                self.store.mark_webhook(delivery.id, ok=True)
                log.info("webhook for %s delivered (attempt %d)", delivery.job_id, attempt_no)
            elif attempt_no >= self.max_attempts:
                self.store.mark_webhook(delivery.id, ok=False, error=error)
                log.warning("webhook for %s given up after %d attempts: %s", delivery.job_id, attempt_no, error)
            else:
                retry_at = now + self._delay_after(attempt_no)
                self.store.mark_webhook(delivery.id, ok=False, error=error, next_attempt_at=retry_at)
                log.info("webhook for %s failed (attempt %d): %s", delivery.job_id, attempt_no, error)
        return len(due)

    def start(self, stop_event: threading.Event, interval: float = 0.5) -> None:
        """Deliver in a thread of its own until ``stop_event`` is set: slow receivers (15 s timeouts) must hold up
        nothing else, lease recovery least of all."""
        self._thread = threading.Thread(target=self.run_forever, args=(stop_event, interval), name="webhooks",
                                        daemon=True)
        self._thread.start()

    def join(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def run_forever(self, stop_event: threading.Event, interval: float = 1.0) -> None:
        """Poll until ``stop_event`` is set; errors are logged, never fatal (the outbox keeps the work)."""
        while not stop_event.is_set():
            try:
                busy = self.run_once()
            except StoreUnavailable:  # said once per outage by the store; the next pass retries
                busy = 0
            except Exception:  # e.g. a locked database: the next pass retries
                log.exception("webhook dispatcher pass failed")
                busy = 0
            if not busy:
                stop_event.wait(interval)


def deployment_dispatcher(settings: Settings, store: JobStore, storage: FileStorage,
                          signer: WebhookSigner) -> WebhookDispatcher:
    """The dispatcher a service process runs: posts under the fetch SSRF rules to the address it checked, bodies
    with output URLs rendered for this deployment's public base URL."""
    policy = FetchPolicy.from_settings(settings)
    return WebhookDispatcher(
        store,
        signer,
        http_post=lambda url, body, headers, timeout: safe_post(url, body, headers, timeout, policy),
        max_attempts=settings.webhook_max_attempts,
        render_body=lambda job: job_webhook_body(job, lambda key: storage.url_for(key, settings.base_url)),
    )
