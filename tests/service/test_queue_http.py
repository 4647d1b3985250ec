"""fal's queue protocol against a running ``photomaker serve --tiny``: submit, status (+ logs, + SSE), result,
cancel in every state, priorities, start deadlines and the synchronous run."""

from __future__ import annotations

import base64
import io
import sqlite3
import time
from datetime import datetime
from urllib.parse import urlsplit

import httpx
from PIL import Image

from live_server import APP
from service.svc import FACE_PNG, data_uri, messages, parse_sse, photos_zip, small

URL_FIELDS = ("response_url", "status_url", "cancel_url")


def _started_at(status: dict) -> datetime:
    for entry in status["logs"]:
        if entry["message"].startswith("Started on worker"):
            return datetime.fromisoformat(entry["timestamp"])
    raise AssertionError(f"never started: {messages(status)}")


def _image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --- submit -----------------------------------------------------------------------------------------------------


def test_submit_answers_fal_envelope_with_absolute_urls(api, live_server):
    response = api.submit_response(small())
    assert response.status_code == 200, response.text
    body = response.json()
    request_id = body["request_id"]
    assert response.headers["x-fal-request-id"] == request_id
    assert body["status"] == "IN_QUEUE"
    assert isinstance(body["queue_position"], int) and body["queue_position"] >= 0
    base = f"{live_server.url}/{APP}/requests/{request_id}"
    assert body["response_url"] == base
    assert body["status_url"] == base + "/status"
    assert body["cancel_url"] == base + "/cancel"
    for field in URL_FIELDS:
        parts = urlsplit(body[field])
        assert parts.scheme == "http" and parts.netloc == f"127.0.0.1:{live_server.port}", body[field]
    # The URLs are usable verbatim, as fal's Python client uses them.
    final = api.wait(request_id)
    for field in URL_FIELDS[:2]:
        assert api.http.get(body[field]).status_code == 200
    assert final["request_id"] == request_id and all(final[f] == body[f] for f in URL_FIELDS)


def test_status_logs_flag_and_the_log_lines_a_user_wants(api):
    request_id = api.submit(small(image_url=data_uri(photos_zip(3), "application/zip"), num_inference_steps=3))
    final = api.wait(request_id)
    assert final["status"] == "COMPLETED" and final.get("error") is None
    lines = messages(final)
    assert lines[0] == "Request queued"
    assert any(m.startswith("Started on worker") or m.startswith("Loading model") for m in lines), lines
    assert "Encoding 3 ID photos" in lines
    assert [m for m in lines if m.startswith("Step ")] == ["Step 1/3", "Step 2/3", "Step 3/3"]
    assert lines.index("Encoding 3 ID photos") < lines.index("Step 1/3") < lines.index("Step 3/3") < lines.index("Completed")
    assert lines[-1] == "Completed"
    warnings = [e for e in final["logs"] if "random-weight demo model" in e["message"]]
    assert warnings and any(e["level"] == "WARN" for e in warnings)
    for entry in final["logs"]:
        assert set(entry) == {"message", "level", "source", "timestamp"}
        assert entry["level"] in {"INFO", "WARN", "ERROR", "DEBUG", "STDOUT", "STDERR"} and entry["source"] == "USER"
        assert datetime.fromisoformat(entry["timestamp"]).utcoffset() is not None

    # Both clients' spellings of the flag; polling returns the full list every time.
    for flag in ("1", "true", "True"):
        assert messages(api.status(request_id, flag)) == lines
    for flag in ("0", "false", None):
        body = api.status(request_id, flag)
        assert body.get("logs") is None and body["status"] == "COMPLETED"
    assert final["metrics"]["inference_time"] > 0


def test_every_job_logs_the_demo_model_warning(api):
    ids = [api.submit(small(seed=s)) for s in (11, 12)]
    for request_id in ids:
        lines = messages(api.wait(request_id))
        assert any("random-weight demo model" in m for m in lines), lines


