"""Service benchmark against a live ``photomaker serve --tiny``: per-job overhead, status and submit throughput, memory.

Starts the real server (API process + spawned worker, SQLite job store) through ``tests/live_server.LiveServer`` on
a temporary data directory with the tiny random-weight model, then measures, all on 127.0.0.1 and every loop bounded
in both count and time:

a.  **overhead per job**: N sequential small jobs (64x64, 4 steps), each arriving at a random moment; for each,
    (submit → COMPLETED seen by the client) minus the job's own ``metrics.inference_time``; once watching the SSE
    stream, once polling status every 20 ms (``--poll-interval``; the server holds a repeat poll of a running
    request until it changes, ``PHOTOMAKER_STATUS_HOLD_S=0`` in this environment turns that off). The job's log
    timestamps split it into submit, queue wait (worker claim), job run outside inference, and notification.
b.  **status polling** by 200 concurrent clients for ~15 s: requests/s, latency p50/p90/p99, errors. Two load
    generators: ``httpx.AsyncClient`` and a minimal asyncio HTTP/1.1 client ("raw"; httpx costs the client about as
    much CPU per request as the server spends, so on 2 cores it measures the client). b' repeats it on jobs still
    waiting in the queue (the status answer then also counts the queue position).
c.  **submit** by 50 concurrent clients (~10 s, bounded count), both load generators; meanwhile a thread appends a
    log line every 25 ms as the worker does after every denoising step, to show SQLite write-lock waits.
    c' repeats it (raw) with the worker running jobs.
d.  **memory**: RSS of the API process and of the worker (``/proc/<pid>/status``) at idle and after the load, and
    the CPU seconds each process used in each phase (API CPU ms per request).
e.  the API process's memory when started *without* ``--tiny`` (production layout; ``--tiny`` makes the API process
    build the tiny model itself, which imports torch there).
f.  the API CPU that open SSE streams cost while their jobs wait in the queue (short queue, then long queue).

During b, c and f the worker is paused (SIGSTOP, only outside a write transaction; SIGCONT afterwards) so that the
tiny model's CPU-bound jobs do not compete with the API for the 2 cores (``--no-pause-worker`` to leave it running).

Example::

    .venv/bin/python bench/service_bench.py --json-out bench/results/service-cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import suppress
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import image_bytes, make_face  # noqa: E402
from live_server import API_KEY, APP, LiveServer, small_request  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------------------------
def status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads) from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def memory(pids: dict[str, int | None]) -> dict[str, dict[str, float | None]]:
    out = {}
    for name, pid in pids.items():
        if pid is None:
            continue
        rss, hwm = status_kb(pid, "VmRSS"), status_kb(pid, "VmHWM")
        out[name] = {"rss_mib": rss and round(rss / 1024, 1), "peak_rss_mib": hwm and round(hwm / 1024, 1)}
    return out


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def dist_ms(values_s: list[float]) -> dict[str, float | None]:
    """Latency summary in ms; values in completion order, so the first and last fifth show a trend."""
    ms = [v * 1000 for v in values_s]
    if not ms:
        return {"n": 0}
    fifth = max(1, len(ms) // 5)
    return {
        "p50_first_fifth": round(statistics.median(ms[:fifth]), 2),
        "p50_last_fifth": round(statistics.median(ms[-fifth:]), 2),
        "n": len(ms),
        "min": round(min(ms), 2),
        "p50": round(statistics.median(ms), 2),
        "p90": round(pct(ms, 90), 2),
        "p99": round(pct(ms, 99), 2),
        "max": round(max(ms), 2),
        "mean": round(statistics.fmean(ms), 2),
    }


class CpuMeter:
    """CPU seconds used by the API process, the worker and this load generator between start() and stop()."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {k: v for k, v in pids.items() if v is not None}

    def start(self) -> CpuMeter:
        self.t0 = time.perf_counter()
        self.c0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.self0 = time.process_time()
        self.load0 = loadavg()
        return self

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        used = {}
        for name, pid in self.pids.items():
            now = cpu_seconds(pid)
            used[name] = None if now is None or self.c0[name] is None else round(now - self.c0[name], 3)
        used["load_generator"] = round(time.process_time() - self.self0, 3)
        return {"wall_s": round(wall, 3), "cpu_s": used, "load_before": self.load0, "load_after": loadavg()}


