"""Every answer of the queue API matches what the app's own ``/openapi.json`` declares for it.

The real flows are walked (submit, status in each state with and without logs, result of a finished and of a failed
request, cancel with each outcome, ``/run``, 404, 422, 401), the worker's part played on the job store. For each
answer, the operation is looked up in ``/openapi.json`` by path and method, the schema declared for its status is
read (it must be declared: an undeclared status fails), and the body is validated against the pydantic model that
schema names (``jsonschema`` is not installed in this environment, so the check is: the declared ``$ref`` names a
component that is one of the API's response models, and the body validates against that model, with unknown fields
refused).
"""

from __future__ import annotations

import re
import threading
import time

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from helpers import stored_output
from photomaker_server.api import schemas
from photomaker_server.api.app import create_app
from photomaker_server.contract.errors import ErrorType
from photomaker_server.contract.result import PhotoMakerOutput
from photomaker_server.settings import APP_ID, Settings

KEY, OTHER = "key-answers", "key-other"
AUTH = {"Authorization": f"Key {KEY}"}
REQUEST = {"prompt": "a photo of a man img", "image_archive_url": "https://example.com/faces.zip"}
MODELS: dict[str, type[BaseModel]] = {
    m.__name__: m for m in (schemas.QueueSubmitted, schemas.QueueStatus, schemas.ErrorBody, schemas.CancelAnswer,
                            PhotoMakerOutput)
}


