"""Managed keys end to end, through real ``photomaker serve --tiny`` processes and the ``photomaker keys`` CLI.

- the limited-key scenario of issue 15: ``--max-queued 3 --max-concurrent 1``, 8 quick submits while another
  key's backlog is queued: at most 4 accepted, the rest 429 with fal's ``detail`` and ``Retry-After``; ``keys
  revoke`` → 401 on the key's next poll within 2 s; ``keys usage --json`` counts exactly what was accepted;
- fair share through the service (one worker: B's one job completes while ≥ 15 of A's 20 are unfinished);
- two API replicas on one PostgreSQL database: concurrent submits through both never overshoot ``max_queued``,
  and a revocation is refused by both within 2 s;
- ``/admin/keys`` for admin keys only (403 otherwise), ``/api/key``, per-key ``/metrics``, the queue cap (503).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from live_server import API_KEY, APP, OTHER_KEY, LiveServer, small_request
from service.svc import data_uri, photos_zip


def keys_cli(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "photomaker_server.cli", "keys", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def create_key(data_dir: Path, name: str, *flags: str, env: dict[str, str] | None = None) -> str:
    done = keys_cli(data_dir, "create", name, *flags, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def body(steps: int = 4) -> dict:
    return small_request(data_uri(photos_zip(1), "application/zip"), num_inference_steps=steps)


def submit(client: httpx.Client, request: dict) -> httpx.Response:
    return client.post(f"/{APP}", json=request)


@pytest.fixture
def server(tiny_root, tmp_path):
    with LiveServer(tmp_path / "server", tiny_root) as live:
        yield live


def test_limited_key_scenario(server) -> None:
    secret = create_key(server.data_dir, "limited", "--max-queued", "3", "--max-concurrent", "1")
    other = server.client(OTHER_KEY)
    backlog = [submit(other, body(steps=8)).json()["request_id"] for _ in range(6)]
    limited = server.client(secret)
    request = body()
    answers = [submit(limited, request) for _ in range(8)]
    accepted = [r.json()["request_id"] for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code != 200]
    assert 3 <= len(accepted) <= 4, [r.text for r in answers]
    for r in refused:
        assert r.status_code == 429, r.text
        assert "max_queued" in r.json()["detail"]
        assert int(r.headers["Retry-After"]) >= 1

    usage = json.loads(keys_cli(server.data_dir, "usage", "--json").stdout)
    mine = next(u for u in usage if u["name"] == "limited")
    assert mine["jobs_submitted"] == len(accepted)
    assert set(mine) == {"name", "jobs_submitted", "jobs_completed", "jobs_failed", "jobs_cancelled", "images",
                         "inference_seconds"}

    status_path = f"/{APP}/requests/{accepted[0]}/status"
    assert limited.get(status_path).status_code == 200
    assert keys_cli(server.data_dir, "revoke", "limited").returncode == 0
    revoked_at = time.monotonic()
    while (code := limited.get(status_path).status_code) == 200 and time.monotonic() - revoked_at < 5:
        time.sleep(0.02)
    assert code == 401 and time.monotonic() - revoked_at < 2.0
    # 401 before any lookup: an unknown id answers the same.
    assert limited.get(f"/{APP}/requests/00000000-0000-0000-0000-000000000000/status").status_code == 401
    assert submit(limited, request).status_code == 401

    # The revoked key's accepted jobs still run; usage counts each once.
    owner_client = server.client(API_KEY)  # any valid key can read /health; results belong to their owner
    deadline = time.time() + 120
    while time.time() < deadline:
        listed = json.loads(keys_cli(server.data_dir, "usage", "--json").stdout)
        mine = next(u for u in listed if u["name"] == "limited")
        if mine["jobs_completed"] == len(accepted):
            break
        time.sleep(0.5)
    assert mine["jobs_submitted"] == mine["jobs_completed"] == len(accepted)
    assert mine["images"] == len(accepted) and mine["inference_seconds"] > 0
    assert owner_client.get("/health").status_code == 200
    assert backlog


def test_fair_share_one_worker(server) -> None:
    a, b = server.client(API_KEY), server.client(OTHER_KEY)
    request = body(steps=6)
    a_jobs = [submit(a, request).json()["request_id"] for _ in range(20)]
    b_job = submit(b, request).json()["request_id"]
    deadline = time.time() + 120
    while b.get(f"/{APP}/requests/{b_job}/status").json()["status"] != "COMPLETED":
        assert time.time() < deadline
        time.sleep(0.05)
    unfinished = [j for j in a_jobs if a.get(f"/{APP}/requests/{j}/status").json()["status"] != "COMPLETED"]
    assert len(unfinished) >= 15, len(unfinished)


def test_admin_http_and_visibility(server) -> None:
    admin_secret = create_key(server.data_dir, "ops", "--admin")
    admin, plain = server.client(admin_secret), server.client(API_KEY)
    assert plain.get("/admin/keys").status_code == 403
    assert server.client("not-a-key").get("/admin/keys").status_code == 401
    made = admin.post("/admin/keys", json={"name": "app2", "max_queued": 5, "requests_per_minute": 1})
    assert made.status_code == 201, made.text
    secret = made.json()["key"]
    assert admin.post("/admin/keys", json={"name": "app2"}).status_code == 409
    bad = admin.post("/admin/keys", json={"name": "bad name", "max_queued": -1})
    assert bad.status_code == 422 and len(bad.json()["detail"]) == 2
    names = {k["name"]: k for k in admin.get("/admin/keys").json()}
    assert {"ops", "app2", "config-1", "config-2"} <= set(names) and "key" not in names["app2"]
    assert admin.patch("/admin/keys/app2", json={"max_concurrent": 2}).json()["max_queued"] == 5
    assert admin.patch("/admin/keys/nope", json={"max_concurrent": 2}).status_code == 404

    app2 = server.client(secret)
    deadline = time.time() + 2  # the new key reaches the cache through the wake-up
    while (me := app2.get("/api/key")).status_code != 200:
        assert time.time() < deadline
        time.sleep(0.02)
    assert me.json() == {"name": "app2", "kind": "managed", "admin": False,
                         "limits": {"max_concurrent": 2, "max_queued": 5, "requests_per_minute": 1,
                                    "storage_quota_bytes": None, "storage_quota_files": None}}
    assert plain.get("/api/key").json()["name"].startswith("config-")
    assert submit(app2, body()).status_code == 200
    second = submit(app2, body())
    assert second.status_code == 429 and "requests_per_minute" in second.json()["detail"]
    assert 1 <= int(second.headers["Retry-After"]) <= 61

    usage = {u["name"]: u for u in admin.get("/admin/usage").json()}
    assert usage["app2"]["jobs_submitted"] == 1
    metrics = plain.get("/metrics").text
    assert 'photomaker_key_jobs_submitted_total{key="app2"} 1.0' in metrics
    assert secret not in metrics and 'key="ops"' in metrics
    assert admin.post("/admin/keys/app2/revoke").json()["revoked"] is True
    schema = plain.get("/openapi.json").json()
    assert "/admin/keys" in schema["paths"] and "/admin/keys/{name}/revoke" in schema["paths"]


def test_queue_cap_answers_503(tiny_root, tmp_path) -> None:
    live = LiveServer(tmp_path / "capped", tiny_root, env={"PHOTOMAKER_MAX_QUEUED": "2"}, extra_args=["--no-worker"])
    live.start(wait_ready=False)
    try:
        client = live.client(API_KEY)
        codes = [submit(client, body()).status_code for _ in range(3)]
        assert codes[:2] == [200, 200]
        refused = submit(client, body())
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        assert "queue is full" in refused.json()["detail"]
    finally:
        live.stop()


def test_two_replicas_on_postgresql(tiny_root, tmp_path, pg_server) -> None:
    url = pg_server.create_database()
    env = {"PHOTOMAKER_DATABASE_URL": url}
    replicas = [LiveServer(tmp_path / f"replica{i}", tiny_root, env=env, extra_args=["--no-worker"])
                for i in range(2)]
    try:
        for r in replicas:
            r.start(wait_ready=False)
        secret = create_key(replicas[0].data_dir, "limited", "--max-queued", "3", env=env)
        clients = [r.client(secret) for r in replicas]
        deadline = time.time() + 2
        while any(c.get("/api/key").status_code != 200 for c in clients):
            assert time.time() < deadline
            time.sleep(0.02)
        request = body()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: submit(clients[i % 2], request), range(8)))
        codes = sorted(r.status_code for r in answers)
        assert codes == [200] * 3 + [429] * 5, [r.text for r in answers]
        assert keys_cli(replicas[1].data_dir, "revoke", "limited", env=env).returncode == 0
        revoked_at = time.monotonic()
        pending = set(range(2))
        while pending and time.monotonic() - revoked_at < 5:
            pending = {i for i in pending if clients[i].get("/api/key").status_code == 200}
            time.sleep(0.02)
        assert not pending and time.monotonic() - revoked_at < 2.0
        usage = json.loads(keys_cli(replicas[0].data_dir, "usage", "--json", env=env).stdout)
        assert next(u for u in usage if u["name"] == "limited")["jobs_submitted"] == 3
    finally:
        for r in replicas:
            r.stop()
        pg_server.drop_database(url)
