"""Scale-out across "machines": every process in its own network namespace, sharing only PostgreSQL and S3.

Hosts ``pg``, ``s3``, ``api1``, ``api2``, ``w1``, ``w2`` and ``client`` on a private bridge; each service process
has its own data directory (nothing shared on disk but the read-only tiny model the workers link to, as
LiveServer does). The official Python client, in the ``client`` namespace, submits through api1 and follows the
same request ids through api2; one worker is SIGKILLed while it runs a job; every job must still complete, and
every image URL must download from the test runner and from the client namespace. Afterwards nothing runs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import httpx
import pytest

import netns
import reaper
import substrate
from helpers import image_bytes, make_face

API_KEY = "multi-host-key"
PORT = 8000
JOBS = 6
STEPS = 25  # a few seconds per job even on a busy CPU: both workers are seen busy, one dies mid-job
SIZE = 64
BUCKET = "photomaker-multi"
SCRIPT = Path(__file__).parent / "fal_follow.py"
PNG = b"\x89PNG\r\n\x1a\n"


class Deployment:
    """The running system: hosts, service processes and the two stores."""

    def __init__(self, net: netns.Network, root: Path, tiny_root: Path) -> None:
        self.net, self.root, self.tiny_root = net, root, tiny_root
        self.hosts = {name: net.add_host(name) for name in ("pg", "s3", "api1", "api2", "w1", "w2", "client")}
        self.processes: dict = {}
        self.logs: dict[str, Path] = {}
        self.pg = substrate.start_postgres(root / "pg", host=self.hosts["pg"].ip, netns=self.hosts["pg"].ns)
        self.s3 = substrate.start_seaweed(root / "s3", ip=self.hosts["s3"].ip, netns=self.hosts["s3"].ns)
        self.s3.bucket(BUCKET)
        self.env = {**os.environ, **self.s3.env(), "PHOTOMAKER_API_KEYS": API_KEY, "PHOTOMAKER_LEASE_SECONDS": "3",
                    "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}

    def url(self, name: str) -> str:
        return f"http://{self.hosts[name].ip}:{PORT}"

    def start(self, name: str, args: list[str]) -> None:
        """``photomaker ARGS`` on host ``name`` with its own data dir; only the two stores' URLs are shared."""
        data_dir = self.root / name
        data_dir.mkdir(exist_ok=True)
        self.logs[name] = data_dir / "process.log"
        command = [sys.executable, "-m", "photomaker_server.cli", *args, "--data-dir", str(data_dir),
                   "--database-url", self.pg.url, "--storage-url", f"s3://{BUCKET}/multi-host"]
        self.processes[name] = self.hosts[name].run(command, env=self.env, log_path=self.logs[name], cwd=data_dir)

    def start_services(self) -> None:
        for name in ("w1", "w2"):
            models = self.root / name / "models"
            models.mkdir(parents=True)  # the tiny model by reference, not rebuilt per worker (as LiveServer does)
            (models / "tiny").symlink_to(self.tiny_root.resolve(), target_is_directory=True)
            self.start(name, ["worker", "--tiny"])
        for name in ("api1", "api2"):
            ip = self.hosts[name].ip
            self.start(name, ["serve", "--no-worker", "--tiny", "--host", ip, "--port", str(PORT),
                              "--public-base-url", self.url(name)])

    def diagnostics(self) -> str:
        parts = []
        for name, path in self.logs.items():
            text = path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"
            parts.append(f"--- {name} (exit {self.processes[name].poll()}) {path}\n{text}")
        return "\n".join(parts)

    def wait_ready(self, timeout: float = 300) -> None:
        pending = {"api1", "api2"}
        deadline = time.monotonic() + timeout
        while pending:
            for name, process in self.processes.items():
                assert process.poll() is None, f"{name} exited early\n{self.diagnostics()}"
            for name in list(pending):
                try:
                    if httpx.get(self.url(name) + "/ready", timeout=2, trust_env=False).status_code == 200:
                        pending.discard(name)
                except httpx.HTTPError:
                    pass
            assert time.monotonic() < deadline, f"not ready: {pending}\n{self.diagnostics()}"
            time.sleep(0.5)

    def wait_in_progress(self, ids: list[str], count: int, timeout: float = 300) -> list[str]:
        """Poll api2 until ``count`` of the requests are IN_PROGRESS at the same time; returns those ids."""
        headers = {"Authorization": f"Key {API_KEY}"}
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url("api2"), headers=headers, timeout=10, trust_env=False) as client:
            while time.monotonic() < deadline:
                states = {i: client.get(f"/fal-ai/photomaker/requests/{i}/status").json()["status"] for i in ids}
                running = [i for i, state in states.items() if state == "IN_PROGRESS"]
                if len(running) >= count:
                    return running
                assert list(states.values()).count("COMPLETED") <= len(ids) - count, states  # missed the moment
                time.sleep(0.05)
        raise AssertionError(f"never {count} requests in progress at once\n{self.diagnostics()}")

    def health(self, name: str) -> dict:
        return httpx.get(self.url(name) + "/health", timeout=5, trust_env=False).json()

    def fal(self, *args: str, timeout: float = 600) -> object:
        """The official client, run in the client namespace; returns its JSON output."""
        done = self.hosts["client"].call([sys.executable, str(SCRIPT), *args], env={**os.environ, "FAL_KEY": API_KEY},
                                         timeout=timeout)
        assert done.returncode == 0, f"{done.stderr[-3000:]}\n{self.diagnostics()}"
        return json.loads(done.stdout)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            reaper.stop_group(process, timeout=15)
        self.s3.stop()
        self.pg.stop()


