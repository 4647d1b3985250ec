"""Webhooks (fal's body, Ed25519 signatures checked against the served JWKS), API keys and ownership, the
operations endpoints, and the fal proxy route used by the JS client."""

from __future__ import annotations

import json
import re
import sqlite3
import time

import httpx
import pytest

from live_server import API_KEY, APP
from photomaker_server.api.proxy import map_target
from photomaker_server.webhooks import verify
from service.svc import FACE_PNG, data_uri, messages, small

# --- webhooks ---------------------------------------------------------------------------------------------------


def test_webhook_on_success_is_fal_shaped_and_signed(api, local_http):
    hook = f"{local_http.url}/hook/ok"
    request_id = api.submit(small(), params={"fal_webhook": hook})
    assert api.wait(request_id).get("error") is None
    (headers, body), = local_http.wait_posts("/hook/ok")
    payload = json.loads(body)
    assert payload["request_id"] == request_id and payload["gateway_request_id"] == request_id
    assert payload["status"] == "OK" and payload["error"] is None
    assert payload["payload"] == api.result(request_id).json()

    jwks = api.http.get("/.well-known/jwks.json").json()
    assert jwks["keys"] and jwks["keys"][0]["kty"] == "OKP" and jwks["keys"][0]["crv"] == "Ed25519"
    assert verify(jwks, headers, body)
    lower = {k.lower(): v for k, v in headers.items()}
    assert lower["x-fal-webhook-request-id"] == request_id
    assert abs(int(lower["x-fal-webhook-timestamp"]) - time.time()) < 120
    # The signature covers the body and the headers: any change breaks it.
    assert not verify(jwks, headers, body.replace(b'"OK"', b'"ERROR"'))
    assert not verify(jwks, {**headers, "X-Fal-Webhook-Request-Id": "someone-else"}, body)
    assert not verify({"keys": []}, headers, body)


def test_webhook_of_a_failing_request_has_status_error(api, local_http):
    hook = f"{local_http.url}/hook/error"
    request_id = api.submit(small(image_url=data_uri(b"PK\x03\x04 broken", "application/zip")),
                            params={"fal_webhook": hook})
    final = api.wait(request_id)
    assert final["error_type"] == "input_error"
    (headers, body), = local_http.wait_posts("/hook/error")
    payload = json.loads(body)
    assert payload["status"] == "ERROR" and payload["request_id"] == request_id
    assert payload["payload"] == {"detail": final["error"], "error_type": "input_error"}
    assert payload["error"] == final["error"]
    assert verify(api.http.get("/.well-known/jwks.json").json(), headers, body)


def test_webhook_is_retried_when_the_receiver_fails(api, local_http):
    hook = f"{local_http.url}/hook-fail/once"
    request_id = api.submit(small(), params={"fal_webhook": hook})
    api.wait(request_id)
    local_http.wait_posts("/hook-fail/once")  # attempted (answered 500); the next try is scheduled, not dropped
    db = sqlite3.connect(api.server.data_dir / "jobs.db")
    deadline = time.time() + 10
    while time.time() < deadline:
        row = db.execute("select attempts, delivered_at, given_up, last_error from webhook_deliveries "
                         "where job_id = ?", (request_id,)).fetchone()
        if row and row[0] >= 1:
            break
        time.sleep(0.2)
    db.close()
    attempts, delivered_at, given_up, last_error = row
    assert attempts >= 1 and delivered_at is None and not given_up and "500" in last_error


def test_webhook_url_must_be_http(api):
    response = api.submit_response(small(), params={"fal_webhook": "ftp://127.0.0.1/hook"})
    assert response.status_code == 400


# --- auth -------------------------------------------------------------------------------------------------------


def test_missing_or_wrong_key_is_401(live_server):
    anonymous, wrong = live_server.client(None), live_server.client("not-a-key")
    bearer_wrong = live_server.client(None)
    bearer_wrong.headers["Authorization"] = "Bearer nope"
    for client in (anonymous, wrong, bearer_wrong):
        response = client.post(f"/{APP}", json=small())
        assert response.status_code == 401
        assert response.json()["error_type"] == "unauthorized" and response.headers["x-fal-error-type"]
        assert client.post(f"/run/{APP}", json=small()).status_code == 401
        assert client.get(f"/{APP}/requests/x/status").status_code == 401
        assert client.post("/storage/auth/token", json={}).status_code == 401


