"""The request-body cap (``api.body_limit``) on a bare Starlette app: declared sizes, streamed bodies, upload paths."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from photomaker_server.api import errors
from photomaker_server.api.body_limit import BodyLimitMiddleware, limits_for

reads: list[int] = []


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    reads.append(len(body))
    return JSONResponse({"size": len(body)})


def client(max_request: int = 100, max_upload: int = 1000) -> TestClient:
    app = Starlette(routes=[Route("/submit", echo, methods=["POST"]), Route("/files/upload", echo, methods=["POST"])])
    errors.install(app)
    app.add_middleware(BodyLimitMiddleware, limit_for=limits_for(max_request, max_upload))
    return TestClient(app)


def test_declared_length_over_the_cap_is_refused_before_the_app_runs():
    reads.clear()
    response = client().post("/submit", content=b"x" * 101)
    assert response.status_code == 413
    assert response.json()["error_type"] == "request_too_large" and "100 bytes" in response.json()["detail"]
    assert response.headers["x-fal-error-type"] == "request_too_large"
    assert reads == []


def test_streamed_body_is_counted():
    reads.clear()
    chunks = (b"x" * 30 for _ in range(10))  # no Content-Length: sent chunked
    response = client().post("/submit", content=chunks)
    assert response.status_code == 413 and response.json()["error_type"] == "request_too_large"
    assert reads == []
    assert client().post("/submit", content=(b"x" * 25 for _ in range(4))).json() == {"size": 100}


def test_upload_paths_have_the_upload_cap_plus_framing():
    c = client(max_request=100, max_upload=1000)
    assert c.post("/files/upload", content=b"x" * 1000).json() == {"size": 1000}
    assert c.post("/files/upload", content=b"x" * (1000 + 1024 * 1024 + 1)).status_code == 413
    refused = c.post("/files/upload", content=b"x" * (1000 + 1024 * 1024 + 1)).json()
    assert "PHOTOMAKER_MAX_DOWNLOAD_BYTES" in refused["detail"]
    # When the general cap is the larger, uploads get it.
    assert client(max_request=5000, max_upload=10).post("/files/upload", content=b"x" * 4000).status_code == 200
