"""Storage flows end to end (fal's JS upload, fal's Python token upload, multipart) and every way to give photos:
zip archives, single photos, ``image_urls``, ``initial_image_url``, http URLs on a local server."""

from __future__ import annotations

from datetime import datetime, timezone

import httpx

from helpers import image_bytes, make_face
from service.svc import FACE_PNG, data_uri, messages, photos_zip, small


def test_initiate_then_put_without_key_then_use_as_archive(api, live_server):
    archive = photos_zip(3)
    response = api.http.post("/storage/upload/initiate", params={"storage_type": "fal-cdn-v3"},
                             json={"content_type": "application/zip", "file_name": "me.zip"})
    assert response.status_code == 200, response.text
    upload_url, file_url = response.json()["upload_url"], response.json()["file_url"]
    assert upload_url.startswith(live_server.url) and file_url.startswith(live_server.url)
    assert httpx.get(file_url).status_code == 404  # nothing there until the PUT

    # fal's JS client PUTs the bytes with no Authorization header.
    put = httpx.put(upload_url, content=archive, headers={"Content-Type": "application/zip"})
    assert put.status_code == 200, put.text
    fetched = httpx.get(file_url)
    assert fetched.status_code == 200 and fetched.content == archive

    again = httpx.put(upload_url, content=b"something else")
    assert again.status_code == 409, again.text
    assert httpx.get(file_url).content == archive  # the first upload stands
    forged = httpx.put(upload_url.replace("sig=", "sig=0"), content=archive)
    assert forged.status_code in (403, 404), forged.text

    final, result = api.run(small(image_url=file_url))
    assert "Encoding 3 ID photos" in messages(final)
    assert result["images"]


def test_initiate_needs_a_key(live_server):
    response = live_server.client(None).post("/storage/upload/initiate", json={"content_type": "image/png"})
    assert response.status_code == 401


def test_python_client_token_flow(api, live_server):
    response = api.http.post("/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={})
    assert response.status_code == 200, response.text
    token = response.json()
    assert token["token_type"] == "Bearer" and token["token"]
    assert token["base_url"] == live_server.url
    expires = datetime.fromisoformat(token["expires_at"])
    assert expires.utcoffset() is not None and expires > datetime.now(timezone.utc)

    photo = image_bytes(make_face(5))
    upload = httpx.post(f"{token['base_url']}/files/upload", content=photo, headers={
        "Authorization": f"{token['token_type']} {token['token']}", "Content-Type": "image/png",
        "X-Fal-File-Name": "face.png"})
    assert upload.status_code == 200, upload.text
    access_url = upload.json()["access_url"]
    assert access_url.endswith("/face.png")
    assert httpx.get(access_url).content == photo

    bad = httpx.post(f"{live_server.url}/files/upload", content=photo,
                     headers={"Authorization": f"Bearer {token['token']}x", "X-Fal-File-Name": "x.png"})
    assert bad.status_code == 401
    assert httpx.post(f"{live_server.url}/files/upload", content=photo).status_code == 401

    final, _ = api.run(small(image_url=access_url))
    assert "Encoding 1 ID photo" in messages(final)


def test_multipart_upload_used_as_input(api):
    archive = photos_zip(2)
    response = api.http.post("/storage/upload/multipart", files={"file": ("two.zip", archive, "application/zip")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["file_size"] == len(archive) and body["file_name"] == "two.zip"
    assert body["content_type"] == "application/zip"
    assert httpx.get(body["url"]).content == archive
    final, _ = api.run(small(image_url=body["url"]))
    assert "Encoding 2 ID photos" in messages(final)


def test_image_urls_add_photos_and_http_urls_are_fetched(api, local_http):
    # One photo as a data URI, a zip of two and a photo over http from a local (allow-listed) server. The zip's
    # first photo and face.png are the same bytes: used once.
    body = small(data_uri(image_bytes(make_face(7))),
                 image_urls=[f"{local_http.url}/photos.zip", f"{local_http.url}/face.png"])
    final, _ = api.run(body)
    assert "Encoding 3 ID photos" in messages(final)
    assert "Skipped 1 photo(s) or file(s) already given (the same bytes)" in messages(final)
    assert {"/photos.zip", "/face.png"} <= set(local_http.gets)


def test_archive_url_over_http_following_a_redirect(api, local_http):
    url = f"{local_http.url}/redirect?to={local_http.url}/photos.zip"
    final, _ = api.run(small(image_url=url))
    assert "Encoding 2 ID photos" in messages(final)


def test_initial_image_img2img(api):
    initial = image_bytes(make_face(9, size=(128, 128)))
    final, result = api.run(small(initial_image_url=data_uri(initial), initial_image_strength=0.5,
                                  num_inference_steps=4))
    lines = messages(final)
    assert "Fetching the initial image" in lines
    # strength 0.5 of 4 steps: img2img runs only the second half of the schedule.
    steps = [m for m in lines if m.startswith("Step ")]
    assert steps and len(steps) < 4, steps
    assert (result["images"][0]["width"], result["images"][0]["height"]) == (64, 64)


def test_zip_with_junk_and_non_images_uses_the_photos_and_says_what_it_skipped(api):
    from service.svc import zip_bytes

    archive = zip_bytes({"a.png": FACE_PNG, "notes.txt": b"hello", "__MACOSX/._a.png": b"junk",
                         "inner.zip": photos_zip(1)})
    final, _ = api.run(small(image_url=data_uri(archive, "application/zip")))
    lines = messages(final)
    assert "Encoding 1 ID photo" in lines
    assert any("notes.txt" in m and "not an image" in m for m in lines), lines
    assert any("inner.zip" in m and "nested archive" in m for m in lines), lines
    assert not any("__MACOSX" in m for m in lines)