# --------------------------------------------------------------------------------------------------------------
def ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def job_breakdown(client: httpx.Client, request_id: str, submitted_at: float) -> dict[str, float | None]:
    """Split a finished job's life using its own log timestamps (same machine, same clock)."""
    body = client.get(f"/{APP}/requests/{request_id}/status", params={"logs": "1"}).json()
    logs = body.get("logs") or []
    first = {}
    for entry in logs:
        message = entry["message"]
        for key, prefix in (("queued", "Request queued"), ("started", "Started on worker"), ("fetch", "Fetching"),
                            ("saving", "Saving"), ("completed", "Completed")):
            if message.startswith(prefix) and key not in first:
                first[key] = ts(entry["timestamp"])
    out = {}
    if "started" in first:
        out["submit_to_claim_s"] = first["started"] - submitted_at
    if "started" in first and "completed" in first:
        out["claim_to_completed_log_s"] = first["completed"] - first["started"]
    if "saving" in first and "completed" in first:
        out["saving_to_completed_s"] = first["completed"] - first["saving"]
    out["inference_time_s"] = (body.get("metrics") or {}).get("inference_time")
    return out


def submit_one(client: httpx.Client, body: dict, timing: dict | None = None) -> tuple[str, float]:
    started = time.time()
    r = client.post(f"/{APP}", json=body)
    r.raise_for_status()
    if timing is not None:
        timing["submit_http_s"] = time.time() - started
    return r.json()["request_id"], started


