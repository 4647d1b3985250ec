"""Fixtures for the job store tests: a movable clock and a fresh store, on SQLite and on PostgreSQL.

``backend`` is parametrized, so every test that uses ``store`` or ``db_path`` runs on both databases. ``db_path``
is what ``SQLJobStore(...)`` opens: a file path for SQLite, the URL of a fresh database for PostgreSQL. A test
about one database only parametrizes ``backend`` itself (``@pytest.mark.parametrize("backend", ["sqlite"])``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from photomaker_server.jobs.sql import SQLJobStore


class FakeClock:
    """A clock tests move by hand; starts at a fixed, realistic epoch time."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def db_path(backend: str, tmp_path: Path, request) -> Path | str:
    if backend == "sqlite":
        yield tmp_path / "jobs.db"
        return
    server = request.getfixturevalue("pg_server")
    url = server.create_database()
    yield url
    server.drop_database(url)


@pytest.fixture
def store(db_path, clock: FakeClock):
    s = SQLJobStore(db_path, clock=clock)
    yield s
    s.close()


@pytest.fixture
def race(db_path, clock: FakeClock):
    """``race(n, call)``: ``call(store, i)`` in ``n`` threads at once, each on a store of its own (its own
    connections, as separate processes would have); returns what each call returned (or raised), in order."""

    def run(n: int, call):  # noqa: ANN001, ANN202
        import threading

        stores = [SQLJobStore(db_path, clock=clock) for _ in range(n)]
        results: list[object] = [None] * n
        start = threading.Barrier(n)

        def one(i: int) -> None:
            start.wait()
            try:
                results[i] = call(stores[i], i)
            except Exception as exc:  # the caller asserts on refusals
                results[i] = exc

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            for s in stores:
                s.close()
        return results

    return run
