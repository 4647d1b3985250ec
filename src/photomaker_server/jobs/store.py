"""The job store: a durable queue of requests shared by the API process and the worker process.

Why a database and not an in-memory queue: the API server and the (separately spawned, crash-prone) worker
process share nothing but the data directory, requests must survive restarts, and fal's clients keep polling a
request long after it finished. SQLite in WAL mode gives concurrent readers and one writer at a time across
processes, which is exactly the load of one GPU worker plus an API server.

Design rules that keep a PostgreSQL implementation within reach:

* SQLAlchemy Core with portable SQL only; JSON is stored as TEXT we encode ourselves, times are float epoch
  seconds (UTC by definition) read from an injectable ``clock``.
* Everything SQLite-specific lives in :class:`_SQLiteBackend`: the PRAGMAs, and ``BEGIN IMMEDIATE`` for every
  read-modify-write transaction. Taking the write lock up front is what makes :meth:`SQLJobStore.claim`
  atomic across processes (a deferred transaction that reads and then writes can fail to upgrade its lock).
  PostgreSQL would get the same guarantee from the ``FOR UPDATE SKIP LOCKED`` already on the claim query
  (SQLite ignores that clause) and a ``SEQUENCE`` instead of ``max(seq) + 1``.
* Every state change is a guarded ``UPDATE ... WHERE status = ...`` whose row count is checked, so a lost race
  is detected rather than silently overwriting another process's work.

Lifecycle of a job: ``queued`` → ``running`` (claimed with a lease the worker keeps renewing) → ``completed``.
Failures and cancellations are ``completed`` with ``error``/``error_type``, as fal reports them. A running job
whose lease expires (the worker died) goes back to ``queued`` until ``max_attempts`` is used up.
"""

from __future__ import annotations

import enum
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from photomaker_server.jobs.webhooks import job_webhook_body

__all__ = [
    "CANCELLED_ERROR",
    "PRIORITIES",
    "REQUEST_TIMEOUT_ERROR",
    "CancelOutcome",
    "Delivery",
    "Job",
    "JobStatus",
    "JobStore",
    "LeaseState",
    "LogLine",
    "SQLJobStore",
    "parse_priority",
]


# --- vocabulary -------------------------------------------------------------------------------------------------


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
ERROR_TYPE_REQUEST_TIMEOUT = "request_timeout"
ERROR_TYPE_CANCELLED = "client_cancelled"
ERROR_TYPE_RUNNER = "runner_server_error"


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


# --- the records handed out -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    id: str
    owner: str
    app: str
    #: The request body. None where it was deliberately not loaded (``get(..., with_input=False)``, ``cleanup``):
    #: inputs may carry megabytes of data URIs, and status polls must not parse them every time.
    input: dict[str, Any] | None
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
    result: dict[str, Any] | None
    error: str | None
    error_type: str | None
    inference_time: float | None
    webhook_url: str | None

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
    """One webhook in the outbox. ``body`` is the exact JSON text to POST (it is what gets signed)."""

    id: int
    job_id: str
    owner: str
    url: str
    body: str
    attempts: int
    next_attempt_at: float
    delivered_at: float | None
    last_error: str | None
    given_up: bool


# --- the protocol -----------------------------------------------------------------------------------------------


class JobStore(Protocol):
    """What the API, the worker and the webhook dispatcher rely on. Times are float epoch seconds."""

    def submit(
        self,
        owner: str,
        app: str,
        input: dict[str, Any],
        *,
        priority: str | int = "normal",
        start_deadline: float | None = None,
        webhook_url: str | None = None,
        max_attempts: int = 3,
    ) -> Job: ...

    def get(self, job_id: str, owner: str | None = None, *, with_input: bool = True) -> Job | None: ...

    def queue_position(self, job: Job) -> int: ...

    def has_work(self) -> bool: ...

    def claim(self, worker_id: str, lease_seconds: float) -> Job | None: ...

    def renew_lease(self, job_id: str, worker_id: str, lease_seconds: float) -> LeaseState: ...

    def release(self, job_id: str, worker_id: str) -> bool: ...

    def expire_deadlines(self) -> list[str]: ...

    def requeue_expired_leases(self) -> list[str]: ...

    def append_log(self, job_id: str, message: str, level: str = "INFO") -> LogLine: ...

    def logs(self, job_id: str, after_id: int = 0) -> list[LogLine]: ...

    def complete(
        self,
        job_id: str,
        worker_id: str,
        result: dict[str, Any],
        inference_time: float | None = None,
        *,
        webhook_body: str | None = None,
    ) -> bool: ...

    def fail(
        self, job_id: str, worker_id: str, error: str, error_type: str, *, webhook_body: str | None = None
    ) -> bool: ...

    def request_cancel(self, job_id: str, owner: str | None) -> CancelOutcome: ...

    def cleanup(self, older_than_seconds: float) -> list[Job]: ...

    def counts(self) -> dict[str, int]: ...

    def outcomes(self) -> dict[str, int]: ...

    def due_webhooks(
        self, now: float | None = None, limit: int = 20, lease_seconds: float = 120.0
    ) -> list[Delivery]: ...

    def mark_webhook(
        self, delivery_id: int, ok: bool, error: str | None = None, next_attempt_at: float | None = None
    ) -> None: ...

    def webhook_deliveries(self, job_id: str) -> list[Delivery]: ...

    def close(self) -> None: ...


