"""The :class:`JobStore` protocol: everything the API, the worker, the housekeeper and the webhook dispatcher
rely on. Consumers are typed against this, never against a backend, so the backend is chosen in one place
(:func:`photomaker_server.jobs.factory.open_job_store`).

Times are float epoch seconds from the store's clock. Every method raises
:class:`~photomaker_server.jobs.records.StoreUnavailable` when the database cannot be reached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from typing import Protocol

from ..contract.errors import ErrorType
from ..contract.result import StoredOutput
from ..contract.stored import StoredRequest
from ..limits import StorageQuota, StorageUsage
from .health import DatabaseHealth
from .keys import ApiKey, KeyLimits, KeyUsage
from .records import CancelOutcome, Delivery, Job, LeaseState, LogLine, WorkerInfo

__all__ = ["JobStore"]


class JobStore(Protocol):
    # -- requests --
    def submit(
        self,
        owner: str,
        app: str,
        input: StoredRequest,
        *,
        priority: str | int = "normal",
        start_deadline: float | None = None,
        webhook_url: str | None = None,
        max_attempts: int = 3,
        max_queued_total: int | None = None,
    ) -> Job:
        """The queued job, its ``queue_position`` counted as it was queued. Raises ``KeyRevoked``,
        ``LimitExceeded`` (the owner's key limits) or ``QueueFull`` (``max_queued_total``), checked in the same
        transaction; nothing is stored then."""
        ...

    def get(self, job_id: str, owner: str | None = None, *, with_input: bool = True) -> Job | None: ...

    def queue_position(self, job: Job) -> int: ...

    def request_cancel(self, job_id: str, owner: str | None) -> CancelOutcome: ...

    def append_log(self, job_id: str, message: str, level: str = "INFO") -> LogLine: ...

    def append_logs(
        self, job_id: str, lines: list[tuple[str, str]], *, held_by: str | None = None
    ) -> list[LogLine]: ...

    def logs(self, job_id: str, after_id: int = 0) -> list[LogLine]: ...

    # -- the worker side --
    def has_work(self) -> bool: ...

    def claim(self, worker_id: str, lease_seconds: float) -> Job | None: ...

    def renew_lease(self, job_id: str, worker_id: str, lease_seconds: float) -> LeaseState: ...

    def complete(
        self,
        job_id: str,
        worker_id: str,
        result: StoredOutput,
        inference_time: float | None = None,
        last_log: str | None = None,
        logs: Sequence[tuple[str, str]] = (),
    ) -> bool: ...

    def fail(self, job_id: str, worker_id: str, error: str, error_type: ErrorType) -> bool: ...

    def release(self, job_id: str, worker_id: str) -> bool: ...

    # -- housekeeping and metrics --
    def expire_deadlines(self) -> list[str]: ...

    def requeue_expired_leases(self, grace_s: float = 0.0) -> list[str]:
        """``grace_s``: judge no lease before the database has been reachable from this process that long."""
        ...

    def cleanup(self, older_than_seconds: float) -> list[Job]: ...

    def counts(self) -> dict[str, int]: ...

    def outcomes(self) -> dict[str, int]: ...

    def now(self) -> float: ...

    # -- keys (jobs/keys.py) --
    def create_key(self, name: str, secret: str, limits: KeyLimits = ..., *, admin: bool = False) -> ApiKey: ...

    def key(self, name: str) -> ApiKey: ...

    def list_keys(self) -> list[ApiKey]: ...

    def revoke_key(self, name: str) -> ApiKey: ...

    def set_key_limits(self, name: str, changes: dict[str, int | None]) -> ApiKey: ...

    def register_configured_keys(self, secrets: list[str]) -> dict[str, str]: ...

    def usage(self, since: date | None = None) -> list[KeyUsage]: ...

    def key_load(self) -> dict[str, dict[str, int]]: ...

    # -- webhook outbox --
    def due_webhooks(
        self, now: float | None = None, limit: int = 20, lease_seconds: float = 120.0
    ) -> list[Delivery]: ...

    def mark_webhook(
        self, delivery_id: int, ok: bool, error: str | None = None, next_attempt_at: float | None = None
    ) -> None: ...

    def webhook_deliveries(self, job_id: str) -> list[Delivery]: ...

    # -- the cluster: worker registry and shared secrets --
    def heartbeat(self, info: WorkerInfo) -> None: ...

    def remove_worker(self, worker_id: str) -> None: ...

    def workers(self, max_age_s: float | None = 15.0) -> list[WorkerInfo]: ...

    def forget_lost_workers(self, stale_after_s: float, grace_s: float = 0.0) -> list[WorkerInfo]:
        """Remove (and count) registry rows silent for ``stale_after_s``: workers that died without a goodbye."""
        ...

    # -- faults and reachability --
    #: This process's view of the database: reachable or not, since when, reconnects (``jobs.health``).
    health: DatabaseHealth

    def ping(self) -> None:
        """One round trip; StoreUnavailable while the database cannot be reached."""
        ...

    def ops_counts(self) -> dict[str, int]:
        """Cluster-wide fault counters: ``lease_expiries``, ``jobs_rerun``, ``workers_lost`` (absent: 0)."""
        ...

    def shared_secret(self, name: str, create: Callable[[], bytes]) -> bytes: ...

    # -- stored files per key (storage quotas) and one-time tokens: see sql/quota.py --
    def charge_files(self, owner: str, sizes: Sequence[int], quota: StorageQuota, ttl_s: float, *,
                     keys: Sequence[str | None] | None = None, pending: bool = False,
                     unpacked: Sequence[int | None] | None = None) -> list[int]: ...

    def settle_file(self, file_id: int, key: str) -> None: ...

    def drop_files(self, file_ids: Sequence[int]) -> None: ...

    def charge_upload(self, key: str, size: int, quota_for: Callable[[str], StorageQuota],
                      ttl_s: float, unpacked: int | None = None) -> int | None: ...

    def uncharge_upload(self, file_id: int, pending_ttl_s: float) -> None: ...

    def declared_unpacked(self, keys: Sequence[str]) -> dict[str, int | None]: ...

    def storage_usage(self, owner: str | None = None) -> list[StorageUsage]: ...

    def expire_stored_files(self) -> int: ...

    def use_token_once(self, nonce: str, expires_at: float) -> bool: ...

    def close(self) -> None: ...
