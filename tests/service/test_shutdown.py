"""Stopping the service with signals, with real processes: SIGTERM/SIGINT to ``serve`` alone, kill -9 of the API
process alone, and a standalone ``photomaker worker``. Nothing of the service may be left running afterwards, and
the job that was running is either finished or back in the queue at once (its attempt not counted).

Each server runs in its own session (``LiveServer`` starts it with ``start_new_session``), so "every process of the
service" is every live process whose session id is the server's pid.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from live_server import LiveServer
from service.svc import Api, messages, small

RELEASED = "Worker stopped; the request is back in the queue"


def _long_job(api: Api) -> str:
    """A job that is still running when the signal follows its first step, yet cheap to run to the end after a
    restart on a loaded machine (100 steps, but small: 128x128)."""
    return api.submit(small(num_inference_steps=100, image_size={"width": 128, "height": 128}, seed=2))


def _session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(stat.parent.name))
    return pids


def _wait_gone(sid: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while _session_pids(sid) and time.time() < deadline:
        time.sleep(0.1)
    left = _session_pids(sid)
    assert not left, [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left]


def _row(data_dir: Path, request_id: str) -> tuple[str, int, str | None]:
    db = sqlite3.connect(data_dir / "jobs.db")
    try:
        return db.execute("select status, attempts, lease_owner from jobs where id = ?", (request_id,)).fetchone()
    finally:
        db.close()


def _stop(server: LiveServer, sig: int, timeout: float = 120) -> int:
    """Send ``sig`` to the server process only; its exit code. Afterwards nothing of its session is left."""
    server.process.send_signal(sig)
    try:
        code = server.process.wait(timeout)
    finally:
        if server.process.poll() is None:
            os.killpg(server.process.pid, signal.SIGKILL)
    _wait_gone(server.process.pid)
    return code


def _restart(old: LiveServer, tiny_root, **kwargs) -> LiveServer:  # noqa: ANN001
    new = LiveServer(old.data_dir, tiny_root, **kwargs)
    new.port = old.port
    return new.start()


def _cleanup(server: LiveServer) -> None:
    if server.process is not None and server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
    for pid in _session_pids(server.process.pid) if server.process is not None else []:
        os.kill(pid, signal.SIGKILL)


def test_sigterm_finishes_the_running_job_refuses_new_ones_and_leaves_nothing_behind(tiny_root, tmp_path):
    # A grace period no loaded CI machine runs out of: the job in hand finishes before the exit.
    server = LiveServer(tmp_path / "data", tiny_root, env={"PHOTOMAKER_SHUTDOWN_GRACE_S": "600"}).start()
    try:
        api = Api(server)
        running = api.submit(small(num_inference_steps=30, image_size={"width": 128, "height": 128}, seed=2))
        queued = api.submit(small(seed=3))
        assert api.wait_for_log(running, "Step ")["status"] == "IN_PROGRESS"
        assert "ready: " in server.log() and "model loaded in" in server.log()

        server.process.send_signal(signal.SIGTERM)
        refused = api.submit_response(small(seed=4))  # the job in hand is still running: the API still answers
        assert refused.status_code == 503, refused.text
        assert refused.json() == {"detail": refused.json()["detail"], "error_type": "server_shutting_down"}
        assert "shutting down" in refused.json()["detail"]
        assert int(refused.headers["retry-after"]) > 0
        assert server.client(None).get("/ready").status_code == 503
        assert server.process.wait(120) == 0, server.log()[-3000:]
        _wait_gone(server.process.pid)
    finally:
        _cleanup(server)
    assert _row(server.data_dir, running) == ("completed", 1, None)
    assert _row(server.data_dir, queued) == ("queued", 0, None)  # the worker claimed nothing after the signal
    assert "SIGTERM received" in server.log()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_past_the_grace_period_the_job_goes_back_to_the_queue_at_once(tiny_root, tmp_path, sig):
    env = {"PHOTOMAKER_SHUTDOWN_GRACE_S": "0"}
    server = LiveServer(tmp_path / "data", tiny_root, env=env).start()
    try:
        api = Api(server)
        running = _long_job(api)
        assert api.wait_for_log(running, "Step ")["status"] == "IN_PROGRESS"
        assert _stop(server, sig) == 0, server.log()[-3000:]
    finally:
        _cleanup(server)
    # Back in the queue right away (not IN_PROGRESS until a lease runs out), this attempt not counted.
    assert _row(server.data_dir, running) == ("queued", 0, None)

    second = _restart(server, tiny_root)
    try:
        final = Api(second).wait(running, timeout=600)
        assert final.get("error") is None, final
        lines = messages(final)
        assert RELEASED in lines and not any(m.startswith("Worker lost") for m in lines), lines
        assert lines[-1] == "Completed"
        assert _stop(second, signal.SIGTERM) == 0
    finally:
        _cleanup(second)


def test_a_worker_whose_server_is_killed_exits_by_itself_and_hands_its_job_back(tiny_root, tmp_path):
    server = LiveServer(tmp_path / "data", tiny_root).start()
    try:
        api = Api(server)
        running = _long_job(api)
        assert api.wait_for_log(running, "Step ")["status"] == "IN_PROGRESS"
        os.kill(server.process.pid, signal.SIGKILL)  # the API process alone, not its group
        server.process.wait(10)
        _wait_gone(server.process.pid)  # the orphaned worker went by itself
    finally:
        _cleanup(server)
    assert _row(server.data_dir, running) == ("queued", 0, None)
    assert f"handed {running} back to the queue" in server.log()

    second = _restart(server, tiny_root)
    try:
        final = Api(second).wait(running, timeout=600)
        assert final.get("error") is None and RELEASED in messages(final), final
        assert _stop(second, signal.SIGINT) == 0
    finally:
        _cleanup(second)


def _start_worker(server: LiveServer, *args: str) -> subprocess.Popen:
    log = open(server.data_dir / "worker.log", "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "photomaker_server.cli", "worker", "--tiny", "--data-dir", str(server.data_dir), *args],
        env=server.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def _wait_ready(server: LiveServer, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while server.client(None).get("/ready").status_code != 200:
        assert time.time() < deadline, (server.data_dir / "worker.log").read_text()
        time.sleep(0.2)


def test_a_standalone_worker_stops_on_sigterm_and_releases_its_job(tiny_root, tmp_path):
    server = LiveServer(tmp_path / "data", tiny_root, extra_args=["--no-worker"]).start(wait_ready=False)
    workers: list[subprocess.Popen] = []
    try:
        api = Api(server)
        workers.append(_start_worker(server, "--shutdown-grace", "0"))
        _wait_ready(server)
        running = _long_job(api)
        assert api.wait_for_log(running, "Step ")["status"] == "IN_PROGRESS"
        workers[0].send_signal(signal.SIGTERM)
        assert workers[0].wait(60) == 0, (server.data_dir / "worker.log").read_text()[-3000:]
        _wait_gone(workers[0].pid)
        assert _row(server.data_dir, running) == ("queued", 0, None)

        # Another worker picks it up and finishes it.
        workers.append(_start_worker(server))
        final = api.wait(running, timeout=600)
        assert final.get("error") is None and RELEASED in messages(final), final
        workers[1].send_signal(signal.SIGINT)
        assert workers[1].wait(60) == 0
        _wait_gone(workers[1].pid)
        assert _stop(server, signal.SIGTERM) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(10)
        _cleanup(server)
