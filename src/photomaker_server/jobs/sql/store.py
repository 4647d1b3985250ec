"""The job store on SQLAlchemy Core: one implementation for SQLite and PostgreSQL.

Lifecycle of a job: ``queued`` → ``running`` (claimed with a lease the worker keeps renewing) → ``completed``.
Failures and cancellations are ``completed`` with ``error``/``error_type``, as fal reports them. A running job
whose lease expires (the worker died) goes back to ``queued`` until ``max_attempts`` is used up; a worker that
shuts down hands its job back at once (:meth:`SQLJobStore.release`).

Portable SQL only; what differs per database lives in ``sqlite.py`` / ``postgres.py``. Every state change is a
guarded ``UPDATE … WHERE status = …`` whose row count is checked, so a lost race between processes (or hosts) is
detected rather than silently overwriting another's work. Rows that one transaction updates in a loop are
visited in id order, so two PostgreSQL transactions never wait on each other in a cycle.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.engine import Connection

from ...contract.errors import ErrorType
from ...contract.result import StoredOutput
from ...contract.stored import StoredRequest
from ..records import (
    CANCELLED_ERROR,
    RELEASED_MESSAGE,
    REQUEST_TIMEOUT_ERROR,
    CancelOutcome,
    Job,
    JobStatus,
    LeaseLost,
    LeaseState,
    LogLine,
    WORK_TOPIC,
    job_topic,
    parse_priority,
)
from ..keys import KeyRevoked, LimitExceeded, QueueFull
from .cluster import ClusterMixin
from .keys import KeysMixin
from .outbox import OutboxMixin
from .quota import QuotaMixin
from .rows import chunks, to_job, to_log_line
from .schema import WITHOUT_INPUT, job_logs, jobs, webhook_deliveries, workers
from .statements import (
    ADMISSION,
    CLAIM_NEXT,
    CLAIM_NEXT_PG,
    OWNER_RUNNING,
    TOUCH_KEY,
    YIELD_TURN,
    GET_JOB,
    HAS_WORK,
    HOUSEKEEPING_DUE,
    LOCK_HELD_JOB,
    LOCK_JOB,
    LOGS_AFTER,
    POSITION_OF_ID,
    POSITION_OF_SEQ,
)

__all__ = ["CLAIM_HOUSEKEEPING_S", "SQLJobStore"]

log = logging.getLogger(__name__)

#: How often (store clock, per process) :meth:`SQLJobStore.claim` does housekeeping first: not on every claim, which
#: is on every job's critical path.
CLAIM_HOUSEKEEPING_S = 1.0

_QUEUED = JobStatus.QUEUED.value
_RUNNING = JobStatus.RUNNING.value
_COMPLETED = JobStatus.COMPLETED.value


#: Seconds a client refused for a full queue (its key's ``max_queued``, or the deployment's) should wait: queued
#: jobs leave as fast as workers take them, which the store cannot foresee; a few seconds is a polite poll.
QUEUE_RETRY_AFTER_S = 5


class _OverLimit(Exception):
    """A claim took a job of an owner that a concurrent claim had just brought to its ``max_concurrent``."""

    def __init__(self, owner: str) -> None:
        self.owner = owner


class SQLJobStore(OutboxMixin, ClusterMixin, KeysMixin, QuotaMixin):
    """:class:`~photomaker_server.jobs.protocol.JobStore` on SQLite or PostgreSQL. Open one per process; it is
    safe to share between threads.

    ``url_or_path``: a filesystem path (``data_dir/jobs.db``), ``":memory:"`` (single-process tests), a
    ``sqlite://`` URL, or a ``postgresql://`` URL. Opening upgrades the schema (see ``schema_version``).
    Topics announced after commits (``publish(topic)``, or NOTIFY on ``notify_channel`` with PostgreSQL):
    ``"work"`` when a job became claimable, ``"job:<id>"`` when a job's status or cancel flag changed,
    ``"logs:<id>"`` when it got log lines.
    """

    # -- submit & read --

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
        """Queue a request. ``start_deadline`` is absolute epoch seconds (now + X-Fal-Request-Timeout).

        Checked in the same transaction, so they hold however many replicas submit at once: the owner's key
        (revoked: :class:`KeyRevoked`; its ``max_queued`` and ``requests_per_minute``: :class:`LimitExceeded`) and
        ``max_queued_total``, the deployment's cap on queued jobs (:class:`QueueFull`). A refused submit stores
        nothing. The returned job carries its ``queue_position``, counted in the same transaction (what the submit
        answer reports, without a second trip to the database).
        """
        prio = parse_priority(priority)
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        now = self._clock()
        job_id = str(uuid.uuid4())
        values = {"id": job_id, "owner": owner, "app": app, "input": input.to_json(), "status": _QUEUED,
                  "priority": prio, "created_at": now, "start_deadline": start_deadline, "attempts": 0,
                  "max_attempts": max_attempts, "cancel_requested": False, "webhook_url": webhook_url or None}
        with self._write() as conn:
            # First, so the key's row lock orders this key's submits (PostgreSQL) before anything is counted.
            key = conn.execute(TOUCH_KEY, {"p_owner": owner, "p_now": now}).first()
            if key is not None and key.revoked_at is not None:
                raise KeyRevoked(owner)
            key_limits = key is not None and (key.max_queued is not None or key.requests_per_minute is not None)
            cap = max_queued_total is not None and max_queued_total > 0
            params = {"p_owner": owner, "p_priority": prio, "p_since": now - 60.0}
            seen = conn.execute(ADMISSION[key_limits, cap], params).one()
            if key_limits:
                self._check_key_limits(key, seen, now)
            if cap and seen.queued >= max_queued_total:
                raise QueueFull("queue", f"The service's queue is full ({max_queued_total} requests waiting); "
                                "retry later", QUEUE_RETRY_AFTER_S)
            turn, lower_first = self._turn(seen)
            if lower_first is not None:
                conn.execute(YIELD_TURN, {"p_owner": owner, "p_priority": prio, "p_turn": turn})
            row = conn.execute(self._insert_job, {**values, "turn": turn}).one()  # the stored row: no second read
            job = to_job(row)
            self._count_usage(conn, owner, now, jobs_submitted=1)
            position = conn.execute(
                POSITION_OF_SEQ,
                {"p_priority": prio, "p_created_at": now, "p_seq": row.seq, "p_turn": turn, "p_now": now},
            ).scalar_one()
            # Only idle workers are told: nobody can follow this job before its id is returned.
            self._insert_log(conn, job_id, "Request queued", "INFO", now, announce=False)
            self._notify(WORK_TOPIC)
        return replace(job, queue_position=int(position))

    @staticmethod
    def _turn(seen: Any) -> tuple[int, int | None]:
        """The new job's turn (see ``statements.ADMISSION``): after the owner's jobs of its priority or higher,
        not before the turn served now, and before the owner's queued jobs of lower priority (whose first turn
        is returned too: None when there are none, so nothing has to move back)."""
        row = seen._mapping
        last = [v for name, v in row.items() if name.startswith("last_") and v is not None]
        lower = [v for name, v in row.items() if name.startswith("lower_") and v is not None]
        lower_first = min(lower) if lower else None
        turn = int(seen.current) if lower_first is None else min(int(seen.current), int(lower_first))
        if last:
            turn = max(turn, int(max(last)) + 1)
        return turn, lower_first

    @staticmethod
    def _check_key_limits(key: Any, seen: Any, now: float) -> None:
        if key.max_queued is not None and seen.owner_queued >= key.max_queued:
            raise LimitExceeded(
                "max_queued", f"Too many requests waiting for this key: {seen.owner_queued} queued, its limit is "
                f"{key.max_queued} (max_queued); retry when some have started", QUEUE_RETRY_AFTER_S)
        if key.requests_per_minute is not None and seen.recent >= key.requests_per_minute:
            wait = (seen.recent_first + 60.0 - now) if seen.recent_first is not None else 60.0
            raise LimitExceeded(
                "requests_per_minute", f"Too many requests for this key: {seen.recent} accepted in the last "
                f"minute, its limit is {key.requests_per_minute} (requests_per_minute)", int(wait) + 1)

    def get(self, job_id: str, owner: str | None = None, *, with_input: bool = True) -> Job | None:
        """The job, or None when it does not exist or (``owner`` given) belongs to someone else.

        ``with_input=False`` skips the (possibly large) input; status endpoints should use it.
        """
        with self._read() as conn:
            row = conn.execute(GET_JOB[with_input, owner is not None], {"p_job_id": job_id, "p_owner": owner}).first()
        return None if row is None else to_job(row)

    def queue_position(self, job: Job) -> int:
        """How many queued jobs run before ``job`` (0: it is next). 0 for a job that is not queued.

        Queued jobs whose start deadline already passed are not counted: they will never run.
        """
        if job.status != JobStatus.QUEUED:
            return 0
        params = {"p_job_id": job.id, "p_priority": job.priority, "p_created_at": job.created_at, "p_now": self._clock()}
        with self._read() as conn:
            return int(conn.execute(POSITION_OF_ID, params).scalar_one())

    # -- the worker side --

    def has_work(self) -> bool:
        """Whether :meth:`claim` could find anything: a queued job, or a running one whose lease has expired.

        A read, so an idle worker can look often without taking a write lock each time."""
        with self._read() as conn:
            return conn.execute(HAS_WORK, {"p_now": self._clock()}).first() is not None

    def claim(self, worker_id: str, lease_seconds: float) -> Job | None:
        """Atomically take the next runnable job and lease it to ``worker_id``: keys with queued work take turns
        (see ``statements.ADMISSION``), a key at its ``max_concurrent`` is passed over, and within a key the
        highest priority and then the oldest job goes first.

        Housekeeping runs in the same transaction first, at most every ``CLAIM_HOUSEKEEPING_S`` per store, so a
        lone worker needs no separate janitor: queued jobs past their start deadline fail with
        ``request_timeout``, and jobs of a worker that died (lease expired) are requeued or given up. (In between,
        a job past its start deadline is never claimed; it waits for the next round to be failed.)
        """
        skip: list[str] = []
        while True:
            try:
                row = self._claim_once(worker_id, lease_seconds, skip)
            except _OverLimit as over:  # rolled back; rare: two claims for one limited key at once
                skip.append(over.owner)
                continue
            if row is None:
                return None
            try:  # after the commit: a row that cannot be read must not block the queue by rolling back its claim
                return to_job(row)
            except ValidationError as exc:
                self._unreadable(row.id, worker_id, exc)

    def _unreadable(self, job_id: str, worker_id: str, exc: ValidationError) -> None:
        """Fail a claimed job whose stored request does not read as a ``StoredRequest`` (a row damaged by hand,
        or written by another program): no worker could ever run it."""
        log.error("job %s: its stored request cannot be read (%s); failing it", job_id, exc)
        self.fail(job_id, worker_id, "The stored request cannot be read by this server", ErrorType.INTERNAL_ERROR)

    def _claim_once(self, worker_id: str, lease_seconds: float, skip: list[str]) -> sa.Row[Any] | None:
        now = self._clock()
        with self._write() as conn:
            if abs(now - self._housekept_at) >= CLAIM_HOUSEKEEPING_S:
                if conn.execute(HOUSEKEEPING_DUE, {"p_now": now}).first() is not None:
                    self._expire_deadlines(conn, now)
                    self._requeue_expired(conn, now, lease_seconds)
                self._housekept_at = now
            params = {"p_now": now, "p_worker": worker_id, "p_expires": now + lease_seconds}
            postgres = self._backend.name == "postgresql"
            if not postgres:  # one claim at a time (the database lock): the claim's own check is exact
                row = conn.execute(CLAIM_NEXT, params).first()
            elif skip:
                row = conn.execute(CLAIM_NEXT_PG[True], {**params, "p_skip": skip}).first()
            else:
                row = conn.execute(CLAIM_NEXT_PG[False], params).first()
            if row is None:
                return None
            if postgres and row.key_limit is not None:
                self._check_concurrency(conn, row.owner, row.key_limit)
            self._notify(job_topic(row.id))
            return row

    def _check_concurrency(self, conn: Connection, owner: str, limit: int) -> None:
        """PostgreSQL: claims in other transactions are invisible to the claim's own check of ``max_concurrent``,
        so two could both take the last slot. The claims of one limited owner queue on a transaction lock here and
        count again, each seeing the ones committed before it; one over the limit rolls back (``_OverLimit``).
        (SQLite needs none of it: its claims run one at a time.)"""
        self._backend.lock_key(conn, owner)
        if conn.execute(OWNER_RUNNING, {"p_owner": owner}).scalar_one() > limit:
            raise _OverLimit(owner)

    def renew_lease(self, job_id: str, worker_id: str, lease_seconds: float) -> LeaseState:
        """Extend the lease while the worker still holds it; also tells it whether to stop (cancel)."""
        now = self._clock()
        with self._write() as conn:
            res = conn.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, self._held_by(worker_id))
                .values(lease_expires_at=now + lease_seconds)
            )
            cancel = conn.execute(sa.select(jobs.c.cancel_requested).where(jobs.c.id == job_id)).scalar()
        return LeaseState(held=res.rowcount == 1, cancel_requested=bool(cancel))

    def complete(
        self,
        job_id: str,
        worker_id: str,
        result: StoredOutput,
        inference_time: float | None = None,
        last_log: str | None = None,
        logs: Sequence[tuple[str, str]] = (),
    ) -> bool:
        """Record success. False (and nothing changes) when ``worker_id`` no longer holds the lease.

        ``logs`` (``(message, level)`` lines the worker has not stored yet), then ``last_log`` (an INFO line): added
        in the same transaction, so they are stored exactly when the status flips (clients stop reading logs at
        COMPLETED) without a commit of their own on the job's critical path.
        """
        now = self._clock()
        with self._write() as conn:
            done = self._finish(conn, job_id, now, held_by=worker_id, result=result, inference_time=inference_time)
            if done:
                lines = [*logs, *([(last_log, "INFO")] if last_log is not None else [])]
                for message, level in lines:
                    self._insert_log(conn, job_id, message, level, now)
            return done

    def fail(self, job_id: str, worker_id: str, error: str, error_type: ErrorType) -> bool:
        """Record failure (or a cancellation the worker acted on: ``CANCELLED_ERROR``/``client_cancelled``)."""
        now = self._clock()
        with self._write() as conn:
            return self._finish(conn, job_id, now, held_by=worker_id, error=error, error_type=error_type)

    def release(self, job_id: str, worker_id: str) -> bool:
        """Hand a running job back to the queue at once (its worker is shutting down); the attempt does not count.

        A job whose cancellation was requested is completed as cancelled instead. False when ``worker_id`` no
        longer holds the lease (nothing changes).
        """
        now = self._clock()
        guard = self._held_by(worker_id)
        with self._write() as conn:
            cancel = conn.execute(
                sa.select(jobs.c.cancel_requested).where(jobs.c.id == job_id, guard).with_for_update()
            ).scalar()
            if cancel is None:
                return False
            if cancel:
                if self._finish(conn, job_id, now, guard=guard, error=CANCELLED_ERROR, error_type=ErrorType.CLIENT_CANCELLED):
                    self._insert_log(conn, job_id, CANCELLED_ERROR, "WARN", now)
                    return True
                return False
            res = conn.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, guard)
                .values(status=_QUEUED, attempts=jobs.c.attempts - 1, lease_owner=None, lease_expires_at=None)
            )
            if res.rowcount != 1:
                return False
            self._insert_log(conn, job_id, RELEASED_MESSAGE, "WARN", now)
            self._notify(WORK_TOPIC)
            self._notify(job_topic(job_id))
            return True

    @staticmethod
    def _held_by(worker_id: str) -> sa.ColumnElement[bool]:
        return sa.and_(jobs.c.status == _RUNNING, jobs.c.lease_owner == worker_id)

    # -- housekeeping --

    def expire_deadlines(self) -> list[str]:
        """Fail queued jobs that were not started before their deadline; returns their ids."""
        now = self._clock()
        with self._write() as conn:
            return self._expire_deadlines(conn, now)

    def _expire_deadlines(self, conn: Connection, now: float) -> list[str]:
        # started_at set: it did start once (then was requeued or released) — the deadline is about starting.
        guard = sa.and_(
            jobs.c.status == _QUEUED,
            jobs.c.start_deadline.is_not(None),
            jobs.c.start_deadline < now,
            jobs.c.started_at.is_(None),
        )
        ids = list(conn.execute(sa.select(jobs.c.id).where(guard).order_by(jobs.c.id)).scalars())
        expired = []
        for job_id in ids:
            if self._finish(
                conn, job_id, now, guard=guard, error=REQUEST_TIMEOUT_ERROR, error_type=ErrorType.REQUEST_TIMEOUT
            ):
                self._insert_log(conn, job_id, REQUEST_TIMEOUT_ERROR, "ERROR", now)
                expired.append(job_id)
        return expired

    def requeue_expired_leases(self, grace_s: float = 0.0) -> list[str]:
        """Recover jobs whose worker died: back to the queue, or give up after ``max_attempts``.

        ``grace_s`` (the lease length): judge no lease until the database has been reachable from this process
        for that long, since nobody could renew a lease while it was down (nor while this process was not
        running); a live worker renews at once when it is back. Returns the ids of every job touched. A job
        whose cancellation was requested is completed as cancelled instead of running again.
        """
        now = self._clock()
        with self._write() as conn:
            return self._requeue_expired(conn, now, grace_s)

    def _requeue_expired(self, conn: Connection, now: float, grace_s: float) -> list[str]:
        guard = sa.and_(jobs.c.status == _RUNNING, jobs.c.lease_expires_at < now)
        rows = conn.execute(
            sa.select(jobs.c.id, jobs.c.attempts, jobs.c.max_attempts, jobs.c.cancel_requested, jobs.c.lease_owner,
                      jobs.c.lease_expires_at, workers.c.heartbeat_at)
            .select_from(jobs.outerjoin(workers, workers.c.id == jobs.c.lease_owner))
            .where(guard)
            .order_by(jobs.c.id)
        ).all()
        if rows and self.health.reachable_for() < grace_s:
            self._keep_leases(rows, grace_s)
            return []
        touched, requeued = [], 0
        for job_id, attempts, max_attempts, cancel_requested, owner, expired_at, heartbeat_at in rows:
            gone = (f"stopped heartbeating {now - heartbeat_at:.0f} s ago" if heartbeat_at is not None
                    else "is no longer registered (it exited or was killed)")
            log.warning("worker %s %s; its lease on %s expired %.0f s ago", owner, gone, job_id, now - expired_at)
            if cancel_requested:
                if self._finish(conn, job_id, now, guard=guard, error=CANCELLED_ERROR, error_type=ErrorType.CLIENT_CANCELLED):
                    self._insert_log(conn, job_id, CANCELLED_ERROR, "WARN", now)
                    touched.append(job_id)
            elif attempts >= max_attempts:
                message = f"The request failed {attempts} times (the worker stopped while running it)"
                if self._finish(conn, job_id, now, guard=guard, error=message, error_type=ErrorType.RUNNER_SERVER_ERROR):
                    self._insert_log(conn, job_id, message, "ERROR", now)
                    touched.append(job_id)
            else:
                res = conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.id == job_id, guard)
                    .values(status=_QUEUED, lease_owner=None, lease_expires_at=None)
                )
                if res.rowcount == 1:
                    # The client's log says what happened to its request; which worker, and why, is the operator's.
                    message = f"Worker lost; retrying (attempt {attempts + 1} of {max_attempts})"
                    self._insert_log(conn, job_id, message, "WARN", now)
                    self._notify(WORK_TOPIC)
                    self._notify(job_topic(job_id))
                    touched.append(job_id)
                    requeued += 1
        if touched:
            self._count(conn, "lease_expiries", len(touched))
        if requeued:
            self._count(conn, "jobs_rerun", requeued)
        return touched

    def _keep_leases(self, rows: Sequence[Any], grace_s: float) -> None:
        """Say once per outage why expired leases are not taken back yet (their workers may be alive)."""
        health = self.health
        if self._kept_leases_after == health.reconnects:
            return
        self._kept_leases_after = health.reconnects
        outage = (f"the database was unreachable for {health.last_outage_s:.0f} s" if health.reconnects
                  else "this process has just started")
        log.warning("%s: %d job(s) whose lease ran out meanwhile (%s) keep their leases until it has been reachable "
                    "for %.0f s, so that live workers can renew them", outage, len(rows),
                    ", ".join(row[0] for row in rows[:5]), grace_s)

    def cleanup(self, older_than_seconds: float) -> list[Job]:
        """Delete completed jobs that finished more than ``older_than_seconds`` ago, with their logs and
        webhook rows, and worker registry rows silent for a day. Returns the jobs (without ``input``) so the
        caller can delete their output files."""
        now = self._clock()
        cutoff = now - older_than_seconds
        with self._write() as conn:
            rows = conn.execute(
                sa.select(*WITHOUT_INPUT)
                .where(jobs.c.status == _COMPLETED, jobs.c.finished_at < cutoff)
                .order_by(jobs.c.id)
            ).all()
            removed = [to_job(r) for r in rows]
            for chunk in chunks([j.id for j in removed]):
                conn.execute(sa.delete(job_logs).where(job_logs.c.job_id.in_(chunk)))
                conn.execute(sa.delete(webhook_deliveries).where(webhook_deliveries.c.job_id.in_(chunk)))
                conn.execute(sa.delete(jobs).where(jobs.c.id.in_(chunk)))
            self._prune_workers(conn, now)
        return removed

    # -- logs --

    def append_log(self, job_id: str, message: str, level: str = "INFO") -> LogLine:
        """Add a log line (levels: INFO WARN ERROR DEBUG STDOUT STDERR). KeyError for an unknown job."""
        return self.append_logs(job_id, [(message, level)])[0]

    def append_logs(
        self, job_id: str, lines: list[tuple[str, str]], *, held_by: str | None = None
    ) -> list[LogLine]:
        """Add several ``(message, level)`` lines in one transaction, in order (one commit and one wake-up for a
        burst, e.g. a running job's lines queued while the previous write was in flight). KeyError for an unknown
        job; nothing is added then. ``held_by``: only while that worker holds the job's lease, else
        :class:`LeaseLost` (a worker whose lease was taken must not write into the next run's log)."""
        if not lines:
            return []
        now = self._clock()
        try:
            with self._write() as conn:
                # The job row's lock (PostgreSQL; SQLite's write lock does the same) orders a job's log lines:
                # every other writer of its logs updates that row first, so ids are taken, and committed, in
                # order, and a reader following with ``after_id`` never skips a line.
                if held_by is not None:
                    if conn.execute(LOCK_HELD_JOB, {"p_job_id": job_id, "p_worker": held_by}).scalar() is None:
                        raise LeaseLost(job_id)
                elif conn.execute(LOCK_JOB, {"p_job_id": job_id}).scalar() is None:
                    raise KeyError(job_id)
                return [self._insert_log(conn, job_id, message, level, now) for message, level in lines]
        except sa.exc.IntegrityError:  # PostgreSQL: cleanup deleted the job between the check and the insert
            raise KeyError(job_id) from None

    def logs(self, job_id: str, after_id: int = 0) -> list[LogLine]:
        """Log lines in order; ``after_id`` returns only newer ones (what an SSE stream sends next)."""
        with self._read() as conn:
            rows = conn.execute(LOGS_AFTER, {"p_job_id": job_id, "p_after": after_id}).all()
        return [to_log_line(r) for r in rows]

    # -- cancellation --

    def request_cancel(self, job_id: str, owner: str | None) -> CancelOutcome:
        """Cancel on behalf of ``owner`` (None: any owner, for operators). See :class:`CancelOutcome`."""
        now = self._clock()
        with self._write() as conn:
            # FOR UPDATE: on PostgreSQL the status cannot change (a claim) between this read and the update.
            query = sa.select(jobs.c.status).where(jobs.c.id == job_id).with_for_update()
            if owner is not None:
                query = query.where(jobs.c.owner == owner)
            status = conn.execute(query).scalar()
            if status is None:
                return CancelOutcome.NOT_FOUND
            if status == _COMPLETED:
                return CancelOutcome.ALREADY_COMPLETED
            if status == _QUEUED:
                if self._finish(
                    conn, job_id, now, guard=jobs.c.status == _QUEUED, error=CANCELLED_ERROR, error_type=ErrorType.CLIENT_CANCELLED
                ):
                    self._insert_log(conn, job_id, CANCELLED_ERROR, "WARN", now)
                    return CancelOutcome.REMOVED
                return CancelOutcome.ALREADY_COMPLETED  # unreachable while the row is locked
            res = conn.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.cancel_requested.is_(False))
                .values(cancel_requested=True)
            )
            if res.rowcount == 1:  # log it once, however often the client asks
                self._notify(job_topic(job_id))
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
            (jobs.c.error_type == ErrorType.CLIENT_CANCELLED, "cancelled"),
            else_="error",
        )
        with self._read() as conn:
            rows = conn.execute(
                sa.select(kind, sa.func.count()).where(jobs.c.status == _COMPLETED).group_by(kind)
            ).all()
        out = {"ok": 0, "error": 0, "cancelled": 0}
        out.update({k: int(n) for k, n in rows})
        return out
