"""``photomaker generate --server``, ``photomaker status`` and ``photomaker cancel`` against live servers, run as a
user runs them (a subprocess; the API key from --key, the environment or the data dir)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from helpers import image_bytes, make_face
from live_server import API_KEY, small_request

pytestmark = pytest.mark.clients
APP = "fal-ai/photomaker"
SMALL = ["--steps", "3", "--width", "64", "--height", "96"]


def photomaker(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("PHOTOMAKER_KEY", "FAL_KEY", "SSL_CERT_FILE",
                                                              "PHOTOMAKER_SERVER")}
    return subprocess.run([sys.executable, "-m", "photomaker_server.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=180, env={**base, **(env or {})})


@pytest.fixture
def photos(tmp_path) -> list[str]:
    paths = []
    for i in range(2):
        path = tmp_path / f"face{i}.png"
        make_face(i).save(path)
        paths.append(str(path))
    return paths


def outputs(done: subprocess.CompletedProcess, cwd: Path) -> tuple[list[Path], dict]:
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    return [cwd / line for line in lines[:-1]], json.loads(lines[-1])


def status_of(live_server, request_id: str) -> dict:
    with live_server.client() as client:
        return client.get(f"/{APP}/requests/{request_id}/status", params={"logs": 1}).json()


def test_generate_with_loose_photos(tmp_path, photos, live_server):
    done = photomaker("generate", "--images", *photos, "--prompt", "a photo of a man img", *SMALL, "--seed", "11",
                      "--num-images", "2", "--out", "out", "--server", live_server.url, "--key", API_KEY, cwd=tmp_path)
    files, report = outputs(done, tmp_path)
    assert report["seed"] == 11 and report["demo_model"] is True and report["timings"]["total"] > 0
    assert [f.name for f in files] == ["photomaker-11-0.png", "photomaker-11-1.png"]
    for f in files:
        with Image.open(f) as image:
            assert image.size == (64, 96) and image.format == "PNG"
    assert files[0].read_bytes() != files[1].read_bytes()
    assert "random-weight demo model" in done.stderr  # the demo warning reaches the user, as in-process
    # Both photos went up and were used: the first as image_archive_url, all of them as image_urls.
    logs = [line["message"] for line in status_of(live_server, report["request_id"])["logs"]]
    assert "Fetching the photos (2 files)" in logs and "Encoding 2 ID photos" in logs
    assert "Step 3/3" in logs


def test_generate_with_archive_initial_image_and_jpeg(tmp_path, live_server):
    archive = tmp_path / "faces.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.writestr(f"person/{i}.jpg", image_bytes(make_face(i), "JPEG"))
    start = tmp_path / "start.png"
    make_face(9, size=(64, 96)).save(start)
    # The key comes from the environment this time (PHOTOMAKER_KEY).
    done = photomaker("generate", "--archive", str(archive), "--initial-image", str(start), "--strength", "0.6",
                      "--prompt", "a photo of a man img", *SMALL, "--seed", "5", "--output-format", "jpeg",
                      "--style", "Cinematic", "--out", "out", "--server", live_server.url, cwd=tmp_path,
                      env={"PHOTOMAKER_KEY": API_KEY})
    files, report = outputs(done, tmp_path)
    assert [f.name for f in files] == ["photomaker-5-0.jpg"]
    with Image.open(files[0]) as image:
        assert image.format == "JPEG" and image.size == (64, 96)
    logs = [line["message"] for line in status_of(live_server, report["request_id"])["logs"]]
    assert "Encoding 3 ID photos" in logs


def test_generate_prints_the_servers_validation_message(tmp_path, photos, live_server):
    done = photomaker("generate", "--images", photos[0], "--prompt", "a photo of a man", "--server", live_server.url,
                      "--key", API_KEY, cwd=tmp_path)
    assert done.returncode == 2
    assert "error: prompt: the prompt must contain the trigger word 'img'" in done.stderr
    assert "(HTTP 422)" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_generate_reports_a_failed_request(tmp_path, live_server):
    not_a_photo = tmp_path / "notes.png"
    not_a_photo.write_text("just text")
    done = photomaker("generate", "--images", str(not_a_photo), "--prompt", "a photo of a man img", *SMALL,
                      "--server", live_server.url, "--key", API_KEY, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: request ") and " failed: " in last and last.endswith("(input_error)")
    assert "neither a zip archive nor an image" in last


def test_key_resolution_and_a_refused_key(tmp_path, photos, live_server):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "api-key").write_text(API_KEY + "\n")
    args = ["generate", "--images", photos[0], "--prompt", "a photo of a man img", *SMALL, "--seed", "3",
            "--server", live_server.url]
    _, report = outputs(photomaker(*args, "--data-dir", str(data_dir), cwd=tmp_path), tmp_path)  # the key file
    assert report["seed"] == 3
    _, report = outputs(photomaker(*args, cwd=tmp_path, env={"FAL_KEY": API_KEY}), tmp_path)  # FAL_KEY
    assert report["seed"] == 3
    # --key wins over the environment: a wrong --key is refused even with a good FAL_KEY.
    refused = photomaker(*args, "--key", "wrong", cwd=tmp_path, env={"FAL_KEY": API_KEY})
    assert refused.returncode == 2 and "error: the server refused the API key" in refused.stderr
    missing = photomaker(*args, "--data-dir", str(tmp_path / "empty"), cwd=tmp_path)
    assert missing.returncode == 2 and "error: no API key" in missing.stderr


def test_status_and_cancel(tmp_path, photos, live_server):
    # A finished request: state, logs, then its images and seed.
    done = photomaker("generate", "--images", photos[0], "--prompt", "a photo of a man img", *SMALL, "--seed", "8",
                      "--server", live_server.url, "--key", API_KEY, cwd=tmp_path)
    _, report = outputs(done, tmp_path)
    rid = report["request_id"]
    done = photomaker("status", rid, "--server", live_server.url, "--key", API_KEY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith(f"{rid}: COMPLETED in ")
    assert any(line.endswith("INFO   Step 3/3") for line in lines)
    assert lines[-2].startswith(f"{live_server.url}/files/") and json.loads(lines[-1]) == {"seed": 8}

    # A long request: cancel it (server from PHOTOMAKER_SERVER, key from FAL_KEY), then it reads as cancelled.
    with live_server.client() as client:
        upload = client.post("/storage/upload/multipart", files={"file": ("f.png", image_bytes(make_face(0)))}).json()
        rid = client.post(f"/{APP}", json=small_request(upload["url"], num_inference_steps=100,
                                                        image_size={"width": 512, "height": 512})).json()["request_id"]
    env = {"PHOTOMAKER_SERVER": live_server.url, "FAL_KEY": API_KEY}
    done = photomaker("cancel", rid, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{rid}: cancellation requested"
    for _ in range(200):
        if status_of(live_server, rid)["status"] == "COMPLETED":
            break
        time.sleep(0.1)
    done = photomaker("status", rid, cwd=tmp_path, env=env)
    assert done.stdout.splitlines()[0] == f"{rid}: COMPLETED with error: Request cancelled (client_cancelled)"
    again = photomaker("cancel", rid, cwd=tmp_path, env=env)
    assert again.returncode == 1 and "already completed" in again.stderr
    unknown = photomaker("status", "no-such-request", cwd=tmp_path, env=env)
    assert unknown.returncode == 2 and "error: Request no-such-request not found (HTTP 404)" in unknown.stderr

    # `photomaker status ID | head -1`: the reader goes away before the output is written; no traceback.
    base = {k: v for k, v in os.environ.items() if k not in ("PHOTOMAKER_KEY", "FAL_KEY", "PHOTOMAKER_SERVER")}
    process = subprocess.Popen([sys.executable, "-m", "photomaker_server.cli", "status", rid], cwd=tmp_path,
                               env={**base, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141 and "Traceback" not in stderr and "Exception ignored" not in stderr, stderr


def test_generate_over_tls_trusts_the_certificate_from_ssl_cert_file(tmp_path, photos, tls_server):
    args = ["generate", "--images", photos[0], "--prompt", "a photo of a man img", *SMALL, "--seed", "4",
            "--server", tls_server.url, "--key", API_KEY]
    untrusted = photomaker(*args, cwd=tmp_path)
    assert untrusted.returncode == 2 and "SSL_CERT_FILE" in untrusted.stderr and "Traceback" not in untrusted.stderr
    files, report = outputs(photomaker(*args, cwd=tmp_path, env={"SSL_CERT_FILE": str(tls_server.cert)}), tmp_path)
    assert report["seed"] == 4 and len(files) == 1 and files[0].is_file()


def test_ctrl_c_cancels_the_request(tmp_path, photos, live_server):
    # 512px x 100 steps: long enough (many seconds even on an idle machine) to still be running at the Ctrl-C.
    args = ["generate", "--images", photos[0], "--prompt", "a photo of a man img", "--steps", "100", "--width", "512",
            "--height", "512", "--server", live_server.url, "--key", API_KEY]
    # Ctrl-C as a terminal delivers it: a test run started in the background (nohup ... &) ignores SIGINT, and a
    # child would inherit that, so the child gets the default disposition back.
    process = subprocess.Popen([sys.executable, "-m", "photomaker_server.cli", *args], cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = process.stderr.readline()  # "request <id> submitted to <server>"
    assert first.startswith("request ") and " submitted to " in first, first
    rid = first.split()[1]
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and f"cancelling request {rid}" in err
    for _ in range(300):
        status = status_of(live_server, rid)
        if status["status"] == "COMPLETED":
            break
        time.sleep(0.1)
    assert (status["status"], status.get("error_type")) == ("COMPLETED", "client_cancelled")
