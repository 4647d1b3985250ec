"""Bad input, each with its clear error, and the server keeps serving.

* Rejected at submit: HTTP 422 with fal's ``{"detail": [{"loc": ["body", field], "msg", "type"}]}``; no job is made.
* Content problems found by the worker: COMPLETED with ``error_type: input_error``; the result endpoint answers
  422 ``{"detail": "...", "error_type": "input_error"}``.
* SSRF: private, loopback and link-local addresses in their many spellings, and redirects to them, are refused
  before any connection. No test here sends traffic anywhere but loopback: a refused address is never contacted.
"""

from __future__ import annotations

import io
import sqlite3
import struct
import time
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from helpers import image_bytes
from live_server import APP, LiveServer
from service.svc import FACE_PNG, Api, data_uri, messages, photos_zip, small, zip_bytes

MISSING = object()


def _job_count(server) -> int:  # noqa: ANN001
    db = sqlite3.connect(server.data_dir / "jobs.db")
    try:
        return db.execute("select count(*) from jobs").fetchone()[0]
    finally:
        db.close()


def _healthy(server) -> None:  # noqa: ANN001
    response = server.client(None).get("/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"


# --- rejected at submit -------------------------------------------------------------------------------------------

VALIDATION_CASES = [
    # (id, field, value (MISSING: removed), expected loc[1])
    ("missing prompt", "prompt", MISSING, "prompt"),
    ("missing archive", "image_archive_url", MISSING, "image_archive_url"),
    ("empty prompt", "prompt", "", "prompt"),
    ("no trigger word", "prompt", "a photo of a man, film grain", "prompt"),
    ("two trigger words", "prompt", "a photo of a man img and a woman img", "prompt"),
    ("trigger word without class word", "prompt", "img on a beach", "prompt"),
    ("prompt not a string", "prompt", 42, "prompt"),
    ("bad style", "style", "Cubism", "style"),
    ("bad base_pipeline", "base_pipeline", "sd15", "base_pipeline"),
    ("bad output_format", "output_format", "gif", "output_format"),
    ("steps 0", "num_inference_steps", 0, "num_inference_steps"),
    ("steps 101", "num_inference_steps", 101, "num_inference_steps"),
    ("steps not a number", "num_inference_steps", "many", "num_inference_steps"),
    ("strength < 0", "initial_image_strength", -0.1, "initial_image_strength"),
    ("strength > 1", "initial_image_strength", 1.5, "initial_image_strength"),
    ("style_strength 10", "style_strength", 10, "style_strength"),
    ("style_strength 60", "style_strength", 60, "style_strength"),
    ("guidance 0", "guidance_scale", 0, "guidance_scale"),
    ("guidance 11", "guidance_scale", 11, "guidance_scale"),
    ("num_images 0", "num_images", 0, "num_images"),
    ("num_images 5", "num_images", 5, "num_images"),
    ("seed -1", "seed", -1, "seed"),
    ("seed 2**63", "seed", 2**63, "seed"),
    ("image_size not multiple of 8", "image_size", {"width": 100, "height": 64}, "image_size"),
    ("image_size too small", "image_size", {"width": 32, "height": 64}, "image_size"),
    ("image_size unknown preset", "image_size", "huge", "image_size"),
    ("image_size too large", "image_size", {"width": 4096, "height": 4096}, "image_size"),
    ("sync_mode not bool", "sync_mode", "maybe", "sync_mode"),
    ("ftp archive", "image_archive_url", "ftp://example.com/a.zip", "image_archive_url"),
    ("file archive", "image_archive_url", "file:///etc/passwd", "image_archive_url"),
    ("javascript archive", "image_archive_url", "javascript:alert(1)", "image_archive_url"),
    ("no scheme archive", "image_archive_url", "example.com/a.zip", "image_archive_url"),
    ("file initial image", "initial_image_url", "file:///etc/passwd", "initial_image_url"),
    ("ftp in image_urls", "image_urls", ["ftp://example.com/a.png"], "image_urls"),
    ("image_urls not a list", "image_urls", "https://example.com/a.png", "image_urls"),
    ("unknown field", "colour", "blue", "colour"),
]


def test_validation_errors_are_fal_422_and_make_no_job(api, live_server):
    jobs_before = _job_count(live_server)
    for case, field, value, loc_field in VALIDATION_CASES:
        body = small()
        if value is MISSING:
            del body[field]
        else:
            body[field] = value
        for path in (f"/{APP}", f"/run/{APP}"):
            response = api.http.post(path, json=body)
            assert response.status_code == 422, (case, path, response.text)
            detail = response.json()["detail"]
            assert isinstance(detail, list) and detail, (case, detail)
            locs = [d["loc"][:2] for d in detail]
            assert ["body", loc_field] in locs, (case, detail)
            for entry in detail:
                assert set(entry) == {"loc", "msg", "type"}, (case, entry)
                assert isinstance(entry["msg"], str) and entry["msg"] and isinstance(entry["type"], str)
                assert "Value error," not in entry["msg"]
    assert _job_count(live_server) == jobs_before
    _healthy(live_server)


def test_trigger_word_message_explains_the_rule(api):
    body = small(prompt="a photo of a man")
    detail = api.submit_response(body).json()["detail"]
    assert "'img'" in detail[0]["msg"] and "exactly once" in detail[0]["msg"]


@pytest.mark.parametrize("content, content_type", [
    (b"this is not json", "application/json"),
    (b'{"prompt": "a man img", ', "application/json"),
    (b'[{"prompt": "a photo of a man img"}]', "application/json"),
    (b'"just a string"', "application/json"),
    (b"", "application/json"),
    (b"prompt=a+man+img", "application/x-www-form-urlencoded"),
])
def test_non_object_bodies_are_422(api, live_server, content, content_type):
    jobs_before = _job_count(live_server)
    response = api.http.post(f"/{APP}", content=content, headers={"Content-Type": content_type})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail[0]["loc"][0] == "body" and detail[0]["msg"]
    assert _job_count(live_server) == jobs_before
    _healthy(live_server)


# --- content errors found by the worker ---------------------------------------------------------------------------


def _encrypted_zip(extra: dict[str, bytes] | None = None) -> bytes:
    """A zip whose first entry is flagged encrypted. zipfile cannot write that flag, so it is set in the bytes: bit 0
    of the general purpose flags, in the local header (offset 6) and the central directory entry (offset 8)."""
    data = bytearray(zip_bytes({"secret.png": FACE_PNG, **(extra or {})}, zipfile.ZIP_STORED))
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.index(signature) + offset  # the first entry's
        data[at] |= 0x1
    assert zipfile.ZipFile(io.BytesIO(bytes(data))).infolist()[0].flag_bits & 0x1
    return bytes(data)


def _zip_bomb() -> bytes:
    """One 'PNG' entry that inflates 16 MB of zeros from a few KB: far past any ratio a photo has."""
    return zip_bytes({"bomb.png": b"\x89PNG\r\n\x1a\n" + bytes(16 * 1024 * 1024)})


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _huge_png_header() -> bytes:
    """A valid PNG header claiming 100000 x 100000 pixels (30 GB decoded) with almost no data."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def _missing_storage_url(api) -> str:  # noqa: ANN001
    """A well-formed URL of this server's storage whose file does not exist."""
    response = api.http.post("/storage/upload/multipart", files={"file": ("a.png", FACE_PNG, "image/png")})
    url = response.json()["url"]
    head, token, name = url.rsplit("/", 2)
    return f"{head}/{token[::-1]}/{name}"


def _content_cases(api, local_http) -> list[tuple[str, dict, str]]:  # noqa: ANN001
    """(case, request body, a phrase the error must contain)."""
    zipped = lambda data: data_uri(data, "application/zip")  # noqa: E731
    here = local_http.url
    port = here.rsplit(":", 1)[1]
    return [
        ("broken zip", small(zipped(b"PK\x03\x04" + bytes(40) + b"garbage")), "corrupt or truncated"),
        ("truncated zip", small(zipped(photos_zip(2)[:-60])), "corrupt or truncated"),
        ("empty zip", small(zipped(zip_bytes({}))), "empty"),
        ("zip without images", small(zipped(zip_bytes({"a.txt": b"hello", "b.pdf": b"%PDF-1.4 x"}))),
         "no usable photos"),
        ("zip of a zip", small(zipped(zip_bytes({"inner.zip": photos_zip(1)}))), "no usable photos"),
        ("encrypted zip", small(zipped(_encrypted_zip())), "encrypted (password-protected"),
        ("zip bomb", small(zipped(_zip_bomb())), "zip bomb"),
        ("truncated image", small(data_uri(FACE_PNG[: len(FACE_PNG) // 2])), "truncated or corrupt"),
        ("huge dimensions", small(data_uri(_huge_png_header())), "too large"),
        ("bad initial image", small(initial_image_url=data_uri(b"GIF89a-truncated")), "initial image"),
        ("http 404", small(f"{here}/missing.zip"), "HTTP 404"),
        ("missing storage file", small(_missing_storage_url(api)), "not (or no longer) stored"),
        # SSRF: refused before connecting (the shared server allow-lists 127.0.0.1 only).
        ("private 10/8", small("http://10.0.0.1/x.zip"), "private address"),
        ("private 192.168/16", small("http://192.168.1.1/x.zip"), "private address"),
        ("cloud metadata", small("http://169.254.169.254/latest/meta-data/"), "link-local"),
        ("carrier-grade NAT", small("http://100.64.0.1/x.zip"), "carrier-grade NAT"),
        ("IPv4-mapped IPv6 loopback", small(f"http://[::ffff:127.0.0.1]:{port}/face.png"), "loopback"),
        ("IPv6 loopback", small(f"http://[::1]:{port}/face.png"), "loopback"),
        ("IPv6 unique local", small("http://[fd00::1]/x.zip"), "only public internet addresses"),
        ("other loopback", small(f"http://127.0.0.2:{port}/face.png"), "loopback"),
        ("hex loopback", small(f"http://0x7f000002:{port}/face.png"), "loopback"),
        ("decimal loopback", small(f"http://2130706434:{port}/face.png"), "loopback"),
        ("unspecified", small(f"http://0.0.0.0:{port}/face.png"), "only public internet addresses"),
        ("SSRF in image_urls", small(image_urls=["http://10.1.2.3/a.png"]), "private address"),
        ("SSRF in initial image", small(initial_image_url="http://169.254.169.254/x.png"), "link-local"),
        ("redirect to private", small(f"{here}/redirect?to=http://10.0.0.1/x.zip"), "private address"),
        ("redirect to metadata", small(f"{here}/redirect?to=http://169.254.169.254/latest/"), "link-local"),
        ("redirect to other loopback", small(f"{here}/redirect?to=http://127.0.0.2:{port}/face.png"), "loopback"),
        ("redirect to file:", small(f"{here}/redirect?to=file:///etc/passwd"), "only http and https"),
        ("credentials in URL", small(f"http://user:pw@127.0.0.1:{port}/face.png"), "user name or password"),
    ]


def test_content_errors_complete_with_input_error(api, live_server, local_http):
    cases = _content_cases(api, local_http)
    ids = {case: api.submit(body) for case, body, _ in cases}
    for case, _, phrase in cases:
        final = api.wait(ids[case], timeout=60)
        assert final.get("error_type") == "input_error", (case, final.get("error"), messages(final))
        assert phrase in final["error"], (case, final["error"])
        assert final["logs"][-1]["level"] == "ERROR" and final["logs"][-1]["message"] == final["error"]
        result = api.result(ids[case])
        assert result.status_code == 422, (case, result.text)
        assert result.json() == {"detail": final["error"], "error_type": "input_error"}
        assert result.headers["x-fal-error-type"] == "input_error"
    assert "secret.png" in api.status(ids["encrypted zip"])["error"]  # names what it found
    _healthy(live_server)
    # ... and the server still generates.
    assert api.run(small())[1]["images"]


BAD_DATA_URIS = [
    # (case, field, value, loc, a phrase of the message): refused at submit, before anything is stored.
    ("neither zip nor image", "image_archive_url", data_uri(b"hello world, I am text", "text/plain"),
     ["body", "image_archive_url"], "not a zip archive of photos or a single image"),
    ("empty data uri", "image_archive_url", "data:image/png;base64,", ["body", "image_archive_url"], "empty"),
    ("bad base64", "image_archive_url", "data:image/png;base64,!!!not*base64!!!", ["body", "image_archive_url"],
     "not valid base64"),
    ("bad photo in image_urls", "image_urls", [data_uri(FACE_PNG), data_uri(b"not an image")],
     ["body", "image_urls", 1], "not a zip archive"),
    ("zip as initial image", "initial_image_url", data_uri(photos_zip(1), "application/zip"),
     ["body", "initial_image_url"], "not an image"),
]


def _stored_files(server) -> int:  # noqa: ANN001
    return sum(1 for p in (server.data_dir / "files").iterdir() if not p.name.startswith("."))


def test_bad_data_uris_are_422_at_submit_and_store_nothing(api, live_server):
    jobs_before, files_before = _job_count(live_server), _stored_files(live_server)
    for case, field, value, loc, phrase in BAD_DATA_URIS:
        response = api.submit_response(small(**{field: value}))
        assert response.status_code == 422, (case, response.text)
        (entry,) = response.json()["detail"]
        assert entry["loc"] == loc and phrase in entry["msg"], (case, entry)
    assert _job_count(live_server) == jobs_before
    assert _stored_files(live_server) == files_before  # image_urls[0] was fine, but its request was refused
    _healthy(live_server)


def test_encrypted_entry_is_skipped_with_a_reason_and_the_other_photos_are_used(api):
    archive = _encrypted_zip({"visible.png": image_bytes(Image.new("RGB", (96, 96), (200, 150, 120)))})
    final, _ = api.run(small(data_uri(archive, "application/zip")))
    lines = messages(final)
    assert "Encoding 1 ID photo" in lines
    assert any("secret.png" in m and "encrypted" in m for m in lines), lines


# --- a server that trusts no private address, with a small data URI limit -----------------------------------------


@pytest.fixture(scope="module")
def strict_server(tiny_root, tmp_path_factory):
    server = LiveServer(tmp_path_factory.mktemp("strict"), tiny_root,
                        env={"PHOTOMAKER_FETCH_ALLOW": "", "PHOTOMAKER_MAX_DATA_URI_BYTES": "20000"}).start()
    yield server
    server.stop()


def _noise_png(size: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    return image_bytes(Image.fromarray(pixels))


def test_strict_server_refuses_loopback_in_every_spelling_without_connecting(strict_server, local_http):
    api = Api(strict_server)
    port = local_http.url.rsplit(":", 1)[1]
    gets_before = len(local_http.gets)
    urls = [f"http://127.0.0.1:{port}/face.png", f"http://localhost:{port}/face.png",
            f"http://[::ffff:127.0.0.1]:{port}/face.png", f"http://[::ffff:7f00:1]:{port}/face.png",
            f"http://2130706433:{port}/face.png", f"http://127.1:{port}/face.png",
            f"http://0177.0.0.1:{port}/face.png", f"http://0x7f.0.0.1:{port}/face.png"]
    ids = [api.submit(small(url)) for url in urls]
    # A literal loopback webhook is refused at submit; a *name* that resolves to loopback is refused at delivery.
    literal = api.submit_response(small(data_uri(FACE_PNG[:64])), params={"fal_webhook": f"http://127.0.0.1:{port}/hook"})
    assert literal.status_code == 400 and "loopback" in literal.json()["detail"], literal.text
    hook = api.submit(small(data_uri(FACE_PNG[:64])), params={"fal_webhook": f"http://localhost:{port}/hook/strict"})
    for url, request_id in zip(urls, ids):
        final = api.wait(request_id)
        assert final["error_type"] == "input_error", (url, final)
        assert "loopback" in final["error"] and "only public internet addresses" in final["error"], (url, final)
    assert len(local_http.gets) == gets_before  # the check refused before connecting
    # Webhooks go through the same check: the delivery to loopback is refused, never posted.
    assert api.wait(hook)["error_type"] == "input_error"
    time.sleep(1.5)  # a few housekeeping ticks
    assert not [p for p, _, _ in local_http.posts if p == "/hook/strict"]
    db = sqlite3.connect(strict_server.data_dir / "jobs.db")
    row = db.execute("select attempts, last_error from webhook_deliveries where job_id = ?", (hook,)).fetchone()
    db.close()
    assert row is not None and row[0] >= 1 and "loopback" in row[1]
    _healthy(strict_server)


def test_oversized_data_uri_is_refused(strict_server):
    api = Api(strict_server)
    big = _noise_png(128)  # ~50 KB, over the server's 20000-byte data URI limit
    assert len(big) > 20000
    for body, loc in ((small(data_uri(big)), ["body", "image_archive_url"]),
                      (small(initial_image_url=data_uri(big)), ["body", "initial_image_url"]),
                      (small(image_urls=[data_uri(big)]), ["body", "image_urls", 0])):
        response = api.submit_response(body)
        assert response.status_code == 422, response.text
        (entry,) = response.json()["detail"]
        assert entry["loc"] == loc and "data URI holds more than 20000 bytes" in entry["msg"], entry
    # The same photo uploaded to storage is fine: big files go by URL.
    url = api.http.post("/storage/upload/multipart", files={"file": ("big.png", big, "image/png")}).json()["url"]
    assert api.run(small(url))[1]["images"]
    _healthy(strict_server)
