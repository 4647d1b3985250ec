"""The cluster's load balancer (tools/front.py, HAProxy) against small stand-in replicas: which replica leaves the
pool, which request is retried where, and that the configuration in docs/scaling.md is the one haproxy accepts."""

from __future__ import annotations

import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

import front
import substrate
from lab_services import Front, wait_healthy

DOCS = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"


class Replica(ThreadingHTTPServer):
    """Answers ``/ready`` with ``ready`` (status, body); ``/work`` with 200, or drops the connection unanswered."""

    daemon_threads = True

    def __init__(self, ready: tuple[int, str] = (200, '{"ready": true}'), drop_work: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.ready, self.drop_work = ready, drop_work
        self.work: list[str] = []  # methods of the /work requests that reached it
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    server: Replica

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _work(self) -> None:
        if self.headers.get("Content-Length"):
            self.rfile.read(int(self.headers["Content-Length"]))
        self.server.work.append(self.command)
        if self.server.drop_work:  # a replica killed before it answered
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self._answer(200, '{"ok": true}')

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/ready":
            self._answer(*self.server.ready)
        else:
            self._work()

    def do_POST(self) -> None:  # noqa: N802
        self._work()


@pytest.fixture
def balancer(tmp_path):
    started: list[Front] = []

    def start(replicas: dict[str, int]) -> tuple[Front, str]:
        port = substrate.free_port()
        admin = tmp_path / f"admin{len(started)}.sock"
        config = front.render_config(("127.0.0.1", port), {n: ("127.0.0.1", p) for n, p in replicas.items()}, admin)
        service = Front(tmp_path / f"front{len(started)}", config, admin, f"http://127.0.0.1:{port}")
        started.append(service)
        service.start()
        wait_healthy(service, 30)
        return service, service.url

    yield start
    for service in started:
        service.stop()
        assert not service.admin_socket.exists()


def wait_states(service: Front, expected: dict[str, str], timeout: float = 30) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        states = {name: row["status"].split()[0] for name, row in service.admin.servers().items()}
        if states == expected or time.monotonic() > deadline:
            return states
        time.sleep(0.2)


def test_a_replica_shutting_down_leaves_the_pool_one_without_its_database_stays(balancer):
    draining = Replica(ready=(503, '{"ready": false, "detail": "shutting down", "workers": []}'))
    no_database = Replica(ready=(503, '{"detail": "The job database is unreachable; retry shortly", '
                                      '"error_type": "database_unavailable"}'))
    healthy = Replica()
    service, url = balancer({"api1": draining.port, "api2": no_database.port, "api3": healthy.port})
    # Every replica answers 503 while the database is down: taking them all out would leave only haproxy's page.
    assert wait_states(service, {"api1": "DOWN", "api2": "UP", "api3": "UP"}) == \
        {"api1": "DOWN", "api2": "UP", "api3": "UP"}
    for _ in range(6):
        assert httpx.get(f"{url}/work", timeout=10).status_code == 200
    assert draining.work == [] and no_database.work and healthy.work


def test_a_get_is_retried_on_another_replica_a_post_that_reached_one_is_not(balancer):
    dying, healthy = Replica(drop_work=True), Replica()
    service, url = balancer({"api1": dying.port, "api2": healthy.port})
    assert wait_states(service, {"api1": "UP", "api2": "UP"}) == {"api1": "UP", "api2": "UP"}
    gets = [httpx.get(f"{url}/work", timeout=10).status_code for _ in range(6)]
    assert gets == [200] * 6 and "GET" in dying.work  # some reached the dying one, and were answered elsewhere
    posts = [httpx.post(f"{url}/work", content=b"{}", timeout=10).status_code for _ in range(6)]
    dropped = dying.work.count("POST")
    assert dropped >= 1 and posts.count(502) == dropped  # not sent again: it may have been accepted
    assert healthy.work.count("POST") == posts.count(200) == 6 - dropped


def test_a_refused_connection_is_retried_for_every_method(balancer):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        gone = closed.getsockname()[1]  # bound, never listening: connections are refused
        healthy = Replica()
        service, url = balancer({"api1": gone, "api2": healthy.port})
        for _ in range(6):
            assert httpx.post(f"{url}/work", content=b"{}", timeout=10).status_code == 200
        assert healthy.work.count("POST") == 6


def test_the_production_configuration_in_the_docs_is_valid(tmp_path):
    text = DOCS.read_text()
    block = re.search(r"```\n(global\n.*?)```", text[text.index("## The load balancer"):], re.S).group(1)
    # Only what a test machine lacks changes: the certificate and the admin socket's directory.
    block = re.sub(r"bind :443 ssl crt \S+", "bind 127.0.0.1:1", block)
    block = block.replace("/run/haproxy/admin.sock", str(tmp_path / "admin.sock"))
    path = tmp_path / "haproxy.cfg"
    path.write_text(block)
    front.check_config(path)  # raises on any error or warning
