"""One worker with a backlog of 4-photo jobs: the time per job outside inference, prefetch off vs on (issue 14, row 3).

A worker runs in this process on the tiny demo model with torch on one thread (the device), against its own SQLite
job database and local file storage. Every job names a zip of 4 photos of 2-4 MP each (three JPEG, one PNG, with
photo-like noise, so unpacking and decoding cost what real photos cost), stored as the API stores uploads; each job
has photos of its own (no ID-cache hits). The engine is wrapped to record when each ``generate`` starts and ends.

Per mode (``prefetch_depth`` 0 = off, 1 = on), alternating in the same run:

* **lone**: one job submitted to an idle worker, its inference time (``generate``'s wall time), ``--lone`` times;
* **backlog**: ``--jobs`` jobs queued at once; *outside inference* per job is the wall time from the end of one
  job's inference to the start of the next one's (the worker's claim, input reading, output storing and job
  completion that the device waits for), and the backlog's inference time is compared with the lone job's.

    PYTHONPATH=src .venv/bin/python bench/worker_bench.py --json-out bench/results/worker-prefetch.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import make_face  # noqa: E402

APP = "fal-ai/photomaker"
OWNER = "bench"


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def photo_bytes(seed: int, fmt: str, size: tuple[int, int]) -> bytes:
    """A face on a noisy background: noise keeps the file (and its decode) as large as a real photo's."""
    face = np.asarray(make_face(seed, size), dtype=np.int16)
    noise = np.random.default_rng(seed).integers(-6, 7, face.shape, dtype=np.int16)
    image = Image.fromarray(np.clip(face + noise, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {"compress_level": 6}))
    return buf.getvalue()


