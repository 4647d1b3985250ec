"""Fixtures for the client tests: a photo on disk, an HTTPS server, and reading a server's access log."""

from __future__ import annotations

import io
import ssl
from pathlib import Path

import httpx
import pytest
from PIL import Image

from helpers import image_bytes, make_face


@pytest.fixture(scope="session")
def face_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "face.png"
    path.write_bytes(image_bytes(make_face(0)))
    return path


@pytest.fixture(scope="session")
def tls_server(tiny_root, tmp_path_factory):
    """``photomaker serve --tls``: a self-signed certificate made in the data dir, clients trust it via its path."""
    from live_server import LiveServer

    from photomaker_server.server import ensure_tls
    from photomaker_server.settings import Settings

    data_dir = tmp_path_factory.mktemp("tls-server")
    # The certificate is what the server would make on its own start (same function, same place); made first so
    # that LiveServer's readiness probe, which verifies against it, has it from the first try.
    ensure_tls(Settings(data_dir=data_dir, tls=True))
    # No prefetching: the client tests watch a request wait in the queue behind a busy worker (see tests/conftest.py).
    server = LiveServer(data_dir, tiny_root, tls=True, env={"PHOTOMAKER_PREFETCH_DEPTH": "0"}).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_verify(tls_server) -> ssl.SSLContext:
    """An SSL context trusting the TLS server's self-signed certificate (for httpx's ``verify=``)."""
    return ssl.create_default_context(cafile=str(tls_server.cert))


class ServerLog:
    """A server's uvicorn access log: what requests reached it (``'METHOD /path HTTP/1.1" status'`` per line)."""

    def __init__(self, server) -> None:  # noqa: ANN001
        self.path = server.log_path
        self.offset = self.path.stat().st_size

    def lines(self) -> list[str]:
        """Access-log lines written since this object was made."""
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            text = handle.read().decode(errors="replace")
        return [line.split(' - "', 1)[1] for line in text.splitlines() if "uvicorn.access" in line and ' - "' in line]


def _fetch_image(url: str, verify=True) -> Image.Image:  # noqa: ANN001
    response = httpx.get(url, verify=verify, timeout=30)
    assert response.status_code == 200, (url, response.status_code, response.text[:200])
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


@pytest.fixture(scope="session")
def server_log():
    """``server_log(server)``: start watching a server's access log."""
    return ServerLog


@pytest.fixture(scope="session")
def fetch_image():
    """``fetch_image(url, verify=True)``: download a result image and decode it (asserts HTTP 200)."""
    return _fetch_image
