"""Held status polls: a connection polling a running request in a loop gets its next answer when the request
changes (or after ``status_hold_s``); every other poll is answered at once. The changes come from another
deployment (store + wake-ups), as a worker process would make them."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from starlette.testclient import TestClient

from photomaker_server.api.app import build_context, create_app
from photomaker_server.api.held_polls import RepeatPolls, connection_of
from photomaker_server.deployment import open_deployment
from photomaker_server.jobs.records import StoreUnavailable, job_topic
from photomaker_server.settings import APP_ID, Settings

from helpers import FlakyStore, stored_output

KEY = "held-polls-key"
REQUEST = {"prompt": "a photo of a man img", "image_archive_url": "https://example.com/faces.zip"}


class Service:
    """The API app (in-process client: one connection, ``testclient:50000``) and a worker's own deployment."""

    def __init__(self, tmp_path, database_url: str | None = None, **settings) -> None:
        extra = {"database_url": database_url} if database_url else {}
        self.settings = Settings(data_dir=tmp_path, **{"api_keys": [KEY], **extra, **settings})
        self.app = create_app(self.settings, housekeeping=False)
        self.worker = open_deployment(self.settings)
        self.client = TestClient(self.app, headers={"Authorization": f"Key {KEY}"}).__enter__()

    def submit(self) -> str:
        return self.client.post(f"/{APP_ID}", json=REQUEST).json()["request_id"]

    def poll(self, job_id: str, **params) -> tuple[dict, float]:
        started = time.monotonic()
        answer = self.client.get(f"/{APP_ID}/requests/{job_id}/status", params=params)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-fal-request-id"] == job_id
        return answer.json(), time.monotonic() - started

    def claim(self, job_id: str) -> None:
        """The worker claims ``job_id`` (the next in the queue); returns once this API has heard it, as the job
        cache drops the entry before subscribers wake (without this, a poll could still find the request queued in
        the cache, as a real poll may for the millisecond a wake-up takes)."""
        with self.app.state.ctx.wakeups.subscribe(job_topic(job_id)) as heard:
            assert self.worker.store.claim("w", 30).id == job_id
            assert heard.wait(5)

    def later(self, delay: float, action) -> threading.Timer:
        timer = threading.Timer(delay, action)
        timer.start()
        return timer

    def close(self) -> None:
        self.client.__exit__(None, None, None)
        self.worker.close()
        self.app.state.ctx.wakeups.close()
        self.app.state.ctx.store.close()


@pytest.fixture
def service(tmp_path, database_url):
    svc = Service(tmp_path, database_url, status_hold_s=5.0)
    yield svc
    svc.close()


def test_a_repeat_poll_of_a_running_request_is_answered_when_it_finishes(service):
    job_id = service.submit()
    body, took = service.poll(job_id)
    assert body["status"] == "IN_QUEUE" and took < 2  # queued: answered at once, however often
    service.claim(job_id)
    timer = service.later(0.4, lambda: service.worker.store.complete(job_id, "w", stored_output(), 1.5))
    body, took = service.poll(job_id)  # the same request again: held until the completion's wake-up
    timer.join()
    assert body["status"] == "COMPLETED" and body["metrics"] == {"inference_time": 1.5}
    assert 0.3 < took < 3, took  # when it finished, not at once and not after the 5 s hold
    body, took = service.poll(job_id)
    assert body["status"] == "COMPLETED" and took < 2  # finished: never held


def test_other_polls_are_answered_at_once_and_a_hold_ends_after_its_time(tmp_path):
    service = Service(tmp_path, status_hold_s=0.6)
    try:
        first, second = service.submit(), service.submit()
        assert service.poll(first)[0]["status"] == "IN_QUEUE"
        assert service.poll(first)[0]["status"] == "IN_QUEUE"  # a queued request is not held...
        assert service.poll(first)[1] < 0.5  # ...however often it is polled
        service.claim(first)
        service.claim(second)
        for job_id in (second, first, second, first):  # going through a list: each poll differs from the last
            body, took = service.poll(job_id)
            assert body["status"] == "IN_PROGRESS" and took < 0.5, (job_id, took)
        body, took = service.poll(first)  # the same running request twice in a row: held, nothing changes
        assert body["status"] == "IN_PROGRESS" and 0.55 < took < 3, took
    finally:
        service.close()


