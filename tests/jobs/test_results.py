"""Results keep storage keys; URLs are rendered when a result is handed out (result endpoint, webhooks)."""

from __future__ import annotations

import copy
import json

from photomaker_server.jobs.results import render_result, result_keys
from photomaker_server.webhooks import WebhookDispatcher, WebhookSigner, job_webhook_body, verify

KEY = "A" * 32 + "/req-0.png"
DATA_URI = "data:image/png;base64,AAAA"
OLD_URL = "http://127.0.0.1:8000/files/" + "B" * 32 + "/req-1.png"


def url_for(key: str) -> str:
    return f"https://cdn.example/{key}"


def stored_result() -> dict:
    return {
        "images": [
            {"key": KEY, "content_type": "image/png", "file_name": "req-0.png", "file_size": 3, "width": 8, "height": 8},
            {"url": DATA_URI, "content_type": "image/png", "file_name": "req-s.png", "file_size": 3, "width": 8,
             "height": 8},
            {"url": OLD_URL, "content_type": "image/png", "file_name": "req-1.png", "file_size": 3, "width": 8,
             "height": 8},
        ],
        "seed": 7,
        "prompt": "a man img",
    }


def test_render_result_turns_keys_into_urls_and_leaves_the_rest():
    result = stored_result()
    before = copy.deepcopy(result)
    shown = render_result(result, url_for)
    assert result == before, "the stored result is not modified"
    first = shown["images"][0]
    assert first["url"] == f"https://cdn.example/{KEY}" and "key" not in first
    assert {k: v for k, v in first.items() if k != "url"} == {k: v for k, v in before["images"][0].items() if k != "key"}
    assert shown["images"][1] == before["images"][1], "sync_mode data URIs stay"
    assert shown["images"][2] == before["images"][2], "results stored before keys existed are answered as they are"
    assert shown["seed"] == 7 and shown["prompt"] == "a man img"


def test_render_result_edge_cases():
    assert render_result(None, url_for) is None
    assert render_result({"images": []}, url_for) == {"images": []}
    assert render_result(stored_result(), None) == stored_result()
    odd = {"images": ["not a dict", {"key": 5}]}
    assert render_result(odd, url_for) == odd


def test_result_keys_by_key_and_by_old_url():
    def key_from_url(url: str) -> str | None:
        return url.split("/files/", 1)[1] if "/files/" in url else None

    assert result_keys(stored_result(), key_from_url) == [KEY, "B" * 32 + "/req-1.png"]
    assert result_keys(None, key_from_url) == []
    assert result_keys({"images": [{"url": "https://elsewhere.example/x.png"}]}, key_from_url) == []


class _Job:
    def __init__(self, result: dict) -> None:
        self.id, self.result, self.error, self.error_type = "req-1", result, None, None


def test_webhook_bodies_render_urls():
    rendered = json.loads(job_webhook_body(_Job(stored_result()), url_for))
    assert rendered["payload"]["images"][0]["url"] == f"https://cdn.example/{KEY}"
    unrendered = json.loads(job_webhook_body(_Job(stored_result())))  # no renderer: the keys stay
    assert unrendered["payload"]["images"][0]["key"] == KEY


def test_the_dispatcher_renders_then_signs(store):
    signer = WebhookSigner.generate()
    job = store.submit("owner", "fal-ai/photomaker", {"prompt": "a man img"}, webhook_url="https://hook.example/x")
    store.claim("w", 30)
    store.complete(job.id, "w", {"images": [{"key": KEY, "file_name": "req-0.png"}], "seed": 1})
    sent: list[tuple[bytes, dict]] = []

    def post(url, body, headers, timeout):  # noqa: ANN001, ANN202
        sent.append((body, dict(headers)))
        return 200

    WebhookDispatcher(store, signer, http_post=post, render_body=lambda j: job_webhook_body(j, url_for)).run_once()
    (body, headers), = sent
    assert json.loads(body)["payload"]["images"][0] == {"url": f"https://cdn.example/{KEY}", "file_name": "req-0.png"}
    assert verify(signer.jwks(), headers, body, now=int(headers["X-Fal-Webhook-Timestamp"]))
