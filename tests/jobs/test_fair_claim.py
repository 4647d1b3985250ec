"""Fair scheduling in the claim, on SQLite and PostgreSQL: keys take turns, FIFO and priority hold within a key,
a key at its ``max_concurrent`` is passed over (strictly, even with claims racing on PostgreSQL)."""

from __future__ import annotations

import pytest

from helpers import stored_request, stored_output
from photomaker_server.jobs.keys import KeyLimits, owner_of

APP = "fal-ai/photomaker"


def _finish(store, job) -> None:  # noqa: ANN001
    assert store.complete(job.id, job.lease_owner, stored_output(), inference_time=0.1)


def test_a_late_key_runs_while_the_first_keys_backlog_waits(store) -> None:
    a = [store.submit("A", APP, stored_request()) for i in range(20)]
    b = store.submit("B", APP, stored_request())
    order = []
    while (job := store.claim("w", 30)) is not None:
        order.append(job.id)
        _finish(store, job)
    assert sorted(order) == sorted([j.id for j in a] + [b.id])
    # B's job ran second: after A's first, before A's second (least-recently-served / round robin).
    assert order.index(b.id) == 1
    assert [j for j in order if j != b.id] == [j.id for j in a]  # FIFO within A


def test_a_late_key_overtakes_while_the_first_key_is_running(store) -> None:
    a = [store.submit("A", APP, stored_request()) for i in range(20)]
    first = store.claim("w", 30)
    assert first.id == a[0].id
    b = store.submit("B", APP, stored_request())
    assert b.queue_position == 0  # next in line, and the submit says so
    _finish(store, first)
    assert store.claim("w", 30).id == b.id
    unfinished = [j for j in a if store.get(j.id, with_input=False).status != "completed"]
    assert len(unfinished) >= 15


def test_three_keys_interleave(store) -> None:
    for owner in ("A", "B", "C"):
        for i in range(4):
            store.submit(owner, APP, stored_request())
    owners = []
    while (job := store.claim("w", 30)) is not None:
        owners.append(job.owner)
        _finish(store, job)
    assert owners == ["A", "B", "C"] * 4


def test_two_workers_three_keys_completions_interleave(store) -> None:
    for owner in ("A", "B", "C"):
        for i in range(5):
            store.submit(owner, APP, stored_request())
    held = {w: store.claim(w, 30) for w in ("w1", "w2")}
    completed = []
    while any(held.values()):
        for worker, job in held.items():  # the two workers finish in turn, each claiming its next job at once
            if job is not None:
                _finish(store, job)
                completed.append(job.owner)
                held[worker] = store.claim(worker, 30)
    assert sorted(completed) == sorted(["A", "B", "C"] * 5)
    for start in range(0, 15, 3):  # every three completions in a row are one of each key's
        assert sorted(completed[start:start + 3]) == ["A", "B", "C"], completed


def test_priority_still_orders_within_a_key(store) -> None:
    low = [store.submit("A", APP, stored_request(), priority="low") for i in range(3)]
    normal = [store.submit("A", APP, stored_request()) for i in range(3)]
    order = []
    while (job := store.claim("w", 30)) is not None:
        order.append(job.id)
        _finish(store, job)
    assert order == [j.id for j in normal] + [j.id for j in low]


def test_a_key_at_max_concurrent_is_passed_over(store) -> None:
    store.create_key("limited", "pm_secret_limited", KeyLimits(max_concurrent=1))
    limited = owner_of("pm_secret_limited")
    mine = [store.submit(limited, APP, stored_request()) for i in range(3)]
    other = [store.submit("other", APP, stored_request()) for i in range(3)]
    first, second, third = (store.claim(f"w{i}", 30) for i in range(3))
    assert first.id == mine[0].id
    assert [second.id, third.id] == [other[0].id, other[1].id]  # the limited key waits while others run
    _finish(store, first)
    assert store.claim("w", 30).id == mine[1].id  # a slot freed: its turn again
    assert store.claim("w", 30).id == other[2].id  # at its limit again
    store.set_key_limits("limited", {"max_concurrent": None})  # live: the next claim sees it
    assert store.claim("w", 30).id == mine[2].id


@pytest.mark.parametrize("backend", ["postgresql"])
def test_racing_claims_never_exceed_max_concurrent(store, race) -> None:
    store.create_key("limited", "pm_secret_race", KeyLimits(max_concurrent=1))
    limited = owner_of("pm_secret_race")
    for i in range(6):
        store.submit(limited, APP, stored_request())
    for i in range(6):
        store.submit("other", APP, stored_request())
    claimed = race(6, lambda s, i: s.claim(f"w{i}", 30))
    owners = [j.owner for j in claimed if j is not None]
    assert owners.count(limited) == 1, claimed
    assert owners.count("other") == 5  # passed over, not starved: the others got the rest


def test_requeued_job_keeps_its_turn(store, clock) -> None:
    a = [store.submit("A", APP, stored_request()) for i in range(3)]
    b = [store.submit("B", APP, stored_request()) for i in range(3)]
    job = store.claim("w", 5)
    assert job.id == a[0].id
    clock.advance(30)  # the worker died: its lease runs out, housekeeping requeues the job
    # (30 s: no lease is judged before the store has reached its database for a lease period, as a fresh one has not)
    assert store.claim("w2", 30).id == a[0].id
    assert store.claim("w2", 30).id == b[0].id