@pytest.fixture(scope="module")
def deployment(netns_ready, tiny_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("multi-host")
    with netns.Network() as net:
        system = Deployment(net, root, tiny_root)
        try:
            system.start_services()
            system.wait_ready()
            yield system
        finally:
            system.stop()
            left = {name: host.pids() for name, host in system.hosts.items() if host.pids()}
    assert left == {}, f"processes still running in the namespaces: {left}"
    assert net.leftovers() == []
    assert reaper.processes_mentioning(str(root)) == []


@pytest.fixture(scope="module")
def face(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("face") / "face.png"
    path.write_bytes(image_bytes(make_face(0)))
    return path


def test_both_replicas_see_both_workers(deployment):
    for name in ("api1", "api2"):
        assert httpx.get(deployment.url(name) + "/ready", timeout=5, trust_env=False).status_code == 200
    # Both replicas read the same worker registry (PostgreSQL); the shape of /health is the API's business,
    # so only "both workers are listed, identically, by both replicas" is checked here.
    first, second = deployment.health("api1"), deployment.health("api2")
    assert len(first["workers"]) == 2, first
    assert len(second["workers"]) == 2, second


def test_jobs_survive_a_killed_worker_and_download_everywhere(deployment, face):
    ids = deployment.fal("submit", deployment.url("api1"), str(face), str(JOBS), str(STEPS), str(SIZE))
    assert len(set(ids)) == JOBS

    # Two requests in progress at once, two workers that each run one job: w1 is in the middle of one. (Watched
    # here rather than by the client, so that the kill follows the observation within milliseconds.)
    running = deployment.wait_in_progress(ids, 2)
    health_before = deployment.health("api2")
    w1 = deployment.hosts["w1"]
    assert w1.pids(), "w1 is not running"
    for pid in w1.pids():
        os.kill(pid, 9)
    deployment.processes["w1"].wait(10)
    assert w1.wait_empty()

    outcome = deployment.fal("follow", deployment.url("api2"), *ids)
    assert sorted(outcome) == sorted(ids)
    urls = []
    for request_id, got in outcome.items():
        assert got["status"]["error"] is None, (request_id, got, running, health_before)
        images = got["result"]["images"]
        assert len(images) == 1 and (images[0]["width"], images[0]["height"]) == (SIZE, SIZE), got["result"]
        urls.append(images[0]["url"])
    assert len(set(urls)) == JOBS

    # From the test runner (root namespace, over the bridge) ...
    for url in urls:
        try:
            response = httpx.get(url, timeout=30, trust_env=False)
        except httpx.HTTPError as exc:
            pytest.fail(f"cannot download {url}: {exc!r}")
        assert response.status_code == 200 and response.content.startswith(PNG), (url, response.status_code)
    # ... and from the client namespace, another "machine".
    fetch = ("import sys, json, httpx\n"
             "print(json.dumps([[r.status_code, r.content[:8].hex()] for r in "
             "(httpx.get(u, timeout=30) for u in sys.argv[1:])]))")
    done = deployment.hosts["client"].call([sys.executable, "-c", fetch, *urls], env=os.environ)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == [[200, PNG.hex()]] * JOBS

    # Following through the other replica gives the same answers (same ids, same results). URLs are rendered at
    # read time from the answering replica's --public-base-url (here each replica has its own), and a presigned
    # URL's query string may differ from one answer to the next: URLs are compared as paths below that base.
    again = deployment.fal("follow", deployment.url("api1"), *ids)
    assert {i: relative_urls(again[i]["result"], deployment.url("api1")) for i in ids} == \
        {i: relative_urls(outcome[i]["result"], deployment.url("api2")) for i in ids}


def relative_urls(result: dict, base: str) -> dict:
    """The result with each image URL cut to its path below ``base`` (which it must start with), query dropped."""
    images = []
    for image in result["images"]:
        url = image["url"].split("?", 1)[0]
        assert url.startswith(base + "/"), (url, base)
        images.append({**image, "url": url[len(base):]})
    return {**result, "images": images}
