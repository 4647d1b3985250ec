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

from ..records import PRIORITIES, JobStatus
from .schema import FAIR_ORDER, WITHOUT_INPUT, api_keys, job_logs, jobs

__all__ = [
    "ADMISSION",
    "CLAIM_NEXT",
    "CLAIM_NEXT_PG",
    "OWNER_RUNNING",
    "TOUCH_KEY",
    "YIELD_TURN",
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

#: True for a job whose owner is at its key's ``max_concurrent``: the claim passes over its jobs while it is.
_AT_LIMIT = sa.exists().where(
    api_keys.c.owner == _c.owner,
    api_keys.c.max_concurrent.is_not(None),
    api_keys.c.max_concurrent
    <= sa.select(sa.func.count())
    .select_from(_running := jobs.alias("running"))
    .where(_running.c.owner == api_keys.c.owner, _running.c.status == _RUNNING)
    .correlate(api_keys)
    .scalar_subquery(),
)


#: The claimed job's key's ``max_concurrent``, returned with the claim on PostgreSQL (a subquery in RETURNING,
#: which SQLite does not allow; it needs no second look anyway, its claims run one at a time).
_KEY_LIMIT = (
    sa.select(api_keys.c.max_concurrent).where(api_keys.c.owner == _c.owner).scalar_subquery().label("key_limit")
)


def _claim(skipping: bool, with_key_limit: bool = False) -> sa.Update:
    pick = sa.select(_c.id).where(
        _c.status == _QUEUED,
        sa.or_(_c.start_deadline.is_(None), _c.start_deadline >= _p("p_now"), _c.started_at.is_not(None)),
        sa.not_(_AT_LIMIT),
    )
    if skipping:
        pick = pick.where(_c.owner.not_in(_p("p_skip", expanding=True)))
    return (
        sa.update(jobs)
        .where(
            _c.id
            == pick.order_by(*FAIR_ORDER)
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
        .returning(*jobs.c, *([_KEY_LIMIT] if with_key_limit else []))
    )


#: Take the next queued job for ``p_worker`` until ``p_expires``, in one statement: the lowest turn first (owners
#: with queued work take turns, see :data:`NEXT_TURN`), then priority, then first come first served; never a job
#: whose start deadline passed by ``p_now`` (housekeeping fails those), nor one of an owner at its key's
#: ``max_concurrent``. On PostgreSQL the subquery locks the row it picks (rows other claimers hold are skipped) and
#: the UPDATE re-checks it is still queued, so it cannot miss; SQLite holds the database's write lock (BEGIN
#: IMMEDIATE) for the whole transaction.
CLAIM_NEXT = _claim(skipping=False)
#: PostgreSQL: :data:`CLAIM_NEXT` also returning the key's ``max_concurrent`` as ``key_limit``, and the same
#: passing over the owners in ``p_skip`` (a retry after a concurrent claim filled one's ``max_concurrent``; see
#: ``SQLJobStore.claim``).
CLAIM_NEXT_PG = {skipping: _claim(skipping, with_key_limit=True) for skipping in (False, True)}
#: How many jobs of ``p_owner`` run now.
OWNER_RUNNING = sa.select(sa.func.count()).select_from(jobs).where(_c.owner == _p("p_owner"), _c.status == _RUNNING)

#: The submitting key's row, locked for the rest of the submit (PostgreSQL: submits of one key take turns, so
#: counts checked against its limits cannot be overtaken), its last use set to ``p_now``; returns what the submit
#: checks. No row: an owner without a key row (the store used directly), unlimited.
TOUCH_KEY = (
    sa.update(api_keys)
    .where(api_keys.c.owner == _p("p_owner"))
    .values(last_used_at=_p("p_now"))
    .returning(api_keys.c.revoked_at, api_keys.c.max_queued, api_keys.c.requests_per_minute)
)


def _owner_turn(fn: sa.sql.functions._FunctionGenerator, status: str, priority: int) -> sa.ScalarSelect:
    """``fn(turn)`` over the owner's jobs of one status and one priority: an index seek on ``ix_jobs_owner_turn``
    (a range over priorities would make SQLite read every queued job of the owner, on every submit)."""
    return (
        sa.select(fn(_c.turn))
        .where(_c.owner == _p("p_owner"), _c.status == status, _c.priority == priority)
        .scalar_subquery()
    )


def _admission(key_limits: bool, queue_cap: bool) -> sa.Select:
    """What a submit needs to know, in one statement (see :data:`ADMISSION`)."""
    columns = [
        # The turn being served now: the newest among running jobs, else the oldest queued, else 0.
        sa.func.coalesce(
            sa.select(sa.func.max(_c.turn)).where(_c.status == _RUNNING).scalar_subquery(),
            sa.select(sa.func.min(_c.turn)).where(_c.status == _QUEUED).scalar_subquery(),
            0,
        ).label("current"),
    ]
    for k in sorted(PRIORITIES.values()):
        # The owner's last turn taken by a job of this priority or higher (its next one comes after it) ...
        for status in (_QUEUED, _RUNNING):
            columns.append(sa.case((_p("p_priority") <= k, _owner_turn(sa.func.max, status, k))).label(
                f"last_{status}_{k}"))
        # ... and its first queued job of a lower priority (the new job goes before it).
        columns.append(sa.case((_p("p_priority") > k, _owner_turn(sa.func.min, _QUEUED, k))).label(f"lower_{k}"))
    if key_limits:
        mine = sa.select(sa.func.count()).select_from(jobs).where(_c.owner == _p("p_owner"))
        window = sa.and_(_c.owner == _p("p_owner"), _c.created_at > _p("p_since"))
        columns += [
            mine.where(_c.status == _QUEUED).scalar_subquery().label("owner_queued"),
            sa.select(sa.func.count()).where(window).scalar_subquery().label("recent"),
            sa.select(sa.func.min(_c.created_at)).where(window).scalar_subquery().label("recent_first"),
        ]
    if queue_cap:
        columns.append(
            sa.select(sa.func.count()).select_from(jobs).where(_c.status == _QUEUED).scalar_subquery().label("queued")
        )
    return sa.select(*columns)


#: ``ADMISSION[key_limits, queue_cap]``: at submit, for owner ``p_owner`` and priority ``p_priority``: the turn
#: inputs (``current``; per priority ``k``, ``last_queued_k`` / ``last_running_k`` where ``k`` is at least the new
#: job's, ``lower_k`` where it is below), and with ``key_limits`` the owner's queued jobs and its
#: accepted submits since ``p_since`` (``recent``, the first at ``recent_first``), with ``queue_cap`` every
#: queued job (``queued``).
#:
#: Turns (start-time fair queueing): a new job's turn is ``max(current, owner_last + 1)`` (see
#: ``SQLJobStore._turn``). An owner that submits 20
#: jobs takes turns ``t … t+19``; another owner's job submitted next takes the turn being served now, so it runs
#: before the first owner's second job. A requeued job keeps its turn (it runs again soon). Within an owner, turns
#: grow in submission order per priority and a higher-priority job is placed before the owner's queued
#: lower-priority ones (which move one turn back), so ``X-Fal-Queue-Priority`` means within a key what it meant.
ADMISSION = {(k, c): _admission(k, c) for k in (False, True) for c in (False, True)}

#: Move the owner's queued jobs of a priority below ``p_priority`` at turn ``p_turn`` or later one turn back (a
#: higher-priority job of the same owner takes ``p_turn``). Rows are locked in id order first (PostgreSQL), the
#: order every multi-row update of the store uses, so it never waits on another transaction in a cycle.
YIELD_TURN = (
    sa.update(jobs)
    .where(
        _c.id.in_(
            sa.select(_c.id)
            .where(_c.owner == _p("p_owner"), _c.status == _QUEUED, _c.priority < _p("p_priority"),
                   _c.turn >= _p("p_turn"))
            .order_by(_c.id)
            .with_for_update()
        ),
        _c.status == _QUEUED,
    )
    .values(turn=_c.turn + 1)
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


def _position(seq: sa.ColumnElement[int], turn: sa.ColumnElement[int]) -> sa.Select:
    same_turn = sa.or_(
        _c.priority > _p("p_priority"),
        sa.and_(
            _c.priority == _p("p_priority"),
            sa.or_(
                _c.created_at < _p("p_created_at"),
                sa.and_(_c.created_at == _p("p_created_at"), _c.seq < seq),
            ),
        ),
    )
    ahead = sa.or_(_c.turn < turn, sa.and_(_c.turn == turn, same_turn))
    # Jobs whose start deadline passed will never run: they are not ahead of anyone.
    alive = sa.or_(_c.start_deadline.is_(None), _c.start_deadline >= _p("p_now"), _c.started_at.is_not(None))
    return sa.select(sa.func.count()).select_from(jobs).where(_c.status == _QUEUED, ahead, alive, seq.is_not(None))


#: How many live queued jobs are ahead (in claim order) of one with ``p_turn``, ``p_priority``, ``p_created_at``
#: and submission number ``p_seq``. (Jobs of owners at their ``max_concurrent`` are counted: they run once a
#: slot frees.)
POSITION_OF_SEQ = _position(_p("p_seq", type_=sa.BigInteger), _p("p_turn", type_=sa.BigInteger))

_me = jobs.alias("me")
#: The same for job ``p_job_id``, its submission number and turn read in the same statement (NULL once the job is
#: deleted, so nothing counts).
POSITION_OF_ID = _position(
    sa.select(_me.c.seq).where(_me.c.id == _p("p_job_id")).scalar_subquery(),
    sa.select(_me.c.turn).where(_me.c.id == _p("p_job_id")).scalar_subquery(),
)
