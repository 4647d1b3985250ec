"""The request's unpack budget at submit, for inputs uploaded first (``api/input_budget.py``): each stored file's
declared size is recorded when it is stored, so a request whose stored inputs together pass
``max_request_input_bytes`` gets a 422 naming the field, and queues nothing."""

from __future__ import annotations

import base64
import io
import os
import zipfile

import pytest
from fastapi.testclient import TestClient

from helpers import image_bytes, make_face
from photomaker_server.api.app import create_app
from photomaker_server.settings import APP_ID, Settings

MiB = 1 << 20
KEY = "key-budget"
PNG = image_bytes(make_face(0, size=(32, 32)))


def archive(*sizes: int) -> bytes:
    """A stored (not deflated) zip of incompressible photos: its headers declare exactly what it unpacks to."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zipped:
        for i, size in enumerate(sizes):
            zipped.writestr(f"p{i}.png", PNG[:16] + os.urandom(size - 16))
    return buffer.getvalue()


@pytest.fixture
def client(tmp_path):
    settings = Settings(data_dir=tmp_path, api_keys=[KEY], public_base_url="http://testserver",
                        max_request_input_bytes=3 * MiB)
    with TestClient(create_app(settings, housekeeping=False)) as client:
        yield client


def upload(client: TestClient, data: bytes) -> str:
    done = client.post("/storage/upload/multipart", headers={"Authorization": f"Key {KEY}"},
                       files={"file": ("photos.zip", data, "application/zip")})
    assert done.status_code == 200, done.text
    return done.json()["url"]


def submit(client: TestClient, **fields):  # noqa: ANN003, ANN201
    return client.post(f"/{APP_ID}", headers={"Authorization": f"Key {KEY}"}, json={"prompt": "a man img", **fields})


def queued(client: TestClient) -> int:
    return client.app.state.ctx.store.counts()["queued"]


def test_stored_inputs_past_the_budget_together_are_refused_at_submit_naming_the_field(client):
    first, second = upload(client, archive(MiB, MiB)), upload(client, archive(MiB, MiB))
    # Each alone fits; the same stored file named again (query strings) is read once, so it counts once.
    assert submit(client, image_archive_url=first, image_urls=[f"{first}?copy={i}" for i in range(6)]).status_code == 200
    refused = submit(client, image_archive_url=first, image_urls=[f"{first}?copy=1", second])
    assert queued(client) == 1  # nothing queued for the refused request
    assert refused.status_code == 422, refused.text
    (detail,) = refused.json()["detail"]
    assert detail["loc"] == ["body", "image_urls", 1] and detail["type"] == "input_budget_exceeded"
    assert "unpack to more than 3 MB in all" in detail["msg"]


def test_a_data_uri_counts_after_the_stored_inputs(client):
    stored = upload(client, archive(MiB, MiB))
    inline = "data:application/zip;base64," + base64.b64encode(archive(MiB, MiB // 2)).decode()
    files_before = len(list((client.app.state.ctx.settings.data_dir / "files").rglob("*.zip")))
    refused = submit(client, image_archive_url=stored, image_urls=[inline])
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "image_urls", 0]
    # Refused before the data URI was stored.
    assert len(list((client.app.state.ctx.settings.data_dir / "files").rglob("*.zip"))) == files_before
    small = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert submit(client, image_archive_url=stored, initial_image_url=small).status_code == 200
