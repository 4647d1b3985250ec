"""The submit builds the stored request once: data URIs stored and named by key, URLs of this service's own storage
named by key, every other URL kept; the job row holds that, read back as it was (no deployment rule applied again)."""

from __future__ import annotations

import base64
import json

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from helpers import image_bytes, make_face
from photomaker_server.api.app import create_app
from photomaker_server.contract.files import FileRef
from photomaker_server.contract.request import PhotoMakerInput
from photomaker_server.contract.stored import FILE_FIELDS, StoredRequest, stored_request
from photomaker_server.settings import APP_ID, Settings

KEY = "key-stored"
AUTH = {"Authorization": f"Key {KEY}"}


@pytest.fixture
def client(tmp_path):
    app = create_app(Settings(data_dir=tmp_path, api_keys=[KEY], trigger_word="ohwx"), housekeeping=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_the_submit_stores_keys_for_our_files_and_urls_for_the_rest(client):
    ctx = client.app.state.ctx
    photo = image_bytes(make_face(1, size=(64, 80)))
    own = ctx.storage.put(photo, "image/png", "me.png")
    data_uri = "data:image/png;base64," + base64.b64encode(photo).decode()
    body = {"prompt": "a photo of a man ohwx", "image_archive_url": f"{own.url}?copy=1",
            "image_urls": ["https://example.com/a.png", data_uri, own.url], "initial_image_url": data_uri}
    answer = client.post(f"/{APP_ID}", json=body, headers=AUTH)
    assert answer.status_code == 200, answer.text
    stored = ctx.store.get(answer.json()["request_id"]).input
    assert isinstance(stored, StoredRequest)
    assert stored.image_archive_url == FileRef.stored(own.key)  # a query string does not make another file
    outside, uploaded, again = stored.image_urls
    assert outside == FileRef.outside("https://example.com/a.png")
    assert uploaded.key is not None and ctx.storage.read(uploaded.key) == photo  # the data URI, stored
    assert again == FileRef.stored(own.key)
    assert stored.initial_image_url == uploaded  # the same data URI twice is one file
    assert stored.photomaker_version == "v1"  # the deployment's default, filled in at submit
    assert "data:" not in stored.to_json() and own.url not in stored.to_json()


def test_the_stored_request_is_read_without_the_deployment_rules():
    """A request accepted under one trigger word is read back (as the worker does) whatever the rules say now."""
    given = PhotoMakerInput.model_validate({"prompt": "a man ohwx", "image_archive_url": "https://e.com/a.zip",
                                            "num_images": 8}, context={"trigger_word": "ohwx", "max_num_images": 8})
    stored = stored_request(given, given.model_dump(include=set(FILE_FIELDS), exclude_none=True), lambda url: None)
    again = StoredRequest.model_validate_json(stored.to_json())
    assert again == stored and again.num_images == 8 and again.prompt == "a man ohwx"
    with pytest.raises(ValidationError):  # while the rules still apply to requests
        PhotoMakerInput.model_validate(json.loads(stored.model_dump_json(exclude={"image_archive_url"})) |
                                       {"image_archive_url": "https://e.com/a.zip"})


def test_file_references_hold_exactly_one_thing():
    assert FileRef.model_validate_json('{"url": "https://e.com/x.zip"}').url == "https://e.com/x.zip"
    for bad in ({}, {"key": "t/a", "url": "https://e.com/a"}, {"url": "ftp://e.com/a"}, {"key": ""},
                {"key": "t/a", "other": 1}):
        with pytest.raises(ValidationError):
            FileRef.model_validate(bad)
    assert FileRef.stored("t/a").identity() != FileRef.outside("https://e.com/t/a").identity()
    assert FileRef.outside("https://e.com/a#x").identity() == FileRef.outside("https://e.com/a").identity()
