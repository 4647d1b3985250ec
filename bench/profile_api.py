"""Where the API process spends its CPU per request: in-process timings and a profile, no sockets, no worker.

Complements ``service_bench.py`` (which measures the live server over loopback): this drives the FastAPI app
directly through ``httpx.ASGITransport`` on a temporary data directory and reports

* CPU time per request for status (finished job, queued job), submit and result, sequentially, as the app runs them
  (sync endpoints and the ``require_owner`` dependency hop through the thread pool);
* the same with the thread-pool hop replaced by a direct call (what the hops cost);
* the job-store calls on their own (``get``, ``queue_position`` at a given queue length, ``submit``) and request
  validation;
* a cProfile of status requests (thread hops inlined so the profiler sees the handler), top functions.

Example::

    .venv/bin/python bench/profile_api.py --json-out bench/results/profile-api.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import stored_output, stored_request  # noqa: E402

KEY = "bench-key"
APP = "fal-ai/photomaker"


def cpu_ms_per_call(fn, n: int) -> float:
    fn()  # warm
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return round((time.process_time() - t0) * 1000 / n, 4)


async def cpu_ms_per_request(client, method: str, path: str, n: int, **kwargs) -> dict:
    r = await client.request(method, path, **kwargs)
    assert r.status_code < 400, (r.status_code, r.text[:300])
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        r = await client.request(method, path, **kwargs)
    return {"cpu_ms": round((time.process_time() - c0) * 1000 / n, 4),
            "wall_ms": round((time.perf_counter() - w0) * 1000 / n, 4), "status": r.status_code}


class inline_threadpool:
    """Run FastAPI's sync endpoints and dependencies in the event-loop thread (no thread hop)."""

    async def _direct(self, func, *args, **kwargs):  # noqa: ANN001, ANN202
        return func(*args, **kwargs)

    def __enter__(self) -> inline_threadpool:
        import fastapi.dependencies.utils as dep_utils
        import fastapi.routing as routing

        self.saved = (routing.run_in_threadpool, dep_utils.run_in_threadpool)
        routing.run_in_threadpool = dep_utils.run_in_threadpool = self._direct
        return self

    def __exit__(self, *exc: object) -> None:
        import fastapi.dependencies.utils as dep_utils
        import fastapi.routing as routing

        routing.run_in_threadpool, dep_utils.run_in_threadpool = self.saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="sequential requests per measurement")
    parser.add_argument("--queue", type=int, default=1000, help="queued jobs when measuring queue-position cost")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)

    os.environ.setdefault("PHOTOMAKER_API_KEYS", KEY)
    import httpx

    from helpers import image_bytes, make_face
    from live_server import small_request
    from photomaker_server.api.app import build_context, create_app
    from photomaker_server.api.routes.queue import status_body, validate_input
    from photomaker_server.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="photomaker-profile-"))
    settings = Settings(data_dir=tmp, api_keys=[KEY])
    ctx = build_context(settings)
    app = create_app(ctx=ctx, housekeeping=False)
    photo = "data:image/png;base64," + base64.b64encode(image_bytes(make_face(0))).decode()
    body = small_request(photo)
    report: dict = {"benchmark": "profile_api", "requests": args.requests, "body_bytes": len(json.dumps(body))}

    async def drive() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     headers={"Authorization": f"Key {KEY}"}) as client:
            # one finished job
            finished = (await client.post(f"/{APP}", json=body)).json()["request_id"]
            job = ctx.store.claim("bench-worker", 60)
            ctx.store.complete(job.id, "bench-worker", stored_output(seed=1), 0.1)
            queued = (await client.post(f"/{APP}", json=body)).json()["request_id"]
            n = args.requests
            paths = {
                "status_finished": ("GET", f"/{APP}/requests/{finished}/status", {}),
                "status_queued_short_queue": ("GET", f"/{APP}/requests/{queued}/status", {}),
                "result_finished": ("GET", f"/{APP}/requests/{finished}", {}),
                "health": ("GET", "/health", {}),
            }
            report["asgi_threadpool"] = {}
            report["asgi_inline"] = {}
            for name, (method, path, kw) in paths.items():
                report["asgi_threadpool"][name] = await cpu_ms_per_request(client, method, path, n, **kw)
                with inline_threadpool():
                    report["asgi_inline"][name] = await cpu_ms_per_request(client, method, path, n, **kw)
            report["asgi_threadpool"]["submit"] = await cpu_ms_per_request(client, "POST", f"/{APP}", n // 2, json=body)
            with inline_threadpool():
                report["asgi_inline"]["submit"] = await cpu_ms_per_request(client, "POST", f"/{APP}", n // 2, json=body)

            # a long queue: the status of its last job counts everything ahead of it
            while ctx.store.counts().get("queued", 0) < args.queue:
                ctx.store.submit("owner-x", APP, stored_request())
            last = (await client.post(f"/{APP}", json=body)).json()["request_id"]
            report["queue_length"] = ctx.store.counts().get("queued")
            report["asgi_threadpool"]["status_queued_long_queue"] = await cpu_ms_per_request(
                client, "GET", f"/{APP}/requests/{last}/status", n)
            report["asgi_threadpool"]["submit_long_queue"] = await cpu_ms_per_request(client, "POST", f"/{APP}", n // 4,
                                                                                       json=body)

            # store calls and validation alone
            job_f = ctx.store.get(finished, with_input=False)
            job_q = ctx.store.get(last, with_input=False)
            report["store_ms"] = {
                "get_with_input": cpu_ms_per_call(lambda: ctx.store.get(finished), n),
                "get_without_input": cpu_ms_per_call(lambda: ctx.store.get(finished, with_input=False), n),
                "queue_position_long_queue": cpu_ms_per_call(lambda: ctx.store.queue_position(job_q), n // 4),
                "status_body_finished": cpu_ms_per_call(lambda: status_body(ctx, job_f, None), n),
                "submit": cpu_ms_per_call(lambda: ctx.store.submit("owner-y", APP, stored_request()), n // 4),
                "validate_input": cpu_ms_per_call(lambda: validate_input(ctx, body), n),
                "logs_finished": cpu_ms_per_call(lambda: ctx.store.logs(finished), n),
            }

            # profile of status requests with the handler in this thread
            profiler = cProfile.Profile()
            with inline_threadpool():
                profiler.enable()
                for _ in range(n):
                    await client.get(f"/{APP}/requests/{finished}/status")
                profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out).sort_stats("tottime")
            stats.print_stats(args.top)
            report["profile_status_tottime"] = out.getvalue()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(args.top)
            report["profile_status_cumulative"] = out.getvalue()

    asyncio.run(drive())
    ctx.store.close()
    printable = {k: v for k, v in report.items() if not k.startswith("profile_")}
    print(json.dumps(printable, indent=2))
    print(report["profile_status_tottime"][:6000])
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json_out}")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
