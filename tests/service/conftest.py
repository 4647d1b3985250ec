"""Fixtures for the service tests (helpers live in ``service.svc``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.svc import Api, LocalHttp


@pytest.fixture(scope="session")
def api(live_server) -> Api:
    return Api(live_server)


@pytest.fixture(scope="session")
def other_api(live_server) -> Api:
    from live_server import OTHER_KEY

    return Api(live_server, OTHER_KEY)


@pytest.fixture(scope="session")
def local_http() -> Iterator[LocalHttp]:
    server = LocalHttp()
    yield server
    server.close()
