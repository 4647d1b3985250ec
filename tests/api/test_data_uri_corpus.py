"""Hostile data URIs through the submit route, in every field that takes one: each refused with a 422 in fal's shape
naming its field, nothing stored, nothing queued. And what submit leaves to the worker (bombs, corrupt archives) it
accepts without decompressing an entry or decoding a pixel: the fast path checks by magic bytes and headers only."""

from __future__ import annotations

import base64
import struct
import zipfile
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from helpers import data_uri, image_bytes, make_face, zip_bytes
from photomaker_server.api import data_uris
from photomaker_server.api.app import create_app
from photomaker_server.settings import APP_ID, Settings

KEY = "key-corpus"
PNG = image_bytes(make_face(1, size=(48, 48)))
MAX_DATA_URI_BYTES = 64 * 1024


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` pixels: a few dozen bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


GOOD = data_uri(PNG)
ENCODED = base64.b64encode(PNG).decode()

#: (case, data URI, error type); each is sent in every field that takes a data URI.
HOSTILE: list[tuple[str, str, str]] = [
    ("invalid characters", "data:image/png;base64,@@@@not-base64@@@@", "data_uri_invalid"),
    ("truncated to one character past a block", "data:image/png;base64," + ENCODED[:4 * 10 + 1], "data_uri_invalid"),
    ("data after the padding", "data:image/png;base64,QQ==" + ENCODED, "data_uri_invalid"),
    ("padding first", "data:image/png;base64,=" + ENCODED, "data_uri_invalid"),
    ("padding only", "data:image/png;base64,====", "data_uri_invalid"),
    ("non-ASCII letter", "data:image/png;base64," + ENCODED[:40] + "\u00e9" + ENCODED[41:], "data_uri_invalid"),
    ("no comma", "data:image/png;base64", "data_uri_invalid"),
    ("empty", "data:,", "data_uri_invalid"),
    ("empty base64", "data:image/png;base64,", "data_uri_invalid"),
    ("text", data_uri(b"just some text, not a photo"), "data_uri_content"),
    ("html claiming to be a PNG", data_uri(b"<html><script>alert(1)</script></html>"), "data_uri_content"),
    ("pdf", data_uri(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "application/pdf"), "data_uri_content"),
    ("gzip", data_uri(zlib.compress(PNG, wbits=31), "application/gzip"), "data_uri_content"),
    ("ELF executable", data_uri(b"\x7fELF\x02\x01\x01" + bytes(64), "application/octet-stream"), "data_uri_content"),
    ("percent-encoded text", "data:text/plain,hello%20there", "data_uri_content"),
    ("PNG magic cut short", data_uri(b"\x89PNG\r\n"), "data_uri_content"),
    ("over max_data_uri_bytes", data_uri(PNG[:16] + bytes(MAX_DATA_URI_BYTES)), "data_uri_too_large"),
]


@pytest.fixture
def client(tmp_path):
    settings = Settings(data_dir=tmp_path, api_keys=[KEY], public_base_url="http://testserver",
                        max_data_uri_bytes=MAX_DATA_URI_BYTES)
    with TestClient(create_app(settings, housekeeping=False)) as client:
        yield client


def submit(client: TestClient, **fields):  # noqa: ANN003, ANN201
    body = {"prompt": "a photo of a man img", "image_archive_url": GOOD, **fields}
    return client.post(f"/{APP_ID}", headers={"Authorization": f"Key {KEY}"}, json=body)


def stored_files(client: TestClient) -> list[str]:
    root = client.app.state.ctx.settings.data_dir / "files"
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")) if root.exists() else []


FIELDS = [
    ("image_archive_url", lambda uri: {"image_archive_url": uri}, ["body", "image_archive_url"]),
    ("initial_image_url", lambda uri: {"initial_image_url": uri}, ["body", "initial_image_url"]),
    ("image_urls", lambda uri: {"image_urls": [GOOD, "https://example.com/a.png", uri]}, ["body", "image_urls", 2]),
]


@pytest.mark.parametrize("field, fields, loc", FIELDS, ids=[f[0] for f in FIELDS])
def test_every_hostile_data_uri_is_a_422_naming_its_field(client, field, fields, loc):
    for name, uri, kind in HOSTILE:
        response = submit(client, **fields(uri))
        assert response.status_code == 422, (field, name, response.text[:300])
        (detail,) = response.json()["detail"]
        assert detail["loc"] == loc and detail["type"] == kind, (field, name, detail)
        assert detail["msg"] and (len(uri) < 40 or uri[-20:] not in detail["msg"]), (field, name)  # input not echoed
    assert stored_files(client) == [] and client.app.state.ctx.store.counts().get("queued", 0) == 0


def test_a_zip_is_no_initial_image(client):
    response = submit(client, initial_image_url=data_uri(zip_bytes({"a.png": PNG}), "application/zip"))
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "initial_image_url"]


#: Inputs only the worker can judge: accepted at submit, by magic bytes and headers, and refused by the worker.
LEFT_TO_THE_WORKER = [
    ("PNG claiming 100000x100000", png_claiming(100_000, 100_000), "image/png"),
    ("zip of a PNG claiming 100000x100000", zip_bytes({"a.png": png_claiming(100_000, 100_000)}), "application/zip"),
    ("zip bomb", zip_bytes({"bomb.png": b"\x89PNG\r\n\x1a\n" + bytes(8 << 20)}), "application/zip"),
    ("nested zip", zip_bytes({"inner.zip": zip_bytes({"a.png": PNG})}), "application/zip"),
    ("zip with a lying size header", zip_bytes({"a.png": PNG}, zipfile.ZIP_STORED).replace(
        struct.pack("<I", len(PNG)), struct.pack("<I", 0x7FFFFFFF)), "application/zip"),
    ("zip signature then garbage", b"PK\x03\x04" + bytes(range(200)), "application/zip"),
    ("GIF and zip polyglot", b"GIF89a" + bytes(20) + zip_bytes({"a.png": PNG}), "image/gif"),
]


@pytest.mark.parametrize("name, data, mime", LEFT_TO_THE_WORKER, ids=[c[0] for c in LEFT_TO_THE_WORKER])
def test_submit_never_decompresses_or_decodes(client, monkeypatch, name, data, mime):
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{name}: submit decoded or decompressed something")

    monkeypatch.setattr(Image, "open", refuse)
    monkeypatch.setattr(zipfile.ZipFile, "open", refuse)
    settings = client.app.state.ctx.settings
    response = client.post(f"/{APP_ID}", headers={"Authorization": f"Key {KEY}"},
                           json={"prompt": "a photo of a man img", "image_archive_url": data_uri(data, mime)})
    assert response.status_code == 200, (name, response.text[:300])
    assert len(stored_files(client)) == 1 and settings.max_data_uri_bytes == MAX_DATA_URI_BYTES


def test_the_same_data_uri_named_six_times_is_decoded_and_stored_once(client, monkeypatch):
    decoded: list[int] = []
    real = data_uris.decode_data_uri

    def counting(url: str, max_bytes: int):  # noqa: ANN202
        decoded.append(len(url))
        return real(url, max_bytes)

    monkeypatch.setattr(data_uris, "decode_data_uri", counting)
    archive = data_uri(zip_bytes({"a.png": PNG}), "application/zip")
    same_text = "".join(archive)  # equal, but another string object
    assert same_text is not archive
    response = submit(client, image_archive_url=archive, image_urls=[archive, same_text, archive, GOOD, archive])
    assert response.status_code == 200, response.text
    assert len(decoded) == 2 and len(stored_files(client)) == 2  # the archive once, GOOD once
    job = client.app.state.ctx.store.get(response.json()["request_id"])
    urls, archive_url = job.input.image_urls, job.input.image_archive_url
    assert [urls[i] for i in (0, 1, 2, 4)] == [archive_url] * 4 and urls[3] != archive_url
