"""Several "hosts" on one machine: Linux network namespaces on a private bridge (needs root and ``ip``).

``Network()`` makes a bridge in the root namespace with the first address of a private /24 (chosen in
10.251.0.0/16 so that it overlaps nothing this machine routes); ``add_host(name)`` makes a namespace joined to the
bridge by a veth pair, with the next address. Hosts reach each other and the root namespace reaches them (the
bridge address), nothing else: no default route, no NAT, no forwarding. Processes started with ``Host.run`` live
in the host's namespace.

Names carry the creating process's pid (``pmk<pid>...``), so concurrent runs do not clash and a later run can
remove what a crashed one left (``clean_stale``). Teardown kills every process in each namespace first: deleting
a namespace's name does not stop what runs inside it.
"""

from __future__ import annotations

import atexit
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import reaper

PREFIX = "pmk"
_NAME = re.compile(rf"^{PREFIX}(\d+)")
_counter = itertools.count()  # process-wide: interface names (15 bytes at most) carry no network id
_available: str | None | bool = False  # False: not checked yet


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _kill_namespace_processes(ns: str) -> None:
    for _ in range(50):  # a dying process may have forked; repeat until the namespace is empty
        pids = [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.strip()]


def _links() -> list[str]:
    out = _ip("-o", "link", "show", check=False).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def clean_stale() -> list[str]:
    """Remove namespaces and links left by harness runs whose process is gone; returns what was removed."""
    removed = []
    for ns in _namespaces():
        match = _NAME.match(ns)
        if match and not reaper.pid_alive(int(match.group(1))):
            _kill_namespace_processes(ns)
            _ip("netns", "del", ns, check=False)
            removed.append(ns)
    for link in _links():
        match = _NAME.match(link)
        if match and not reaper.pid_alive(int(match.group(1))):
            _ip("link", "del", link, check=False)
            removed.append(link)
    return removed


def available() -> str | None:
    """None when namespaces can be made here, else why not (not root, no ``ip``, no permission...)."""
    global _available
    if _available is not False:
        return _available
    reason = None
    if os.geteuid() != 0:
        reason = "network namespaces need root (CAP_SYS_ADMIN/CAP_NET_ADMIN); this runs as uid %d" % os.geteuid()
    elif not shutil.which("ip"):
        reason = "the `ip` command (iproute2) is not installed"
    else:
        name = f"{PREFIX}{os.getpid()}t{next(_counter)}"
        try:
            _ip("netns", "add", name)
            _ip("link", "add", f"{name}b", "type", "bridge")
            _ip("link", "add", f"{name}v", "type", "veth", "peer", "name", "eth0", "netns", name)
            _ip("-n", name, "link", "set", "lo", "up")
        except RuntimeError as exc:
            reason = f"cannot create a network namespace here: {exc}"
        finally:
            _ip("link", "del", f"{name}v", check=False)
            _ip("link", "del", f"{name}b", check=False)
            _ip("netns", "del", name, check=False)
    _available = reason
    return reason


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.251.0.0/16 that overlaps no route or address on this machine (a pid-derived start)."""
    taken = []
    for line in _ip("-o", "-4", "route", "show", "table", "all", check=False).stdout.splitlines():
        first = line.split()[0] if line.split() else ""
        if first in ("broadcast", "local", "unicast") and len(line.split()) > 1:
            first = line.split()[1]
        if first and first != "default":
            try:
                taken.append(ipaddress.ip_network(first, strict=False))
            except ValueError:
                pass
    for line in _ip("-o", "-4", "addr", "show", check=False).stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            taken.append(ipaddress.ip_network(parts[parts.index("inet") + 1], strict=False))
    start = os.getpid() % 250
    for i in range(250):
        candidate = ipaddress.ip_network(f"10.251.{(start + i) % 250 + 1}.0/24")
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise RuntimeError("no free /24 in 10.251.0.0/16 for the test network")


class Host:
    """One namespace on the network: ``ip`` is its address, ``run`` starts a process "on" it."""

    def __init__(self, network: Network, name: str, ns: str, veth: str, ip: str) -> None:
        self.network, self.name, self.ns, self.veth, self.ip = network, name, ns, veth, ip

    def command(self, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *map(str, args)]

    def run(self, args: list[str], env: dict[str, str] | None = None, log_path: str | Path | None = None,
            **kwargs) -> subprocess.Popen:
        """Start ``args`` in this namespace in a new session, output to ``log_path`` (appended) or discarded."""
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            process = subprocess.Popen(self.command(args), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
        finally:
            if log_path:
                log.close()
        return reaper.track(process)

    def call(self, args: list[str], env: dict[str, str] | None = None, timeout: float = 120,
             **kwargs) -> subprocess.CompletedProcess:
        """Run ``args`` here to completion (text output captured)."""
        return subprocess.run(self.command(args), env=env, capture_output=True, text=True, timeout=timeout,
                              **kwargs)

    def pids(self) -> list[int]:
        return [int(p) for p in _ip("netns", "pids", self.ns, check=False).stdout.split()]

    def wait_empty(self, timeout: float = 10) -> bool:
        """True once no process runs in this namespace. Killed processes leave it a moment after the kill: their
        children are reaped only once re-parented."""
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.pids() == []

    def __repr__(self) -> str:
        return f"Host({self.name!r}, ns={self.ns!r}, ip={self.ip!r})"


class Network:
    """A private bridge and the hosts on it; a context manager that removes everything it made."""

    def __init__(self) -> None:
        reason = available()
        if reason:
            raise RuntimeError(reason)
        clean_stale()
        self.id = f"{os.getpid()}n{next(_counter)}"
        self.bridge = f"{PREFIX}{os.getpid()}b{next(_counter)}"
        self.subnet = _free_subnet()
        self._addresses = self.subnet.hosts()
        self.gateway = str(next(self._addresses))  # the root namespace's address on the bridge
        self.hosts: dict[str, Host] = {}
        self._closed = False
        atexit.register(self.close)
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except Exception:
            self.close()
            raise

    def add_host(self, name: str) -> Host:
        if name in self.hosts:
            raise ValueError(f"host {name!r} exists")
        ns = f"{PREFIX}{self.id}-{name}"
        veth = f"{PREFIX}{os.getpid()}v{next(_counter)}"
        ip = str(next(self._addresses))
        host = Host(self, name, ns, veth, ip)
        self.hosts[name] = host  # registered first: a failure half-way is still torn down
        _ip("netns", "add", ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", ns, "addr", "add", f"{ip}/{self.subnet.prefixlen}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        return host

    def close(self) -> None:
        """Kill every process in the hosts, delete namespaces, veths and the bridge. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for host in self.hosts.values():
            _kill_namespace_processes(host.ns)
            _ip("link", "del", host.veth, check=False)
            _ip("netns", "del", host.ns, check=False)
        _ip("link", "del", self.bridge, check=False)
        atexit.unregister(self.close)

    def leftovers(self) -> list[str]:
        """Namespaces or links of this network that still exist (empty after ``close``)."""
        links = {self.bridge, *(h.veth for h in self.hosts.values())}
        return [n for n in _namespaces() if n.startswith(f"{PREFIX}{self.id}-")] + [n for n in _links() if n in links]

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
