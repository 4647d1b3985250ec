"""``/metrics``: Prometheus exposition made with prometheus-client, from the job database at scrape time.

Every cluster number is read from the shared database when Prometheus scrapes (queue, outcomes, the workers'
heartbeats with their counters, the fault counters), none is kept in this process's memory. So any API process of
any replica answers for the whole cluster, and the answer is the same however many processes serve the API, which
in-process counters (one set per uvicorn worker process) could not give. The exception is what only this process
can know: whether it reaches the database (``photomaker_database_*``), which is also all a scrape says while the
database is unreachable.

Workers publish cumulative counters with each heartbeat; a worker that stops takes its counts with it, which
Prometheus' ``rate()`` treats as a counter reset.
"""

from __future__ import annotations

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
from ..jobs.records import StoreUnavailable, WorkerInfo
from ..jobs.worker_registry import INFERENCE_BUCKETS, WORKER_STATES

__all__ = ["CONTENT_TYPE_LATEST", "ClusterCollector", "metrics_registry", "render_metrics"]


def _total(workers: list[WorkerInfo], name: str) -> float:
    return float(sum(w.stats.get(name, 0) for w in workers))


#: The cluster's fault counters (``JobStore.ops_counts``): metric name → (counter, help).
FAULT_COUNTERS = {
    "photomaker_lease_expiries": ("lease_expiries", "Leases taken back from workers that stopped renewing them."),
    "photomaker_jobs_rerun": ("jobs_rerun", "Requests queued again after their worker was lost (one per re-run)."),
    "photomaker_workers_lost": ("workers_lost", "Workers that stopped heartbeating without a goodbye (killed)."),
}


class ClusterCollector(Collector):
    """Reads the store on every ``collect``: queue depth, running and finished jobs, workers, their counters.

    While the job database is unreachable it answers from what this process knows (``photomaker_database_up 0``,
    how long the outage has lasted, reconnects) instead of failing the scrape: monitoring must not go blind
    exactly when it matters. The series read from the database are absent from such a scrape (Prometheus marks
    them stale) rather than repeated from memory as if current.
    """

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        health = self.store.health
        snapshot = None
        if health.up:  # known down: do not wait for a connection attempt to say so
            try:
                snapshot = (self.store.counts(), self.store.outcomes(), self.store.workers(), self.store.ops_counts())
            except StoreUnavailable:
                snapshot = None
        yield GaugeMetricFamily("photomaker_database_up",
                                "1 when this process reaches the job database, 0 while it cannot.",
                                value=1 if snapshot is not None else 0)
        yield GaugeMetricFamily("photomaker_database_unreachable_seconds",
                                "How long the current job database outage has lasted, as seen by this process.",
                                value=health.down_for())
        reconnects = CounterMetricFamily(
            "photomaker_database_reconnects",
            "Job database outages that ended: seen by this API process, and by the live workers together.",
            labels=["process"])
        reconnects.add_metric(["api"], health.reconnects)
        if snapshot is not None:
            reconnects.add_metric(["workers"], _total(snapshot[2], "database_reconnects"))
        yield reconnects
        if snapshot is None:
            return
        counts, outcomes, workers, faults = snapshot
        for name, (key, description) in FAULT_COUNTERS.items():
            yield CounterMetricFamily(name, description, value=faults.get(key, 0))
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
        now = self.store.now()
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
