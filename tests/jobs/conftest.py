"""Fixtures for the job store tests: a movable clock and a fresh store on a temp file."""

from __future__ import annotations

from pathlib import Path

import pytest

from photomaker_server.jobs.store import SQLJobStore


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


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def store(db_path: Path, clock: FakeClock):
    s = SQLJobStore(db_path, clock=clock)
    yield s
    s.close()
