"""The worker's heartbeat file: what the API reports in ``/ready``, ``/health`` and ``/metrics``.

The worker process is the only writer; the API reads it. A file (written atomically) rather than a table keeps
the job store's contract small; with several workers each writes its own ``workers/<id>.json``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: Upper bounds (seconds) of the inference-time histogram buckets.
INFERENCE_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
HEARTBEAT_S = 2.0
STALE_AFTER_S = 15.0


@dataclass
class WorkerStatus:
    worker_id: str
    pid: int
    state: str = "starting"  # starting | loading | ready | error
    detail: str = ""
    demo_model: bool = False
    device: str = ""
    loaded_bases: list[str] = field(default_factory=list)
    updated_at: float = 0.0
    steps_total: int = 0
    step_seconds_sum: float = 0.0
    inference_count: int = 0
    inference_seconds_sum: float = 0.0
    inference_buckets: list[int] = field(default_factory=lambda: [0] * len(INFERENCE_BUCKETS))
    id_cache_hits: int = 0
    id_cache_misses: int = 0

    def observe_inference(self, seconds: float) -> None:
        self.inference_count += 1
        self.inference_seconds_sum += seconds
        for i, bound in enumerate(INFERENCE_BUCKETS):
            if seconds <= bound:
                self.inference_buckets[i] += 1

    @property
    def fresh(self) -> bool:
        return time.time() - self.updated_at < STALE_AFTER_S


def workers_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "workers"


def write_status(data_dir: Path, status: WorkerStatus) -> None:
    status.updated_at = time.time()
    directory = workers_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{status.worker_id}.tmp"
    tmp.write_text(json.dumps(asdict(status)))
    os.replace(tmp, directory / f"{status.worker_id}.json")


def read_statuses(data_dir: Path) -> list[WorkerStatus]:
    statuses = []
    directory = workers_dir(data_dir)
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            statuses.append(WorkerStatus(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return statuses


def remove_status(data_dir: Path, worker_id: str) -> None:
    (workers_dir(data_dir) / f"{worker_id}.json").unlink(missing_ok=True)


def forget_exited(data_dir: Path, pid: int) -> None:
    """Drop the heartbeat of a worker process of this host that is known to have exited.

    A worker killed with SIGKILL cannot remove its own file, which would otherwise stay "fresh" (and "ready")
    for ``STALE_AFTER_S`` while its replacement is still loading the model.
    """
    prefix = f"{socket.gethostname()}-{pid}-"
    for status in read_statuses(data_dir):
        if status.pid == pid and status.worker_id.startswith(prefix):
            remove_status(data_dir, status.worker_id)