def test_status_while_queued_has_queue_position_and_while_running_has_logs(api):
    with api.busy() as blocker:
        running = api.status(blocker)
        assert running["status"] == "IN_PROGRESS" and isinstance(running["logs"], list)
        assert "queue_position" not in running or running["queue_position"] is None
        first, second = api.submit(small()), api.submit(small())
        assert messages(api.status(first)) == ["Request queued"]
        queued = api.status(second, "0")
        assert queued["status"] == "IN_QUEUE" and queued["queue_position"] == 1
        assert api.status(first)["queue_position"] == 0
    for request_id in (first, second):
        assert api.wait(request_id).get("error") is None


# --- SSE ----------------------------------------------------------------------------------------------------------


def test_status_stream_sends_only_new_log_lines_and_closes_after_completed(api):
    request_id = api.submit(small(num_inference_steps=3, seed=3))
    events = []
    started = time.time()
    with api.http.stream("GET", api.path(request_id, "/status/stream"), params={"logs": "1"}, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-fal-request-id"] == request_id
        for event in parse_sse(response.iter_lines()):
            events.append(event)
    assert time.time() - started < 60  # the server closed the stream by itself
    assert events, "no events"
    assert events[-1]["status"] == "COMPLETED"
    assert [e["status"] for e in events].count("COMPLETED") == 1
    for event in events:  # each event is a whole status envelope
        assert event["request_id"] == request_id and all(event[f] for f in ("response_url", "status_url", "cancel_url"))
        assert isinstance(event["logs"], list)
        if event["status"] == "IN_QUEUE":
            assert isinstance(event["queue_position"], int)
    streamed = [entry["message"] for event in events for entry in event["logs"]]
    polled = messages(api.status(request_id))
    assert streamed == polled  # every line exactly once, in order: only new lines per event
    assert streamed[-1] == "Completed" and "Step 3/3" in streamed
    assert events[-1]["metrics"]["inference_time"] > 0


def test_status_stream_without_logs_and_of_a_finished_request(api):
    request_id = api.submit(small())
    api.wait(request_id)
    with api.http.stream("GET", api.path(request_id, "/status/stream"), params={"logs": "0"}) as response:
        events = list(parse_sse(response.iter_lines()))
    assert len(events) == 1 and events[0]["status"] == "COMPLETED" and events[0]["logs"] is None


# --- results --------------------------------------------------------------------------------------------------------


def test_result_shape_and_the_image_downloads_as_png_of_the_requested_size(api):
    final, result = api.run(small(image_size={"width": 72, "height": 64}, seed=1234, num_inference_steps=2))
    assert set(result) >= {"images", "seed", "timings", "prompt"}
    assert result["seed"] == 1234
    assert "a photo of a man img" in result["prompt"]
    assert isinstance(result["timings"], dict) and result["timings"]
    assert len(result["images"]) == 1
    image = result["images"][0]
    assert set(image) >= {"url", "content_type", "file_name", "file_size", "width", "height"}
    assert (image["width"], image["height"], image["content_type"]) == (72, 64, "image/png")
    assert image["file_name"].endswith(".png")
    download = httpx.get(image["url"], timeout=30)  # no key: the URL is the capability
    assert download.status_code == 200 and download.headers["content-type"] == "image/png"
    assert len(download.content) == image["file_size"]
    decoded = _image(download.content)
    assert decoded.format == "PNG" and decoded.size == (72, 64)
    assert final["metrics"]["inference_time"] > 0
    assert api.result(final["request_id"]).headers["x-fal-request-id"] == final["request_id"]


def test_random_seed_is_reported_and_num_images(api):
    body = small(num_images=2)
    del body["seed"]
    _, result = api.run(body)
    assert isinstance(result["seed"], int) and result["seed"] >= 0
    assert len(result["images"]) == 2 and len({i["url"] for i in result["images"]}) == 2


def test_output_formats_jpeg_and_webp(api):
    expected = {"jpeg": ("image/jpeg", "JPEG"), "webp": ("image/webp", "WEBP"), "png": ("image/png", "PNG")}
    ids = {fmt: api.submit(small(output_format=fmt)) for fmt in expected}
    for fmt, request_id in ids.items():
        assert api.wait(request_id).get("error") is None
        image = api.result(request_id).json()["images"][0]
        content_type, pil_format = expected[fmt]
        assert image["content_type"] == content_type
        data = httpx.get(image["url"], timeout=30).content
        decoded = _image(data)
        assert decoded.format == pil_format and decoded.size == (64, 64)


def test_sync_mode_returns_data_uris_and_stores_nothing(api, live_server):
    files_dir = live_server.data_dir / "files"
    # The photo goes by storage URL: a data URI would itself be stored (inputs are kept as files, not in the job).
    photo = api.http.post("/storage/upload/multipart", files={"file": ("face.png", FACE_PNG, "image/png")}).json()
    before = {p for p in files_dir.rglob("*") if p.is_file()}
    _, result = api.run(small(photo["url"], sync_mode=True, output_format="jpeg"))
    image = result["images"][0]
    assert image["url"].startswith("data:image/jpeg;base64,")
    data = base64.b64decode(image["url"].split(",", 1)[1])
    assert len(data) == image["file_size"]
    assert _image(data).size == (64, 64)
    after = {p for p in files_dir.rglob("*") if p.is_file()}
    assert after == before


# --- cancel -----------------------------------------------------------------------------------------------------


def test_cancel_queued_request(api):
    with api.busy():
        request_id = api.submit(small())
        assert api.status(request_id)["status"] == "IN_QUEUE"
        response = api.cancel(request_id)
        assert response.status_code == 202 and response.json() == {"status": "CANCELLATION_REQUESTED"}
        assert response.headers["x-fal-request-id"] == request_id
        final = api.status(request_id)  # removed from the queue at once
        assert final["status"] == "COMPLETED" and final["error_type"] == "client_cancelled"
    assert not any(m.startswith("Started on worker") for m in messages(api.status(request_id)))
    result = api.result(request_id)
    assert result.status_code == 499 and result.json()["error_type"] == "client_cancelled"
    assert result.headers["x-fal-error-type"] == "client_cancelled"


def test_cancel_running_request_stops_at_the_next_step(api):
    request_id = api.long_job(seed=5)
    assert api.wait_for_log(request_id, "Step ")["status"] == "IN_PROGRESS"
    response = api.cancel(request_id)
    assert response.status_code == 202 and response.json() == {"status": "CANCELLATION_REQUESTED"}
    final = api.wait(request_id, timeout=30)
    assert final["error_type"] == "client_cancelled" and final["error"]
    steps = [m for m in messages(final) if m.startswith("Step ")]
    assert steps and "Step 100/100" not in steps
    assert "Cancellation requested" in messages(final)
    assert api.result(request_id).status_code == 499
    # A cancelled request is finished: cancelling again says so.
    again = api.cancel(request_id)
    assert again.status_code == 400 and again.json() == {"status": "ALREADY_COMPLETED"}


def test_cancel_finished_and_unknown_requests(api):
    request_id = api.submit(small())
    assert api.wait(request_id).get("error") is None
    response = api.cancel(request_id)
    assert response.status_code == 400 and response.json() == {"status": "ALREADY_COMPLETED"}
    assert api.result(request_id).status_code == 200  # the result is untouched
    unknown = api.cancel("00000000-0000-4000-8000-000000000000")
    assert unknown.status_code == 404
    assert api.http.get(api.path("00000000-0000-4000-8000-000000000000", "/status")).status_code == 404
    assert api.result("00000000-0000-4000-8000-000000000000").status_code == 404


# --- priorities and deadlines -----------------------------------------------------------------------------------


def test_high_priority_jumps_ahead_of_earlier_normal_and_low_requests(api):
    with api.busy():
        low = api.submit(small(seed=21), headers={"X-Fal-Queue-Priority": "low"})
        normal_1 = api.submit(small(seed=22), headers={"X-Fal-Queue-Priority": "normal"})
        normal_2 = api.submit(small(seed=23))  # no header: normal
        high = api.submit(small(seed=24), headers={"X-Fal-Queue-Priority": "high"})
        positions = {name: api.status(rid, "0")["queue_position"]
                     for name, rid in (("high", high), ("n1", normal_1), ("n2", normal_2), ("low", low))}
        assert positions == {"high": 0, "n1": 1, "n2": 2, "low": 3}
        bad = api.submit_response(small(), headers={"X-Fal-Queue-Priority": "urgent"})
        assert bad.status_code == 400
    finals = {rid: api.wait(rid) for rid in (high, normal_1, normal_2, low)}
    order = sorted(finals, key=lambda rid: _started_at(finals[rid]))
    assert order == [high, normal_1, normal_2, low]


def test_start_deadline_expires_while_the_worker_is_busy(api):
    with api.busy():
        late = api.submit(small(), headers={"X-Fal-Request-Timeout": "0.5"})
        patient = api.submit(small(), headers={"X-Fal-Request-Timeout": "600"})
        final = api.wait(late, timeout=15)  # expires while the blocker still runs
        assert api.status(patient, "0")["status"] == "IN_QUEUE"
    assert final["error_type"] == "request_timeout" and final["error"]
    assert not any(m.startswith("Started on worker") for m in messages(final))
    result = api.result(late)
    assert result.status_code == 504
    assert result.headers["x-fal-error-type"] == "request_timeout"
    assert result.json() == {"detail": final["error"], "error_type": "request_timeout"}
    assert api.wait(patient).get("error") is None  # a deadline met is a deadline met
    for bad in ("0", "-1", "soon", "nan"):
        assert api.submit_response(small(), headers={"X-Fal-Request-Timeout": bad}).status_code == 400


# --- synchronous run --------------------------------------------------------------------------------------------


def test_sync_run_returns_the_output_directly(api):
    response = api.http.post(f"/run/{APP}", json=small(seed=99), timeout=90)
    assert response.status_code == 200, response.text
    body = response.json()
    request_id = response.headers["x-fal-request-id"]
    assert body["seed"] == 99 and body["images"][0]["width"] == 64
    assert "request_id" not in body and "status" not in body  # the output itself, not an envelope
    assert httpx.get(body["images"][0]["url"], timeout=30).status_code == 200
    # It went through the queue: the same request is visible there.
    assert api.result(request_id).json() == body
    invalid = api.http.post(f"/run/{APP}", json={"prompt": "no trigger word", "image_archive_url": data_uri(FACE_PNG)})
    assert invalid.status_code == 422 and invalid.json()["detail"][0]["loc"] == ["body", "prompt"]


def test_sync_run_of_a_failing_request_answers_fal_error_body(api):
    response = api.http.post(f"/run/{APP}", json=small(image_url=data_uri(FACE_PNG[:100], "image/png")))
    assert response.status_code == 422
    assert response.json()["error_type"] == "input_error" and isinstance(response.json()["detail"], str)
    assert response.headers["x-fal-error-type"] == "input_error"
    assert response.headers["x-fal-request-id"]


def test_unknown_app_is_404(api):
    assert api.http.post("/fal-ai/other-app", json=small()).status_code == 404


def test_sync_run_client_going_away_cancels_the_request(api, live_server):
    body = small(num_inference_steps=100, image_size={"width": 512, "height": 512}, seed=55)
    try:
        api.http.post(f"/run/{APP}", json=body, timeout=2.5)
        raise AssertionError("a 100-step 512x512 run answered within 2.5 s")
    except httpx.ReadTimeout:
        pass  # the client hung up while it was running
    db = sqlite3.connect(live_server.data_dir / "jobs.db")
    (request_id,) = db.execute("select id from jobs order by seq desc limit 1").fetchone()
    db.close()
    final = api.wait(request_id, timeout=30)
    assert final["error_type"] == "client_cancelled", final
    assert "Step 100/100" not in messages(final)