def archive(seed: int) -> bytes:
    sizes = [(2048, 1536), (1536, 2048), (1920, 1440), (2304, 1728)]  # 3.1, 3.1, 2.8, 4.0 MP
    formats = ["JPEG", "JPEG", "PNG", "JPEG"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i, (size, fmt) in enumerate(zip(sizes, formats)):
            zf.writestr(f"photo-{i}.{fmt.lower()}", photo_bytes(seed * 10 + i, fmt, size))
    return buf.getvalue()


class TimedEngine:
    """The real engine, with each ``generate``'s start and end recorded (perf_counter)."""

    def __init__(self, engine) -> None:  # noqa: ANN001
        self._engine = engine
        self.spans: list[tuple[float, float]] = []

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._engine, name)

    def generate(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        started = time.perf_counter()
        try:
            return self._engine.generate(*args, **kwargs)
        finally:
            self.spans.append((started, time.perf_counter()))


def run_mode(engine, settings_for, depth: int, archives: list[bytes], lone: int, steps: int, size: int) -> dict:  # noqa: ANN001
    from photomaker_server.worker.process import Worker

    timed = TimedEngine(engine)
    worker = Worker(settings_for(depth), engine=timed)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    while worker.info.state != "ready":
        time.sleep(0.05)
    from photomaker_server.contract.files import FileRef
    from photomaker_server.contract.stored import StoredRequest

    # Stored as the API stores uploads: the job names each archive by its storage key.
    urls = [FileRef.stored(worker.storage.put(data, "application/zip", f"photos-{i}.zip").key)
            for i, data in enumerate(archives)]
    body = {"prompt": "a photo of a man img", "num_inference_steps": steps, "image_size": {"width": size, "height": size},
            "style": "(No style)"}

    def wait(job_ids: list[str]) -> None:
        while True:
            jobs = [worker.store.get(j, with_input=False) for j in job_ids]
            if all(j.is_finished for j in jobs):
                bad = [j.error for j in jobs if not j.succeeded]
                assert not bad, bad
                return
            time.sleep(0.02)

    lone_times = []
    for i in range(lone):
        timed.spans.clear()
        wait([worker.store.submit(OWNER, APP, StoredRequest(**body, image_archive_url=urls[i], seed=i)).id])
        lone_times.append(timed.spans[0][1] - timed.spans[0][0])
    timed.spans.clear()
    backlog_urls = urls[lone:]
    load_before = loadavg()
    ids = [worker.store.submit(OWNER, APP, StoredRequest(**body, image_archive_url=url, seed=100 + i)).id
           for i, url in enumerate(backlog_urls)]
    wait(ids)
    spans = sorted(timed.spans)
    worker.shutdown.request()
    thread.join(30)
    inference = [end - start for start, end in spans]
    gaps = [spans[i + 1][0] - spans[i][1] for i in range(len(spans) - 1)]
    return {
        "prefetch_depth": depth,
        "lone_inference_s": [round(t, 4) for t in lone_times],
        "backlog_inference_s": [round(t, 4) for t in inference],
        "outside_inference_ms": [round(g * 1000, 2) for g in gaps],
        "outside_inference_ms_median": round(statistics.median(gaps) * 1000, 2),
        "outside_inference_ms_mean": round(statistics.mean(gaps) * 1000, 2),
        "inference_ratio_backlog_over_lone": round(statistics.median(inference) / statistics.median(lone_times), 3),
        "load_before": load_before, "load_after": loadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=8, help="jobs in each backlog")
    parser.add_argument("--lone", type=int, default=3, help="lone jobs per mode (their median is the baseline)")
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs, alternating")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(1)
    from photomaker_server.engine.service import Engine, EngineConfig
    from photomaker_server.engine.tiny import ensure_tiny_model
    from photomaker_server.settings import Settings

    root = Path(os.environ.get("PHOTOMAKER_TEST_MODELS") or tempfile.mkdtemp()) / "tiny"
    loc = ensure_tiny_model(root)
    engine = Engine(EngineConfig(base_models={k: str(loc[k]) for k in ("photomaker", "photomaker-style")},
                                 checkpoint=str(loc["checkpoint"]), checkpoint_v2=str(loc["checkpoint_v2"]),
                                 face_model=str(loc["face_model"]), device="cpu", demo=True, id_cache_size=0))
    started = time.perf_counter()
    per_mode = args.lone + args.jobs
    archives = [archive(seed) for seed in range(per_mode)]
    sizes = [len(a) for a in archives]
    print(f"{per_mode} archives of 4 photos, {min(sizes) / 1e6:.1f}-{max(sizes) / 1e6:.1f} MB each, made in "
          f"{time.perf_counter() - started:.1f} s", file=sys.stderr)

    work = Path(tempfile.mkdtemp(prefix="worker-bench-"))
    counter = iter(range(1000))

    def settings_for(depth: int) -> Settings:
        return Settings(data_dir=work / f"run-{next(counter)}", api_keys=["bench-key"], prefetch_depth=depth,
                        tiny=True, public_base_url="http://127.0.0.1:9")

    # Warm-up: the first generate pays one-time costs (allocator, oneDNN kernels).
    run_mode(engine, settings_for, 0, archives[:3], lone=1, steps=args.steps, size=args.size)
    runs = []
    for r in range(args.rounds):
        for depth in ((0, 1) if r % 2 == 0 else (1, 0)):
            run = run_mode(engine, settings_for, depth, archives, args.lone, args.steps, args.size)
            runs.append(run)
            print(f"depth {depth}: outside inference median {run['outside_inference_ms_median']} ms "
                  f"(mean {run['outside_inference_ms_mean']}), backlog/lone inference "
                  f"{run['inference_ratio_backlog_over_lone']}, load {run['load_before']}->{run['load_after']}",
                  file=sys.stderr)
    summary = {}
    for depth in (0, 1):
        mine = [r for r in runs if r["prefetch_depth"] == depth]
        gaps = [g for r in mine for g in r["outside_inference_ms"]]
        lone = [t for r in mine for t in r["lone_inference_s"]]
        backlog = [t for r in mine for t in r["backlog_inference_s"]]
        summary[f"depth_{depth}"] = {
            "outside_inference_ms_median": round(statistics.median(gaps), 2),
            "outside_inference_ms_max": round(max(gaps), 2),
            "lone_inference_s_median": round(statistics.median(lone), 4),
            "backlog_inference_s_median": round(statistics.median(backlog), 4),
            "inference_ratio_backlog_over_lone": round(statistics.median(backlog) / statistics.median(lone), 3),
        }
    out = {"args": vars(args) | {"json_out": str(args.json_out) if args.json_out else None},
           "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "archive_bytes": sizes,
           "summary": summary, "runs": runs}
    print(json.dumps(summary, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
