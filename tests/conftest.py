"""Shared fixtures: the tiny random-weight model (built once per test session) and generated photos."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from helpers import make_face

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A directory holding the tiny model; reused across sessions via PHOTOMAKER_TEST_MODELS when set."""
    from photomaker_server.engine.tiny import ensure_tiny_model

    root = Path(os.environ.get("PHOTOMAKER_TEST_MODELS") or tmp_path_factory.mktemp("models")) / "tiny"
    ensure_tiny_model(root)
    return root


@pytest.fixture(scope="session")
def tiny_locations(tiny_root) -> dict[str, Path]:
    from photomaker_server.engine.tiny import ensure_tiny_model

    return ensure_tiny_model(tiny_root)


@pytest.fixture(scope="session")
def engine(tiny_locations):
    from photomaker_server.engine.service import Engine, EngineConfig

    return Engine(
        EngineConfig(
            base_models={k: str(tiny_locations[k]) for k in ("photomaker", "photomaker-style")},
            checkpoint=str(tiny_locations["checkpoint"]),
            checkpoint_v2=str(tiny_locations["checkpoint_v2"]),
            face_model=str(tiny_locations["face_model"]),
            device="cpu",
            demo=True,
        )
    )


@pytest.fixture
def faces() -> list[Image.Image]:
    return [make_face(i) for i in range(3)]


@pytest.fixture(scope="session")
def live_server(tiny_root, tmp_path_factory):
    """One shared ``photomaker serve --tiny`` for the HTTP, client and browser tests (keys: live_server.API_KEY,
    live_server.OTHER_KEY). Tests that restart or kill a server make their own LiveServer.

    Its worker does not prefetch: these tests watch requests wait in the queue (``IN_QUEUE``, queue positions,
    cancelling a queued request) behind a busy worker, which would otherwise claim the next one at once. Prefetching
    (the default, depth 1) has tests of its own (``service/test_worker_prefetch.py``) and runs in the servers that
    ``service/test_shutdown.py`` and ``service/test_durability.py`` make."""
    from live_server import LiveServer

    server = LiveServer(tmp_path_factory.mktemp("server"), tiny_root, env={"PHOTOMAKER_PREFETCH_DEPTH": "0"}).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL server for the session (``PHOTOMAKER_TEST_DATABASE_URL``, or an embedded one); tests take a
    fresh database each with ``pg_server.create_database()``."""
    from pg_server import PgServer

    server = PgServer.from_env_or_embedded()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 API for the session: SeaweedFS started here (killed at the end), or the operator's server named
    by ``PHOTOMAKER_TEST_S3_ENDPOINT``. Nothing here touches the environment: use ``s3_env`` for that."""
    from s3_server import s3_for_tests

    server = s3_for_tests(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The standard ``AWS_*`` variables pointing at ``s3_server``, for this test only (boto3's default chain,
    as a deployment configures it)."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server