def wait_sse(client: httpx.Client, request_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    with client.stream("GET", f"/{APP}/requests/{request_id}/status/stream", timeout=timeout) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if event.get("status") == "COMPLETED":
                    return event
            if time.monotonic() > deadline:
                break
    raise TimeoutError(f"no COMPLETED event for {request_id} within {timeout}s")


def wait_poll(client: httpx.Client, request_id: str, interval: float, timeout: float) -> tuple[dict, int]:
    deadline = time.monotonic() + timeout
    polls = 0
    while time.monotonic() < deadline:
        polls += 1
        body = client.get(f"/{APP}/requests/{request_id}/status").json()
        if body.get("status") == "COMPLETED":
            return body, polls
        time.sleep(interval)
    raise TimeoutError(f"{request_id} not COMPLETED within {timeout}s")


def phase_overhead(server: LiveServer, body: dict, n: int, mode: str, poll_interval: float, timeout: float) -> dict:
    rows = []
    rng = random.Random(7)
    with server.client() as client:
        for _ in range(n):
            # Arrive at a random moment relative to the worker's idle poll (as independent clients would).
            time.sleep(rng.uniform(0.05, 0.45))
            timing: dict = {}
            request_id, submitted = submit_one(client, body, timing)
            if mode == "sse":
                final, polls = wait_sse(client, request_id, timeout), None
            else:
                final, polls = wait_poll(client, request_id, poll_interval, timeout)
            seen = time.time()
            if final.get("error"):
                raise RuntimeError(f"job failed: {final['error']}")
            inference = final["metrics"]["inference_time"]
            # The job's own work is its inference and its input reading (issue 14: "overhead beyond its own work").
            inputs = client.get(f"/{APP}/requests/{request_id}").json()["timings"].get("inputs", 0.0)
            row = {"end_to_end_s": seen - submitted, "inference_time_s": inference, "inputs_s": inputs,
                   "overhead_s": seen - submitted - inference, "overhead_beyond_work_s": seen - submitted - inference - inputs,
                   "polls": polls, **timing}
            row.update({k: v for k, v in job_breakdown(client, request_id, submitted).items() if k != "inference_time_s"})
            if "claim_to_completed_log_s" in row:
                row["completed_log_to_seen_s"] = row["end_to_end_s"] - row["submit_to_claim_s"] - row["claim_to_completed_log_s"]
            if "claim_to_completed_log_s" in row:
                row["job_run_minus_inference_s"] = row["claim_to_completed_log_s"] - inference
            rows.append(row)

    keys = ["end_to_end_s", "inference_time_s", "inputs_s", "overhead_s", "overhead_beyond_work_s", "submit_http_s",
            "submit_to_claim_s",
            "claim_to_completed_log_s", "job_run_minus_inference_s", "saving_to_completed_s", "completed_log_to_seen_s"]
    return {"mode": mode, "jobs": n, **({"poll_interval_s": poll_interval} if mode == "poll" else {}),
            **{k: dist_ms([r[k] for r in rows if r.get(k) is not None]) for k in keys}, "rows": rows}


# --------------------------------------------------------------------------------------------------------------
async def hammer(url: str, make_request, concurrency: int, duration_s: float, max_requests: int) -> dict:
    """``concurrency`` async clients, each sending requests back to back until time or the request budget runs out."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    statuses: dict[int, int] = {}
    budget = [max_requests]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Key {API_KEY}"}, limits=limits,
                                 timeout=httpx.Timeout(30.0, pool=60.0)) as client:
        start = time.perf_counter()
        stop_at = start + duration_s

        async def one_client(index: int) -> None:
            i = 0
            while time.perf_counter() < stop_at and budget[0] > 0:
                budget[0] -= 1
                method, path, kwargs = make_request(index, i)
                i += 1
                t0 = time.perf_counter()
                try:
                    r = await client.request(method, path, **kwargs)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code >= 400:
                        errors[f"http_{r.status_code}"] = errors.get(f"http_{r.status_code}", 0) + 1
                    else:
                        latencies.append(time.perf_counter() - t0)
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

        await asyncio.wait_for(asyncio.gather(*(one_client(i) for i in range(concurrency))), duration_s + 90)
        elapsed = time.perf_counter() - start
    total = len(latencies) + sum(errors.values())
    return {"client": "httpx", "concurrency": concurrency, "duration_s": round(elapsed, 3), "requests": total, "ok": len(latencies),
            "errors": errors, "error_count": sum(errors.values()), "status_codes": statuses,
            "requests_per_s": round(len(latencies) / elapsed, 1), "latency_ms": dist_ms(latencies)}


async def hammer_raw(url: str, make_request, concurrency: int, duration_s: float, max_requests: int) -> dict:
    """Same contract as ``hammer`` with a minimal HTTP/1.1 keep-alive client on asyncio streams.

    httpx costs the load generator about as much CPU per request as the server spends answering it; on a small
    machine that makes the client the bottleneck. This client pre-encodes each request and parses only the status
    line and Content-Length, so the numbers it gets are much closer to the server's own capacity.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    latencies: list[float] = []
    errors: dict[str, int] = {}
    statuses: dict[int, int] = {}
    budget = [max_requests]
    encoded: dict[tuple, bytes] = {}

    def encode(method: str, path: str, kwargs: dict) -> bytes:
        body = json.dumps(kwargs["json"]).encode() if "json" in kwargs else b""
        key = (method, path, len(body))
        if key not in encoded:
            head = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Key {API_KEY}\r\n"
                    f"Accept: */*\r\n" + (f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n" if body else "")
                    + "\r\n")
            encoded[key] = head.encode() + body
        return encoded[key]

    start = time.perf_counter()
    stop_at = start + duration_s

    async def one_client(index: int) -> None:
        reader = writer = None
        i = 0
        try:
            while time.perf_counter() < stop_at and budget[0] > 0:
                budget[0] -= 1
                method, path, kwargs = make_request(index, i)
                i += 1
                data = encode(method, path, kwargs)
                t0 = time.perf_counter()
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, port)
                    writer.write(data)
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
                    lines = head.decode("latin-1").split("\r\n")
                    code = int(lines[0].split()[1])
                    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                    await reader.readexactly(int(headers.get("content-length", "0")))
                    if headers.get("connection", "").lower() == "close":
                        writer.close()
                        reader = writer = None
                    statuses[code] = statuses.get(code, 0) + 1
                    if code >= 400:
                        errors[f"http_{code}"] = errors.get(f"http_{code}", 0) + 1
                    else:
                        latencies.append(time.perf_counter() - t0)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                        ValueError, IndexError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    if writer is not None:
                        writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    await asyncio.wait_for(asyncio.gather(*(one_client(i) for i in range(concurrency))), duration_s + 90)
    elapsed = time.perf_counter() - start
    total = len(latencies) + sum(errors.values())
    return {"client": "raw", "concurrency": concurrency, "duration_s": round(elapsed, 3), "requests": total,
            "ok": len(latencies), "errors": errors, "error_count": sum(errors.values()), "status_codes": statuses,
            "requests_per_s": round(len(latencies) / elapsed, 1), "latency_ms": dist_ms(latencies)}


def _hammer(kind: str):
    return hammer_raw if kind == "raw" else hammer


