"""The job store's tables as the code uses them (the head revision of ``jobs/migrations``).

Portable types only: JSON is TEXT we encode ourselves, times are float epoch seconds (UTC by definition) from the
store's injectable clock. The schema is created and changed by the Alembic migrations, never by
``metadata.create_all``; keep this module and the newest migration in step.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "JOBS_SEQUENCE",
    "WITHOUT_INPUT",
    "QUEUE_ORDER",
    "job_logs",
    "jobs",
    "metadata",
    "ops_counters",
    "secrets",
    "webhook_deliveries",
    "workers",
]

metadata = sa.MetaData()

#: PostgreSQL sequence that numbers submissions (SQLite uses ``max(seq) + 1`` under its write lock).
JOBS_SEQUENCE = "jobs_seq"

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    # Submission order. created_at alone ties when the clock does (coarse clocks, tests); seq never does.
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("app", sa.Text, nullable=False),
    sa.Column("input", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("started_at", sa.Double),
    sa.Column("finished_at", sa.Double),
    sa.Column("start_deadline", sa.Double),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_expires_at", sa.Double),
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("result", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("error_type", sa.Text),
    sa.Column("inference_time", sa.Double),
    sa.Column("webhook_url", sa.Text),
)
sa.Index("ix_jobs_queue", jobs.c.status, jobs.c.priority.desc(), jobs.c.created_at, jobs.c.seq)
sa.Index("ix_jobs_finished", jobs.c.status, jobs.c.finished_at)
sa.Index("ix_jobs_owner", jobs.c.owner)

job_logs = sa.Table(
    "job_logs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("ts", sa.Double, nullable=False),
    sa.Column("level", sa.String(8), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
)
sa.Index("ix_job_logs_job", job_logs.c.job_id, job_logs.c.id)

#: The webhook outbox. No body column: the dispatcher renders the body from the job when it posts.
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    # The signature names the user; copied here so a delivery never needs its job row to be signed.
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", sa.Double, nullable=False),
    sa.Column("delivered_at", sa.Double),
    sa.Column("last_error", sa.Text),
    sa.Column("given_up", sa.Boolean, nullable=False),
)
sa.Index(
    "ix_webhook_due",
    webhook_deliveries.c.delivered_at,
    webhook_deliveries.c.given_up,
    webhook_deliveries.c.next_attempt_at,
)
sa.Index("ix_webhook_job", webhook_deliveries.c.job_id)

#: The worker registry: one row per live worker process, upserted by its heartbeat.
workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("device", sa.Text, nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("demo_model", sa.Boolean, nullable=False),
    sa.Column("loaded_bases", sa.Text, nullable=False),
    sa.Column("current_job", sa.String(36)),
    sa.Column("started_at", sa.Double, nullable=False),
    sa.Column("heartbeat_at", sa.Double, nullable=False),
    sa.Column("stats", sa.Text, nullable=False),
)
sa.Index("ix_workers_heartbeat", workers.c.heartbeat_at)

#: Cluster-wide secrets (signing keys, token secrets) every replica must agree on.
secrets = sa.Table(
    "secrets",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("value", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
)

#: Cluster-wide counts of fault events (leases expired, jobs run again, workers lost), incremented in the
#: transaction that handles the event, so each is counted exactly once whichever process handled it.
ops_counters = sa.Table(
    "ops_counters",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)

#: Every job column but the input (see ``Job.input``).
WITHOUT_INPUT = [c for c in jobs.c if c.name != "input"]

#: Queue order: priority first, then first come first served.
QUEUE_ORDER = (jobs.c.priority.desc(), jobs.c.created_at, jobs.c.seq, jobs.c.id)