@pytest.fixture
def client(tmp_path):
    app = create_app(Settings(data_dir=tmp_path, api_keys=[KEY, OTHER]), housekeeping=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


class Checker:
    """Looks answers up in the app's OpenAPI document and validates them; remembers what it checked."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.openapi = client.get("/openapi.json").json()
        self.checked: set[tuple[str, str, int]] = set()
        templates = []
        for template in self.openapi["paths"]:
            pattern = re.escape(template)
            pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", pattern)
            templates.append((template.count("{"), template, re.compile(f"^{pattern}$")))
        self.templates = sorted(templates)  # literal paths before templated ones

    def operation(self, method: str, path: str) -> tuple[str, dict]:
        for _, template, pattern in self.templates:
            if pattern.match(path) and method in self.openapi["paths"][template]:
                return template, self.openapi["paths"][template][method]
        raise AssertionError(f"{method.upper()} {path} is not in /openapi.json")

    def check(self, response, expect: int, model: type[BaseModel] | None = None):  # noqa: ANN001, ANN201
        assert response.status_code == expect, (response.status_code, response.text)
        method, path = response.request.method.lower(), response.request.url.path
        template, operation = self.operation(method, path)
        declared = operation.get("responses", {}).get(str(expect))
        assert declared is not None, f"{method.upper()} {template} answers {expect}, which its schema does not declare"
        schema = declared["content"]["application/json"]["schema"]
        name = schema["$ref"].rsplit("/", 1)[1]
        assert name in self.openapi["components"]["schemas"], name
        assert name in MODELS, f"{template} {expect} declares {name}, not one of the response models"
        if model is not None:
            assert name == model.__name__, (template, expect, name)
        body = response.json()
        MODELS[name].model_validate(body)
        self.checked.add((method, template, expect))
        return body


def _worker_takes(store):  # noqa: ANN001, ANN202
    job = store.claim("w-answers", 60)
    assert job is not None
    store.append_log(job.id, "Step 1/2")
    return job


def test_every_queue_answer_matches_the_openapi_schema(client):
    ctx = client.app.state.ctx
    store = ctx.store
    check = Checker(client).check
    base = f"/{APP_ID}"

    # submit, and its refusals
    first = check(client.post(base, json=REQUEST, headers=AUTH), 200, schemas.QueueSubmitted)
    rid = first["request_id"]
    invalid = check(client.post(base, json={"prompt": "no trigger word"}, headers=AUTH), 422, schemas.ErrorBody)
    assert isinstance(invalid["detail"], list)
    check(client.post(base, json=REQUEST), 401, schemas.ErrorBody)
    check(client.post(base, json=REQUEST, headers={"Authorization": "Key wrong"}), 401, schemas.ErrorBody)
    bad_header = check(client.post(base, json=REQUEST, headers={**AUTH, "X-Fal-Queue-Priority": "urgent"}), 400,
                       schemas.ErrorBody)
    assert bad_header["error_type"] == ErrorType.BAD_REQUEST

    # IN_QUEUE, with and without logs; its result is not there yet
    status_url = f"{base}/requests/{rid}/status"
    queued = check(client.get(status_url, headers=AUTH), 200, schemas.QueueStatus)
    assert queued["status"] == "IN_QUEUE" and queued["queue_position"] == 0 and queued["logs"] is None
    queued_logs = check(client.get(status_url, params={"logs": 1}, headers=AUTH), 200, schemas.QueueStatus)
    assert [line["message"] for line in queued_logs["logs"]] == ["Request queued"]
    waiting = check(client.get(f"{base}/requests/{rid}", headers=AUTH), 400, schemas.ErrorBody)
    assert waiting["error_type"] == ErrorType.REQUEST_IN_PROGRESS

    # IN_PROGRESS, with and without logs
    _worker_takes(store)
    running = check(client.get(status_url, headers=AUTH), 200, schemas.QueueStatus)
    assert running["status"] == "IN_PROGRESS"
    running_logs = check(client.get(status_url, params={"logs": "1"}, headers=AUTH), 200, schemas.QueueStatus)
    assert running_logs["logs"][-1]["message"] == "Step 1/2"

    # COMPLETED, and its result: keys rendered as URLs of this replica, data URIs as they are
    key = ctx.storage.put(b"\x89PNG\r\n\x1a\n", "image/png", "out.png").key
    assert store.complete(rid, "w-answers", stored_output(key, urls=("data:image/png;base64,AAAA",), seed=9), 1.25)
    done = check(client.get(status_url, headers=AUTH), 200, schemas.QueueStatus)
    assert done["status"] == "COMPLETED" and done["metrics"] == {"inference_time": 1.25} and "error" not in done
    done_logs = check(client.get(status_url, params={"logs": 1}, headers=AUTH), 200, schemas.QueueStatus)
    assert done_logs["logs"]
    result = check(client.get(f"{base}/requests/{rid}", headers=AUTH), 200, PhotoMakerOutput)
    assert result["images"][0]["url"] == ctx.file_url(key) and result["images"][1]["url"].startswith("data:")
    assert result["seed"] == 9

    # a failed request: its status, and its result in fal's error shape (the field shape for no_face_detected)
    for error_type, message in ((ErrorType.INPUT_ERROR, "the archive holds no photos"),
                                (ErrorType.NO_FACE_DETECTED, "no face in any photo"),
                                (ErrorType.RUNNER_SERVER_ERROR, "out of memory")):
        failed_id = client.post(base, json=REQUEST, headers=AUTH).json()["request_id"]
        _worker_takes(store)
        assert store.fail(failed_id, "w-answers", message, error_type)
        failed = check(client.get(f"{base}/requests/{failed_id}/status", headers=AUTH), 200, schemas.QueueStatus)
        assert (failed["error"], failed["error_type"]) == (message, error_type)
        answer = client.get(f"{base}/requests/{failed_id}", headers=AUTH)
        body = check(answer, error_type.http_status, schemas.ErrorBody)
        assert body["error_type"] == error_type and answer.headers["x-fal-error-type"] == error_type

    # cancel: queued (removed), running (requested), finished, unknown
    queued_id = client.post(base, json=REQUEST, headers=AUTH).json()["request_id"]
    removed = check(client.put(f"{base}/requests/{queued_id}/cancel", headers=AUTH), 202, schemas.CancelAnswer)
    assert removed["status"] == "CANCELLATION_REQUESTED"
    cancelled = client.get(f"{base}/requests/{queued_id}", headers=AUTH)
    assert check(cancelled, 499, schemas.ErrorBody)["error_type"] == ErrorType.CLIENT_CANCELLED
    running_id = client.post(base, json=REQUEST, headers=AUTH).json()["request_id"]
    _worker_takes(store)
    check(client.put(f"{base}/requests/{running_id}/cancel", headers=AUTH), 202, schemas.CancelAnswer)
    finished = check(client.put(f"{base}/requests/{rid}/cancel", headers=AUTH), 400, schemas.CancelAnswer)
    assert finished["status"] == "ALREADY_COMPLETED"
    check(client.put(f"{base}/requests/no-such-id/cancel", headers=AUTH), 404, schemas.ErrorBody)
    check(client.put(f"{base}/requests/{rid}/cancel"), 401, schemas.ErrorBody)

    # 404 (unknown, or another key's) and 401 on the reads
    other = {"Authorization": f"Key {OTHER}"}
    for url in (status_url, f"{base}/requests/{rid}"):
        assert check(client.get(url, headers=other), 404, schemas.ErrorBody)["error_type"] == ErrorType.NOT_FOUND
        check(client.get(url), 401, schemas.ErrorBody)
    check(client.get(f"{base}/requests/no-such-id/status", headers=AUTH), 404, schemas.ErrorBody)
    check(client.get(f"{base}/requests/no-such-id", headers=AUTH), 404, schemas.ErrorBody)


def test_run_answers_match_the_openapi_schema(client):
    ctx = client.app.state.ctx
    check = Checker(client).check
    stop = threading.Event()

    def worker() -> None:  # the worker's part: take each job and finish it
        while not stop.is_set():
            job = ctx.store.claim("w-run", 60)
            if job is None:
                time.sleep(0.02)
                continue
            ctx.store.complete(job.id, "w-run", stored_output(ctx.storage.put(b"png", "image/png", "o.png").key))

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        result = check(client.post(f"/run/{APP_ID}", json=REQUEST, headers=AUTH), 200, PhotoMakerOutput)
        assert result["images"][0]["url"].startswith(ctx.settings.base_url)
        check(client.post(f"/run/{APP_ID}", json={"prompt": "a man img"}, headers=AUTH), 422, schemas.ErrorBody)
        check(client.post(f"/run/{APP_ID}", json=REQUEST), 401, schemas.ErrorBody)
    finally:
        stop.set()
        thread.join(5)


def test_every_queue_operation_declares_its_errors(client):
    """Every queue operation declares 401 and its error answers with the ErrorBody model, and its success with the
    response model the handler builds."""
    paths = client.get("/openapi.json").json()["paths"]
    ref = "#/components/schemas/{}"
    seen = 0
    for template, item in paths.items():
        for method, operation in item.items():
            if "queue" not in operation.get("tags", []) or "stream" in template:
                continue
            seen += 1
            responses = operation["responses"]
            for status in ("401", "503"):
                assert responses[status]["content"]["application/json"]["schema"]["$ref"] == ref.format("ErrorBody")
            if "{request_id}" in template:
                assert responses["404"]["content"]["application/json"]["schema"]["$ref"] == ref.format("ErrorBody")
            success = {s for s in responses if s.startswith("2")}
            assert success, template
    assert seen >= 5