class paused:
    """SIGSTOP the worker for a phase, so the API's own cost is measured without the tiny worker's CPU use.

    It is only left stopped while it holds no write lock on the job store (checked with a short BEGIN IMMEDIATE),
    so the API's writes never wait for it. SIGCONT on exit, whatever happens.
    """

    def __init__(self, pid: int | None, db: Path | None, enabled: bool = True) -> None:
        self.pid, self.db, self.enabled = pid, db, enabled and pid is not None

    def __enter__(self) -> paused:
        import signal
        import sqlite3

        if not self.enabled:
            return self
        for _ in range(50):
            os.kill(self.pid, signal.SIGSTOP)
            try:
                conn = sqlite3.connect(str(self.db), timeout=0.2, isolation_level=None)
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute("ROLLBACK")
                    return self
                finally:
                    conn.close()
            except sqlite3.OperationalError:
                os.kill(self.pid, signal.SIGCONT)
                time.sleep(0.05)
        raise RuntimeError("could not pause the worker outside a write transaction")

    def __exit__(self, *exc: object) -> None:
        import signal

        if self.enabled:
            with suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)


def phase_pollers(server: LiveServer, pids, request_ids: list[str], concurrency: int, duration: float, max_requests: int,
                  kind: str = "httpx") -> dict:
    def make(index: int, i: int):
        return "GET", f"/{APP}/requests/{request_ids[(index + i) % len(request_ids)]}/status", {}

    meter = CpuMeter(pids).start()
    result = asyncio.run(_hammer(kind)(server.url, make, concurrency, duration, max_requests))
    result["cpu"] = meter.stop()
    api_cpu = result["cpu"]["cpu_s"].get("api")
    if api_cpu is not None and result["ok"]:
        result["api_cpu_ms_per_request"] = round(api_cpu * 1000 / result["ok"], 3)
    return result


def phase_submitters(server: LiveServer, pids, body: dict, concurrency: int, duration: float, max_requests: int,
                     kind: str = "httpx") -> dict:
    submitted: list[str] = []

    def make(index: int, i: int):
        return "POST", f"/{APP}", {"json": body}

    meter = CpuMeter(pids).start()
    result = asyncio.run(_hammer(kind)(server.url, make, concurrency, duration, max_requests))
    result["cpu"] = meter.stop()
    api_cpu = result["cpu"]["cpu_s"].get("api")
    if api_cpu is not None and result["ok"]:
        result["api_cpu_ms_per_request"] = round(api_cpu * 1000 / result["ok"], 3)
    return result, submitted


class PlainServer(LiveServer):
    """``photomaker serve`` *without* ``--tiny``: the tiny model's files passed as if they were real weights
    (``PHOTOMAKER_BASE_MODEL`` …), so the API process starts as in production (``--tiny`` makes the API process
    build/check the tiny model itself, which imports torch and diffusers there)."""

    def __init__(self, data_dir: Path, tiny_root: Path) -> None:
        from photomaker_server.engine.tiny import ensure_tiny_model

        locations = ensure_tiny_model(tiny_root)
        super().__init__(data_dir, tiny_root, env={
            "PHOTOMAKER_BASE_MODEL": str(locations["photomaker"]),
            "PHOTOMAKER_STYLE_BASE_MODEL": str(locations["photomaker-style"]),
            "PHOTOMAKER_PHOTOMAKER_CHECKPOINT": str(locations["checkpoint"]),
            "PHOTOMAKER_DEVICE": "cpu",
        })

    def start(self, wait_ready: bool = True, timeout: float = 120) -> LiveServer:
        import subprocess

        args = [sys.executable, "-m", "photomaker_server.cli", "serve", "--data-dir", str(self.data_dir),
                "--port", str(self.port), *self.extra_args]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            with suppress(httpx.HTTPError):
                if self.client().get("/ready" if wait_ready else "/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.3)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()}")


