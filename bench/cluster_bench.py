"""Scale-out benchmark: service overhead per job on SQLite and on PostgreSQL, idle-worker start latency, and job
throughput with 1 vs 2 workers. Everything on this machine, over loopback, with the tiny random-weight model.

a.  **overhead per job**, for each database: N sequential small jobs (64x64, 2 steps), each submitted at a random
    moment; the client opens the SSE stream right after the submit answers. Overhead = (submit sent → COMPLETED
    event received) − the job's ``inference_time`` − the worker's input decoding (``timings.inputs``): what the
    queue, the wake-ups, the database and the HTTP layer add to a job. Bar: ≤ 15 ms p50. ``breakdown_ms`` splits
    it: the submit request, the job's run outside inference and input decoding (claim tail, request parsing, PNG
    encoding and storing, log flush, the completing transaction), and finished_at → COMPLETED seen by the client.
b.  **idle worker start**: for the same jobs, ``started_at − created_at`` read from the job database (one clock:
    same machine): how long a submitted job waits for an idle worker to claim it. Bar: ≤ 5 ms p50.
c.  **throughput**: an API (``serve --no-worker``) and K = 1, then 2 ``photomaker worker --tiny`` processes (one
    torch thread each, ``OMP_NUM_THREADS=1``) on PostgreSQL; M jobs submitted at once; wall time from the first
    submit to the last COMPLETED. Reported as jobs/s and the ratio 2 workers / 1 worker (2.0 would be perfect; the
    machine has 2 cores, which the API and this client share with the workers).

PostgreSQL and SeaweedFS come from the test wheels (``tools/substrate.py``), as in the tests.

    .venv/bin/python bench/cluster_bench.py --json-out bench/results/cluster-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tools")]

from helpers import image_bytes, make_face  # noqa: E402
from live_server import APP, LiveServer, small_request  # noqa: E402
from service_bench import wait_sse  # noqa: E402
from substrate import start_postgres  # noqa: E402

from photomaker_server.jobs.factory import open_job_store  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def dist_ms(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {"n": len(ms), "p50": round(statistics.median(ms), 2), "p90": round(pct(ms, 0.9), 2),
            "min": round(min(ms), 2), "max": round(max(ms), 2)}


def upload_photo(client: httpx.Client) -> str:
    r = client.post("/storage/upload/multipart", files={"file": ("face.png", image_bytes(make_face(0)), "image/png")})
    r.raise_for_status()
    return r.json()["url"]


def phase_overhead(server: LiveServer, database_url: str, n: int) -> dict:
    rng = random.Random(7)
    store = open_job_store(database_url)
    overheads, starts = [], []
    parts: dict[str, list[float]] = {"submit_request": [], "run_outside_inference_and_inputs": [],
                                     "finished_to_completed_seen": []}
    with server.client() as client:
        photo = upload_photo(client)
        body = small_request(photo, num_inference_steps=2)
        for i in range(n + 2):
            time.sleep(rng.uniform(0.05, 0.25))  # arrive at a random moment, as independent clients do
            sent, sent_wall = time.perf_counter(), time.time()
            r = client.post(f"/{APP}", json=body)
            r.raise_for_status()
            answered = time.perf_counter()
            request_id = r.json()["request_id"]
            event = wait_sse(client, request_id, timeout=120)
            total = time.perf_counter() - sent
            seen_wall = sent_wall + total
            assert event.get("error") is None, event
            result = client.get(f"/{APP}/requests/{request_id}").json()
            inference = event["metrics"]["inference_time"]
            inputs = result["timings"].get("inputs", 0.0)
            job = store.get(request_id, with_input=False)
            if i < 2:
                continue  # warm-up: first ID encoding, connection pools
            overheads.append(total - inference - inputs)
            starts.append(job.started_at - job.created_at)
            # Where the overhead goes (wall clocks of one machine; the job's times are the store's clock):
            parts["submit_request"].append(answered - sent)
            parts["run_outside_inference_and_inputs"].append(job.finished_at - job.started_at - inference - inputs)
            parts["finished_to_completed_seen"].append(seen_wall - job.finished_at)
    store.close()
    return {"overhead_ms": dist_ms(overheads), "idle_worker_start_ms": dist_ms(starts),
            "breakdown_ms": {name: dist_ms(values) for name, values in parts.items()}, "load_after": os.getloadavg()}


def wait_ready(url: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def phase_throughput(tmp: Path, tiny_root: Path, database_url: str, workers: int, jobs: int, steps: int) -> dict:
    env = {"PHOTOMAKER_DATABASE_URL": database_url}
    api = LiveServer(tmp / f"api-{workers}", tiny_root, env=env, extra_args=["--no-worker"]).start(wait_ready=False)
    procs = []
    try:
        for k in range(workers):
            # The workers share the API's data dir: its local file storage holds the uploaded photo and receives
            # the outputs (one host, so no S3 needed), and its models/tiny link is already there.
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "photomaker_server.cli", "worker", "--tiny", "--data-dir", str(api.data_dir)],
                env={**api.env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
                stdout=open(api.data_dir / f"worker-{k}.log", "wb"), stderr=subprocess.STDOUT,
                start_new_session=True))
        wait_ready(api.url)
        with api.client() as client:
            photo = upload_photo(client)
            body = small_request(photo, num_inference_steps=steps, image_size={"width": 128, "height": 128})
            # Warm-up: one short job per worker, at once, so each worker has run the pipeline before the clock.
            warm = [client.post(f"/{APP}", json={**body, "num_inference_steps": 1}) for _ in range(workers)]
            for r in warm:
                r.raise_for_status()
                wait_sse(client, r.json()["request_id"], timeout=300)
            time.sleep(1)
            started = time.perf_counter()
            ids = []
            for seed in range(jobs):
                r = client.post(f"/{APP}", json={**body, "seed": seed})
                r.raise_for_status()
                ids.append(r.json()["request_id"])
            for request_id in ids:
                event = wait_sse(client, request_id, timeout=600)
                assert event.get("error") is None, event
            wall = time.perf_counter() - started
        return {"workers": workers, "jobs": jobs, "wall_s": round(wall, 2), "jobs_per_s": round(jobs / wall, 3),
                "load_after": os.getloadavg()}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
        api.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=40, help="sequential jobs per database for (a) and (b)")
    parser.add_argument("--throughput-jobs", type=int, default=12)
    parser.add_argument("--throughput-steps", type=int, default=12)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true", help="only the throughput phase (c)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    from photomaker_server.engine.tiny import ensure_tiny_model

    out: dict = {"machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp_name:
        tmp = Path(tmp_name)
        tiny_root = tmp / "models" / "tiny"
        ensure_tiny_model(tiny_root)
        with start_postgres(tmp / "pg") as pg:
            for name, url in (("sqlite", None), ("postgresql", pg.url)) if not args.skip_overhead else ():
                env = {"PHOTOMAKER_DATABASE_URL": url} if url else {}
                server = LiveServer(tmp / f"serve-{name}", tiny_root, env=env).start()
                try:
                    database_url = url or f"sqlite:///{server.data_dir / 'jobs.db'}"
                    out[name] = phase_overhead(server, database_url, args.jobs)
                finally:
                    server.stop()
                print(name, json.dumps(out[name]), flush=True)
            if not args.skip_throughput:
                runs = [phase_throughput(tmp, tiny_root, pg.url, k, args.throughput_jobs, args.throughput_steps)
                        for k in (1, 2)]
                out["throughput"] = {"runs": runs, "ratio_2_over_1": round(runs[1]["jobs_per_s"] / runs[0]["jobs_per_s"], 2)}
                print("throughput", json.dumps(out["throughput"]), flush=True)
    out["machine"]["load_after"] = os.getloadavg()
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
