"""Results keep storage keys; URLs are rendered when a result is handed out (result endpoint, /run, webhooks), by the
one renderer (``contract.result.render_output``)."""

from __future__ import annotations

import json

from helpers import stored_output, stored_request
from photomaker_server.contract.files import FileRef
from photomaker_server.contract.result import PhotoMakerOutput, StoredOutput, render_output
from photomaker_server.jobs.results import result_keys
from photomaker_server.webhooks import WebhookDispatcher, WebhookSigner, job_webhook_body, verify

KEY = "A" * 32 + "/req-0.png"
DATA_URI = "data:image/png;base64,AAAA"
OLD_URL = "http://127.0.0.1:8000/files/" + "B" * 32 + "/req-1.png"


def url_for(key: str) -> str:
    return f"https://cdn.example/{key}"


def stored_result() -> StoredOutput:
    return stored_output(KEY, urls=(DATA_URI, OLD_URL), seed=7, prompt="a man img")


def test_render_output_turns_keys_into_urls_and_leaves_the_rest():
    result = stored_result()
    before = result.model_copy(deep=True)
    shown = render_output(result, url_for)
    assert isinstance(shown, PhotoMakerOutput)
    assert result == before, "the stored result is not modified"
    first = shown.images[0]
    assert first.url == f"https://cdn.example/{KEY}"
    assert first.model_dump(exclude={"url"}) == before.images[0].model_dump(exclude={"file"})
    assert shown.images[1].url == DATA_URI, "sync_mode data URIs stay"
    assert shown.images[2].url == OLD_URL, "results stored before keys existed are answered as they are"
    assert shown.seed == 7 and shown.prompt == "a man img"
    assert "key" not in shown.model_dump()["images"][0] and "file" not in shown.model_dump()["images"][0]


def test_render_output_of_no_images():
    assert render_output(stored_output(), url_for).images == []


def test_result_keys_by_key_and_by_old_url():
    def key_from_url(url: str) -> str | None:
        return url.split("/files/", 1)[1] if "/files/" in url else None

    assert result_keys(stored_result(), key_from_url) == [KEY, "B" * 32 + "/req-1.png"]
    assert result_keys(None, key_from_url) == []
    assert result_keys(stored_output(urls=("https://elsewhere.example/x.png",)), key_from_url) == []


def test_the_stored_json_form():
    raw = json.loads(stored_result().to_json())
    assert [image["file"] for image in raw["images"]] == [{"key": KEY}, {"url": DATA_URI}, {"url": OLD_URL}]
    assert StoredOutput.model_validate_json(stored_result().to_json()) == stored_result()
    assert FileRef.model_validate_json('{"key": "t/a.png"}') == FileRef.stored("t/a.png")


class _Job:
    def __init__(self, result: StoredOutput) -> None:
        self.id, self.result, self.error, self.error_type = "req-1", result, None, None


def test_webhook_bodies_render_urls():
    rendered = json.loads(job_webhook_body(_Job(stored_result()), url_for))
    assert rendered["payload"]["images"][0]["url"] == f"https://cdn.example/{KEY}"
    assert rendered["payload"] == render_output(stored_result(), url_for).model_dump(mode="json", exclude_none=True)
    relative = json.loads(job_webhook_body(_Job(stored_result())))  # no renderer: the API's relative path
    assert relative["payload"]["images"][0]["url"] == f"/files/{KEY}"


def test_the_dispatcher_renders_then_signs(store):
    signer = WebhookSigner.generate()
    job = store.submit("owner", "fal-ai/photomaker", stored_request(), webhook_url="https://hook.example/x")
    store.claim("w", 30)
    store.complete(job.id, "w", stored_output(KEY, seed=1))
    sent: list[tuple[bytes, dict]] = []

    def post(url, body, headers, timeout):  # noqa: ANN001, ANN202
        sent.append((body, dict(headers)))
        return 200

    WebhookDispatcher(store, signer, http_post=post, render_body=lambda j: job_webhook_body(j, url_for)).run_once()
    (body, headers), = sent
    image = json.loads(body)["payload"]["images"][0]
    assert image["url"] == f"https://cdn.example/{KEY}" and image["file_name"] == "out-0.png"
    assert verify(signer.jwks(), headers, body, now=int(headers["X-Fal-Webhook-Timestamp"]))


def test_a_failed_request_posts_the_result_endpoints_error_body():
    job = _Job(None)  # type: ignore[arg-type]
    job.error, job.error_type = "no face in any photo", "no_face_detected"
    body = json.loads(job_webhook_body(job, url_for))
    assert body["status"] == "ERROR"
    assert body["payload"] == {"detail": [{"loc": ["body", "image_archive_url"], "msg": "no face in any photo",
                                           "type": "no_face_detected"}], "error_type": "no_face_detected"}
    job.error, job.error_type = "out of memory", "something unheard of"  # a row written by something else
    assert json.loads(job_webhook_body(job, url_for))["payload"] == {"detail": "out of memory",
                                                                     "error_type": "internal_error"}
