"""A real ``photomaker serve --tiny`` in a subprocess, for HTTP, client, browser and durability tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

API_KEY = "test-key-alice"
OTHER_KEY = "test-key-bob"
APP = "fal-ai/photomaker"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    def __init__(self, data_dir: Path, tiny_root: Path, *, tls: bool = False, env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.tls = tls
        self.extra_args = extra_args or []
        # API_KEY is the data dir's local key (what the web page and CLI pick up); OTHER_KEY is configured.
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key_file = self.data_dir / "api-key"
        if not key_file.exists():
            key_file.write_text(API_KEY + "\n")
            key_file.chmod(0o600)
        self.env = {**os.environ, "PHOTOMAKER_API_KEYS": OTHER_KEY,
                    "PHOTOMAKER_FETCH_ALLOW": "127.0.0.1", "PHOTOMAKER_LEASE_SECONDS": "3", **(env or {})}
        models = self.data_dir / "models"
        models.mkdir(parents=True, exist_ok=True)
        if not (models / "tiny").exists():
            (models / "tiny").symlink_to(Path(tiny_root).resolve(), target_is_directory=True)
        self.process: subprocess.Popen | None = None
        self.log_path = self.data_dir / "server.log"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def cert(self) -> Path:
        return self.data_dir / "tls" / "cert.pem"

    def start(self, wait_ready: bool = True, timeout: float = 120) -> LiveServer:
        args = [sys.executable, "-m", "photomaker_server.cli", "serve", "--tiny", "--data-dir", str(self.data_dir),
                "--port", str(self.port), *(["--tls"] if self.tls else []), *self.extra_args]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                r = self.client().get("/ready" if wait_ready else "/health", timeout=2)
                if r.status_code == 200:
                    return self
            except (httpx.HTTPError, OSError):  # not listening yet, or (--tls) its certificate not written yet
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()}")

    def client(self, key: str | None = API_KEY, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Key {key}"} if key else {}
        verify = ssl.create_default_context(cafile=str(self.cert)) if self.tls else True
        return httpx.Client(base_url=self.url, headers=headers, verify=verify, timeout=30, **kwargs)

    def printed_login_link(self) -> str:
        """The one-time login link ``serve`` printed at start-up (the last one in the log)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        links = re.findall(r"(https?://\S+/\?token=\S+)", text)
        assert links, f"no login link in the server's output:\n{self.log()}"
        return links[-1]

    def login_link(self) -> str:
        """A fresh one-time login link, from ``photomaker login-link`` as an operator would get one."""
        args = [sys.executable, "-m", "photomaker_server.cli", "login-link", "--data-dir", str(self.data_dir),
                "--port", str(self.port), *(["--tls"] if self.tls else [])]
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-20000:] if self.log_path.exists() else ""

    def worker_pids(self) -> list[int]:
        """PIDs of the spawned worker process(es) (children of the server process)."""
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.process.pid)], capture_output=True, text=True)
        pids = []
        for pid in out.stdout.split():
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes() if Path(f"/proc/{pid}/cmdline").exists() else b""
            if b"multiprocessing" in cmd or b"spawn" in cmd:
                pids.append(int(pid))
        return pids

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    def kill(self) -> None:
        """kill -9 the whole process group (server and worker)."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def small_request(image_url: str, **fields) -> dict:
    """A request that runs in well under a second on the tiny model."""
    body = {"prompt": "a photo of a man img, film grain", "image_archive_url": image_url, "num_inference_steps": 4,
            "image_size": {"width": 64, "height": 64}, "seed": 1}
    body.update(fields)
    return body
