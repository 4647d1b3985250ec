"""``make cluster`` (tools/cluster.py): up, serving through either replica, and gone after SIGTERM."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

import reaper
import substrate
from helpers import image_bytes, make_face

CLUSTER = Path(__file__).resolve().parents[2] / "tools" / "cluster.py"
APP = "fal-ai/photomaker"
PNG = b"\x89PNG\r\n\x1a\n"


def launch(directory: Path, *args: str) -> subprocess.Popen:
    log = open(directory.parent / f"{directory.name}.out", "ab")
    return subprocess.Popen([sys.executable, str(CLUSTER), "--dir", str(directory), *args],
                            env={**os.environ, "PHOTOMAKER_LEASE_SECONDS": "3"}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def output(directory: Path) -> str:
    return (directory.parent / f"{directory.name}.out").read_text(errors="replace")


def test_a_failed_start_stops_everything_with_one_clear_line(tmp_path):
    directory = tmp_path / "cluster"
    process = launch(directory, "--replicas", "1", "--workers", "1", "--ready-timeout", "0",
                     "--port", str(substrate.free_port()))
    try:
        assert process.wait(240) == 1, output(directory)
    finally:
        reaper.kill_group(process)
    lines = [line for line in output(directory).splitlines() if line.startswith("cluster: ")]
    assert len(lines) >= 1, output(directory)
    assert "cluster stopped" in output(directory)
    assert reaper.processes_mentioning(str(tmp_path)) == []
    assert not (directory / "cluster.json").exists()


def test_cluster_serves_through_both_replicas_and_sigterm_stops_it_all(tiny_root, tmp_path):
    directory = tmp_path / "cluster"
    (directory / "models").mkdir(parents=True)
    (directory / "models" / "tiny").symlink_to(tiny_root.resolve(), target_is_directory=True)  # not rebuilt
    process = launch(directory, "--replicas", "2", "--workers", "1", "--port", str(substrate.free_port()))
    try:
        description_path = directory / "cluster.json"
        deadline = time.monotonic() + 400
        while not description_path.exists():
            assert process.poll() is None, output(directory)
            assert time.monotonic() < deadline, output(directory)
            time.sleep(0.5)
        description = json.loads(description_path.read_text())
        first, second = description["replicas"]["api1"], description["replicas"]["api2"]
        assert first != second
        assert description["api_key"] in output(directory) and first in output(directory)
        assert "RANDOM-WEIGHT DEMO" in output(directory)
        headers = {"Authorization": f"Key {description['api_key']}"}

        photo = "data:image/png;base64," + base64.b64encode(image_bytes(make_face(0))).decode()
        body = {"prompt": "a photo of a man img", "image_archive_url": photo, "num_inference_steps": 4,
                "image_size": {"width": 64, "height": 64}, "seed": 3}
        submitted = httpx.post(f"{first}/{APP}", json=body, headers=headers, timeout=30)
        assert submitted.status_code == 200, submitted.text
        request_id = submitted.json()["request_id"]
        assert httpx.post(f"{first}/{APP}", json=body, timeout=30).status_code == 401  # the key is required

        status_url = f"{second}/{APP}/requests/{request_id}/status"
        deadline = time.monotonic() + 300
        while (status := httpx.get(status_url, headers=headers, timeout=30).json())["status"] != "COMPLETED":
            assert time.monotonic() < deadline, status
            time.sleep(0.3)
        result = httpx.get(f"{second}/{APP}/requests/{request_id}", headers=headers, timeout=30)
        assert result.status_code == 200, result.text
        url = result.json()["images"][0]["url"]
        image = httpx.get(url, timeout=30)
        assert image.status_code == 200 and image.content.startswith(PNG), (url, image.status_code)
        pids = description["pids"]
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            returncode = process.wait(120)
        finally:
            reaper.kill_group(process)
    assert returncode == 0, output(directory)
    assert "cluster stopped" in output(directory)
    for name, pid in pids.items():
        assert not _alive(pid), f"{name} ({pid}) still runs"
    assert reaper.processes_mentioning(str(tmp_path)) == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
