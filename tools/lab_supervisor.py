"""Keeps the local cluster's processes running and carries out what ``cluster.py ctl`` asks.

A process that dies on its own is reported and started again after a back-off (1 s, doubling up to 30 s, back to
1 s once it has run for a minute), as systemd's ``Restart=always`` or Kubernetes would. On request a process can be
killed like a crash (and restarted by the same rule, or after a chosen outage), stopped and kept down, started,
or restarted gracefully; a replica is drained at the load balancer before it stops and taken back only once it
answers, which is what makes a rolling restart invisible to clients.

Every action runs under one lock, so the watch loop and control requests never act on a process at once; waiting
for a process to become healthy happens outside it.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from lab_services import Front, Service, wait_healthy

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 60.0
#: How long a restarted process may take to be healthy again (a worker loads torch and the model).
HEALTHY_TIMEOUT_S = 300.0
#: How long a drained replica's requests in flight may take before it is stopped anyway.
DRAIN_TIMEOUT_S = 15.0


def describe_exit(status: int | None) -> str:
    if status is None:
        return "still running"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


class Supervisor:
    def __init__(self, services: list[Service], say: Callable[[str], None], auto_restart: bool = True) -> None:
        self.services = {service.name: service for service in services}  # in start order
        self.front: Front | None = next((s for s in services if isinstance(s, Front)), None)
        self.say = say
        self.auto_restart = auto_restart
        self.lock = threading.RLock()
        self.wanted = {name: True for name in self.services}
        self.restart_at: dict[str, float | None] = {name: None for name in self.services}
        self.backoff = {name: FIRST_BACKOFF_S for name in self.services}
        self.restarts = {name: 0 for name in self.services}
        self.since: dict[str, float] = {}
        self.awaiting_health: set[str] = set()
        self.on_change: Callable[[], None] = lambda: None  # e.g. rewrite cluster.json with the new pids

    # -- the whole cluster
    def start_all(self, timeout: float) -> None:
        """Start everything in order; the photomaker processes start together and are awaited together, and the
        load balancer comes last, so that its first health checks find the replicas serving."""
        deadline = time.monotonic() + timeout
        for group in ([s for s in self.services.values() if s is not self.front], [self.front]):
            waiting = []
            for service in group:
                if service is None:
                    continue
                self._start(service)
                if service.kind not in ("postgres", "s3"):  # their start returns once they serve
                    waiting.append(service)
            for service in waiting:
                wait_healthy(service, max(1.0, deadline - time.monotonic()))
        self.awaiting_health.clear()

    def stop_all(self) -> None:
        """The front first (new clients are refused at once rather than told that no replica is left), then the
        workers and replicas together (each hands back or finishes its work), then the stores."""
        with self.lock:
            for name in self.wanted:
                self.wanted[name] = False
            if self.front is not None:
                self.front.stop()
            apps = [s for s in self.services.values() if s.kind in ("worker", "replica")]
            with ThreadPoolExecutor(max_workers=max(1, len(apps))) as pool:
                list(pool.map(lambda s: s.stop(), apps))
            for kind in ("s3", "postgres"):
                for service in self.services.values():
                    if service.kind == kind:
                        service.stop()
            for service in self.services.values():
                service.tidy()

    # -- the watch loop
    def watch(self) -> None:
        """One pass: report deaths, restart what is due, announce processes that became healthy."""
        with self.lock:
            now = time.monotonic()
            for name, service in self.services.items():
                if not self.wanted[name]:
                    continue
                if service.alive:
                    if name in self.awaiting_health and service.healthy():
                        self.awaiting_health.discard(name)
                        self._back_in(service)
                    if now - self.since.get(name, now) > STABLE_AFTER_S:
                        self.backoff[name] = FIRST_BACKOFF_S
                    continue
                if self.restart_at[name] is None:
                    status = service.process.returncode if service.process is not None else None
                    service.tidy()
                    if not self.auto_restart:
                        self.wanted[name] = False
                        self.say(f"{name} exited ({describe_exit(status)}); not restarted (--no-restart): "
                                 f"`cluster.py ctl start {name}`")
                        continue
                    delay = self.backoff[name]
                    self.backoff[name] = min(delay * 2, MAX_BACKOFF_S)
                    self.restart_at[name] = now + delay
                    self.say(f"{name} exited ({describe_exit(status)}); restarting in {delay:.0f} s")
                elif now >= self.restart_at[name]:
                    self.restart_at[name] = None
                    try:
                        self._start(service)
                        self.restarts[name] += 1
                    except Exception as exc:  # noqa: BLE001 - reported; the next pass tries again after a back-off
                        self.say(f"{name} failed to start: {exc}")

    # -- requests from `cluster.py ctl`
    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("command")
        if command == "ping":
            return {"ok": True}
        if command == "status":
            return {"ok": True, "services": self.status()}
        names = request.get("names") or []
        unknown = [n for n in names if n not in self.services]
        if unknown or not names:
            return {"ok": False, "error": f"name one or more of: {', '.join(self.services)}"
                                         + (f" (unknown: {', '.join(unknown)})" if unknown else "")}
        actions = {"kill": lambda s: self.kill(s, request.get("down_for")), "stop": self.stop,
                   "start": self.start, "restart": self.restart}
        if command not in actions:
            return {"ok": False, "error": f"unknown command {command!r}: status, kill, stop, start, restart"}
        done = []
        for name in names:
            began = time.monotonic()
            actions[command](self.services[name])
            done.append({"name": name, "seconds": round(time.monotonic() - began, 1),
                         "pid": self.services[name].pid})
        return {"ok": True, "done": done}

    def kill(self, service: Service, down_for: float | None = None) -> None:
        """SIGKILL, like a crash; back after ``down_for`` seconds (default: the usual back-off)."""
        with self.lock:
            service.kill()
            service.tidy()
            delay = self.backoff[service.name] if down_for is None else float(down_for)
            if self.auto_restart or down_for is not None:
                self.wanted[service.name] = True
                self.restart_at[service.name] = time.monotonic() + delay
                self.say(f"{service.name} killed (SIGKILL) on request; restarting in {delay:.0f} s")
            else:
                self.wanted[service.name] = False
                self.say(f"{service.name} killed (SIGKILL) on request; stays down until `ctl start`")

    def stop(self, service: Service) -> None:
        """The operator's stop; stays down until ``start``. A replica leaves the load balancer first."""
        with self.lock:
            self.wanted[service.name] = False
            self.restart_at[service.name] = None
            if service.kind == "replica" and self.front is not None and self.front.alive:
                self._drain(service)
            service.stop()
            self.say(f"{service.name} stopped on request ({describe_exit(service.process.returncode)})")

    def start(self, service: Service) -> None:
        """Start (if not running) and wait until it is healthy; a replica then rejoins the load balancer."""
        with self.lock:
            self.wanted[service.name] = True
            self.restart_at[service.name] = None
            if not service.alive:
                self._start(service)
        wait_healthy(service, HEALTHY_TIMEOUT_S)
        with self.lock:
            if service.kind == "replica" and self.front is not None and self.front.alive:
                self.front.admin.set_state(service.name, "ready")
                if not self.front.admin.wait(service.name, lambda row: row["status"].startswith("UP"), 60):
                    raise RuntimeError(f"{service.name} answers but the load balancer does not mark it UP")
            if service.name in self.awaiting_health:  # not announced by the watch loop yet
                self.awaiting_health.discard(service.name)
                self._back_in(service)

    def restart(self, service: Service) -> None:
        """One step of a rolling restart: drain, stop gracefully, start, wait until it serves again."""
        self.stop(service)
        self.start(service)
        with self.lock:
            self.restarts[service.name] += 1

    def status(self) -> list[dict[str, Any]]:
        rows = []
        servers: dict[str, dict[str, str]] = {}
        if self.front is not None and self.front.alive:
            try:
                servers = self.front.admin.servers()
            except OSError:
                pass
        now = time.monotonic()
        for name, service in self.services.items():
            if service.alive:
                state = "starting" if name in self.awaiting_health else "running"
            elif self.wanted[name] and self.restart_at[name] is not None:
                state = f"restarting in {max(0.0, self.restart_at[name] - now):.0f} s"
            else:
                state = "down" if self.wanted[name] else "stopped"
            rows.append({"name": name, "kind": service.kind, "state": state, "pid": service.pid if service.alive
                         else None, "restarts": self.restarts[name], "address": service.address,
                         "up_s": round(now - self.since[name]) if service.alive and name in self.since else None,
                         "balancer": servers.get(name, {}).get("status", "")})
        return rows

    # -- internals
    def _start(self, service: Service) -> None:
        service.start()
        self.since[service.name] = time.monotonic()
        self.awaiting_health.add(service.name)
        self.on_change()

    def _back_in(self, service: Service) -> None:
        self.say(f"{service.name} is up (pid {service.pid})")
        self.on_change()

    def _drain(self, service: Service) -> None:
        admin = self.front.admin
        admin.set_state(service.name, "maint")
        if not admin.wait(service.name, lambda row: row.get("scur") in ("0", ""), DRAIN_TIMEOUT_S):
            self.say(f"{service.name}: requests still in flight after {DRAIN_TIMEOUT_S:.0f} s of draining; "
                     "stopping it anyway")
