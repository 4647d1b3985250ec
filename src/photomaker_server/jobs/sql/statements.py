"""The statements on every job's path (submit, claim, finish, reads by id, log lines), built once.

Why: SQLAlchemy caches a statement's compiled SQL under the statement's cache key, and memoizes that key on the
statement object. A statement built once and executed with parameters skips both building and key computation,
which together cost about as much as a database round trip (a claim transaction on PostgreSQL: 0.86 ms built per
call, 0.52 ms prebuilt; see docs/benchmarks.md, section 4.2). Values come in as named parameters ``p_*``, names that
never clash with the ones SQLAlchemy reserves for the columns of a VALUES or SET clause.

Rarely used statements (cancel, housekeeping's actions, cleanup, the registry) stay built where they are used.
"""

from __future__ import annotations

import sqlalchemy as sa

from ..records import JobStatus
from .schema import QUEUE_ORDER, WITHOUT_INPUT, job_logs, jobs

__all__ = [
    "CLAIM_NEXT",
    "FINISH_HELD",
    "GET_JOB",
    "HAS_WORK",
    "HOUSEKEEPING_DUE",
    "INSERT_LOG",
    "LOCK_HELD_JOB",
    "LOCK_JOB",
    "LOGS_AFTER",
    "POSITION_OF_ID",
    "POSITION_OF_SEQ",
    "finish_where",
    "insert_job",
]

_c = jobs.c
_QUEUED = JobStatus.QUEUED.value
_RUNNING = JobStatus.RUNNING.value
_p = sa.bindparam


def _get(with_input: bool, by_owner: bool) -> sa.Select:
    query = (sa.select(jobs) if with_input else sa.select(*WITHOUT_INPUT)).where(_c.id == _p("p_job_id"))
    return query.where(_c.owner == _p("p_owner")) if by_owner else query


#: ``GET_JOB[with_input, by_owner]``: one job by ``p_job_id`` (and ``p_owner``).
GET_JOB = {(w, o): _get(w, o) for w in (True, False) for o in (True, False)}

#: The job row, locked until the transaction ends (PostgreSQL; SQLite's write lock does the same): the order of a
#: job's log lines.
LOCK_JOB = sa.select(_c.id).where(_c.id == _p("p_job_id")).with_for_update()

#: :data:`LOCK_JOB` only while worker ``p_worker`` holds the job's lease: a fenced writer finds nothing.
LOCK_HELD_JOB = LOCK_JOB.where(_c.status == _RUNNING, _c.lease_owner == _p("p_worker"))

#: A log line: ``job_id``, ``ts``, ``level``, ``message`` (its id comes back as the inserted primary key).
INSERT_LOG = job_logs.insert()

#: A job's log lines after ``p_after`` (what a stream sends next), in order.
LOGS_AFTER = (
    sa.select(job_logs)
    .where(job_logs.c.job_id == _p("p_job_id"), job_logs.c.id > _p("p_after"))
    .order_by(job_logs.c.id)
)

#: Anything :data:`CLAIM_NEXT` or housekeeping could take at ``p_now``: a queued job, or an expired lease.
HAS_WORK = (
    sa.select(_c.id)
    .where(sa.or_(_c.status == _QUEUED, sa.and_(_c.status == _RUNNING, _c.lease_expires_at < _p("p_now"))))
    .limit(1)
)

#: A row housekeeping would act on at ``p_now``: a queued job past its start deadline, or an expired lease. One
#: cheap look per claim instead of both housekeeping scans.
HOUSEKEEPING_DUE = (
    sa.select(_c.id)
    .where(
        sa.or_(
            sa.and_(
                _c.status == _QUEUED,
                _c.start_deadline.is_not(None),
                _c.start_deadline < _p("p_now"),
                _c.started_at.is_(None),
            ),
            sa.and_(_c.status == _RUNNING, _c.lease_expires_at < _p("p_now")),
        )
    )
    .limit(1)
)

#: Take the next queued job for ``p_worker`` until ``p_expires``, in one statement; never one whose start deadline
#: passed by ``p_now`` (housekeeping fails those). On PostgreSQL the subquery locks the row it picks (rows other
#: claimers hold are skipped) and the UPDATE re-checks it is still queued, so it cannot miss; SQLite holds the
#: database's write lock (BEGIN IMMEDIATE) for the whole transaction.
CLAIM_NEXT = (
    sa.update(jobs)
    .where(
        _c.id
        == sa.select(_c.id)
        .where(
            _c.status == _QUEUED,
            sa.or_(_c.start_deadline.is_(None), _c.start_deadline >= _p("p_now"), _c.started_at.is_not(None)),
        )
        .order_by(*QUEUE_ORDER)
        .limit(1)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite relies on BEGIN IMMEDIATE
        .scalar_subquery(),
        _c.status == _QUEUED,
    )
    .values(
        status=_RUNNING,
        attempts=_c.attempts + 1,
        started_at=_p("p_now"),
        lease_owner=_p("p_worker"),
        lease_expires_at=_p("p_expires"),
    )
    .returning(*jobs.c)
)


def finish_where(guard: sa.ColumnElement[bool]) -> sa.Update:
    """Complete job ``p_job_id`` if ``guard`` holds: ``p_now``, ``p_result``, ``p_error``, ``p_error_type``,
    ``p_inference_time``. Returns the owner and webhook address (no second trip for the webhook)."""
    return (
        sa.update(jobs)
        .where(_c.id == _p("p_job_id"), guard)
        .values(
            status=JobStatus.COMPLETED.value,
            finished_at=_p("p_now"),
            result=_p("p_result"),
            error=_p("p_error"),
            error_type=_p("p_error_type"),
            inference_time=_p("p_inference_time"),
            lease_owner=None,
            lease_expires_at=None,
        )
        .returning(_c.owner, _c.webhook_url)
    )


#: :func:`finish_where` for the worker that holds the lease (``p_worker``): how a job normally ends.
FINISH_HELD = finish_where(sa.and_(_c.status == _RUNNING, _c.lease_owner == _p("p_worker")))


def insert_job(seq: sa.ColumnElement[int]) -> sa.Insert:
    """A new job row (every column a parameter but ``seq``, the backend's next submission number as SQL),
    returned as stored."""
    return jobs.insert().values(seq=seq).returning(*jobs.c)


def _position(seq: sa.ColumnElement[int]) -> sa.Select:
    ahead = sa.or_(
        _c.priority > _p("p_priority"),
        sa.and_(
            _c.priority == _p("p_priority"),
            sa.or_(
                _c.created_at < _p("p_created_at"),
                sa.and_(_c.created_at == _p("p_created_at"), _c.seq < seq),
            ),
        ),
    )
    # Jobs whose start deadline passed will never run: they are not ahead of anyone.
    alive = sa.or_(_c.start_deadline.is_(None), _c.start_deadline >= _p("p_now"), _c.started_at.is_not(None))
    return sa.select(sa.func.count()).select_from(jobs).where(_c.status == _QUEUED, ahead, alive, seq.is_not(None))


#: How many live queued jobs are ahead of one with ``p_priority``, ``p_created_at`` and submission number ``p_seq``.
POSITION_OF_SEQ = _position(_p("p_seq", type_=sa.BigInteger))

_me = jobs.alias("me")
#: The same for job ``p_job_id``, its submission number read in the same statement (NULL once the job is deleted,
#: so nothing counts).
POSITION_OF_ID = _position(sa.select(_me.c.seq).where(_me.c.id == _p("p_job_id")).scalar_subquery())
