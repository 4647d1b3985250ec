"""The API and the worker on either storage backend (local files, S3 via SeaweedFS), in process: results hold
storage keys and the API renders their URLs; /files streams from whichever storage; an object store that is
down is a clear 503, not a 500."""

from __future__ import annotations

import socket
import uuid
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from helpers import stored_request
from photomaker_server.api.app import create_app
from photomaker_server.contract.result import StoredOutput
from photomaker_server.worker.process import Worker
from photomaker_server.settings import APP_ID, Settings

KEY = "test-key"
PUBLIC = "https://api.example"


@pytest.fixture(params=["local", "s3"])
def settings(request, tmp_path) -> Settings:
    storage_url = ""
    if request.param == "s3":
        request.getfixturevalue("s3_env")
        storage_url = f"s3://photomaker-tests/api-{uuid.uuid4().hex[:10]}"
    return Settings(data_dir=tmp_path, api_keys=[KEY], public_base_url=PUBLIC, storage_url=storage_url)


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings, housekeeping=False), headers={"Authorization": f"Key {KEY}"}) as c:
        yield c


def _local(url: str) -> str:
    assert url.startswith(PUBLIC + "/files/"), url
    return urlsplit(url).path


def test_worker_results_hold_keys_and_the_api_renders_urls(settings, client):
    store = client.app.state.ctx.store
    owner = client.app.state.ctx.keys.owner_for(f"Key {KEY}")
    worker = Worker(settings, engine=object())  # a worker on the same settings: same store, same storage
    job = store.submit(owner, APP_ID, stored_request())
    store.claim("w", 30)
    image = Image.new("RGB", (8, 6), "red")
    stored_image = worker._deliver(job, 0, image, stored_request(output_format="png"), False)
    stored = stored_image.model_dump(exclude_none=True)
    assert set(stored) == {"file", "content_type", "file_name", "file_size", "width", "height"}
    assert set(stored["file"]) == {"key"}, "no URL is stored"
    assert stored["file_name"] == f"{job.id}-0.png" and (stored["width"], stored["height"]) == (8, 6)
    synced_image = worker._deliver(job, 1, image, stored_request(output_format="jpeg", sync_mode=True), False)
    synced = synced_image.model_dump(exclude_none=True)
    assert synced["file"]["url"].startswith("data:image/jpeg;base64,") and "key" not in synced["file"]
    store.complete(job.id, "w", StoredOutput(images=[stored_image, synced_image], seed=1, prompt="a man img"))
    assert store.get(job.id).result.images[0] == stored_image

    shown = client.get(f"/{APP_ID}/requests/{job.id}").json()
    first = shown["images"][0]
    assert "key" not in first and first["url"] == f"{PUBLIC}/files/{stored['file']['key']}"
    assert shown["images"][1] == {"url": synced["file"]["url"], **{k: v for k, v in synced.items() if k != "file"}}
    response = client.get(_local(first["url"]))
    assert response.status_code == 200 and response.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert response.headers["content-type"] == "image/png" and int(response.headers["content-length"]) == stored["file_size"]
    assert response.headers["x-content-type-options"] == "nosniff" and response.headers["content-security-policy"] == "sandbox"


def test_results_stored_with_urls_are_answered_as_they_are(client):
    store = client.app.state.ctx.store
    owner = client.app.state.ctx.keys.owner_for(f"Key {KEY}")
    old = {"images": [{"url": "http://old-host:8000/files/" + "C" * 32 + "/x.png", "content_type": "image/png",
                       "file_name": "x.png", "file_size": 1, "width": 1, "height": 1}], "seed": 3, "prompt": "a man img"}
    job = store.submit(owner, APP_ID, stored_request())
    store.claim("w", 30)
    # as migration 0006 leaves such a result: the image's URL as a reference (it cannot know our storage's address)
    store.complete(job.id, "w", StoredOutput.model_validate(
        {**old, "images": [{"file": {"url": old["images"][0]["url"]}, **{k: v for k, v in old["images"][0].items()
                                                                          if k != "url"}}]}))
    assert client.get(f"/{APP_ID}/requests/{job.id}").json() == {**old, "timings": {}, "demo_model": False}


def test_uploads_round_trip_through_any_storage(client):
    initiated = client.post("/storage/upload/initiate", json={"content_type": "text/html", "file_name": "x.html"}).json()
    put = client.put(urlsplit(initiated["upload_url"]).path + "?" + urlsplit(initiated["upload_url"]).query,
                     content=b"<script>alert(1)</script>")
    assert put.status_code == 200 and put.json()["url"] == initiated["file_url"]
    again = client.put(urlsplit(initiated["upload_url"]).path + "?" + urlsplit(initiated["upload_url"]).query,
                       content=b"again")
    assert again.status_code == 409
    served = client.get(_local(initiated["file_url"]))
    assert served.content == b"<script>alert(1)</script>" and served.headers["content-security-policy"] == "sandbox"
    form = client.post("/storage/upload/multipart", files={"file": ("a b.png", b"png!", "image/png")}).json()
    assert client.get(_local(form["url"])).content == b"png!"
    assert client.get("/files/" + "D" * 32 + "/missing.png").status_code == 404


def test_an_object_store_that_is_down_is_a_503(tmp_path, s3_env, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    settings = Settings(data_dir=tmp_path, api_keys=[KEY], storage_url="s3://photomaker-tests/down")
    with TestClient(create_app(settings, housekeeping=False), headers={"Authorization": f"Key {KEY}"}) as client:
        upload = client.post("/storage/upload/multipart", files={"file": ("a.png", b"png", "image/png")})
        assert upload.status_code == 503 and upload.json()["error_type"] == "storage_unavailable"
        assert "File storage is unavailable" in upload.json()["detail"]
        assert client.get("/files/" + "E" * 32 + "/a.png").status_code == 503


def test_a_job_whose_output_cannot_be_stored_fails_with_the_reason(tmp_path, monkeypatch):
    from photomaker_server.storage import StorageUnavailable

    settings = Settings(data_dir=tmp_path, api_keys=[KEY])
    worker = Worker(settings, engine=object())
    job = worker.store.submit("owner", APP_ID, stored_request())
    claimed = worker.store.claim(worker.worker_id, 30)

    def unstorable(job, run, loaded):  # noqa: ANN001, ANN202
        raise StorageUnavailable("Object storage unreachable for storing a file (bucket 'b' at http://s3:1)")

    monkeypatch.setattr(worker, "read_inputs", lambda claimed: setattr(claimed, "loaded", object()))
    monkeypatch.setattr(worker, "_generate", unstorable)
    worker.process(claimed)
    failed = worker.store.get(job.id)
    assert failed.error_type == "runner_server_error" and failed.error.startswith("Object storage unreachable")
    worker.store.close()
