"""What a worker reports about itself with each heartbeat: its state and cumulative counters.

The worker is the only writer of its own row in the job database's worker registry; ``/health``, ``/ready`` and
``/metrics`` on any API replica read every worker's row, so they describe the whole cluster.
"""

from __future__ import annotations

import socket
from dataclasses import asdict, dataclass, field
from typing import Any

from .protocol import JobStore

#: How often a worker writes its row; a row older than STALE_AFTER_S is a worker that is gone.
HEARTBEAT_S = 2.0
STALE_AFTER_S = 15.0
#: Upper bounds (seconds) of the inference-time histogram buckets.
INFERENCE_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
#: A worker's life: starting → loading (the model) → ready, or error (the model could not be loaded);
#: stopping once it was asked to stop (it finishes or hands back its job, then leaves the registry).
WORKER_STATES = ("starting", "loading", "ready", "error", "stopping")


@dataclass
class WorkerCounters:
    """Cumulative since the worker started; summed over workers by ``/metrics``."""

    steps_total: int = 0
    step_seconds_sum: float = 0.0
    inference_count: int = 0
    inference_seconds_sum: float = 0.0
    #: Cumulative histogram: entry i counts inferences that took at most INFERENCE_BUCKETS[i] seconds.
    inference_buckets: list[int] = field(default_factory=lambda: [0] * len(INFERENCE_BUCKETS))
    id_cache_hits: int = 0
    id_cache_misses: int = 0
    jobs_done: int = 0
    #: Outages of the job database this worker has seen end (``/metrics``).
    database_reconnects: int = 0

    def observe_step(self, seconds: float) -> None:
        self.steps_total += 1
        self.step_seconds_sum += seconds

    def observe_inference(self, seconds: float) -> None:
        self.inference_count += 1
        self.inference_seconds_sum += seconds
        for i, bound in enumerate(INFERENCE_BUCKETS):
            if seconds <= bound:
                self.inference_buckets[i] += 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def forget_process(store: JobStore, pid: int, host: str | None = None) -> None:
    """Drop the registry entry of a worker process of this host that is known to have exited.

    A worker killed with SIGKILL cannot remove its own entry, which would otherwise stay "fresh" (and "ready")
    for ``STALE_AFTER_S`` while its replacement is still loading the model.
    """
    host = host or socket.gethostname()
    for worker in store.workers(max_age_s=None):
        if worker.host == host and worker.pid == pid:
            store.remove_worker(worker.id)