# --- schema -----------------------------------------------------------------------------------------------------

metadata = sa.MetaData()

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    # Submission order. created_at alone ties when the clock does (coarse clocks, tests); seq never does.
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("app", sa.Text, nullable=False),
    sa.Column("input", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("started_at", sa.Double),
    sa.Column("finished_at", sa.Double),
    sa.Column("start_deadline", sa.Double),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_expires_at", sa.Double),
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("result", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("error_type", sa.Text),
    sa.Column("inference_time", sa.Double),
    sa.Column("webhook_url", sa.Text),
)
sa.Index("ix_jobs_queue", jobs.c.status, jobs.c.priority.desc(), jobs.c.created_at, jobs.c.seq)
sa.Index("ix_jobs_finished", jobs.c.status, jobs.c.finished_at)
sa.Index("ix_jobs_owner", jobs.c.owner)

job_logs = sa.Table(
    "job_logs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("ts", sa.Double, nullable=False),
    sa.Column("level", sa.String(8), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
)
sa.Index("ix_job_logs_job", job_logs.c.job_id, job_logs.c.id)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    # The signature names the user; copied here so a delivery never needs its job row.
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", sa.Double, nullable=False),
    sa.Column("delivered_at", sa.Double),
    sa.Column("last_error", sa.Text),
    sa.Column("given_up", sa.Boolean, nullable=False),
)
sa.Index(
    "ix_webhook_due",
    webhook_deliveries.c.delivered_at,
    webhook_deliveries.c.given_up,
    webhook_deliveries.c.next_attempt_at,
)
sa.Index("ix_webhook_job", webhook_deliveries.c.job_id)

#: Every job column but the input (see ``Job.input``).
_WITHOUT_INPUT = [c for c in jobs.c if c.name != "input"]

#: Queue order: priority first, then first come first served.
_QUEUE_ORDER = (jobs.c.priority.desc(), jobs.c.created_at, jobs.c.seq, jobs.c.id)


# --- the SQLite specifics ---------------------------------------------------------------------------------------

#: Execution option marking a connection whose transaction will write (→ ``BEGIN IMMEDIATE`` on SQLite).
_WRITE_OPTION = "photomaker_write"


class _SQLiteBackend:
    """Engine construction for SQLite: PRAGMAs on every connection and explicit BEGIN modes.

    pysqlite's own implicit transaction handling is switched off (``isolation_level = None``) so that the
    ``begin`` event decides how a transaction starts: ``BEGIN IMMEDIATE`` for writers, a plain deferred
    ``BEGIN`` (a consistent WAL snapshot, no lock) for readers.
    """

    def __init__(self, busy_timeout_s: float = 30.0) -> None:
        self.busy_timeout_s = busy_timeout_s

    def create_engine(self, url: sa.URL) -> Engine:
        memory = url.database in (None, "", ":memory:")
        kwargs: dict[str, Any] = {
            "connect_args": {"check_same_thread": False, "timeout": self.busy_timeout_s},
        }
        if memory:
            # One shared connection, or every checkout would see its own empty database.
            kwargs["poolclass"] = StaticPool
        engine = sa.create_engine(url, **kwargs)
        event.listen(engine, "connect", self._on_connect)
        event.listen(engine, "begin", self._on_begin)
        return engine

    def _on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL itself needs a lock another process may hold.
            cursor.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL: durable across process crashes; only an OS crash may lose the last commits.
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @staticmethod
    def _on_begin(conn: Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get(_WRITE_OPTION) else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")


def _to_url(url_or_path: str | Path) -> sa.URL:
    if isinstance(url_or_path, str) and "://" in url_or_path:
        return sa.make_url(url_or_path)
    if str(url_or_path) == ":memory:":
        return sa.URL.create("sqlite")
    path = Path(url_or_path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return sa.URL.create("sqlite", database=str(path))


# --- the implementation -----------------------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _job(row: sa.Row[Any]) -> Job:
    m = row._mapping
    return Job(
        id=m["id"],
        owner=m["owner"],
        app=m["app"],
        input=json.loads(m["input"]) if "input" in m else None,
        status=JobStatus(m["status"]),
        priority=m["priority"],
        created_at=m["created_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        start_deadline=m["start_deadline"],
        attempts=m["attempts"],
        max_attempts=m["max_attempts"],
        lease_owner=m["lease_owner"],
        lease_expires_at=m["lease_expires_at"],
        cancel_requested=bool(m["cancel_requested"]),
        result=None if m["result"] is None else json.loads(m["result"]),
        error=m["error"],
        error_type=m["error_type"],
        inference_time=m["inference_time"],
        webhook_url=m["webhook_url"],
    )


def _delivery(row: sa.Row[Any]) -> Delivery:
    m = row._mapping
    return Delivery(
        id=m["id"],
        job_id=m["job_id"],
        owner=m["owner"],
        url=m["url"],
        body=m["body"],
        attempts=m["attempts"],
        next_attempt_at=m["next_attempt_at"],
        delivered_at=m["delivered_at"],
        last_error=m["last_error"],
        given_up=bool(m["given_up"]),
    )


def _log_line(row: sa.Row[Any]) -> LogLine:
    m = row._mapping
    return LogLine(id=m["id"], ts=m["ts"], level=m["level"], message=m["message"])


def _chunks(items: list[str], size: int = 500) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _normalise_level(level: str) -> str:
    up = str(level).strip().upper()
    up = _LEVEL_ALIASES.get(up, up)
    return up if up in LOG_LEVELS else "INFO"


class SQLJobStore:
    """:class:`JobStore` on SQLAlchemy Core. Open one per process; it is safe to share between threads.

    ``url_or_path``: a filesystem path (the usual ``data_dir/jobs.db``), ``":memory:"`` (single-process tests),
    or a ``sqlite://`` URL. ``webhook_body`` builds the webhook JSON for a finished job that asked for one;
    the default is fal's shape (:func:`photomaker_server.jobs.webhooks.job_webhook_body`).
    """

    def __init__(
        self,
        url_or_path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        webhook_body: Callable[[Job], str | bytes] = job_webhook_body,
        busy_timeout_s: float = 30.0,
    ) -> None:
        url = _to_url(url_or_path)
        if url.get_backend_name() != "sqlite":
            raise ValueError(f"unsupported database {url.get_backend_name()!r}: only SQLite is implemented")
        self._engine = _SQLiteBackend(busy_timeout_s).create_engine(url)
        self._clock = clock
        self._webhook_body = webhook_body
        with self._write() as conn:  # serialised, so processes opening a fresh file together don't race
            metadata.create_all(conn)

    # -- plumbing --

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A transaction that holds the database write lock from its first statement."""
        with self._engine.connect() as conn:
            conn.execution_options(**{_WRITE_OPTION: True})
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only snapshot (rolled back on exit)."""
        with self._engine.connect() as conn:
            yield conn

    def now(self) -> float:
        """The store's clock (tests inject a fake one)."""
        return self._clock()

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> SQLJobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _fetch_job(conn: Connection, job_id: str, with_input: bool = True) -> Job | None:
        query = sa.select(jobs) if with_input else sa.select(*_WITHOUT_INPUT)
        row = conn.execute(query.where(jobs.c.id == job_id)).first()
        return None if row is None else _job(row)

    @staticmethod
    def _insert_log(conn: Connection, job_id: str, message: str, level: str, ts: float) -> LogLine:
        message = str(message)
        if len(message) > MAX_LOG_MESSAGE_CHARS:
            message = message[: MAX_LOG_MESSAGE_CHARS - 1] + "…"
        level = _normalise_level(level)
        res = conn.execute(job_logs.insert().values(job_id=job_id, ts=ts, level=level, message=message))
        return LogLine(id=int(res.inserted_primary_key[0]), ts=ts, level=level, message=message)

    def _finish(
        self,
        conn: Connection,
        job_id: str,
        now: float,
        *,
        guard: sa.ColumnElement[bool],
        result: dict[str, Any] | None = None,
        error: str | None = None,
        error_type: str | None = None,
        inference_time: float | None = None,
        webhook_body: str | None = None,
    ) -> bool:
        """Move a job to ``completed`` if ``guard`` still holds, and queue its webhook. False: lost the race."""
        res = conn.execute(
            sa.update(jobs)
            .where(jobs.c.id == job_id, guard)
            .values(
                status=JobStatus.COMPLETED.value,
                finished_at=now,
                result=None if result is None else _dumps(result),
                error=error,
                error_type=error_type,
                inference_time=inference_time,
                lease_owner=None,
                lease_expires_at=None,
            )
        )
        if res.rowcount != 1:
            return False
        job = self._fetch_job(conn, job_id, with_input=False)
        assert job is not None
        if job.webhook_url:
            body = webhook_body if webhook_body is not None else self._webhook_body(job)
            if isinstance(body, bytes):
                body = body.decode("utf-8")
            conn.execute(
                webhook_deliveries.insert().values(
                    job_id=job.id,
                    owner=job.owner,
                    url=job.webhook_url,
                    body=body,
                    attempts=0,
                    next_attempt_at=now,
                    given_up=False,
                )
            )
        return True

    # -- submit & read --

    def submit(
        self,
        owner: str,
        app: str,
        input: dict[str, Any],
        *,
        priority: str | int = "normal",
        start_deadline: float | None = None,
        webhook_url: str | None = None,
        max_attempts: int = 3,
    ) -> Job:
        """Queue a request. ``start_deadline`` is absolute epoch seconds (now + X-Fal-Request-Timeout)."""
        prio = parse_priority(priority)
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        now = self._clock()
        job_id = str(uuid.uuid4())
        with self._write() as conn:
            seq = conn.execute(sa.select(sa.func.coalesce(sa.func.max(jobs.c.seq), 0) + 1)).scalar_one()
            conn.execute(
                jobs.insert().values(
                    id=job_id,
                    seq=seq,
                    owner=owner,
                    app=app,
                    input=_dumps(input),
                    status=JobStatus.QUEUED.value,
                    priority=prio,
                    created_at=now,
                    start_deadline=start_deadline,
                    attempts=0,
                    max_attempts=max_attempts,
                    cancel_requested=False,
                    webhook_url=webhook_url or None,
                )
            )
            self._insert_log(conn, job_id, "Request queued", "INFO", now)
            job = self._fetch_job(conn, job_id)
        assert job is not None
        return job

    def get(self, job_id: str, owner: str | None = None, *, with_input: bool = True) -> Job | None:
        """The job, or None when it does not exist or (``owner`` given) belongs to someone else.

        ``with_input=False`` skips the (possibly large) input; status endpoints should use it.
        """
        query = (sa.select(jobs) if with_input else sa.select(*_WITHOUT_INPUT)).where(jobs.c.id == job_id)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self._read() as conn:
            row = conn.execute(query).first()
        return None if row is None else _job(row)

    def queue_position(self, job: Job) -> int:
        """How many queued jobs run before ``job`` (0: it is next). 0 for a job that is not queued.

        Queued jobs whose start deadline already passed are not counted: they will never run.
        """
        if job.status != JobStatus.QUEUED:
            return 0
        now = self._clock()
        c = jobs.c
        with self._read() as conn:
            seq = conn.execute(sa.select(c.seq).where(c.id == job.id)).scalar()
            if seq is None:
                return 0
            ahead = sa.or_(
                c.priority > job.priority,
                sa.and_(
                    c.priority == job.priority,
                    sa.or_(c.created_at < job.created_at, sa.and_(c.created_at == job.created_at, c.seq < seq)),
                ),
            )
            alive = sa.or_(c.start_deadline.is_(None), c.start_deadline >= now, c.attempts > 0)
            query = sa.select(sa.func.count()).select_from(jobs).where(c.status == JobStatus.QUEUED.value, ahead, alive)
            return int(conn.execute(query).scalar_one())

    # -- the worker side --

    def has_work(self) -> bool:
        """Whether :meth:`claim` could find anything: a queued job, or a running one whose lease has expired.

        A read, so an idle worker can look often without taking the database's write lock each time (which
        :meth:`claim` must, and which the API needs for every submit)."""
        now = self._clock()
        with self._read() as conn:
            found = conn.execute(
                sa.select(jobs.c.id)
                .where(
                    sa.or_(
                        jobs.c.status == JobStatus.QUEUED.value,
                        sa.and_(jobs.c.status == JobStatus.RUNNING.value, jobs.c.lease_expires_at < now),
                    )
                )
                .limit(1)
            ).first()
        return found is not None

    def claim(self, worker_id: str, lease_seconds: float) -> Job | None:
        """Atomically take the next runnable job (highest priority, oldest first) and lease it to ``worker_id``.

        Housekeeping runs in the same transaction first, so a lone worker needs no separate janitor: queued
        jobs past their start deadline fail with ``request_timeout``, and jobs of a worker that died (lease
        expired) are requeued or given up.
        """
        now = self._clock()
        with self._write() as conn:
            self._expire_deadlines(conn, now)
            self._requeue_expired(conn, now)
            while True:
                candidate = conn.execute(
                    sa.select(jobs.c.id)
                    .where(jobs.c.status == JobStatus.QUEUED.value)
                    .order_by(*_QUEUE_ORDER)
                    .limit(1)
                    .with_for_update(skip_locked=True)  # PostgreSQL; SQLite relies on BEGIN IMMEDIATE
                ).scalar()
                if candidate is None:
                    return None
                res = conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.id == candidate, jobs.c.status == JobStatus.QUEUED.value)
                    .values(
                        status=JobStatus.RUNNING.value,
                        attempts=jobs.c.attempts + 1,
                        started_at=now,
                        lease_owner=worker_id,
                        lease_expires_at=now + lease_seconds,
                    )
                )
                if res.rowcount == 1:
                    return self._fetch_job(conn, candidate)

    def renew_lease(self, job_id: str, worker_id: str, lease_seconds: float) -> LeaseState:
        """Extend the lease while the worker still holds it; also tells it whether to stop (cancel)."""
        now = self._clock()
        with self._write() as conn:
            res = conn.execute(
                sa.update(jobs)
                .where(
                    jobs.c.id == job_id,
                    jobs.c.status == JobStatus.RUNNING.value,
                    jobs.c.lease_owner == worker_id,
                )
                .values(lease_expires_at=now + lease_seconds)
            )
            cancel = conn.execute(sa.select(jobs.c.cancel_requested).where(jobs.c.id == job_id)).scalar()
        return LeaseState(held=res.rowcount == 1, cancel_requested=bool(cancel))

    def complete(
        self,
        job_id: str,
        worker_id: str,
        result: dict[str, Any],
        inference_time: float | None = None,
        *,
        webhook_body: str | None = None,
    ) -> bool:
        """Record success. False (and nothing changes) when ``worker_id`` no longer holds the lease."""
        now = self._clock()
        with self._write() as conn:
            return self._finish(
                conn,
                job_id,
                now,
                guard=self._held_by(worker_id),
                result=result,
                inference_time=inference_time,
                webhook_body=webhook_body,
            )

    def fail(
        self, job_id: str, worker_id: str, error: str, error_type: str, *, webhook_body: str | None = None
    ) -> bool:
        """Record failure (or a cancellation the worker acted on: ``CANCELLED_ERROR``/``client_cancelled``)."""
        now = self._clock()
        with self._write() as conn:
            return self._finish(
                conn,
                job_id,
                now,
                guard=self._held_by(worker_id),
                error=error,
                error_type=error_type,
                webhook_body=webhook_body,
            )

    def release(self, job_id: str, worker_id: str) -> bool:
        """Hand a running job back to the queue at once: a worker that is shutting down gives up its job.

        Unlike a lease running out (a crash), the attempt is not counted: the job did not fail, its worker was
        stopped on purpose, so it keeps all of its ``max_attempts``. It goes back in its old place in the queue
        (priority, then submit time). False (and nothing changes) when ``worker_id`` no longer holds the lease.
        """
        now = self._clock()
        with self._write() as conn:
            res = conn.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, self._held_by(worker_id))
                .values(
                    status=JobStatus.QUEUED.value,
                    attempts=jobs.c.attempts - 1,  # claim counted it; a running job has attempts >= 1
                    started_at=None,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            if res.rowcount != 1:
                return False
            self._insert_log(conn, job_id, "Worker stopped; the request is back in the queue", "WARN", now)
            return True

    @staticmethod
    def _held_by(worker_id: str) -> sa.ColumnElement[bool]:
        return sa.and_(jobs.c.status == JobStatus.RUNNING.value, jobs.c.lease_owner == worker_id)

    # -- housekeeping --

    def expire_deadlines(self) -> list[str]:
        """Fail queued jobs that were not started before their deadline; returns their ids."""
        now = self._clock()
        with self._write() as conn:
            return self._expire_deadlines(conn, now)

    def _expire_deadlines(self, conn: Connection, now: float) -> list[str]:
        # attempts > 0: it did start once (then was requeued) — the deadline is about starting.
        guard = sa.and_(
            jobs.c.status == JobStatus.QUEUED.value,
            jobs.c.start_deadline.is_not(None),
            jobs.c.start_deadline < now,
            jobs.c.attempts == 0,
        )
        ids = list(conn.execute(sa.select(jobs.c.id).where(guard)).scalars())
        expired = []
        for job_id in ids:
            if self._finish(
                conn, job_id, now, guard=guard, error=REQUEST_TIMEOUT_ERROR, error_type=ERROR_TYPE_REQUEST_TIMEOUT
            ):
                self._insert_log(conn, job_id, REQUEST_TIMEOUT_ERROR, "ERROR", now)
                expired.append(job_id)
        return expired

    def requeue_expired_leases(self) -> list[str]:
        """Recover jobs whose worker died: back to the queue, or give up after ``max_attempts``.

        Returns the ids of every job touched. A job whose cancellation was requested is completed as
        cancelled instead of running again.
        """
        now = self._clock()
        with self._write() as conn:
            return self._requeue_expired(conn, now)

    def _requeue_expired(self, conn: Connection, now: float) -> list[str]:
        guard = sa.and_(jobs.c.status == JobStatus.RUNNING.value, jobs.c.lease_expires_at < now)
        rows = conn.execute(
            sa.select(jobs.c.id, jobs.c.attempts, jobs.c.max_attempts, jobs.c.cancel_requested).where(guard)
        ).all()
        touched = []
        for job_id, attempts, max_attempts, cancel_requested in rows:
            if cancel_requested:
                if self._finish(conn, job_id, now, guard=guard, error=CANCELLED_ERROR, error_type=ERROR_TYPE_CANCELLED):
                    self._insert_log(conn, job_id, CANCELLED_ERROR, "WARN", now)
                    touched.append(job_id)
            elif attempts >= max_attempts:
                message = f"The request failed {attempts} times (the worker stopped while running it)"
                if self._finish(conn, job_id, now, guard=guard, error=message, error_type=ERROR_TYPE_RUNNER):
                    self._insert_log(conn, job_id, message, "ERROR", now)
                    touched.append(job_id)
            else:
                res = conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.id == job_id, guard)
                    .values(status=JobStatus.QUEUED.value, lease_owner=None, lease_expires_at=None)
                )
                if res.rowcount == 1:
                    message = f"Worker lost; retrying (attempt {attempts + 1} of {max_attempts})"
                    self._insert_log(conn, job_id, message, "WARN", now)
                    touched.append(job_id)
        return touched

    def cleanup(self, older_than_seconds: float) -> list[Job]:
        """Delete completed jobs that finished more than ``older_than_seconds`` ago, with their logs and
        webhook rows. Returns them (without ``input``) so the caller can delete their output files."""
        cutoff = self._clock() - older_than_seconds
        with self._write() as conn:
            rows = conn.execute(
                sa.select(*_WITHOUT_INPUT).where(
                    jobs.c.status == JobStatus.COMPLETED.value, jobs.c.finished_at < cutoff
                )
            ).all()
            removed = [_job(r) for r in rows]
            for chunk in _chunks([j.id for j in removed]):
                conn.execute(sa.delete(job_logs).where(job_logs.c.job_id.in_(chunk)))
                conn.execute(sa.delete(webhook_deliveries).where(webhook_deliveries.c.job_id.in_(chunk)))
                conn.execute(sa.delete(jobs).where(jobs.c.id.in_(chunk)))
        return removed

    # -- logs --

    def append_log(self, job_id: str, message: str, level: str = "INFO") -> LogLine:
        """Add a log line (levels: INFO WARN ERROR DEBUG STDOUT STDERR). KeyError for an unknown job."""
        now = self._clock()
        with self._write() as conn:
            exists = conn.execute(sa.select(jobs.c.id).where(jobs.c.id == job_id)).scalar()
            if exists is None:
                raise KeyError(job_id)
            return self._insert_log(conn, job_id, message, level, now)

    def logs(self, job_id: str, after_id: int = 0) -> list[LogLine]:
        """Log lines in order; ``after_id`` returns only newer ones (what an SSE stream sends next)."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(job_logs).where(job_logs.c.job_id == job_id, job_logs.c.id > after_id).order_by(job_logs.c.id)
            ).all()
        return [_log_line(r) for r in rows]

    # -- cancellation --

    def request_cancel(self, job_id: str, owner: str | None) -> CancelOutcome:
        """Cancel on behalf of ``owner`` (None: any owner, for operators). See :class:`CancelOutcome`."""
        now = self._clock()
        with self._write() as conn:
            query = sa.select(jobs.c.status).where(jobs.c.id == job_id)
            if owner is not None:
                query = query.where(jobs.c.owner == owner)
            status = conn.execute(query).scalar()
            if status is None:
                return CancelOutcome.NOT_FOUND
            if status == JobStatus.COMPLETED.value:
                return CancelOutcome.ALREADY_COMPLETED
            if status == JobStatus.QUEUED.value:
                queued = jobs.c.status == JobStatus.QUEUED.value
                if self._finish(
                    conn, job_id, now, guard=queued, error=CANCELLED_ERROR, error_type=ERROR_TYPE_CANCELLED
                ):
                    self._insert_log(conn, job_id, CANCELLED_ERROR, "WARN", now)
                    return CancelOutcome.REMOVED
                return CancelOutcome.ALREADY_COMPLETED  # unreachable under the write lock; kept for PostgreSQL
            res = conn.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.cancel_requested.is_(False))
                .values(cancel_requested=True)
            )
            if res.rowcount == 1:  # log it once, however often the client asks
                self._insert_log(conn, job_id, "Cancellation requested", "WARN", now)
            return CancelOutcome.REQUESTED

    # -- metrics --

    def counts(self) -> dict[str, int]:
        """Jobs per status (every status present, zero-filled); ``counts()["queued"]`` is the queue depth."""
        with self._read() as conn:
            rows = conn.execute(sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)).all()
        out = {s.value: 0 for s in JobStatus}
        out.update({status: int(n) for status, n in rows})
        return out

    def outcomes(self) -> dict[str, int]:
        """Completed jobs still stored, by outcome: ``ok``, ``error``, ``cancelled``.

        These shrink when :meth:`cleanup` runs, so export them as gauges, not counters.
        """
        kind = sa.case(
            (jobs.c.error.is_(None), "ok"),
            (jobs.c.error_type == ERROR_TYPE_CANCELLED, "cancelled"),
            else_="error",
        )
        with self._read() as conn:
            rows = conn.execute(
                sa.select(kind, sa.func.count()).where(jobs.c.status == JobStatus.COMPLETED.value).group_by(kind)
            ).all()
        out = {"ok": 0, "error": 0, "cancelled": 0}
        out.update({k: int(n) for k, n in rows})
        return out

    # -- webhook outbox --

    def due_webhooks(self, now: float | None = None, limit: int = 20, lease_seconds: float = 120.0) -> list[Delivery]:
        """Take up to ``limit`` deliveries that are due, oldest first.

        Taking them pushes their ``next_attempt_at`` ``lease_seconds`` ahead in the same transaction, so two
        dispatchers (say, one per process) never post the same delivery at once, and a dispatcher that dies
        mid-delivery has its rows picked up again later. The returned rows carry the values as taken.
        """
        now = self._clock() if now is None else now
        d = webhook_deliveries.c
        with self._write() as conn:
            rows = conn.execute(
                sa.select(webhook_deliveries)
                .where(d.delivered_at.is_(None), d.given_up.is_(False), d.next_attempt_at <= now)
                .order_by(d.next_attempt_at, d.id)
                .limit(limit)
            ).all()
            taken = [_delivery(r) for r in rows]
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
        return [_delivery(r) for r in rows]
