"""Small exposures closed at the API: a ``fal_webhook`` that can never be delivered is a 422 naming the field
(never a 500, never accepted and silently dropped); ``/health`` and ``/ready`` tell anyone without a key nothing
about hosts or requests, and a key only about its own request."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from helpers import stored_request
from photomaker_server.api.app import create_app
from photomaker_server.jobs.records import WorkerInfo
from photomaker_server.settings import APP_ID, Settings
from photomaker_server.urls import UrlError, parse_http_url

ALICE, BOB = "key-alice", "key-bob"
REQUEST = {"prompt": "a photo of a man img", "image_archive_url": "https://example.com/faces.zip"}


@pytest.fixture
def client(tmp_path):
    app = create_app(Settings(data_dir=tmp_path, api_keys=[ALICE, BOB]), housekeeping=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


MALFORMED = [
    "http://[::1",  # unbalanced bracket (was a 500)
    "http://[zz]/h",  # not an IPv6 literal (was a 500)
    "http://%zz/",
    "http://a b/",
    "http://h:99999/",
    "http://h:0/",
    "http://h:-1/",
    "http://h:1a/",
    "http://" + "a" * 254 + "/",
    "http://" + "a" * 64 + ".example/",
    "http://999.1.1.1/",
    "http://example.com/hook\r\nX-Injected: 1",
    "http://example.com/ho\nok",
    "http://exa\tmple.com/",
    "http://example.com/\x00",
    "http://example.com/\x7f",
    "http://example.com\\@evil/",
    "http://user:pw@example.com/",
    "http:///path-only",
    "https://example.com/" + "a" * 17_000,
]


@pytest.mark.parametrize("url", MALFORMED)
def test_a_webhook_url_that_cannot_be_delivered_is_422_naming_fal_webhook(client, url):
    response = client.post(f"/{APP_ID}", params={"fal_webhook": url}, json=REQUEST, headers={"Authorization": f"Key {ALICE}"})
    assert response.status_code == 422, (url, response.status_code, response.text)
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["query", "fal_webhook"] and detail["msg"] and detail["type"].startswith("url_"), detail
    assert client.app.state.ctx.store.counts().get("queued", 0) == 0


def test_good_webhook_urls_are_accepted_and_other_schemes_stay_400(client):
    headers = {"Authorization": f"Key {ALICE}"}
    for url in ("https://hooks.example.com/h?x=1", "http://[2606:4700::1111]:8080/h", "https://bücher.example/h"):
        assert client.post(f"/{APP_ID}", params={"fal_webhook": url}, json=REQUEST, headers=headers).status_code == 200
    assert client.post(f"/{APP_ID}", params={"fal_webhook": "ftp://example.com/h"}, json=REQUEST,
                       headers=headers).status_code == 400


def test_the_url_parser_splits_what_it_accepts():
    url = parse_http_url("HTTPS://Bücher.Example.:8443/a/b?c=d#frag")
    assert (url.scheme, url.host, url.port, url.path, url.url) == (
        "https", "xn--bcher-kva.example", 8443, "/a/b?c=d", "HTTPS://Bücher.Example.:8443/a/b?c=d")
    assert url.host_header == "xn--bcher-kva.example:8443"
    assert parse_http_url("http://[::1]/").host_header == "[::1]"
    with pytest.raises(UrlError) as info:
        parse_http_url("http://a\r\nb/")  # urlsplit alone would quietly make this host "ab"
    assert info.value.kind == "url_characters"


def test_health_without_a_key_names_no_host_and_no_request(client):
    ctx = client.app.state.ctx
    alice, bob = ctx.keys.owner_for(f"Key {ALICE}"), ctx.keys.owner_for(f"Key {BOB}")
    job = ctx.store.submit(alice, APP_ID, stored_request())
    ctx.store.heartbeat(WorkerInfo(id="gpu-box-7-1234-abcdef", host="gpu-box-7", pid=1234, state="busy",
                                   current_job=job.id))
    for path in ("/health", "/ready"):
        anonymous = client.get(path)
        assert "gpu-box-7" not in anonymous.text and job.id not in anonymous.text, anonymous.text
        (worker,) = anonymous.json()["workers"]
        assert worker["state"] == "busy" and "current_job" not in worker and "host" not in worker
        assert client.get(path, headers={"Authorization": "Key wrong"}).text == anonymous.text
        (own,) = client.get(path, headers={"Authorization": f"Key {ALICE}"}).json()["workers"]
        assert own["current_job"] == job.id and own["host"] == "gpu-box-7"
        (other,) = client.get(path, headers={"Authorization": f"Key {BOB}"}).json()["workers"]
        assert other["current_job"] is None, "another key's request id is not shown"
    assert bob != alice
