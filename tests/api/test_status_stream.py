"""The SSE status stream in-process: which wake-ups it listens to, and that its subscription never outlives it."""

from __future__ import annotations

import json
import threading
import time

import pytest
from starlette.testclient import TestClient

from helpers import stored_request, stored_output
from photomaker_server.api.app import create_app
from photomaker_server.api.auth import owner_id
from photomaker_server.jobs.keys import KEYS_TOPIC
from photomaker_server.settings import APP_ID, Settings

KEY = "stream-test-key"


@pytest.fixture
def app(tmp_path):
    app = create_app(Settings(data_dir=tmp_path, api_keys=[KEY]), housekeeping=False)
    yield app
    app.state.ctx.wakeups.close()
    app.state.ctx.store.close()


def _topics(app) -> dict:  # noqa: ANN001
    """Subscribed topics but the key cache's (``keys``: one subscription for the app's lifetime)."""
    return {t: s for t, s in app.state.ctx.wakeups._hub._topics.items() if t != KEYS_TOPIC}


class _CountingStore:
    """The context's store, counting ``get`` calls (one per time a stream looks at its job)."""

    def __init__(self, store) -> None:  # noqa: ANN001
        self.store, self.gets = store, 0

    def get(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        self.gets += 1
        return self.store.get(*args, **kwargs)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.store, name)


def _events(response) -> list[dict]:  # noqa: ANN001
    return [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]


@pytest.mark.parametrize("logs", ["0", "1"])
def test_a_stream_wakes_for_log_lines_only_when_it_shows_them(app, logs):
    ctx = app.state.ctx
    store = ctx.store
    job = store.submit(owner_id(KEY), APP_ID, stored_request())
    store.claim("w", 30)
    counting = _CountingStore(store)
    ctx.store = counting

    def worker() -> None:
        time.sleep(0.3)
        before = counting.gets
        for i in range(5):
            store.append_log(job.id, f"Step {i + 1}/5")
        time.sleep(0.3)
        woken_by_logs.append(counting.gets - before)
        store.complete(job.id, "w", stored_output(), 1.0, last_log="Completed")

    woken_by_logs: list[int] = []
    thread = threading.Thread(target=worker)
    with TestClient(app) as client:
        thread.start()
        with client.stream("GET", f"/{APP_ID}/requests/{job.id}/status/stream", params={"logs": logs},
                           headers={"Authorization": f"Key {KEY}"}) as response:
            events = _events(response)
        thread.join(10)
    ctx.store = store
    assert events[-1]["status"] == "COMPLETED"
    if logs == "0":
        assert woken_by_logs == [0]  # five log lines, not one read
        assert all(event["logs"] is None for event in events)
    else:
        assert woken_by_logs[0] >= 1
        streamed = [entry["message"] for event in events for entry in event["logs"]]
        assert streamed[-6:] == ["Step 1/5", "Step 2/5", "Step 3/5", "Step 4/5", "Step 5/5", "Completed"]
    assert _topics(app) == {}  # the stream's subscription ended with it


def test_no_subscription_is_left_behind_by_unknown_ids_or_clients_that_leave(app):
    store = app.state.ctx.store
    headers = {"Authorization": f"Key {KEY}"}
    with TestClient(app) as client:
        assert client.get(f"/{APP_ID}/requests/no-such-id/status/stream", headers=headers).status_code == 404
        assert client.get(f"/{APP_ID}/requests/a%0Ab/status/stream", headers=headers).status_code == 404
        other = store.submit(owner_id("someone else"), APP_ID, stored_request())
        assert client.get(f"/{APP_ID}/requests/{other.id}/status/stream", headers=headers).status_code == 404
        assert _topics(app) == {}
        job = store.submit(owner_id(KEY), APP_ID, stored_request())
        with client.stream("GET", f"/{APP_ID}/requests/{job.id}/status/stream", headers=headers) as response:
            first = next(line for line in response.iter_lines() if line.startswith("data:"))
            assert json.loads(first[5:])["status"] == "IN_QUEUE"
        # The client went away mid-stream (the job is still queued): the subscription goes when the server notices.
        deadline = time.time() + 10
        while _topics(app) and time.time() < deadline:
            time.sleep(0.05)
        assert _topics(app) == {}
