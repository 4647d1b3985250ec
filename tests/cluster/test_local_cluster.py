"""``make cluster`` (tools/cluster.py) as a fault lab, with real processes: a worker, a replica and PostgreSQL killed
through ``cluster.py ctl``; the cluster heals, every accepted job completes, every result URL (the front
address's) downloads; a stop leaves nothing behind, an abnormal stop deletes nothing, ``clean`` deletes the data."""

from __future__ import annotations

import base64
import json
import os
import signal
import time

import httpx

import reaper
import substrate
from helpers import image_bytes, make_face
from cluster_lab import APP, PNG, Lab

PHOTO = "data:image/png;base64," + base64.b64encode(image_bytes(make_face(0))).decode()


def body(seed: int, steps: int = 6) -> dict:
    return {"prompt": "a photo of a man img", "image_archive_url": PHOTO, "num_inference_steps": steps,
            "image_size": {"width": 64, "height": 64}, "seed": seed}


def submit(front: str, headers: dict, request: dict, timeout: float = 120) -> str:
    """Through the front address; a 503 while PostgreSQL restarts is retried (the job is not accepted then)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.post(f"{front}/{APP}", json=request, headers=headers, timeout=30)
        if answer.status_code == 200:
            return answer.json()["request_id"]
        assert answer.status_code == 503 and time.monotonic() < deadline, (answer.status_code, answer.text)
        time.sleep(0.5)


def wait_completed(front: str, headers: dict, request_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = httpx.get(f"{front}/{APP}/requests/{request_id}/status", headers=headers, timeout=30)
            if answer.status_code in (200, 202) and answer.json()["status"] == "COMPLETED":
                return answer.json()
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, request_id
        time.sleep(0.3)


def assert_result_downloads(front: str, headers: dict, request_id: str) -> list[str]:
    status = wait_completed(front, headers, request_id)
    assert not status.get("error"), status
    result = httpx.get(f"{front}/{APP}/requests/{request_id}", headers=headers, timeout=30)
    assert result.status_code == 200, result.text
    urls = [image["url"] for image in result.json()["images"]]
    for url in urls:
        assert url.startswith(front + "/"), url  # the front address, not the replica that rendered it
        image = httpx.get(url, timeout=30)
        assert image.status_code == 200 and image.content.startswith(PNG), (url, image.status_code)
    return urls


def test_a_failed_start_stops_everything_with_one_clear_line(tiny_root, tmp_path):
    lab = Lab(tmp_path / "cluster", tiny_root)
    lab.launch("--replicas", "1", "--workers", "1", "--ready-timeout", "0", "--port", str(substrate.free_port()))
    try:
        assert lab.process.wait(240) == 1, lab.output()
    finally:
        reaper.kill_group(lab.process)
    lines = [line for line in lab.output().splitlines() if line.startswith("cluster: ")]
    assert len(lines) == 1, lab.output()
    assert "cluster stopped" in lab.output()
    assert reaper.processes_mentioning(str(tmp_path)) == []
    assert lab.leftovers([]) == []
    assert lab.run("clean").returncode == 0


def test_the_lab_heals_from_kills_keeps_its_data_and_leaves_nothing_behind(tiny_root, tmp_path):
    lab = Lab(tmp_path / "cluster", tiny_root, env={"PHOTOMAKER_LEASE_SECONDS": "3"})
    lab.launch("--replicas", "2", "--workers", "2", "--port", str(substrate.free_port()))
    try:
        description = lab.wait_up()
        front, key = description["front"], description["api_key"]
        headers = {"Authorization": f"Key {key}"}
        assert f"{front}/" in lab.output() and key in lab.output() and "RANDOM-WEIGHT DEMO" in lab.output()
        assert httpx.post(f"{front}/{APP}", json=body(0), timeout=30).status_code == 401  # the key is required

        accepted = [submit(front, headers, body(seed, steps=30)) for seed in range(3)]
        time.sleep(2)  # both workers busy: worker1 dies in the middle of a job
        lab.ctl("kill", "worker1")
        accepted.append(submit(front, headers, body(10)))
        lab.ctl("kill", "api1")
        accepted += [submit(front, headers, body(seed)) for seed in (11, 12, 13)]  # the front routes around it
        lab.ctl("kill", "postgres", "--for", "2")
        accepted.append(submit(front, headers, body(14)))  # 503 while it is down, accepted once it is back

        rows = lab.wait_healed()
        assert all(rows[name]["restarts"] >= 1 for name in ("worker1", "api1", "postgres")), rows
        urls = [url for request_id in accepted for url in assert_result_downloads(front, headers, request_id)]
        assert len(urls) == len(accepted)
        for name in ("worker1", "api1", "postgres"):
            assert f"{name} killed (SIGKILL) on request" in lab.output()
            assert f"{name} is up" in lab.output()
        # Exactly the jobs accepted, nothing else (a retried submit would show as an extra job).
        assert sorted(row[0] for row in lab.query("SELECT id FROM jobs")) == sorted(accepted)

        # A process that dies on its own (not through ctl) is reported and restarted too.
        victim = lab.status()["worker2"]["pid"]
        os.killpg(victim, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while "worker2 exited (killed by SIGKILL); restarting" not in lab.output():
            assert time.monotonic() < deadline, lab.output()
            time.sleep(0.3)
        assert lab.wait_healed()["worker2"]["pid"] != victim

        # An abnormal stop: the lab itself is killed. Its processes are orphans now; nothing is deleted.
        os.killpg(lab.process.pid, signal.SIGKILL)  # its group is itself: every service runs in its own session
        lab.process.wait(10)
    except BaseException:
        lab.stop()
        raise
    # The next start finds the orphans, stops them, and carries on with the same data, key and addresses.
    lab.launch("--replicas", "2", "--workers", "2", "--port", front.rsplit(":", 1)[1])
    try:
        again = lab.wait_up()
        assert "still runs from a previous start that did not stop cleanly" in lab.latest_output()
        assert again["api_key"] == key and again["front"] == front
        for url in urls:  # files and jobs from before are still there
            assert httpx.get(url, timeout=30).content.startswith(PNG)
        assert_result_downloads(front, headers, accepted[0])
        s3_ports = [int(again["s3_endpoint"].rsplit(":", 1)[1])] + _weed_ports(lab)
    finally:
        returncode = lab.stop()
    assert returncode == 0, lab.output()
    assert "cluster stopped" in lab.output()
    assert reaper.processes_mentioning(str(tmp_path)) == []
    assert lab.leftovers(s3_ports) == []
    assert "warning" not in lab.output().lower(), lab.output()
    assert (lab.directory / "postgres" / "pgdata").exists()  # kept for the next start

    cleaned = lab.run("clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert sorted(p.name for p in lab.directory.iterdir()) == ["models"]


def _weed_ports(lab: Lab) -> list[int]:
    return json.loads((lab.directory / "lab.json").read_text())["s3_ports"]
