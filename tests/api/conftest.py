"""Fixtures shared by the API tests."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    """The job database of a test run on both backends: None (the data dir's SQLite file), or a fresh PostgreSQL
    database of the session's server, dropped afterwards."""
    if request.param == "sqlite":
        yield None
        return
    server = request.getfixturevalue("pg_server")
    url = server.create_database()
    yield url
    server.drop_database(url)