def maps_torch(pid: int) -> bool | None:
    """Whether the process has libtorch loaded."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None


def phase_plain_api(tmp: Path, tiny_root: Path, body: dict, pollers: int, seconds: float, max_requests: int) -> dict:
    server = PlainServer(tmp / "data-plain", tiny_root)
    out: dict = {}
    try:
        t0 = time.perf_counter()
        server.start(timeout=180)
        out["startup_to_ready_s"] = round(time.perf_counter() - t0, 2)
        pids = {"api": server.process.pid, "worker": worker_pid(server)}
        out["api_has_libtorch"], out["worker_has_libtorch"] = maps_torch(pids["api"]), pids["worker"] and maps_torch(pids["worker"])
        time.sleep(3)
        out["memory_idle"] = memory(pids)
        with server.client() as client:
            finished = []
            for _ in range(3):
                rid, _ = submit_one(client, body)
                wait_sse(client, rid, 120)
                finished.append(rid)
        with paused(pids["worker"], job_db(server)):
            out["status_polling_finished"] = phase_pollers(server, pids, finished, pollers, seconds, max_requests, "raw")
        out["memory_after_polling"] = memory(pids)
    finally:
        server.stop()
    return out


class WriteProbe:
    """A thread that appends a log line to a finished job every ``interval`` seconds through the job store, as the
    worker does after every denoising step, and records how long each write takes (SQLite write-lock contention)."""

    def __init__(self, db: Path, job_id: str, interval: float = 0.025) -> None:
        import threading

        self.db, self.job_id, self.interval = db, job_id, interval
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from photomaker_server.jobs.factory import open_job_store

        store = open_job_store(self.db)
        try:
            while not self.stop.wait(self.interval):
                t0 = time.perf_counter()
                store.append_log(self.job_id, "bench write probe", "DEBUG")
                self.latencies.append(time.perf_counter() - t0)
        finally:
            store.close()

    def __enter__(self) -> WriteProbe:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)

    def result(self) -> dict:
        return dist_ms(self.latencies)


async def hold_streams(url: str, request_ids: list[str], count: int, seconds: float) -> dict:
    """Open ``count`` SSE status streams (round-robin over ``request_ids``), read them for ``seconds``, close them."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    events = [0]
    opened = [0]
    errors: dict[str, int] = {}

    async def one(index: int) -> None:
        rid = request_ids[index % len(request_ids)]
        writer = None
        try:
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            writer.write(f"GET /{APP}/requests/{rid}/status/stream HTTP/1.1\r\nHost: {parts.hostname}\r\n"
                         f"Authorization: Key {API_KEY}\r\n\r\n".encode())
            opened[0] += 1
            while True:
                line = await reader.readline()
                if not line:
                    return
                if line.startswith(b"data:"):
                    events[0] += 1
        except (OSError, asyncio.IncompleteReadError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        finally:
            if writer is not None:
                writer.close()

    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"streams": count, "opened": opened[0], "seconds": seconds, "events": events[0], "errors": errors}


def phase_idle_streams(server: LiveServer, pids, request_ids: list[str], count: int, seconds: float) -> dict:
    """API CPU spent by ``count`` open SSE streams whose job does not change (waiting in the queue)."""
    settle = 1.0
    meter_all = CpuMeter(pids).start()

    async def run() -> dict:
        holder = asyncio.create_task(hold_streams(server.url, request_ids, count, seconds + settle))
        await asyncio.sleep(settle)  # let every stream open and send its first event
        meter = CpuMeter(pids).start()
        await asyncio.sleep(seconds)
        steady = meter.stop()
        out = await holder
        out["steady"] = steady
        return out

    out = asyncio.run(run())
    out["cpu_total"] = meter_all.stop()
    api = out["steady"]["cpu_s"].get("api")
    if api is not None:
        out["api_cpu_fraction_of_one_core"] = round(api / out["steady"]["wall_s"], 3)
        out["api_cpu_ms_per_stream_per_s"] = round(api * 1000 / out["steady"]["wall_s"] / count, 3)
    return out


def job_db(server: LiveServer) -> Path | None:
    path = server.data_dir / "jobs.db"  # Settings.db_path
    return path if path.is_file() else None


def worker_pid(server: LiveServer) -> int | None:
    """The spawned worker: the API process's child whose command line is multiprocessing's ``spawn_main``
    (not its ``resource_tracker``)."""
    for pid in server.worker_pids():
        with suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    return None


def queued_ids(server: LiveServer, limit: int) -> list[str]:
    """IDs of jobs still waiting, read from the job store file (the HTTP API has no listing)."""
    import sqlite3

    db = job_db(server)
    if db is None:
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        rows = conn.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
    return [r[0] for r in rows]


