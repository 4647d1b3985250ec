"""The official Python client (``fal-client`` 1.0.3, unmodified) against live servers.

* ``photomaker serve --tls`` and environment variables only: ``FAL_KEY``, ``FAL_RUN_HOST=127.0.0.1:PORT/run``,
  ``FAL_QUEUE_RUN_HOST=127.0.0.1:PORT``, ``SSL_CERT_FILE=<data dir>/tls/cert.pem``.
* Plain HTTP: ``fal_client.client.QUEUE_URL_FORMAT`` / ``RUN_URL_FORMAT`` set in code.
* Uploads: ``fal_client.client.REST_URL`` / ``CDN_URL`` set in code (both setups).

fal_client reads the hosts at import, so each setup runs ``fal_py_client.py`` in its own process; it runs every
scenario once and prints a JSON report that the tests below check.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from live_server import API_KEY

pytestmark = pytest.mark.clients
APP = "fal-ai/photomaker"
SCRIPT = Path(__file__).parent / "fal_py_client.py"
STEPS_4 = ["Step 1/4", "Step 2/4", "Step 3/4", "Step 4/4"]


def run_script(args: list[str], env: dict[str, str]) -> tuple[dict, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "SSL_CERT"))}
    done = subprocess.run([sys.executable, str(SCRIPT), *args], env={**base, **env}, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


@pytest.fixture(scope="module")
def env_run(tls_server, face_png, server_log):
    """Configured by environment variables only, against the HTTPS server."""
    log = server_log(tls_server)
    env = {"FAL_KEY": API_KEY, "FAL_RUN_HOST": f"127.0.0.1:{tls_server.port}/run",
           "FAL_QUEUE_RUN_HOST": f"127.0.0.1:{tls_server.port}", "SSL_CERT_FILE": str(tls_server.cert)}
    report, stderr = run_script(["env", str(face_png)], env)
    report["_access_log"], report["_stderr"] = log.lines(), stderr
    return report


@pytest.fixture(scope="module")
def code_run(live_server, face_png, server_log):
    """Plain HTTP: the URL formats set in code (FAL_KEY from the environment)."""
    log = server_log(live_server)
    report, stderr = run_script(["code", str(face_png), live_server.url], {"FAL_KEY": API_KEY})
    report["_access_log"], report["_stderr"] = log.lines(), stderr
    return report


def ok(section: dict, name: str):  # noqa: ANN201
    value = section[name]
    assert not (isinstance(value, dict) and "error" in value), f"{name}: {value}"
    return value


def check_images(result: dict, fetch_image, verify=True, count: int = 1) -> None:  # noqa: ANN001
    assert len(result["images"]) == count
    for image in result["images"]:
        assert (image["width"], image["height"]) == (64, 64)
        assert fetch_image(image["url"], verify=verify).size == (64, 64)


def check_subscribe(sub: dict, seed: int, fetch_image, verify=True) -> None:  # noqa: ANN001
    assert sub["result"]["seed"] == seed
    check_images(sub["result"], fetch_image, verify)
    kinds = [u["kind"] for u in sub["updates"]]
    assert kinds[-1] == "Completed" and kinds.count("Completed") == 1
    assert set(kinds) <= {"Queued", "InProgress", "Completed"} and len(kinds) >= 2
    final = sub["updates"][-1]
    assert final["error"] is None and final["metrics"]["inference_time"] > 0
    assert [line for line in final["logs"] if re.fullmatch(r"Step \d+/\d+", line)] == STEPS_4


def check_cancel(c: dict) -> None:
    assert c["before"]["kind"] == "Queued"
    assert c["cancel_queued"] is None and c["cancel_blocker"] is None  # 202: the client returns None
    assert c["running"]["kind"] == "InProgress" and "Step 1/100" in c["running"]["logs"]
    for final in (c["queued_final"], c["blocker_final"]):
        assert final["kind"] == "Completed"
        assert (final["error"], final["error_type"]) == ("Request cancelled", "client_cancelled")
    assert "Step 100/100" not in c["blocker_final"]["logs"]  # stopped at its next step
    for name in ("queued_result", "blocker_result"):
        assert (c[name]["status_code"], c[name]["error_type"]) == (499, "client_cancelled"), c[name]
    assert (c["unknown_status"]["status_code"], c["unknown_status"]["error_type"]) == (404, "not_found")


# --- environment variables only, HTTPS ------------------------------------------------------------------------------
def test_env_vars_alone_point_the_client_at_the_tls_server(env_run, tls_server):
    assert env_run["config"] == {"run": f"https://127.0.0.1:{tls_server.port}/run/",
                                 "queue": f"https://127.0.0.1:{tls_server.port}/"}
    lines = env_run["_access_log"]
    assert any(line.startswith(f"POST /{APP} ") for line in lines)  # queue submit
    assert any(line.startswith(f"POST /run/{APP} ") for line in lines)  # fal_client.run
    assert any(re.match(rf"GET /{APP}/requests/[\w-]+/status\?logs=true ", line) for line in lines)


def test_subscribe_with_logs(env_run, fetch_image, tls_verify):
    sub = ok(env_run["sync"], "subscribe")
    check_subscribe(sub, 42, fetch_image, verify=tls_verify)
    assert len(sub["enqueued"]) == 1 and sub["enqueued"][0]


def test_handle_and_module_functions(env_run, tls_server, fetch_image, tls_verify):
    h = ok(env_run["sync"], "handle")
    base = f"{tls_server.url}/{APP}/requests/{h['request_id']}"
    assert h["urls"] == [base, f"{base}/status", f"{base}/cancel"]
    assert h["first"]["kind"] in ("Queued", "InProgress")
    assert h["events"][-1]["kind"] == "Completed" and h["events"][-1]["logs"][-1] == "Completed"
    assert h["result"]["seed"] == 5
    check_images(h["result"], fetch_image, verify=tls_verify)
    assert h["by_id"] == h["result"]  # fal_client.result(app, id) after the fact
    assert h["again"]["kind"] == "Completed" and h["again"]["logs"] == h["events"][-1]["logs"]
    assert h["cancel_done"]["status_code"] == 400 and "ALREADY_COMPLETED" in h["cancel_done"]["message"]


def test_cancel(env_run):
    check_cancel(ok(env_run["sync"], "cancel"))


def test_run_and_validation_error(env_run, fetch_image, tls_verify):
    run = ok(env_run["sync"], "run")
    assert run["seed"] == 9
    check_images(run, fetch_image, verify=tls_verify, count=2)
    invalid = env_run["sync"]["invalid"]
    assert invalid["error"] == "FalClientHTTPError" and invalid["status_code"] == 422
    assert invalid["detail"] == [{"loc": ["body", "num_inference_steps"],
                                  "msg": "Input should be less than or equal to 100", "type": "less_than_equal"}]


def test_photomaker_version_goes_through_unmodified(env_run, fetch_image, tls_verify):
    run = ok(env_run["sync"], "run_v2")
    assert run["seed"] == 4 and "face_analysis" in run["timings"], run  # v2 ran
    check_images(run, fetch_image, verify=tls_verify)


def test_async_variants(env_run, fetch_image, tls_verify):
    a = env_run["async"]
    check_subscribe(ok(a, "subscribe"), 43, fetch_image, verify=tls_verify)
    h = ok(a, "handle")
    assert h["first"]["kind"] in ("Queued", "InProgress")
    assert h["result"]["seed"] == 6 and h["by_id"] == h["result"]
    assert h["again"]["kind"] == "Completed" and h["again"]["logs"][-1] == "Completed"
    c = ok(a, "cancel")
    assert [(f["kind"], f["error_type"]) for f in c["finals"]] == [("Completed", "client_cancelled")] * 2
    assert (c["result"]["status_code"], c["result"]["error_type"]) == (499, "client_cancelled")
    run = ok(a, "run")
    assert run["seed"] == 10
    check_images(run, fetch_image, verify=tls_verify)


def test_uploads_over_tls(env_run, tls_server, face_png, fetch_image, tls_verify):
    check_uploads(env_run, tls_server, face_png, fetch_image, verify=tls_verify)


# --- plain HTTP, URL formats set in code ----------------------------------------------------------------------------
def test_plain_http_with_url_formats_set_in_code(code_run, live_server, fetch_image):
    assert code_run["config"] == {"run": f"{live_server.url}/run/", "queue": f"{live_server.url}/"}
    sync = code_run["sync"]
    check_subscribe(ok(sync, "subscribe"), 42, fetch_image)
    assert ok(sync, "handle")["by_id"]["seed"] == 5
    check_cancel(ok(sync, "cancel"))
    check_images(ok(sync, "run"), fetch_image, count=2)
    assert sync["invalid"]["status_code"] == 422


def test_uploads_over_plain_http(code_run, live_server, face_png, fetch_image):
    check_uploads(code_run, live_server, face_png, fetch_image, verify=True)


def check_uploads(report: dict, server, face_png: Path, fetch_image, verify) -> None:  # noqa: ANN001
    uploads = report["uploads"]
    expected_names = {"upload_file": "face.png", "upload_bytes": "bytes.png", "upload_initiate": "initiated.png"}
    for name, file_name in expected_names.items():
        url = ok(uploads, name)
        assert url.startswith(f"{server.url}/files/") and url.endswith(f"/{file_name}"), url
        response = httpx.get(url, verify=verify)
        assert response.status_code == 200 and response.content == face_png.read_bytes()
    # The default path is the token flow; repository="fal" the initiate flow. Neither fell back (no warning).
    lines = report["_access_log"]
    assert sum(line.startswith("POST /storage/auth/token?storage_type=fal-cdn-v3 ") for line in lines) == 1
    assert sum(line.startswith("POST /files/upload ") for line in lines) == 2
    assert any(line.startswith("POST /storage/upload/initiate?storage_type=gcs ") for line in lines)
    assert any(re.match(r"PUT /storage/upload/[\w-]+\?sig=\w+ HTTP/1.1\" 200", line) for line in lines)
    assert "Upload failed" not in report["_stderr"]
    # The uploaded URL works as image_archive_url.
    sub = ok(uploads, "subscribe_uploaded")
    assert sub["seed"] == 77
    check_images(sub, fetch_image, verify)
