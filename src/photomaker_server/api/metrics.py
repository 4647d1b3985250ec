"""``/metrics``: Prometheus exposition made with prometheus-client, from the job database at scrape time.

Every number is read from the shared database when Prometheus scrapes (queue, outcomes, the workers' heartbeats
with their counters), none is kept in this process's memory. So any API process of any replica answers for the
whole cluster, and the answer is the same however many processes serve the API, which in-process counters (one
set per uvicorn worker process) could not give.

Workers publish cumulative counters with each heartbeat; a worker that stops takes its counts with it, which
Prometheus' ``rate()`` treats as a counter reset.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from ..jobs.protocol import JobStore
from ..jobs.records import WorkerInfo
from ..worker.registry import INFERENCE_BUCKETS, WORKER_STATES

__all__ = ["CONTENT_TYPE_LATEST", "ClusterCollector", "metrics_registry", "render_metrics"]


def _total(workers: list[WorkerInfo], name: str) -> float:
    return float(sum(w.stats.get(name, 0) for w in workers))


class ClusterCollector(Collector):
    """Reads the store on every ``collect``: queue depth, running and finished jobs, workers, their counters."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        counts = self.store.counts()
        outcomes = self.store.outcomes()
        workers = self.store.workers()
        yield GaugeMetricFamily("photomaker_queue_depth", "Requests waiting in the queue.", value=counts["queued"])
        yield GaugeMetricFamily("photomaker_jobs_running", "Requests being generated now.", value=counts["running"])
        finished = GaugeMetricFamily(
            "photomaker_jobs_finished", "Finished requests kept in the store, by outcome.", labels=["outcome"]
        )
        for outcome, n in sorted(outcomes.items()):
            finished.add_metric([outcome], n)
        yield finished

        yield GaugeMetricFamily(
            "photomaker_workers_ready", "Live workers with the model loaded.",
            value=sum(w.state == "ready" for w in workers),
        )
        by_state = GaugeMetricFamily("photomaker_workers", "Live workers by state.", labels=["state"])
        for state in WORKER_STATES:
            by_state.add_metric([state], sum(w.state == state for w in workers))
        yield by_state
        age = GaugeMetricFamily(
            "photomaker_worker_heartbeat_age_seconds", "Seconds since each live worker's last heartbeat.",
            labels=["worker", "host", "device", "state"],
        )
        now = time.time()
        for w in workers:
            age.add_metric([w.id, w.host, w.device, w.state], max(0.0, now - w.heartbeat_at))
        yield age

        count = _total(workers, "inference_count")
        cumulative = [0.0] * len(INFERENCE_BUCKETS)
        for w in workers:
            for i, n in enumerate(w.stats.get("inference_buckets", [])[: len(INFERENCE_BUCKETS)]):
                cumulative[i] += n
        yield HistogramMetricFamily(
            "photomaker_inference_seconds", "Time from the start of generation to its images.",
            buckets=[*((str(bound), n) for bound, n in zip(INFERENCE_BUCKETS, cumulative)), ("+Inf", count)],
            sum_value=_total(workers, "inference_seconds_sum"),
        )
        yield SummaryMetricFamily(
            "photomaker_denoise_step_seconds", "Time per denoising step (UNet + scheduler).",
            count_value=_total(workers, "steps_total"), sum_value=_total(workers, "step_seconds_sum"),
        )
        yield CounterMetricFamily(
            "photomaker_id_cache_hits", "ID photos whose embedding came from the cache.",
            value=_total(workers, "id_cache_hits"),
        )
        yield CounterMetricFamily(
            "photomaker_id_cache_misses", "ID photos that went through the vision encoder.",
            value=_total(workers, "id_cache_misses"),
        )
        yield from _per_key(self.store)


#: Per-key usage counters (``key_usage`` summed over all days): metric name → (help, usage field).
_KEY_COUNTERS = {
    "photomaker_key_jobs_submitted": ("Requests accepted, per key.", "jobs_submitted"),
    "photomaker_key_jobs_completed": ("Requests completed successfully, per key.", "jobs_completed"),
    "photomaker_key_jobs_failed": ("Requests that failed, per key.", "jobs_failed"),
    "photomaker_key_jobs_cancelled": ("Requests cancelled, per key.", "jobs_cancelled"),
    "photomaker_key_images": ("Images generated, per key.", "images"),
    "photomaker_key_inference_seconds": ("Generation time, per key.", "inference_seconds"),
}


def _per_key(store: JobStore) -> Iterator[Metric]:
    """Series labelled by key *name* (never the secret): usage counters, and queued / running jobs now."""
    usage = store.usage()
    for metric, (text, field) in _KEY_COUNTERS.items():
        family = CounterMetricFamily(metric, text, labels=["key"])
        for row in usage:
            family.add_metric([row.name], float(getattr(row, field)))
        yield family
    load = store.key_load()
    jobs = GaugeMetricFamily("photomaker_key_jobs", "Requests per key now, by state.", labels=["key", "state"])
    for row in usage:
        for state in ("queued", "running"):
            jobs.add_metric([row.name, state], load.get(row.name, {}).get(state, 0))
    yield jobs


def metrics_registry(store: JobStore) -> CollectorRegistry:
    """A registry of its own (not the process-global default) holding only the cluster collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(store))
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
