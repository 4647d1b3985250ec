"""``make cluster``: a scale-out deployment on one machine, for trying it out and for tests.

PostgreSQL (Unix socket) and SeaweedFS (S3 on 127.0.0.1) from the wheels, K API replicas
(``photomaker serve --no-worker``) and N workers (``photomaker worker --tiny``). Every process has its own data
directory under ``--dir`` (default ``.cluster/``); they share only the database URL and the storage URL, exactly
as separate machines would. One generated API key is accepted by every replica.

Ctrl-C or SIGTERM stops every process it started. Each start is fresh (the previous run's state is removed; the
tiny model under ``<dir>/models`` is kept, it takes a while to build). ``<dir>/cluster.json`` describes the running
cluster (URLs, key, pids) for scripts and tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python tools/cluster.py` from anywhere

import reaper  # noqa: E402
import substrate  # noqa: E402

APP = "fal-ai/photomaker"
BUCKET = "photomaker"


class Stop(Exception):
    """SIGTERM or SIGINT (Ctrl-C) arrived: leave whatever is running and shut down."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=2, help="API replicas (serve --no-worker), default 2")
    parser.add_argument("--workers", type=int, default=2, help="tiny-model workers, default 2")
    parser.add_argument("--dir", type=Path, default=Path(".cluster"), help="state and logs (default .cluster/)")
    parser.add_argument("--host", default="127.0.0.1", help="address the replicas listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000,
                        help="first replica's port (default 8000; the next ones follow, a taken port is replaced)")
    parser.add_argument("--ready-timeout", type=float, default=300, help="seconds to wait for /ready (default 300)")
    args = parser.parse_args(argv)
    if args.replicas < 1 or args.workers < 0:
        parser.error("--replicas must be at least 1 and --workers at least 0")
    return args


def choose_ports(host: str, first: int, count: int) -> list[int]:
    ports: list[int] = []
    candidate = first
    while len(ports) < count:
        if candidate and candidate < 65536 and substrate.port_is_free(candidate, host):
            ports.append(candidate)
        else:
            port = substrate.free_port(host)
            if port not in ports:
                ports.append(port)
        candidate = candidate + 1 if candidate else 0
    return ports


class Cluster:
    """Everything one ``make cluster`` started, in start order; ``stop`` undoes it in reverse."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = args.dir.resolve()
        self.key = "pmk-" + secrets.token_urlsafe(24)
        self.pg: substrate.PostgresHandle | None = None
        self.s3: substrate.S3Handle | None = None
        self.services: dict[str, subprocess.Popen] = {}  # name → process (own session)
        self.replicas: dict[str, str] = {}  # name → base URL
        self.logs: dict[str, Path] = {}

    # -- start
    def fresh_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for entry in self.root.iterdir():
            if entry.name == "models":
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()

    def tiny_model(self) -> Path:
        """Build the tiny model once (shared by reference: each worker's data dir links to it)."""
        from photomaker_server.engine.tiny import ensure_tiny_model

        root = self.root / "models" / "tiny"
        ensure_tiny_model(root)
        return root

    def env(self) -> dict[str, str]:
        assert self.s3 is not None
        return {**os.environ, **self.s3.env(), "PHOTOMAKER_API_KEYS": self.key, "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1"}

    def storage_url(self) -> str:
        return f"s3://{BUCKET}/cluster"

    def launch(self, name: str, args: list[str]) -> subprocess.Popen:
        data_dir = self.root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.logs[name] = data_dir / "process.log"
        command = [sys.executable, "-m", "photomaker_server.cli", *args, "--data-dir", str(data_dir),
                   "--database-url", self.pg.url, "--storage-url", self.storage_url()]
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, env=self.env(), stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True, cwd=data_dir)
        self.services[name] = reaper.track(process)
        return process

    def start(self) -> None:
        args = self.args
        self.fresh_root()
        say(f"starting PostgreSQL and SeaweedFS under {self.root} ...")
        self.pg = substrate.start_postgres(self.root / "postgres")
        self.s3 = substrate.start_seaweed(self.root / "s3")
        self.s3.bucket(BUCKET)
        if args.workers:
            say("preparing the tiny demo model (built once, kept in models/) ...")
            tiny = self.tiny_model()
        for i in range(1, args.workers + 1):
            models = self.root / f"worker{i}" / "models"
            models.mkdir(parents=True)
            (models / "tiny").symlink_to(tiny, target_is_directory=True)
            self.launch(f"worker{i}", ["worker", "--tiny"])
        for i, port in enumerate(choose_ports(args.host, args.port, args.replicas), start=1):
            url = f"http://{args.host}:{port}"
            self.replicas[f"api{i}"] = url
            self.launch(f"api{i}", ["serve", "--no-worker", "--tiny", "--host", args.host, "--port", str(port),
                                    "--public-base-url", url])
        # /ready needs a live worker; with --workers 0 the replicas can only be up (/health).
        path = "/ready" if args.workers else "/health"
        say(f"waiting for {len(self.replicas)} replica(s) to answer {path} ...")
        self.wait_ready(path, args.ready_timeout)
        self.write_description()

    def wait_ready(self, path: str, timeout: float) -> None:
        import httpx

        pending = dict(self.replicas)
        deadline = time.monotonic() + timeout
        while pending:
            self.check_alive()
            for name, url in list(pending.items()):
                try:
                    if httpx.get(url + path, timeout=2).status_code == 200:
                        del pending[name]
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                logs = ", ".join(str(self.logs[n]) for n in pending)
                raise RuntimeError(f"no 200 from {path} after {timeout:.0f}s: {', '.join(pending)} (logs: {logs})")
            time.sleep(0.5)

    def check_alive(self) -> None:
        for name, process in self.services.items():
            if process.poll() is not None:
                tail = self.logs[name].read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with status {process.returncode}; the end of "
                                   f"{self.logs[name]}:\n{tail}")

    def write_description(self) -> None:
        description = {
            "replicas": self.replicas, "api_key": self.key, "database_url": self.pg.url,
            "s3_endpoint": self.s3.endpoint, "storage_url": self.storage_url(), "s3_env": self.s3.env(),
            "pids": {name: p.pid for name, p in self.services.items()}
                    | {"postgres": self.pg.process.pid, "seaweedfs": self.s3.process.pid},
            "cluster_pid": os.getpid(), "logs": {name: str(path) for name, path in self.logs.items()},
        }
        (self.root / "cluster.json").write_text(json.dumps(description, indent=2) + "\n")

    # -- stop
    def stop(self) -> None:
        """Every service first (SIGTERM, then SIGKILL of its group after 15 s), then the storage."""
        for process in self.services.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.services.values():
            reaper.stop_group(process, signal.SIGTERM, max(0.1, deadline - time.monotonic()))
        if self.s3:
            self.s3.stop()
        if self.pg:
            self.pg.remove()  # each start is fresh; nothing of the database is worth keeping
        (self.root / "cluster.json").unlink(missing_ok=True)


