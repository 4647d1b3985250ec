"""``photomaker serve --no-worker --api-processes K``: one API replica as K uvicorn processes on one port.

Checked from the outside: the replica (on PostgreSQL) answers submits, status and ``/metrics`` over many fresh
connections; each of its two child processes holds accepted connections (read from /proc: which process owns
the established sockets of the port), so both really serve; SIGTERM to the parent leaves nothing running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

import reaper
import substrate
from photomaker_server.api_processes import settings_environment
from photomaker_server.cli_args import build_parser, settings_from_args
from photomaker_server.settings import Settings

API_KEY = "api-processes-key"
APP = "fal-ai/photomaker"
HEADERS = {"Authorization": f"Key {API_KEY}"}
BODY = {"prompt": "a photo of a man img", "image_archive_url": "https://example.com/face.zip"}


def test_the_children_rebuild_the_parents_settings(monkeypatch, tmp_path):
    args = build_parser().parse_args(
        ["serve", "--no-worker", "--tiny", "--port", "8123", "--data-dir", str(tmp_path), "--api-key", "k1",
         "--api-key", "k2", "--fetch-allow", "10.0.0.0/8", "--shutdown-grace", "7.5",
         "--database-url", "postgresql://u:p@db/x"])
    monkeypatch.setenv("PHOTOMAKER_TOKEN_SECRET", "s3cret")  # from the environment, and a secret
    parent = settings_from_args(args)
    exported = settings_environment(parent)
    assert exported["PHOTOMAKER_TOKEN_SECRET"] == "s3cret" and exported["PHOTOMAKER_TINY"] == "true"
    assert "PHOTOMAKER_HOST" not in exported  # not set: the child takes the same default
    for name, value in exported.items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert child.model_dump() == parent.model_dump()
    assert child.token_secret.get_secret_value() == "s3cret"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_several_api_processes_need_no_worker(tmp_path, how):
    flag, env = (["--api-processes", "2"], {}) if how == "flag" else ([], {"PHOTOMAKER_API_PROCESSES": "2"})
    done = subprocess.run([sys.executable, "-m", "photomaker_server.cli", "serve", *flag,
                           "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--no-worker" in lines[0], done.stderr
    assert not (tmp_path / "jobs.db").exists()  # refused before anything was opened


def _listening_children(parent: int) -> list[int]:
    """The uvicorn children of ``parent`` (spawned interpreters), not multiprocessing helpers."""
    return sorted(child.pid for child in psutil.Process(parent).children()
                  if "spawn_main" in " ".join(child.cmdline()) and "resource_tracker" not in " ".join(child.cmdline()))


def _owners_of_connections(port: int, pids: list[int]) -> set[int]:
    """Which of ``pids`` hold an accepted (established, local port ``port``) TCP connection right now."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes.add(fields[9])
    owners = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                owners.add(pid)
    return owners


@pytest.fixture
def replica(tmp_path):
    pg = substrate.start_postgres(tmp_path / "pg")
    port = substrate.free_port()
    log_path = tmp_path / "serve.log"
    # K from the environment (PHOTOMAKER_API_PROCESSES), as a container's settings would give it.
    command = [sys.executable, "-m", "photomaker_server.cli", "serve", "--no-worker", "--tiny",
               "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path / "api"),
               "--database-url", pg.url]
    with open(log_path, "ab") as log:
        process = reaper.track(subprocess.Popen(
            command, env={**os.environ, "PHOTOMAKER_API_KEYS": API_KEY, "HF_HUB_OFFLINE": "1",
                          "PHOTOMAKER_API_PROCESSES": "2"},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    try:
        yield process, f"http://127.0.0.1:{port}", port, log_path
    finally:
        reaper.stop_group(process, timeout=30)
        pg.stop()


def test_one_replica_as_two_processes_serves_from_both_and_sigterm_stops_all(replica, tmp_path):
    process, url, port, log_path = replica
    deadline = time.monotonic() + 120
    while True:  # /health: up (no worker, so /ready stays 503)
        assert process.poll() is None, log_path.read_text(errors="replace")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log_path.read_text(errors="replace")
        time.sleep(0.3)
    children = _listening_children(process.pid)
    assert len(children) == 2, children

    ids = []
    for _ in range(3):
        submitted = httpx.post(f"{url}/{APP}", json=BODY, headers=HEADERS, timeout=30)
        assert submitted.status_code == 200, submitted.text
        ids.append(submitted.json()["request_id"])

    # Fresh connections until each child has accepted at least one (the kernel hands each accept to either).
    served: set[int] = set()
    clients = []
    try:
        for attempt in range(200):
            client = httpx.Client(base_url=url, headers=HEADERS, timeout=30)
            clients.append(client)
            request_id = ids[attempt % len(ids)]
            status = client.get(f"/{APP}/requests/{request_id}/status")
            assert status.status_code == 200 and status.json()["status"] == "IN_QUEUE", status.text
            metrics = client.get("/metrics")
            assert metrics.status_code == 200 and "photomaker_queue_depth 3.0" in metrics.text, metrics.text[:500]
            served |= _owners_of_connections(port, children)
            if served == set(children) and attempt >= 20:
                break
    finally:
        for client in clients:
            client.close()
    assert served == set(children), f"only {served} of {children} accepted connections"
    output = log_path.read_text(errors="replace")
    assert output.count("PhotoMaker server on") == 1, output  # the banner once, from the parent
    for pid in children:  # each child's lines (its access lines among them) say which process wrote them
        assert f" api[{pid}] INFO uvicorn.access" in output, output[-3000:]

    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0, log_path.read_text(errors="replace")
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in children):
        assert time.monotonic() < deadline, f"API processes still running: {children}"
        time.sleep(0.1)
    while members := reaper.group_members(process.pid):  # e.g. multiprocessing's resource tracker, exiting too
        assert time.monotonic() < deadline, [" ".join(psutil.Process(pid).cmdline()) for pid in members]
        time.sleep(0.1)
    assert reaper.processes_mentioning(str(tmp_path / "api")) == []


def test_the_api_processes_do_not_outlive_a_killed_parent(replica):
    process, url, _port, log_path = replica
    deadline = time.monotonic() + 120
    while log_path.read_text(errors="replace").count("Application startup complete") < 2:  # both apps built
        assert process.poll() is None and time.monotonic() < deadline, log_path.read_text(errors="replace")
        time.sleep(0.3)
    children = _listening_children(process.pid)
    assert len(children) == 2, children
    os.kill(process.pid, signal.SIGKILL)  # no chance to stop them: the kernel's parent-death signal must
    process.wait(10)
    deadline = time.monotonic() + 30
    while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in children):
        assert time.monotonic() < deadline, f"API processes outlived their parent: {children}"
        time.sleep(0.1)
