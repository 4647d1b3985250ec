"""``WorkerSupervisor`` without real processes: no spawn once a stop has begun, and a stop that races a spawn in
progress waits for it and stops that process too (no orphan)."""

from __future__ import annotations

import threading

from photomaker_server.supervision import WorkerSupervisor
from photomaker_server.settings import Settings


class FakeProcess:
    started_gate: threading.Event | None = None

    def __init__(self, target, args, name) -> None:  # noqa: ANN001
        self.target, self.args, self.pid, self.alive = target, args, 4242, False
        self.events: list[str] = []

    def start(self) -> None:
        if FakeProcess.started_gate is not None:
            FakeProcess.started_gate.wait(5)
        self.alive = True
        self.events.append("start")

    def is_alive(self) -> bool:
        return self.alive

    def terminate(self) -> None:
        self.events.append("terminate")
        self.alive = False

    def kill(self) -> None:
        self.events.append("kill")
        self.alive = False

    def join(self, timeout: float | None = None) -> None:
        self.events.append("join")


class FakeContext:
    def __init__(self) -> None:
        self.made: list[FakeProcess] = []

    def Process(self, target, args, name) -> FakeProcess:  # noqa: ANN001, N802
        process = FakeProcess(target, args, name)
        self.made.append(process)
        return process


def _supervisor(tmp_path) -> tuple[WorkerSupervisor, FakeContext]:  # noqa: ANN001
    supervisor = WorkerSupervisor(Settings(data_dir=tmp_path, shutdown_grace_s=0))
    supervisor._mp = FakeContext()
    return supervisor, supervisor._mp


def test_nothing_is_spawned_once_the_stop_began(tmp_path):
    supervisor, ctx = _supervisor(tmp_path)
    assert supervisor._spawn()
    supervisor.stop()
    assert ctx.made[0].events[:2] == ["start", "terminate"]
    assert supervisor._spawn() is False  # e.g. the watch thread's restart, after its backoff
    assert len(ctx.made) == 1


def test_a_stop_racing_a_spawn_stops_the_new_process(tmp_path):
    supervisor, ctx = _supervisor(tmp_path)
    FakeProcess.started_gate = threading.Event()
    try:
        spawning = threading.Thread(target=supervisor._spawn)
        spawning.start()
        while not ctx.made:  # the spawn is inside Process.start, holding the supervisor's lock
            threading.Event().wait(0.01)
        stopping = threading.Thread(target=supervisor.stop)
        stopping.start()
        stopping.join(0.3)
        assert stopping.is_alive()  # stop waits for the spawn in progress ...
        FakeProcess.started_gate.set()
        spawning.join(5)
        stopping.join(5)
    finally:
        FakeProcess.started_gate = None
    assert not stopping.is_alive()
    assert ctx.made[0].events[:2] == ["start", "terminate"]  # ... then stops that very process
    assert supervisor._spawn() is False