def test_requests_belong_to_the_key_that_made_them(api, other_api):
    with api.busy() as blocker:
        queued = api.submit(small())
        for request_id in (blocker, queued):
            assert other_api.http.get(api.path(request_id, "/status")).status_code == 404
            assert other_api.result(request_id).status_code == 404
            assert other_api.cancel(request_id).status_code == 404
            assert other_api.http.get(api.path(request_id, "/status/stream")).status_code == 404
        # Bob's cancel did nothing to Alice's queued request.
        assert api.status(queued)["status"] == "IN_QUEUE"
    assert api.wait(queued).get("error") is None
    assert other_api.result(queued).status_code == 404
    assert api.result(queued).status_code == 200


# --- operations ---------------------------------------------------------------------------------------------------


def test_health_and_ready(live_server):
    client = live_server.client(None)  # no key needed
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["app"] == APP
    assert health["demo_model"] is True and "random-weight" in health["demo_warning"]
    assert health["trigger_word"] == "img" and health["styles"]
    assert any(w["state"] == "ready" for w in health["workers"])
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} missing from:\n{text}"
    return float(match.group(1))


def test_metrics_prometheus_text(api, live_server):
    client = live_server.client(None)
    before = client.get("/metrics").text
    ok_before = _metric(before, 'photomaker_jobs_finished{outcome="ok"}')
    count_before = _metric(before, "photomaker_inference_seconds_count")
    with api.busy():
        queued = [api.submit(small(seed=s)) for s in (1, 2)]
        during = client.get("/metrics")
        assert during.headers["content-type"].startswith("text/plain")
        assert _metric(during.text, "photomaker_queue_depth") >= 2
        assert _metric(during.text, "photomaker_jobs_running") == 1
    for request_id in queued:
        api.wait(request_id)
    deadline = time.time() + 10  # the worker publishes its counters with its heartbeat
    while time.time() < deadline:
        after = client.get("/metrics").text
        if _metric(after, "photomaker_inference_seconds_count") >= count_before + 2:
            break
        time.sleep(0.3)
    assert _metric(after, "photomaker_inference_seconds_count") >= count_before + 2
    assert _metric(after, 'photomaker_jobs_finished{outcome="ok"}') >= ok_before + 2
    assert _metric(after, 'photomaker_jobs_finished{outcome="cancelled"}') >= 1
    assert _metric(after, 'photomaker_inference_seconds_bucket{le="+Inf"}') == _metric(
        after, "photomaker_inference_seconds_count")
    assert _metric(after, "photomaker_inference_seconds_sum") > 0
    assert "# TYPE photomaker_inference_seconds histogram" in after
    assert _metric(after, "photomaker_queue_depth") == 0
    assert _metric(after, "photomaker_workers_ready") == 1


def test_docs_and_openapi(live_server):
    client = live_server.client(None)
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = client.get("/openapi.json").json()
    model = schema["components"]["schemas"]["PhotoMakerInput"]
    assert {"prompt", "image_archive_url", "num_inference_steps", "style"} <= set(model["properties"])
    assert "prompt" in model["required"] and "image_archive_url" in model["required"]
    content = schema["paths"]["/fal-ai/photomaker"]["post"]["requestBody"]["content"]["application/json"]
    assert content["schema"] == {"$ref": "#/components/schemas/PhotoMakerInput"}
    assert {"prompt", "image_archive_url", "style"} <= set(content["example"])
    # fal's key header as the security scheme of the protected operations only; Swagger UI served from here.
    scheme = schema["components"]["securitySchemes"]["FalKey"]
    assert scheme["type"] == "apiKey" and scheme["in"] == "header" and scheme["name"] == "Authorization"
    assert schema["paths"]["/fal-ai/photomaker/requests/{request_id}/status"]["get"]["security"] == [{"FalKey": []}]
    assert "security" not in schema["paths"]["/health"]["get"]
    assert not any("{owner_ns}" in path for path in schema["paths"])  # literal paths; other app ids: 404, undocumented
    assert "http://" not in docs.text and "https://" not in docs.text  # no CDN: every asset is relative
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200


def test_non_ascii_credentials_are_refused_not_crashed(live_server):
    client = live_server.client(None)
    for header in ("Key k\u00e9y", "Key \u2603", "Bearer \u00e9.\u00e9"):
        raw = {"Authorization": header.encode("utf-8")}  # raw bytes on the wire, as a sloppy client sends them
        assert client.get(f"/{APP}/requests/x/status", headers=raw).status_code == 401, header
        assert client.post("/files/upload", headers=raw, content=b"x").status_code == 401, header
    assert client.get("/health").status_code == 200
    upload = client.put("/storage/upload/abc?sig=%C3%A9", content=b"x")
    assert upload.status_code in (403, 404)


def test_web_page(live_server):
    page = live_server.client(None).get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()


# --- the fal proxy route ------------------------------------------------------------------------------------------

PROXY = "/api/fal/proxy"


