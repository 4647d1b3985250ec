"""The processes of the local cluster, each behind one small interface the supervisor drives.

Every service can be started, stopped the way its operator would stop it (SIGTERM; PostgreSQL's fast shutdown),
killed like a crash (SIGKILL of its whole process group) and asked whether it is healthy. ``tidy`` removes what a
crash leaves on disk (PostgreSQL's socket and lock, SeaweedFS's local sockets), so that nothing stale remains
after the lab stops, whatever happened to the process before.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import httpx

import reaper
import substrate


class Service:
    """One supervised process. Subclasses say how to start it and when it is healthy."""

    kind = "process"

    def __init__(self, name: str) -> None:
        self.name = name
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def address(self) -> str:
        return ""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """The operator's stop: SIGTERM, then SIGKILL of the group after the grace period."""
        if self.process is not None:
            reaper.stop_group(self.process, signal.SIGTERM, self.grace_s)
        self.tidy()

    grace_s = 30.0

    def kill(self) -> None:
        """A crash: SIGKILL of the process group, nothing handed back."""
        if self.process is not None:
            reaper.kill_group(self.process)

    def healthy(self) -> bool:
        return self.alive

    def tidy(self) -> None:
        """Remove what a killed process leaves behind (sockets, lock files); only called when it is not running."""


class Postgres(Service):
    kind = "postgres"
    grace_s = 30.0

    def __init__(self, directory: Path) -> None:
        super().__init__("postgres")
        # persistent: the data outlives the lab's process (deleted only by `cluster.py clean`)
        self.handle = substrate.postgres_handle(directory, persistent=True)

    @property
    def url(self) -> str:
        return self.handle.url

    @property
    def address(self) -> str:
        return str(self.handle.socket_dir)

    def start(self) -> None:
        self.tidy()
        self.handle.process = None
        self.handle.start()
        self.process = self.handle.process

    def stop(self) -> None:
        self.handle.stop(self.grace_s)  # SIGINT: fast shutdown, removes its own socket and lock
        self.tidy()

    def tidy(self) -> None:
        if self.alive:
            return
        for path in (self.handle.socket_dir / f".s.PGSQL.{self.handle.port}",
                     self.handle.socket_dir / f".s.PGSQL.{self.handle.port}.lock",
                     self.handle.pgdata / "postmaster.pid"):
            path.unlink(missing_ok=True)


class S3(Service):
    kind = "s3"

    def __init__(self, directory: Path, ports: list[int] | None, bucket: str) -> None:
        super().__init__("s3")
        self.directory, self.bucket = directory, bucket
        self.handle = substrate.seaweed_handle(directory, ports=ports)
        self.started_once = False

    @property
    def ports(self) -> list[int]:
        h = self.handle
        return [h.s3_port, h.master_port, h.volume_port, h.filer_port]

    @property
    def address(self) -> str:
        return self.handle.endpoint

    def start(self) -> None:
        """Start on the same ports as before; the first start moves to fresh ports when one was taken meanwhile
        (weed binds seven ports, and any process on the machine may take one as its ephemeral port)."""
        for attempt in range(3):
            self.tidy()
            try:
                self.handle.start()
                break
            except RuntimeError:
                if self.started_once or attempt == 2:
                    raise
                self.handle = substrate.seaweed_handle(self.directory)
        self.handle.bucket(self.bucket)
        self.process = self.handle.process
        self.started_once = True

    def stop(self) -> None:
        self.handle.stop()  # SIGKILL: weed's own shutdown takes over 10 s and keeps nothing more
        self.tidy()

    def kill(self) -> None:
        self.handle.kill()

    def tidy(self) -> None:
        if self.alive:
            return
        self.handle.kill()  # idempotent; removes weed's gRPC sockets in /tmp
        for name in ("filer.sock", "s3.sock"):
            (self.handle.directory / name).unlink(missing_ok=True)


class Photomaker(Service):
    """``photomaker serve --no-worker`` (a replica) or ``photomaker worker --tiny``, in its own data dir."""

    def __init__(self, name: str, kind: str, args: list[str], data_dir: Path, env: Callable[[], dict[str, str]],
                 url: str = "") -> None:
        super().__init__(name)
        self.kind, self.args, self.data_dir, self.env, self.url = kind, args, data_dir, env, url
        self.log_path = data_dir / "process.log"
        self._log_offset = 0
        # Replicas only close their connections (5 s); a worker's is set from its shutdown grace by the caller.
        self.grace_s = 15.0

    @property
    def address(self) -> str:
        return self.url

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        command = [sys.executable, "-m", "photomaker_server.cli", *self.args, "--data-dir", str(self.data_dir)]
        with open(self.log_path, "ab") as log:
            self.process = reaper.track(subprocess.Popen(
                command, env=self.env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.data_dir))

    def new_log(self) -> str:
        """What the process logged since its latest start."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(self._log_offset)
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    def healthy(self) -> bool:
        if not self.alive:
            return False
        if self.kind == "worker":  # `worker <id> ready: <device>, model loaded in X s`
            return any(" ready: " in line for line in self.new_log().splitlines())
        try:
            return httpx.get(self.url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


class Front(Service):
    """HAProxy: the one address clients and result URLs use."""

    kind = "front"
    grace_s = 5.0

    def __init__(self, directory: Path, config: str, admin_socket: Path, url: str) -> None:
        super().__init__("front")
        import front

        self.directory, self.url, self.admin_socket = directory, url, admin_socket
        self.config_path = directory / "haproxy.cfg"
        self.log_path = directory / "process.log"
        self.admin = front.Admin(admin_socket)
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(config)
        front.check_config(self.config_path)
        self._command = front.command(self.config_path)

    @property
    def address(self) -> str:
        return self.url

    def start(self) -> None:
        self.tidy()
        with open(self.log_path, "ab") as log, open(self.directory / "stderr.log", "ab") as errors:
            self.process = reaper.track(subprocess.Popen(
                self._command, stdin=subprocess.DEVNULL, stdout=log, stderr=errors,
                start_new_session=True, cwd=self.directory))

    def stop(self) -> None:
        if self.process is not None:
            reaper.stop_group(self.process, signal.SIGUSR1, self.grace_s)  # soft stop: finish what is in flight
        self.tidy()

    def healthy(self) -> bool:
        if not self.alive:
            return False
        try:
            self.admin.ask("show info")
            return True
        except OSError:
            return False

    def tidy(self) -> None:
        if not self.alive:
            self.admin_socket.unlink(missing_ok=True)


def wait_healthy(service: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not service.healthy():
        if not service.alive:
            raise RuntimeError(f"{service.name} exited with status {service.process.returncode} while starting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{service.name} not healthy after {timeout:.0f} s")
        time.sleep(0.3)

