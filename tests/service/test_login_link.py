"""The local key goes only to whoever has the console's login link — never to a request for looking local.

In process (TestClient): the link's token is one-time, expires, is this deployment's own, and is not a session;
the session cookie is HttpOnly + SameSite=Strict and is what ``/api/session`` answers to; configured keys are never
handed out. For real: a default HAProxy in front of the shared live server, sending ``Host: 127.0.0.1:<port>`` and
no forwarding header (what made every remote visitor "local" before), and every route of the API asked through it
without the link: the key is in no answer.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from live_server import API_KEY, free_port
from photomaker_server.api import login
from photomaker_server.api.app import create_app
from photomaker_server.settings import Settings


@pytest.fixture
def app_client(tmp_path):
    app = create_app(Settings(data_dir=tmp_path), housekeeping=False)  # generates the local key
    with TestClient(app, base_url="http://127.0.0.1:8000", client=("127.0.0.1", 5000)) as client:
        yield client


def _token(client: TestClient, now: float | None = None) -> str:
    ctx = client.app.state.ctx
    link = login.login_link(ctx.settings.base_url, ctx.token_secret, time.time() if now is None else now)
    assert link.startswith("http://127.0.0.1:8000/?token=")
    return parse_qs(urlsplit(link).query)["token"][0]


def test_the_link_signs_in_once_and_the_session_gets_the_local_key(app_client):
    local_key = app_client.app.state.ctx.keys.local_key
    assert app_client.get("/api/session").status_code == 401
    assert app_client.get("/api/local-key").status_code in (404, 405), "the old route is gone"
    token = _token(app_client)
    signed_in = app_client.post("/api/login", json={"token": token})
    assert signed_in.status_code == 204, signed_in.text
    cookie = signed_in.headers["set-cookie"]
    assert "photomaker_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert local_key not in cookie and "Secure" not in cookie  # plain http here
    session = app_client.get("/api/session")
    assert session.status_code == 200 and session.json() == {"key": local_key}
    assert session.headers["cache-control"] == "no-store"
    # One use only, from any client; signing out ends the session.
    again = TestClient(app_client.app, base_url="http://127.0.0.1:8000").post("/api/login", json={"token": token})
    assert again.status_code == 403 and again.json()["error_type"] == "invalid_login_link"
    assert app_client.delete("/api/session").status_code == 204
    assert app_client.get("/api/session").status_code == 401


@pytest.mark.parametrize("forge", ["expired", "other secret", "tampered", "session as link", "garbage", "empty"])
def test_forged_or_stale_tokens_get_nothing(app_client, forge):
    ctx = app_client.app.state.ctx
    token = {
        "expired": lambda: _token(app_client, now=time.time() - login.LINK_TTL_S - 1),
        "other secret": lambda: login.new_link_token(b"x" * 32, time.time()),
        "tampered": lambda: "A" + _token(app_client)[1:],
        "session as link": lambda: login.new_session(ctx.token_secret, time.time()),
        "garbage": lambda: "not.a.token\r\n" * 30,
        "empty": lambda: "",
    }[forge]()
    answer = app_client.post("/api/login", json={"token": token})
    assert answer.status_code in (403, 422) and "set-cookie" not in answer.headers
    # A link token is not a session cookie either.
    app_client.cookies.set(login.SESSION_COOKIE, _token(app_client))
    assert app_client.get("/api/session").status_code == 401


def test_configured_keys_are_never_handed_out(tmp_path):
    app = create_app(Settings(data_dir=tmp_path, api_keys=["operator-secret"]), housekeeping=False)
    with TestClient(app, base_url="http://127.0.0.1:8000", client=("127.0.0.1", 5000)) as client:
        secret = client.app.state.ctx.token_secret
        token = parse_qs(urlsplit(login.login_link("http://x", secret, time.time())).query)["token"][0]
        assert client.post("/api/login", json={"token": token}).status_code == 403
        client.cookies.set(login.SESSION_COOKIE, login.new_session(secret, time.time()))
        assert client.get("/api/session").status_code == 401
    assert not (tmp_path / "api-key").exists(), "no key file is generated when keys are configured"


# --- behind a real reverse proxy ----------------------------------------------------------------------------------

HAPROXY_CONFIG = """
global
    maxconn 256
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend public
    bind 127.0.0.1:{front}
    # What a default local proxy sends: the backend's own host, no X-Forwarded-For / Forwarded / Via.
    http-request set-header Host 127.0.0.1:{back}
    default_backend api
backend api
    server local 127.0.0.1:{back}
"""


@pytest.fixture
def haproxy(live_server, tmp_path):
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.fail("no haproxy; `make test-deps` installs Debian's haproxy")
    front = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(front=front, back=live_server.port))
    process = subprocess.Popen([binary, "-f", str(config), "-db"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{front}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def test_behind_a_local_reverse_proxy_no_request_obtains_the_key(haproxy, live_server):
    schema = httpx.get(f"{live_server.url}/openapi.json", timeout=10).json()
    paths = {"/", "/?token=", "/api/local-key", "/api/session", "/docs", "/openapi.json", "/health", "/ready",
             "/metrics", "/.well-known/jwks.json", "/storage/auth/token", "/files/upload"}
    for path, operations in schema["paths"].items():
        concrete = path.replace("{owner_ns}", "fal-ai").replace("{alias}", "photomaker")
        concrete = concrete.replace("{request_id}", "00000000-0000-0000-0000-000000000000")
        concrete = concrete.replace("{upload_id}", "x").replace("{token}", "x").replace("{name}", "y")
        paths.add(concrete)
    answers = 0
    with httpx.Client(base_url=haproxy, timeout=30) as client:
        for path in sorted(paths):
            for method in ("GET", "POST", "PUT", "DELETE"):
                for headers in ({}, {"Host": "127.0.0.1"}, {"Host": "localhost"}, {"Origin": "http://127.0.0.1"}):
                    response = client.request(method, path, headers=headers, json={"token": ""})
                    answers += 1
                    assert API_KEY not in response.text, (method, path, headers, response.status_code)
                    assert all(API_KEY not in value for value in response.headers.values()), (method, path)
                    assert response.status_code < 500, (method, path, response.status_code)
        # The page itself, through the proxy: it is served (the proxy works), with no key in it.
        page = client.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()
    assert answers > 100
    # The console's link is what signs a browser in (also through the proxy): the server never guesses.
    token = parse_qs(urlsplit(live_server.login_link()).query)["token"][0]
    with httpx.Client(base_url=haproxy, timeout=30) as client:
        assert client.post("/api/login", json={"token": token}).status_code == 204
        assert client.get("/api/session").json() == {"key": API_KEY}