def test_with_logs_a_new_log_line_ends_the_hold(tmp_path):
    service = Service(tmp_path, status_hold_s=5.0)
    try:
        job_id = service.submit()
        service.claim(job_id)
        body, _ = service.poll(job_id, logs=1)
        lines = len(body["logs"])
        timer = service.later(0.3, lambda: service.worker.store.append_log(job_id, "step 3/20"))
        body, took = service.poll(job_id, logs=1)
        timer.join()
        assert body["status"] == "IN_PROGRESS" and 0.2 < took < 3, took
        assert len(body["logs"]) == lines + 1 and body["logs"][-1]["message"] == "step 3/20"
    finally:
        service.close()


def test_without_logs_a_log_line_does_not_end_the_hold(tmp_path):
    service = Service(tmp_path, status_hold_s=0.8)
    try:
        job_id = service.submit()
        service.claim(job_id)
        service.poll(job_id)
        timer = service.later(0.2, lambda: service.worker.store.append_log(job_id, "step 3/20"))
        body, took = service.poll(job_id)
        timer.join()
        assert body["status"] == "IN_PROGRESS" and took > 0.7, took
    finally:
        service.close()


def test_hold_zero_answers_every_poll_at_once(tmp_path):
    service = Service(tmp_path, status_hold_s=0)
    try:
        job_id = service.submit()
        service.claim(job_id)
        for _ in range(3):
            body, took = service.poll(job_id)
            assert body["status"] == "IN_PROGRESS" and took < 0.5
    finally:
        service.close()


def test_a_held_poll_of_another_keys_request_is_still_a_404(tmp_path):
    service = Service(tmp_path, status_hold_s=5.0, api_keys=[KEY, "held-polls-other"])
    try:
        job_id = service.submit()
        service.claim(job_id)
        with TestClient(service.app, headers={"Authorization": "Key held-polls-other"}) as other:
            for _ in range(2):
                started = time.monotonic()
                answer = other.get(f"/{APP_ID}/requests/{job_id}/status")
                assert answer.status_code == 404 and time.monotonic() - started < 2
    finally:
        service.close()


def test_no_poll_is_held_while_the_database_is_down(tmp_path):
    settings = Settings(data_dir=tmp_path, api_keys=[KEY], status_hold_s=5.0, database_wait_s=0.3)
    deployment = open_deployment(settings)
    store = FlakyStore(deployment.store)
    app = create_app(ctx=build_context(settings, replace(deployment, store=store)), housekeeping=False)
    try:
        with TestClient(app, headers={"Authorization": f"Key {KEY}"}) as client:
            job_id = client.post(f"/{APP_ID}", json=REQUEST).json()["request_id"]
            deployment.store.claim("w", 30)
            assert client.get(f"/{APP_ID}/requests/{job_id}/status").json()["status"] == "IN_PROGRESS"
            store.down.set()
            with pytest.raises(StoreUnavailable):
                store.ping()
            started = time.monotonic()
            answer = client.get(f"/{APP_ID}/requests/{job_id}/status")
            assert answer.status_code == 503 and time.monotonic() - started < 3
    finally:
        deployment.close()


def test_repeat_polls_are_told_by_connection_request_state_and_time():
    now = [0.0]
    polls = RepeatPolls(window_s=5.0, max_connections=2, clock=lambda: now[0])
    a = connection_of({"client": ("10.0.0.1", 40001)}, "key-a")
    b = connection_of({"client": ("10.0.0.1", 40002)}, "key-a")
    assert connection_of({"client": None}, "key-a") is None and not polls.waiting(None, "r1")
    polls.answered(None, "r1", True)  # an unknown peer is never remembered
    assert not polls.waiting(a, "r1")  # first on this connection
    polls.answered(a, "r1", True)
    assert polls.waiting(a, "r1")
    assert not polls.waiting(b, "r1")  # another connection's first poll of the same request
    assert not polls.waiting(a, "r2")  # another request: a client walking a list
    polls.answered(a, "r2", True)
    assert not polls.waiting(a, "r1")
    polls.answered(a, "r1", False)  # found finished: the next poll is answered at once
    assert not polls.waiting(a, "r1")
    polls.answered(a, "r1", True)
    now[0] += 5.5
    assert not polls.waiting(a, "r1")  # too long ago: not a loop
    assert connection_of({"client": ("10.0.0.1", 40001)}, "key-b") != a  # one connection, another key
    polls.answered(a, "r1", True)
    polls.answered(b, "r1", True)
    polls.answered(connection_of({"client": ("10.0.0.2", 1)}, "key-a"), "r1", True)  # the oldest (a) is forgotten
    assert not polls.waiting(a, "r1") and polls.waiting(b, "r1")