def say(text: str) -> None:
    print(text, flush=True)


def banner(cluster: Cluster) -> str:
    first, *others = cluster.replicas.values()
    lines = [
        "",
        "=" * 100,
        "PhotoMaker local cluster is up: "
        f"{len(cluster.replicas)} API replica(s), {len(cluster.services) - len(cluster.replicas)} worker(s), "
        "one PostgreSQL, one S3 store.",
        "!! The model is the RANDOM-WEIGHT DEMO model: the images are noise, not photos of anyone. !!",
        "",
        "Open in a browser (every replica serves the page and the API; they share one queue):",
        *[f"  {url}/        (replica {name}; API docs at {url}/docs)" for name, url in cluster.replicas.items()],
        f"API key (every replica):  {cluster.key}",
        "",
        "The official Python client (fal-client), plain HTTP:",
        f"  FAL_KEY={cluster.key} python - <<'EOF'",
        "  import fal_client, fal_client.client as c",
        f"  c.QUEUE_URL_FORMAT, c.RUN_URL_FORMAT = '{first}/', '{first}/run/'",
        f"  print(fal_client.subscribe('{APP}', {{'prompt': 'a photo of a man img',",
        "        'image_archive_url': fal_client.encode_file('face.jpg')}))",
        "  EOF",
        "curl:",
        f"  curl -s {first}/health                          # the workers this replica sees",
        f"  curl -s -X POST {first}/{APP} -H 'Authorization: Key {cluster.key}' \\",
        "       -H 'Content-Type: application/json' -d '{\"prompt\": \"a photo of a man img\", "
        "\"image_archive_url\": \"<URL or data: URI>\"}'",
        f"  curl -s {(others or [first])[0]}/{APP}/requests/<request_id>/status -H 'Authorization: Key {cluster.key}'"
        "   # any replica answers",
        "",
        f"PostgreSQL: {cluster.pg.url}",
        f"S3:         {cluster.s3.endpoint}  bucket {BUCKET}  (any access key works)",
        f"Logs:       {cluster.root}/<api1|worker1|...>/process.log;  description: {cluster.root}/cluster.json",
        "Ctrl-C stops everything (the next start begins from scratch).",
        "=" * 100,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        substrate.weed_binary()
        substrate.postgres_binaries()
    except substrate.SubstrateMissing as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 2
    if importlib.util.find_spec("photomaker_server") is None:
        print("cluster: the photomaker-server package is not importable here: run `make install` "
              "or `pip install -e .[test]`", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: object) -> None:
        raise Stop

    # Explicitly both: a shell starting us in the background leaves SIGINT ignored, and Python keeps it so.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cluster = Cluster(args)
    status = 0
    try:
        cluster.start()
        say(banner(cluster))
        while True:  # watch: a service that dies is reported, and the cluster stops
            cluster.check_alive()
            time.sleep(1)
    except (KeyboardInterrupt, Stop):  # KeyboardInterrupt: a Ctrl-C before the handler was installed
        say("\nstopping the cluster ...")
    except RuntimeError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        status = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cluster.stop()
    say("cluster stopped; nothing of it is running.")
    return status


if __name__ == "__main__":
    sys.exit(main())