def test_proxy_queue_submit_status_result(api):
    target = f"https://queue.fal.run/{APP}"
    response = api.http.post(PROXY, json=small(seed=77), headers={"x-fal-target-url": target})
    assert response.status_code == 200, response.text
    request_id = response.json()["request_id"]
    assert response.json()["status"] == "IN_QUEUE" and response.headers["x-fal-request-id"] == request_id
    status_target = f"https://queue.fal.run/{APP}/requests/{request_id}/status?logs=1"
    deadline = time.time() + 60
    while time.time() < deadline:
        status = api.http.get(PROXY, headers={"x-fal-target-url": status_target}).json()
        if status["status"] == "COMPLETED":
            break
        time.sleep(0.1)
    assert status["status"] == "COMPLETED" and "Request queued" in messages(status)
    result = api.http.get(PROXY, headers={"x-fal-target-url": f"https://queue.fal.run/{APP}/requests/{request_id}"})
    assert result.status_code == 200 and result.json()["seed"] == 77
    # The proxy keeps auth: without a key it is 401 like everywhere else.
    anonymous = httpx.post(api.server.url + PROXY, json=small(), headers={"x-fal-target-url": target})
    assert anonymous.status_code == 401


def test_proxy_storage_initiate_and_sync_run(api):
    initiate = api.http.post(PROXY, json={"content_type": "image/png", "file_name": "a.png"},
                             headers={"x-fal-target-url": "https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3"})
    assert initiate.status_code == 200, initiate.text
    upload_url, file_url = initiate.json()["upload_url"], initiate.json()["file_url"]
    assert httpx.put(upload_url, content=FACE_PNG, headers={"Content-Type": "image/png"}).status_code == 200
    run = api.http.post(PROXY, json=small(image_url=file_url, seed=78),
                        headers={"x-fal-target-url": f"https://fal.run/{APP}"}, timeout=90)
    assert run.status_code == 200, run.text
    assert run.json()["seed"] == 78 and run.headers["x-fal-request-id"]


@pytest.mark.parametrize("target", [
    "https://queue.fal.run/other/app",
    "https://evil.example/x",
    f"https://evil.example/{APP}",
    f"https://queue.evil.example/{APP}",
    "https://rest.fal.ai/admin",
    f"https://queue.fal.run/{APP}/../../health",
    f"ftp://queue.fal.run/{APP}",
])
def test_proxy_refuses_foreign_targets(api, target):
    response = api.http.post(PROXY, json=small(), headers={"x-fal-target-url": target})
    assert response.status_code == 403, (target, response.text)
    assert response.json()["error_type"]


def test_proxy_without_target_header_is_400(api):
    response = api.http.post(PROXY, json=small())
    assert response.status_code == 400 and "x-fal-target-url" in response.json()["detail"]


@pytest.mark.parametrize("target, expected", [
    (f"https://queue.fal.run/{APP}", (f"/{APP}", "")),
    (f"https://queue.fal.run/{APP}?fal_webhook=https%3A%2F%2Fx.example%2Fh", (f"/{APP}", "fal_webhook=https%3A%2F%2Fx.example%2Fh")),
    (f"https://queue.fal.run/{APP}/requests/abc/status?logs=1", (f"/{APP}/requests/abc/status", "logs=1")),
    (f"https://queue.fal.run/{APP}/requests/abc/status/stream", (f"/{APP}/requests/abc/status/stream", "")),
    (f"https://queue.fal.run/{APP}/requests/abc/cancel", (f"/{APP}/requests/abc/cancel", "")),
    (f"https://queue.fal.run/{APP}/requests/abc", (f"/{APP}/requests/abc", "")),
    (f"https://fal.run/{APP}", (f"/run/{APP}", "")),
    (f"https://fal.run/{APP}/", (f"/run/{APP}", "")),
    ("https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3",
     ("/storage/upload/initiate", "storage_type=fal-cdn-v3")),
    ("https://rest.alpha.fal.ai/storage/auth/token", ("/storage/auth/token", "")),
    ("https://queue.fal.run/other/app", None),
    (f"https://queue.fal.run/{APP}x", None),
    ("https://evil.example/x", None),
    (f"https://evil.example/{APP}", None),
    (f"https://queue.evil.example/{APP}", None),
    (f"https://queue.fal.run.evil.example/{APP}", None),
    ("https://fal.run/other/app", None),
    ("https://rest.fal.ai/files/upload", None),
    ("https://rest.fal.ai/storage/upload/abc", None),
    (f"https://queue.fal.run/{APP}/../other/app", None),
    ("javascript:alert(1)", None),
    ("", None),
])
def test_map_target(target, expected):
    assert map_target(target) == expected
