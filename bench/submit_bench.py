"""Submit latency with the photos inline: the 4-photo archive as a data URI, against a real API process.

Issue 14's bar: a submit carrying a ~1.9 MB zip of 4 photos (one a 1.5 MB PNG) as a data URI in
``image_archive_url`` answers in <= 25 ms p50 of API time. This script

1. builds that archive itself: three photo-like JPEGs and one PNG of about 1.5 MB (smooth gradients plus noise,
   so neither compresses away), zipped with deflate like any zip tool would;
2. starts the real API: ``photomaker serve --no-worker`` (one process, the production uvicorn settings of
   ``api/http_server.py``) on a temporary data directory, SQLite by default, PostgreSQL with ``--postgres``
   (a throwaway embedded cluster from ``tests/pg_server.py``);
3. sends, interleaved one after the other on one kept-alive loopback connection, with a minimal HTTP/1.1 client
   whose request bytes are built once (so the client costs almost nothing):

   * ``data_uri``: the submit with the archive as a data URI;
   * ``small_uri``: the same submit with one small photo (the tests' 2.1 KB PNG face, 2.8 KB as a data URI)
     instead: the fixed cost of storing a data URI (decode, quota charge, storage write), not its size;
   * ``http_url``: the same submit with a plain http URL in its place (the baseline: everything but the data URI);
   * ``health``: ``GET /health`` (the floor of the framework on this machine, at this moment);

4. reports, for each, the round-trip p50/p90/mean (client-side, loopback: the API's time plus ~1 ms of moving
   2.5 MB over loopback) and the API process's CPU milliseconds per request (``/proc/<pid>/stat``, summed over
   all requests of a kind, so the 10 ms tick does not matter), and the ratios against the baseline.

``--compare before=DIR`` starts a second API from another source tree (say the commit before a change, unpacked with
``git archive``) and measures it interleaved with this checkout's, so before and after come from the same minutes of
the same machine. ``--profile N`` then profiles N submits in-process (cProfile, the thread pool inlined).

Example::

    git archive e19257a src | tar -x -C /tmp/before
    PYTHONPATH=src .venv/bin/python bench/submit_bench.py --requests 100 --postgres \\
        --compare before=/tmp/before/src --json-out bench/results/submit.json
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(1, str(ROOT / "src"))
sys.path.insert(2, str(ROOT / "tools"))  # substrate: the embedded PostgreSQL of --postgres

KEY = "bench-submit-key"
APP = "fal-ai/photomaker"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the archive ---------------------------------------------------------------------------------------------------
def _photo(width: int, height: int, seed: int, noise: int):  # noqa: ANN202
    """A photo-like RGB image: a smooth two-axis gradient plus per-pixel noise (so PNG cannot shrink it much)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([
        128 + 100 * np.sin(x / (37 + seed)) * np.cos(y / 53),
        128 + 90 * np.cos((x + y) / (61 + seed)),
        128 + 80 * np.sin(y / (29 + seed)),
    ], axis=-1)
    pixels = base + rng.integers(-noise, noise + 1, size=base.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def build_archive(png_bytes: int = 1_500_000) -> tuple[bytes, dict[str, int]]:
    """The 4-photo zip: ``photo1..3.jpg`` and ``photo4.png`` of about ``png_bytes``; returns (zip, entry sizes)."""
    entries: dict[str, bytes] = {}
    for i in range(3):
        buf = io.BytesIO()
        _photo(768, 1024, i + 1, 10).save(buf, "JPEG", quality=85)
        entries[f"photo{i + 1}.jpg"] = buf.getvalue()
    side = 560
    while True:  # grow the PNG until it reaches the wanted size
        buf = io.BytesIO()
        _photo(side, side, 7, 40).save(buf, "PNG", compress_level=6)
        if buf.tell() >= png_bytes:
            break
        side = int(side * (png_bytes / max(buf.tell(), 1)) ** 0.5) + 8
    entries["photo4.png"] = buf.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue(), {name: len(data) for name, data in entries.items()}


def small_photo() -> bytes:
    """The tests' photo (a synthetic face, PNG): the small data URI of ``small_uri``."""
    from helpers import image_bytes, make_face

    return image_bytes(make_face(0))


# -- a minimal HTTP/1.1 client --------------------------------------------------------------------------------------
class RawClient:
    """One kept-alive connection; requests are prepared bytes, responses read by Content-Length."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    @staticmethod
    def request(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Key {KEY}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")

    def send(self, raw: bytes) -> tuple[int, bytes]:
        self.sock.sendall(raw)
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(rest) < length:
            self.buffer = rest
            self._read()
            rest = self.buffer
        self.buffer = rest[length:]
        return status, rest[:length]

    def _read(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


# -- the server -----------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def start_server(data_dir: Path, port: int, database_url: str | None, src: Path) -> subprocess.Popen:
    """``photomaker serve --no-worker`` from the source tree ``src`` (this checkout's, or an older one's)."""
    env = {**os.environ, "PHOTOMAKER_API_KEYS": KEY, "PYTHONPATH": str(src)}
    args = [sys.executable, "-m", "photomaker_server.cli", "serve", "--no-worker", "--data-dir", str(data_dir),
            "--port", str(port)]
    if database_url:
        args += ["--database-url", database_url]
    log = open(data_dir / "server.log", "ab")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError((data_dir / "server.log").read_text()[-4000:])
        try:
            client = RawClient(port)
            status, _ = client.send(RawClient.request("GET", "/health"))
            client.close()
            if status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("the API did not answer /health within 120 s")


def stop_server(process: subprocess.Popen) -> None:
    import signal

    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


# -- the measurement -------------------------------------------------------------------------------------------------
def _summary(times: list[float], cpu: float) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
        "min_ms": round(ordered[0] * 1000, 2),
        "api_cpu_ms_per_request": round(cpu * 1000 / len(ordered), 2),
        "n": len(ordered),
    }


def measure(servers: dict[str, tuple[int, int]], archive: bytes, requests: int, warmup: int) -> dict:
    """Every kind of request on every server (label -> (port, pid)), interleaved in a new random order each round,
    so that the machine's load drifts over all of them alike."""
    request = {"prompt": "a photo of a man img, film grain", "num_inference_steps": 4,
               "image_size": {"width": 64, "height": 64}, "seed": 1}
    data_uri = "data:application/zip;base64," + base64.b64encode(archive).decode("ascii")
    small_uri = "data:image/png;base64," + base64.b64encode(small_photo()).decode("ascii")
    bodies = {
        "data_uri": json.dumps({**request, "image_archive_url": data_uri}).encode(),
        "small_uri": json.dumps({**request, "image_archive_url": small_uri}).encode(),
        "http_url": json.dumps({**request, "image_archive_url": "http://photos.example/a.zip"}).encode(),
    }
    prepared = {name: RawClient.request("POST", f"/{APP}", body) for name, body in bodies.items()}
    prepared["health"] = RawClient.request("GET", "/health")
    clients = {label: RawClient(port) for label, (port, _pid) in servers.items()}
    pairs = [(label, name) for label in servers for name in prepared]
    times: dict[tuple[str, str], list[float]] = {pair: [] for pair in pairs}
    cpu: dict[tuple[str, str], float] = dict.fromkeys(pairs, 0.0)
    for i in range(warmup + requests):
        random.shuffle(pairs)
        for label, name in pairs:
            pid = servers[label][1]
            c0, t0 = cpu_seconds(pid), time.perf_counter()
            status, answer = clients[label].send(prepared[name])
            elapsed, used = time.perf_counter() - t0, cpu_seconds(pid) - c0
            if status != 200:
                raise RuntimeError(f"{label} {name}: HTTP {status}: {answer[:500]!r}")
            if i >= warmup:
                times[label, name].append(elapsed)
                cpu[label, name] += used
    for client in clients.values():
        client.close()
    result: dict = {"body_bytes": {name: len(body) for name, body in bodies.items()}}
    for label in servers:
        summary = {name: _summary(times[label, name], cpu[label, name]) for name in prepared}
        base = summary["http_url"]
        summary["ratio_data_uri_to_http_url_p50"] = round(summary["data_uri"]["p50_ms"] / base["p50_ms"], 2)
        for kind in ("data_uri", "small_uri"):
            summary[f"{kind}_extra_p50_ms"] = round(summary[kind]["p50_ms"] - base["p50_ms"], 2)
        result[label] = summary
    if len(servers) > 1:
        # p50 of the other tree ÷ this one's, per kind (> 1: this checkout is faster).
        result["speedup_p50_vs"] = {
            label: {kind: round(result[label][kind]["p50_ms"] / result["this"][kind]["p50_ms"], 2)
                    for kind in ("data_uri", "small_uri", "http_url")}
            for label in servers if label != "this"}
    return result


def run_backend(backend: str, sources: dict[str, Path], archive: bytes, requests: int, warmup: int) -> dict:
    """Start one API per source tree on ``backend`` (each with its own data directory and database), measure."""
    import shutil

    pg = None
    started: list[tuple[subprocess.Popen, Path]] = []
    try:
        if backend == "postgres":
            from pg_server import PgServer

            pg = PgServer.embedded()
        servers: dict[str, tuple[int, int]] = {}
        for label, src in sources.items():
            data_dir = Path(tempfile.mkdtemp(prefix="pm-submit-bench-"))
            port = free_port()
            process = start_server(data_dir, port, pg.create_database() if pg else None, src)
            started.append((process, data_dir))
            servers[label] = (port, process.pid)
        return measure(servers, archive, requests, warmup)
    finally:
        for process, data_dir in started:
            stop_server(process)
            shutil.rmtree(data_dir, ignore_errors=True)
        if pg is not None and pg.handle is not None:
            pg.handle.stop()
            shutil.rmtree(pg._directory or "", ignore_errors=True)


def profile_in_process(archive: bytes, n: int, top: int) -> str:
    """cProfile of ``n`` data-URI submits through the app in this process (ASGI, no sockets), the thread pool inlined
    so that the profiler sees the handler: where the API's time goes, by function."""
    import asyncio
    import cProfile
    import pstats

    import httpx
    from profile_api import inline_threadpool

    from photomaker_server.api.app import build_context, create_app
    from photomaker_server.settings import Settings

    body = json.dumps({"prompt": "a photo of a man img", "image_archive_url": "data:application/zip;base64,"
                       + base64.b64encode(archive).decode()}).encode()
    data_dir = Path(tempfile.mkdtemp(prefix="pm-submit-profile-"))
    ctx = build_context(Settings(data_dir=data_dir, api_keys=[KEY]))
    app = create_app(ctx=ctx, housekeeping=False)
    profiler = cProfile.Profile()

    async def drive() -> None:
        headers = {"Authorization": f"Key {KEY}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench",
                                     headers=headers) as client:
            with inline_threadpool():
                for i in range(n + 3):
                    if i == 3:
                        profiler.enable()
                    response = await client.post(f"/{APP}", content=body)
                    assert response.status_code == 200, response.text[:300]
                profiler.disable()

    asyncio.run(drive())
    ctx.store.close()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    import shutil

    shutil.rmtree(data_dir, ignore_errors=True)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100, help="measured requests of each kind, per server")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--postgres", action="store_true", help="also run against an embedded PostgreSQL")
    parser.add_argument("--only-postgres", action="store_true", help="run against PostgreSQL only")
    parser.add_argument("--compare", action="append", default=[], metavar="LABEL=SRC_DIR",
                        help="also start an API from another source tree (e.g. an older commit's src/, from "
                             "`git archive`), measured interleaved with this checkout's in the same run")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="afterwards, cProfile N submits in this process and print the top functions")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    sources = {"this": ROOT / "src"}
    for item in args.compare:
        label, _, src = item.partition("=")
        sources[label] = Path(src).resolve()
    archive, entries = build_archive()
    report: dict = {"benchmark": "submit_bench", "archive_bytes": len(archive), "entries": entries,
                    "requests": args.requests, "sources": {k: str(v) for k, v in sources.items()},
                    "loadavg_before": os.getloadavg(), "cpus": os.cpu_count()}
    backends = ([] if args.only_postgres else ["sqlite"]) + (["postgres"] if args.postgres or args.only_postgres else [])
    for backend in backends:
        report[backend] = run_backend(backend, sources, archive, args.requests, args.warmup)
        print(json.dumps({backend: report[backend]}, indent=2), flush=True)
    report["loadavg_after"] = os.getloadavg()
    if args.profile:
        report["profile"] = profile_in_process(archive, args.profile, 30)
        print(report["profile"])
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k not in (*backends, "profile")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
