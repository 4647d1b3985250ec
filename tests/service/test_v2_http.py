"""PhotoMaker v2 through the HTTP API (``photomaker serve --tiny`` serves v2 too): the field, its validation,
faceless photos named in the job's logs, ``no_face_detected`` in fal's shapes, and what /health says."""

from __future__ import annotations

from PIL import Image

from helpers import image_bytes, make_face
from live_server import APP
from service.svc import data_uri, messages, small, zip_bytes

BLANK_PNG = image_bytes(Image.new("RGB", (160, 200), (120, 160, 200)))


def test_the_field_is_in_the_schema_and_validated(api, live_server):
    schema = live_server.client(None).get("/openapi.json").json()
    text = str(schema["components"]["schemas"])
    assert "photomaker_version" in text and "'v2'" in text
    bad = api.submit_response(small(photomaker_version="v3"))
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "photomaker_version"]


def test_v2_runs_and_skips_a_faceless_photo_by_name(api):
    archive = zip_bytes({"a.png": image_bytes(make_face(0)), "b_IMG_0042.png": BLANK_PNG,
                         "c.png": image_bytes(make_face(1))})
    final, result = api.run(small(data_uri(archive, "application/zip"), photomaker_version="v2"))
    assert "no face found in photo 2 of 3 (b_IMG_0042.png): skipped" in messages(final), "\n".join(messages(final))
    assert any("PhotoMaker v2" in m for m in messages(final))
    assert result["images"] and result["demo_model"] is True
    without = zip_bytes({"a.png": image_bytes(make_face(0)), "c.png": image_bytes(make_face(1))})
    _, same = api.run(small(data_uri(without, "application/zip"), photomaker_version="v2"))
    first, second = (api.http.get(r["images"][0]["url"]).content for r in (result, same))
    assert first == second, "the same output as the same request without the faceless photo"


def test_no_face_in_any_photo_is_no_face_detected(api):
    archive = zip_bytes({"x.png": BLANK_PNG, "y.png": image_bytes(Image.new("RGB", (90, 90), (0, 0, 0)))})
    request_id = api.submit(small(data_uri(archive, "application/zip"), photomaker_version="v2"))
    final = api.wait(request_id)
    assert final["error_type"] == "no_face_detected" and "2 photos" in final["error"], final
    result = api.result(request_id)
    assert result.status_code == 422 and result.headers["x-fal-error-type"] == "no_face_detected"
    assert result.json() == {"detail": [{"loc": ["body", "image_archive_url"], "msg": final["error"],
                                         "type": "no_face_detected"}], "error_type": "no_face_detected"}


def test_v1_stays_the_default_and_health_names_v2_and_its_licence(api, live_server):
    final, _ = api.run(small())
    assert "Encoding 1 ID photo" in messages(final) and not any("v2" in m for m in messages(final))
    health = live_server.client(None).get("/health").json()
    assert health["model"]["default_version"] == "v1"
    v2 = health["model"]["photomaker_v2"]
    assert v2["enabled"] is True and "non-commercial research only" in v2["license_notice"]
    assert "demo" in v2["checkpoint"] and "demo" in v2["face_model"]
    assert f"/{APP}" in str(api.path("x"))
