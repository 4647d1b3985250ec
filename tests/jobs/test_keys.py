"""Keys in the job store, on SQLite and PostgreSQL: create / list / revoke / set, configured keys' stable names,
limits checked in the submit's transaction (no overshoot with concurrent submitters), the queue cap, and usage
counted with each state change (once per job, however often it ran)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date

import pytest

from helpers import stored_request, stored_output
from photomaker_server.jobs.keys import (
    KeyExists,
    KeyLimits,
    KeyRevoked,
    LimitExceeded,
    QueueFull,
    UnknownKey,
    hash_secret,
    owner_of,
)

APP = "fal-ai/photomaker"


def test_create_list_revoke_set(store, clock) -> None:
    key = store.create_key("app1", "pm_secret_one", KeyLimits(max_queued=3), admin=True)
    assert (key.name, key.owner, key.prefix, key.admin) == ("app1", owner_of("pm_secret_one"), "pm_secre", True)
    assert key.secret_hash == hash_secret("pm_secret_one") and "secret" not in str(key.public())
    with pytest.raises(KeyExists):
        store.create_key("app1", "pm_other", KeyLimits())
    with pytest.raises(ValueError):
        store.create_key("config-9", "pm_other", KeyLimits())
    clock.advance(5)
    changed = store.set_key_limits("app1", {"max_concurrent": 2, "max_queued": None})
    assert changed.limits == KeyLimits(max_concurrent=2)
    with pytest.raises(ValueError):
        store.set_key_limits("app1", {"max_concurrent": -1})
    with pytest.raises(UnknownKey):
        store.set_key_limits("nope", {"max_queued": 1})
    revoked = store.revoke_key("app1")
    assert revoked.revoked_at == clock.t
    assert [k.name for k in store.list_keys()] == ["app1"]
    with pytest.raises(KeyRevoked):
        store.submit(key.owner, APP, stored_request())
    assert store.counts()["queued"] == 0


def test_configured_keys_get_stable_names(store) -> None:
    assert store.register_configured_keys(["k-one", "k-two"]) == {owner_of("k-one"): "config-1",
                                                                  owner_of("k-two"): "config-2"}
    # Reordered, one added: the known ones keep their names.
    names = store.register_configured_keys(["k-three", "k-two", "k-one"])
    assert names == {owner_of("k-one"): "config-1", owner_of("k-two"): "config-2", owner_of("k-three"): "config-3"}
    with pytest.raises(UnknownKey):
        store.revoke_key("config-1")  # configured keys are changed in the configuration
    with pytest.raises(UnknownKey):
        store.set_key_limits("config-2", {"max_queued": 1})


def test_max_queued_counts_waiting_jobs_only(store) -> None:
    store.create_key("lim", "pm_lim", KeyLimits(max_queued=2))
    owner = owner_of("pm_lim")
    store.submit(owner, APP, stored_request())
    store.submit(owner, APP, stored_request())
    with pytest.raises(LimitExceeded) as refused:
        store.submit(owner, APP, stored_request())
    assert refused.value.limit == "max_queued" and refused.value.retry_after_s >= 1
    assert "max_queued" in refused.value.detail
    assert store.claim("w", 30) is not None  # one starts: a slot in the queue frees
    store.submit(owner, APP, stored_request())
    assert store.usage()[0].jobs_submitted == 3  # the refused one is not counted


def test_requests_per_minute_and_retry_after(store, clock) -> None:
    store.create_key("rpm", "pm_rpm", KeyLimits(requests_per_minute=2))
    owner = owner_of("pm_rpm")
    store.submit(owner, APP, stored_request())
    clock.advance(20)
    store.submit(owner, APP, stored_request())
    clock.advance(10)
    with pytest.raises(LimitExceeded) as refused:
        store.submit(owner, APP, stored_request())
    assert refused.value.limit == "requests_per_minute"
    assert refused.value.retry_after_s == 31  # the first leaves the window 30 s from now
    clock.advance(31)
    store.submit(owner, APP, stored_request())


def test_queue_cap(store) -> None:
    store.submit("a", APP, stored_request(), max_queued_total=2)
    store.submit("b", APP, stored_request(), max_queued_total=2)
    with pytest.raises(QueueFull):
        store.submit("c", APP, stored_request(), max_queued_total=2)
    store.submit("c", APP, stored_request())  # no cap given: none applies


def test_usage_counts_each_job_once(store, clock) -> None:
    store.create_key("u", "pm_usage", KeyLimits())
    owner = owner_of("pm_usage")
    ok, failed, cancelled, retried = (store.submit(owner, APP, stored_request()) for _ in range(4))
    job = store.claim("w", 5)
    assert job.id == ok.id
    clock.advance(30)  # the worker died: retried, and counted once when it completes
    # (30 s: no lease is judged before the store has reached its database for a lease period, as a fresh one has not)
    job = store.claim("w2", 30)
    assert job.id == ok.id
    assert store.complete(job.id, "w2", stored_output("a", "b"), inference_time=1.5)
    assert not store.complete(job.id, "w2", stored_output("a"))  # a second finish changes nothing
    job = store.claim("w2", 30)
    assert store.fail(job.id, "w2", "boom", "runner_server_error")
    store.request_cancel(cancelled.id, owner)
    job = store.claim("w2", 30)
    assert store.release(job.id, "w2")  # handed back: not finished, not counted
    (usage,) = store.usage()
    assert usage.as_dict() == {"name": "u", "jobs_submitted": 4, "jobs_completed": 1, "jobs_failed": 1,
                               "jobs_cancelled": 1, "images": 2, "inference_seconds": 1.5}
    assert store.usage(since=date(2100, 1, 1))[0].jobs_submitted == 0


@pytest.mark.parametrize("backend", ["postgresql"])
def test_concurrent_submits_never_overshoot(store, race) -> None:
    store.create_key("lim", "pm_race", KeyLimits(max_queued=3))
    owner = owner_of("pm_race")
    results = race(8, lambda s, i: s.submit(owner, APP, stored_request()))
    refused = [r for r in results if isinstance(r, LimitExceeded)]
    assert len(refused) == 5 and len(results) - len(refused) == 3, results
    assert store.counts()["queued"] == 3
    assert store.usage()[0].jobs_submitted == 3


def test_usage_and_limits_survive_kill_9(store, db_path) -> None:
    """A process submitting in a loop is killed with SIGKILL mid-stream: every job it got in is counted, none
    twice, and the key's limits are still there (all of it lives in the database, written in one transaction)."""
    store.create_key("busy", "pm_busy", KeyLimits(max_queued=10_000, max_concurrent=3))
    owner = owner_of("pm_busy")
    script = ("import sys\nfrom photomaker_server.jobs.sql import SQLJobStore\n"
              "from photomaker_server.contract.stored import StoredRequest\n"
              f"request = StoredRequest.model_validate_json({stored_request().to_json()!r})\n"
              "s = SQLJobStore(sys.argv[1])\nwhile True:\n    s.submit(sys.argv[2], 'fal-ai/photomaker', request)\n")
    child = subprocess.Popen([sys.executable, "-c", script, str(db_path), owner], env=os.environ.copy())
    try:
        deadline = time.time() + 60
        while store.counts()["queued"] < 20:
            assert time.time() < deadline and child.poll() is None
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    (usage,) = store.usage()
    assert usage.jobs_submitted == store.counts()["queued"] >= 20
    assert store.key("busy").limits == KeyLimits(max_queued=10_000, max_concurrent=3)