def count_jobs(server: LiveServer) -> dict[str, int]:
    import sqlite3

    db = job_db(server)
    if db is None:
        return {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return dict(conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())


# --------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20, help="sequential jobs per overhead mode (SSE, polling)")
    parser.add_argument("--poll-interval", type=float, default=0.02)
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps of the overhead jobs (default: the tests' 4); more makes jobs longer "
                             "than a poll interval, as real ones are")
    parser.add_argument("--pollers", type=int, default=200)
    parser.add_argument("--poll-seconds", type=float, default=15.0)
    parser.add_argument("--poll-max-requests", type=int, default=100_000)
    parser.add_argument("--queued-poll-seconds", type=float, default=8.0, help="0: skip polling queued jobs")
    parser.add_argument("--submitters", type=int, default=50)
    parser.add_argument("--submit-seconds", type=float, default=10.0)
    parser.add_argument("--submit-max-requests", type=int, default=3000)
    parser.add_argument("--plain-api-seconds", type=float, default=8.0,
                        help="status load on a server started without --tiny (production-like API process); 0: skip")
    parser.add_argument("--clients", type=lambda v: v.split(","), default=["httpx", "raw"],
                        help="load generators for (b) and (c): httpx (AsyncClient), raw (minimal asyncio HTTP/1.1)")
    parser.add_argument("--no-pause-worker", dest="pause_worker", action="store_false",
                        help="leave the worker running during (b) and (c)")
    parser.add_argument("--live-submit-seconds", type=float, default=5.0,
                        help="(c') submit load with the worker running; 0: skip")
    parser.add_argument("--streams", type=int, default=20, help="(f) open SSE streams on waiting jobs; 0: skip")
    parser.add_argument("--short-queue", type=int, default=50, help="(f) queue length for the first stream measurement")
    parser.add_argument("--stream-seconds", type=float, default=6.0)
    parser.add_argument("--tiny-root", type=Path, default=None, help="reuse a tiny model dir (default: build in temp)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    parser.add_argument("--only-overhead", action="store_true", help="only phase (a), then stop")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)

    from photomaker_server.engine.tiny import ensure_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="photomaker-bench-"))
    tiny_root = args.tiny_root or tmp / "tiny"
    t0 = time.perf_counter()
    ensure_tiny_model(tiny_root)
    print(f"tiny model at {tiny_root} ({time.perf_counter() - t0:.1f} s); load {loadavg()}", flush=True)

    photo = "data:image/png;base64," + base64.b64encode(image_bytes(make_face(0))).decode()
    body = small_request(photo, **({"num_inference_steps": args.steps} if args.steps else {}))
    report: dict = {"benchmark": "service_bench", "argv": sys.argv, "cpu_count": os.cpu_count(),
                    "request": {k: v for k, v in body.items() if k != "image_archive_url"} | {"image": "PNG data URI 256x320"},
                    "load_start": loadavg(),
                    # The server inherits this environment: PHOTOMAKER_STATUS_HOLD_S=0 measures polls answered at once.
                    "status_hold_s": os.environ.get("PHOTOMAKER_STATUS_HOLD_S", "default")}
    server = LiveServer(tmp / "data", tiny_root)
    try:
        t0 = time.perf_counter()
        server.start(timeout=180)
        report["startup_to_ready_s"] = round(time.perf_counter() - t0, 2)
        pids = {"api": server.process.pid, "worker": worker_pid(server)}
        report["pids"] = pids
        report["api_has_libtorch"] = maps_torch(pids["api"])
        time.sleep(3)
        report["memory_idle"] = memory(pids)
        idle = CpuMeter(pids).start()
        time.sleep(5)
        report["idle_cpu_5s"] = idle.stop()
        print(f"ready in {report['startup_to_ready_s']} s; idle memory {report['memory_idle']}; "
              f"idle CPU over 5 s {report['idle_cpu_5s']['cpu_s']}", flush=True)

        # warm-up: first job loads nothing (the worker loaded at start) but warms caches
        with server.client() as client:
            rid, _ = submit_one(client, body)
            wait_sse(client, rid, 120)

        # (a) overhead
        report["overhead"] = {}
        for mode in ("sse", "poll"):
            meter = CpuMeter(pids).start()
            res = phase_overhead(server, body, args.jobs, mode, args.poll_interval, timeout=120)
            res["cpu"] = meter.stop()
            report["overhead"][mode] = res
            print(f"(a) overhead [{mode}]: end-to-end {res['end_to_end_s']['p50']} ms p50, inference "
                  f"{res['inference_time_s']['p50']} ms, overhead p50 {res['overhead_s']['p50']} ms "
                  f"p90 {res['overhead_s']['p90']} ms; beyond inputs + inference p50 "
                  f"{res['overhead_beyond_work_s']['p50']} ms; claim wait p50 {res['submit_to_claim_s']['p50']} ms",
                  flush=True)
        report["memory_after_jobs"] = memory(pids)
        if args.only_overhead:
            report["load_end"] = loadavg()
            if args.json_out:
                args.json_out.write_text(json.dumps(report, indent=1))
            return 0

        # (b) status polling on finished jobs; the worker is paused so that only the API's cost is measured
        with server.client() as client:
            finished = []
            for _ in range(5):
                rid, _ = submit_one(client, body)
                wait_sse(client, rid, 120)
                finished.append(rid)
        db = job_db(server)
        report["worker_paused_during_load"] = args.pause_worker
        report["status_polling_finished"] = {}
        for kind in args.clients:
            with paused(pids["worker"], db, args.pause_worker):
                res = phase_pollers(server, pids, finished, args.pollers, args.poll_seconds, args.poll_max_requests, kind)
            report["status_polling_finished"][kind] = res
            print(f"(b) status polling [{kind}], {args.pollers} clients, finished jobs: {res['requests_per_s']} req/s, "
                  f"p50 {res['latency_ms'].get('p50')} ms p99 {res['latency_ms'].get('p99')} ms, errors {res['errors']}, "
                  f"API CPU {res.get('api_cpu_ms_per_request')} ms/req, CPU {res['cpu']['cpu_s']}", flush=True)
        report["memory_after_polling"] = memory(pids)

        # (f) open SSE streams on waiting jobs: what they cost the API while nothing changes (short, then long queue)
        def streams_phase(label: str) -> None:
            if args.stream_seconds <= 0:  # 0: skip, like the other phases
                return
            with paused(pids["worker"], db, args.pause_worker):
                waiting = queued_ids(server, 200)
                queue_length = count_jobs(server).get("queued")
                res = phase_idle_streams(server, pids, waiting or finished, args.streams, args.stream_seconds)
            res["queue_length"] = queue_length
            report.setdefault("idle_streams", {})[label] = res
            print(f"(f) {args.streams} SSE streams on queued jobs (queue {queue_length}): API CPU "
                  f"{res.get('api_cpu_fraction_of_one_core')} of a core, {res.get('api_cpu_ms_per_stream_per_s')} "
                  f"ms/stream/s, events {res['events']}, errors {res['errors']}", flush=True)

        if args.streams > 0:
            with paused(pids["worker"], db, args.pause_worker), server.client() as client:
                for _ in range(args.short_queue):
                    submit_one(client, body)
            streams_phase("short_queue")

        # worker-like log writes (one per denoising step) at idle: the baseline for the contention numbers in (c)
        with paused(pids["worker"], db, args.pause_worker), WriteProbe(db, finished[0]) as probe:
            time.sleep(3)
        report["write_probe_idle_ms"] = probe.result()
        print(f"    worker-like log write at idle: {probe.result()}", flush=True)

        # (c) submit throughput (worker paused: the queue grows, as when jobs arrive faster than the GPU runs them)
        report["submit"] = {}
        for kind in args.clients:
            with paused(pids["worker"], db, args.pause_worker), WriteProbe(db, finished[0]) as probe:
                res, _ = phase_submitters(server, pids, body, args.submitters, args.submit_seconds,
                                          args.submit_max_requests, kind)
                res["jobs_after"] = count_jobs(server)
            res["write_probe_ms"] = probe.result()
            report["submit"][kind] = res
            print(f"(c) submit [{kind}], {args.submitters} clients: {res['requests_per_s']} req/s, p50 "
                  f"{res['latency_ms'].get('p50')} ms p99 {res['latency_ms'].get('p99')} ms (p50 first/last fifth "
                  f"{res['latency_ms'].get('p50_first_fifth')}/{res['latency_ms'].get('p50_last_fifth')}), errors "
                  f"{res['errors']}, API CPU {res.get('api_cpu_ms_per_request')} ms/req, jobs {res['jobs_after']}; "
                  f"worker-like log write {res['write_probe_ms']}", flush=True)

        # (b') status polling on jobs still in the queue (the status answer then also counts the queue position)
        if args.queued_poll_seconds > 0:
            waiting = queued_ids(server, 200)
            report["status_polling_queued"] = {}
            for kind in args.clients:
                with paused(pids["worker"], db, args.pause_worker):
                    queue_length = count_jobs(server).get("queued")
                    res = phase_pollers(server, pids, waiting, args.pollers, args.queued_poll_seconds,
                                        args.poll_max_requests, kind)
                res["queued_jobs_polled"], res["queue_length"] = len(waiting), queue_length
                report["status_polling_queued"][kind] = res
                print(f"(b') status polling [{kind}], {args.pollers} clients, {len(waiting)} of {queue_length} queued "
                      f"jobs: {res['requests_per_s']} req/s, p50 {res['latency_ms'].get('p50')} ms p99 "
                      f"{res['latency_ms'].get('p99')} ms, errors {res['errors']}, API CPU "
                      f"{res.get('api_cpu_ms_per_request')} ms/req", flush=True)

        if args.streams > 0:
            streams_phase("long_queue")

        # (c') submit while the worker runs jobs (SQLite writes from both processes; both share the 2 cores)
        if args.live_submit_seconds > 0:
            with WriteProbe(db, finished[0]) as probe:
                res, _ = phase_submitters(server, pids, body, args.submitters, args.live_submit_seconds,
                                          args.submit_max_requests, "raw")
            res["jobs_after"] = count_jobs(server)
            res["write_probe_ms"] = probe.result()
            report["submit_worker_running"] = res
            print(f"(c') submit [raw] with the worker running: {res['requests_per_s']} req/s, p50 "
                  f"{res['latency_ms'].get('p50')} ms p99 {res['latency_ms'].get('p99')} ms, errors {res['errors']}, "
                  f"CPU {res['cpu']['cpu_s']}; worker-like log write {res['write_probe_ms']}", flush=True)

        # (d) memory after the load
        report["memory_after_load"] = memory(pids)
        print(f"(d) memory idle {report['memory_idle']} → after load {report['memory_after_load']}", flush=True)
    finally:
        server.stop()
    try:
        if args.plain_api_seconds > 0:
            res = phase_plain_api(tmp, tiny_root, body, args.pollers, args.plain_api_seconds, args.poll_max_requests)
            report["plain_api"] = res
            print(f"(e) without --tiny: API has libtorch {res['api_has_libtorch']}, memory idle {res['memory_idle']}, "
                  f"after polling {res['memory_after_polling']}, status {res['status_polling_finished']['requests_per_s']} "
                  f"req/s", flush=True)
    finally:
        report["load_end"] = loadavg()
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            report["data_dir"] = str(tmp)

    def pick(section: dict, kind: str, *keys):
        value = section.get(kind, {})
        for key in keys:
            value = (value or {}).get(key)
        return value

    summary = {
        "overhead_sse_ms": {k: report["overhead"]["sse"]["overhead_s"][k] for k in ("p50", "p90")},
        "overhead_poll20ms_ms": {k: report["overhead"]["poll"]["overhead_s"][k] for k in ("p50", "p90")},
        "claim_wait_ms_p50": report["overhead"]["sse"]["submit_to_claim_s"]["p50"],
        **{f"status_{kind}": {"rps": pick(report["status_polling_finished"], kind, "requests_per_s"),
                              "p50_ms": pick(report["status_polling_finished"], kind, "latency_ms", "p50"),
                              "p99_ms": pick(report["status_polling_finished"], kind, "latency_ms", "p99"),
                              "errors": pick(report["status_polling_finished"], kind, "error_count"),
                              "api_cpu_ms_per_req": pick(report["status_polling_finished"], kind, "api_cpu_ms_per_request")}
           for kind in args.clients},
        **{f"submit_{kind}": {"rps": pick(report["submit"], kind, "requests_per_s"),
                              "p50_ms": pick(report["submit"], kind, "latency_ms", "p50"),
                              "p99_ms": pick(report["submit"], kind, "latency_ms", "p99"),
                              "errors": pick(report["submit"], kind, "error_count"),
                              "api_cpu_ms_per_req": pick(report["submit"], kind, "api_cpu_ms_per_request")}
           for kind in args.clients},
        "api_rss_mib_idle_after": [report["memory_idle"]["api"]["rss_mib"], report["memory_after_load"]["api"]["rss_mib"]],
        "worker_rss_mib_idle_after": [report["memory_idle"].get("worker", {}).get("rss_mib"),
                                      report["memory_after_load"].get("worker", {}).get("rss_mib")],
        "api_rss_mib_without_tiny_idle_after": [
            report.get("plain_api", {}).get("memory_idle", {}).get("api", {}).get("rss_mib"),
            report.get("plain_api", {}).get("memory_after_polling", {}).get("api", {}).get("rss_mib")],
        "load": [report["load_start"], report["load_end"]],
    }
    report["summary"] = summary
    print(json.dumps(summary, indent=2))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
