"""The job store's vocabulary and the records it hands out.

Plain data and no database code, so the API, the worker and the webhook dispatcher can import these names
without importing SQLAlchemy's machinery or any backend.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..contract.errors import ErrorType
from ..contract.result import StoredOutput
from ..contract.stored import StoredRequest

__all__ = [
    "CANCELLED_ERROR",
    "LOG_LEVELS",
    "MAX_LOG_MESSAGE_CHARS",
    "PRIORITIES",
    "RELEASED_MESSAGE",
    "REQUEST_TIMEOUT_ERROR",
    "CancelOutcome",
    "Delivery",
    "Job",
    "JobStatus",
    "LeaseLost",
    "LeaseState",
    "LogLine",
    "SchemaTooNew",
    "StoreUnavailable",
    "WORK_TOPIC",
    "WorkerInfo",
    "iso_utc",
    "job_topic",
    "log_topic",
    "topics_to_announce",
    "normalise_level",
    "parse_priority",
]


# --- wake-up topics: what the store announces after a commit (see jobs.wakeups) ---

#: A job became claimable.
WORK_TOPIC = "work"


def job_topic(job_id: str) -> str:
    """The topic published after any change of a job's status or cancel flag."""
    return f"job:{job_id}"


def log_topic(job_id: str) -> str:
    """The topic published after log lines were added to a job. Separate from :func:`job_topic`, so a status
    stream that does not show logs is not woken (and does not read the database) for every line a job writes.
    Whoever follows a job's logs subscribes to its :func:`job_topic` too (and reads both on any wake-up)."""
    return f"logs:{job_id}"


def topics_to_announce(topics: list[str]) -> list[str]:
    """``topics`` once each, in order, without a job's log topic where its status topic is there: that one wakes
    the log followers as well."""
    unique = list(dict.fromkeys(topics))
    present = set(unique)
    return [t for t in unique if not (t.startswith("logs:") and "job:" + t[len("logs:"):] in present)]


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"


#: fal's ``X-Fal-Queue-Priority`` values and how they sort (higher runs first).
PRIORITIES: dict[str, int] = {"low": 0, "normal": 1, "high": 2}
_PRIORITY_NAMES = {v: k for k, v in PRIORITIES.items()}

#: Log levels fal's clients know.
LOG_LEVELS = frozenset({"INFO", "WARN", "ERROR", "DEBUG", "STDOUT", "STDERR"})
_LEVEL_ALIASES = {"WARNING": "WARN", "CRITICAL": "ERROR", "FATAL": "ERROR"}
#: One runaway log line must not bloat every status poll.
MAX_LOG_MESSAGE_CHARS = 8000

REQUEST_TIMEOUT_ERROR = "The request was not started within its X-Fal-Request-Timeout"
CANCELLED_ERROR = "Request cancelled"
RELEASED_MESSAGE = "Worker stopped; the request is back in the queue"


class StoreUnavailable(Exception):
    """The database cannot be reached right now (refused, dropped, restarting). Retry later; the API answers
    503 with Retry-After. The store object stays usable: it reconnects on a later call."""


class LeaseLost(Exception):
    """The worker writing for a job no longer holds its lease (it was taken back and may run elsewhere): the
    write was refused, and the worker must stop its run (fencing)."""


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer photomaker-server than this one; refusing to touch it."""


def parse_priority(value: str | int) -> int:
    """``"low" | "normal" | "high"`` (case-insensitive) or 0..2 → the stored integer; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"invalid priority {value!r}")
    if isinstance(value, int):
        if value in _PRIORITY_NAMES:
            return value
        raise ValueError(f"invalid priority {value!r}")
    try:
        return PRIORITIES[str(value).strip().lower()]
    except KeyError:
        raise ValueError(f"invalid priority {value!r}; expected one of low, normal, high") from None


def normalise_level(level: str) -> str:
    """Any level name → one fal's clients know (unknown ones become INFO)."""
    up = str(level).strip().upper()
    up = _LEVEL_ALIASES.get(up, up)
    return up if up in LOG_LEVELS else "INFO"


def iso_utc(ts: float) -> str:
    """Epoch seconds → ISO-8601 in UTC with an explicit offset (what fal's log timestamps look like)."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


class CancelOutcome(enum.Enum):
    NOT_FOUND = "not_found"
    #: It was queued: it is now completed with ``client_cancelled`` and left the queue.
    REMOVED = "removed"
    #: It is running: the flag is set and the worker stops at its next step.
    REQUESTED = "requested"
    ALREADY_COMPLETED = "already_completed"


@dataclass(frozen=True)
class Job:
    id: str
    owner: str
    app: str
    #: The request as validated at submit. None where it was deliberately not loaded (``get(..., with_input=False)``,
    #: ``cleanup``): no status poll needs it.
    input: StoredRequest | None
    status: JobStatus
    priority: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    start_deadline: float | None
    attempts: int
    max_attempts: int
    lease_owner: str | None
    lease_expires_at: float | None
    cancel_requested: bool
    #: What the worker stored (None until it completed without error).
    result: StoredOutput | None
    error: str | None
    #: Why it failed (with ``error``), from the one vocabulary of error types.
    error_type: ErrorType | None
    inference_time: float | None
    webhook_url: str | None
    #: Set by ``submit`` only: how many queued jobs were ahead of it when it was queued (what fal's submit answer
    #: reports). None on records read later; ``JobStore.queue_position`` tells the position now.
    queue_position: int | None = None

    @property
    def priority_name(self) -> str:
        return _PRIORITY_NAMES.get(self.priority, str(self.priority))

    @property
    def is_finished(self) -> bool:
        return self.status == JobStatus.COMPLETED

    @property
    def succeeded(self) -> bool:
        return self.is_finished and self.error is None


@dataclass(frozen=True)
class LogLine:
    id: int
    ts: float
    level: str
    message: str

    def to_fal(self) -> dict[str, str]:
        """The log entry shape fal's clients expect in ``logs``."""
        return {"message": self.message, "level": self.level, "source": "USER", "timestamp": iso_utc(self.ts)}


@dataclass(frozen=True)
class LeaseState:
    """Answer to a lease renewal: keep going only while ``held``; stop early when ``cancel_requested``."""

    held: bool
    cancel_requested: bool


@dataclass(frozen=True)
class Delivery:
    """One webhook in the outbox. The body is not stored: the dispatcher renders it from the job when it posts
    (the job is immutable once completed, so every attempt sends the same bytes)."""

    id: int
    job_id: str
    owner: str
    url: str
    attempts: int
    next_attempt_at: float
    delivered_at: float | None
    last_error: str | None
    given_up: bool


@dataclass
class WorkerInfo:
    """A worker's heartbeat in the shared registry: what ``/ready``, ``/health`` and ``/metrics`` report.

    ``stats`` holds the worker's counters (``steps_total``, ``step_seconds_sum``, ``inference_count``,
    ``inference_seconds_sum``, ``inference_buckets``, ``id_cache_hits``, ``id_cache_misses``); the store keeps
    it as opaque JSON so new counters need no migration. ``heartbeat_at`` is set by the store's clock.
    """

    id: str
    host: str
    pid: int
    device: str = ""
    state: str = "starting"
    detail: str = ""
    demo_model: bool = False
    loaded_bases: list[str] = field(default_factory=list)
    current_job: str | None = None
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
