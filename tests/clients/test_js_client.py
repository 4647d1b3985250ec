"""The official fal JS client (``@fal-ai/client`` 1.10.1, unmodified) against a live server, through the proxy route.

``js_client.mjs`` configures the client with nothing but
``fal.config({ proxyUrl: { url: "<server>/api/fal/proxy", when: "always" }, credentials: KEY })`` and runs every
scenario once; the tests below check its JSON report and what reached the server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from live_server import API_KEY

pytestmark = pytest.mark.clients
APP = "fal-ai/photomaker"
CLIENTS_DIR = Path(__file__).parent


@pytest.fixture(scope="module")
def js(live_server, face_png, server_log):
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (the machine's Node.js runs the official JS client)")
    if not (CLIENTS_DIR / "node_modules" / "@fal-ai" / "client").is_dir():
        pytest.fail("@fal-ai/client is not installed: `make test-deps` runs `npm ci` in tests/clients")
    log = server_log(live_server)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    env.update(PM_URL=live_server.url, PM_KEY=API_KEY, PM_FACE=str(face_png))
    done = subprocess.run([node, "js_client.mjs"], cwd=CLIENTS_DIR, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    report["_access_log"] = log.lines()  # read before the tests below make requests of their own
    return report


def ok(report: dict, name: str) -> dict:
    value = report[name]
    assert not (isinstance(value, dict) and "error" in value and len(value) == 1), f"{name}: {value['error']}"
    return value


def steps_in(logs: list[str]) -> list[str]:
    return [line for line in logs if re.fullmatch(r"Step \d+/\d+", line)]


def check_images(data: dict, fetch_image, count: int = 1) -> None:  # noqa: ANN001
    assert len(data["images"]) == count
    for image in data["images"]:
        assert (image["width"], image["height"]) == (64, 64)
        assert image["content_type"] == "image/png"
        decoded = fetch_image(image["url"])
        assert decoded.size == (64, 64) and decoded.format == "PNG"
        assert image["file_size"] > 0


def test_every_call_goes_through_the_proxy_route(js, live_server):
    lines = js["_access_log"]
    proxied = [line for line in lines if line.startswith("POST /api/fal/proxy") or line.startswith("GET /api/fal/proxy")
               or line.startswith("PUT /api/fal/proxy")]
    # submit/run/initiate are POSTs, status/stream/result GETs, cancel PUTs: all three reach the proxy route.
    assert {line.split()[0] for line in proxied} == {"POST", "GET", "PUT"}
    # The only other requests are the storage PUTs straight to the signed upload_url (no key, by design).
    others = [line for line in lines if line not in proxied]
    assert others and all(re.match(r"PUT /storage/upload/[\w-]+\?sig=", line) for line in others), others


def test_storage_upload_of_a_blob_and_a_file(js, live_server, face_png):
    for name, suffix in (("upload_blob", ".png"), ("upload_file", "/face.png")):
        url = ok(js, name)["url"]
        assert url.startswith(f"{live_server.url}/files/") and url.endswith(suffix)
        response = httpx.get(url)
        assert response.status_code == 200
        assert response.content == face_png.read_bytes()
        assert response.headers["content-type"] == "image/png"


def test_subscribe_polling_with_logs_on_an_uploaded_photo(js, fetch_image):
    sub = ok(js, "subscribe_polling")
    assert sub["enqueued"] == sub["requestId"] and sub["requestId"]
    assert sub["data"]["seed"] == 42
    check_images(sub["data"], fetch_image)
    statuses = [u["status"] for u in sub["updates"]]
    assert statuses[-1] == "COMPLETED" and set(statuses) <= {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}
    assert "IN_PROGRESS" in statuses or "IN_QUEUE" in statuses
    logs = sub["updates"][-1]["logs"]
    assert steps_in(logs) == ["Step 1/4", "Step 2/4", "Step 3/4", "Step 4/4"]
    # image_archive_url was the URL storage.upload returned: the worker fetched it from this server's storage.
    assert "Fetching the photos (1 file)" in logs


def test_subscribe_streaming_accumulates_only_new_log_lines(js, fetch_image):
    sub = ok(js, "subscribe_streaming")
    assert sub["data"]["seed"] == 7
    check_images(sub["data"], fetch_image)
    assert sub["updates"][-1]["status"] == "COMPLETED"
    assert any(u["status"] == "IN_PROGRESS" for u in sub["updates"])
    logs = sub["updates"][-1]["logs"]
    # The client appends each event's lines; a server that re-sent old lines would show duplicates here.
    assert steps_in(logs) == [f"Step {i}/60" for i in range(1, 61)]
    assert len(logs) == len(set(logs)), logs


def test_queue_submit_status_result(js, live_server, fetch_image):
    q = ok(js, "queue")
    submitted = q["submitted"]
    rid = submitted["request_id"]
    assert submitted["status"] == "IN_QUEUE" and isinstance(submitted["queue_position"], int)
    base = f"{live_server.url}/{APP}/requests/{rid}"
    assert (submitted["response_url"], submitted["status_url"], submitted["cancel_url"]) == (
        base, f"{base}/status", f"{base}/cancel")
    assert q["first_status"] in ("IN_QUEUE", "IN_PROGRESS")
    assert q["done"]["status"] == "COMPLETED" and q["done"]["metrics"]["inference_time"] > 0
    assert q["again"]["status"] == "COMPLETED" and q["again"]["logs"][-1] == "Completed"
    assert set(q["again"]["levels"]) <= {"INFO", "WARN", "ERROR", "DEBUG", "STDOUT", "STDERR"}
    assert q["result"]["requestId"] == rid
    assert q["result"]["data"]["seed"] == 5
    check_images(q["result"]["data"], fetch_image)


def test_cancel_queued_and_running_requests(js):
    c = ok(js, "cancel")
    assert c["queued_before"] == "IN_QUEUE"
    assert c["cancel_queued"] == "ok" and c["cancel_blocker"] == "ok"  # 202: the client resolves
    assert c["running"] == "IN_PROGRESS"  # the blocker was cancelled while it ran
    for done in (c["queued_done"], c["blocker_done"]):
        assert done["status"] == "COMPLETED"
        assert done["error_type"] == "client_cancelled" and done["error"] == "Request cancelled"
    # The running one stopped at its next step, long before its 100th.
    assert "Step 1/100" in c["blocker_done"]["logs"] and "Step 100/100" not in c["blocker_done"]["logs"]
    result_error = c["queued_result"]["error"]
    assert result_error["isApiError"] and result_error["status"] == 499
    assert result_error["body"]["error_type"] == "client_cancelled"
    again = c["cancel_again"]["error"]
    assert again["status"] == 400 and again["body"] == {"status": "ALREADY_COMPLETED"}


def test_run_and_blob_inputs(js, fetch_image):
    run = ok(js, "run")
    assert run["requestId"] and run["data"]["seed"] == 9
    check_images(run["data"], fetch_image, count=2)
    assert run["data"]["images"][0]["url"] != run["data"]["images"][1]["url"]
    # A Blob inside the input: the client uploads it itself (initiate via the proxy, PUT) and sends its URL.
    blob = ok(js, "run_blob_input")
    assert blob["data"]["seed"] == 3
    check_images(blob["data"], fetch_image)


def test_photomaker_version_goes_through_unmodified(js, fetch_image):
    run = ok(js, "run_v2")
    assert run["data"]["seed"] == 4 and "face_analysis" in run["data"]["timings"], run["data"]  # v2 ran
    check_images(run["data"], fetch_image)


def test_validation_errors_are_the_clients_validation_error(js):
    error = js["invalid"]["error"]
    assert error["name"] == "ValidationError" and error["status"] == 422
    assert error["fieldErrors"] == [{"loc": ["body", "num_inference_steps"],
                                     "msg": "Input should be less than or equal to 100", "type": "less_than_equal"}]
