"""The job store's tables as the code uses them (the head revision of ``jobs/migrations``).

Portable types only: JSON is TEXT we encode ourselves, times are float epoch seconds (UTC by definition) from the
store's injectable clock. The schema is created and changed by the Alembic migrations, never by
``metadata.create_all``; keep this module and the newest migration in step.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "FAIR_ORDER",
    "JOBS_SEQUENCE",
    "WITHOUT_INPUT",
    "QUEUE_ORDER",
    "api_keys",
    "job_logs",
    "jobs",
    "key_usage",
    "metadata",
    "ops_counters",
    "secrets",
    "storage_owners",
    "stored_files",
    "used_tokens",
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
    # Fair scheduling between owners (keys): the job's turn, given at submit (see statements.NEXT_TURN). The claim
    # takes the lowest turn first, so owners with queued work take turns; FIFO and priority hold within an owner.
    sa.Column("turn", sa.BigInteger, nullable=False, server_default="0"),
)
sa.Index("ix_jobs_queue", jobs.c.status, jobs.c.priority.desc(), jobs.c.created_at, jobs.c.seq)
sa.Index("ix_jobs_finished", jobs.c.status, jobs.c.finished_at)
sa.Index("ix_jobs_owner", jobs.c.owner)
sa.Index("ix_jobs_fair", jobs.c.status, jobs.c.turn, jobs.c.priority.desc(), jobs.c.created_at, jobs.c.seq)
sa.Index("ix_jobs_owner_turn", jobs.c.owner, jobs.c.status, jobs.c.priority, jobs.c.turn)
sa.Index("ix_jobs_owner_created", jobs.c.owner, jobs.c.created_at)

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

#: Files stored on a key's behalf (uploads, data URIs moved to storage at submit, signed-upload records): the
#: truth its storage quota is counted from, whatever the storage backend. ``key`` is NULL while the bytes are
#: being written (the row is charged first, so a refused request stores nothing); ``pending`` marks a signed
#: upload URL whose bytes have not arrived (it counts as a file, with size 0, until it expires).
stored_files = sa.Table(
    "stored_files",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("key", sa.Text),
    sa.Column("size", sa.BigInteger, nullable=False),
    #: Bytes the worker will unpack from it, by its headers (``inputs.archives.declared_unpacked_bytes``), measured
    #: when it was stored: a submit checks its request's unpack budget from these without reading the files.
    sa.Column("unpacked", sa.BigInteger),
    sa.Column("pending", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
)
sa.Index("ix_stored_files_owner", stored_files.c.owner, stored_files.c.expires_at)
sa.Index("ix_stored_files_key", stored_files.c.key)
sa.Index("ix_stored_files_expires", stored_files.c.expires_at)

#: One row per owner that ever stored a file: locked (``FOR UPDATE``) while its quota is checked and charged, so
#: two API replicas cannot both admit the file that fills it. (SQLite's write lock already serialises that.)
storage_owners = sa.Table("storage_owners", metadata, sa.Column("owner", sa.String(200), primary_key=True))

#: One-time tokens already used (login links), until they would have expired anyway.
used_tokens = sa.Table(
    "used_tokens",
    metadata,
    sa.Column("nonce", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.Double, nullable=False),
)

#: API keys: managed ones (secret hash, limits, revocation) and the configured ones registered under their names.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("secret_hash", sa.String(64), unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("max_concurrent", sa.Integer),
    sa.Column("max_queued", sa.Integer),
    sa.Column("requests_per_minute", sa.Integer),
    sa.Column("storage_quota_bytes", sa.BigInteger),
    sa.Column("storage_quota_files", sa.Integer),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("last_used_at", sa.Double),
    sa.Column("revoked_at", sa.Double),
)

#: Usage per owner and UTC day, updated in the transactions that change a job's state (so it cannot drift).
key_usage = sa.Table(
    "key_usage",
    metadata,
    sa.Column("owner", sa.String(64), primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),  # YYYY-MM-DD, UTC
    sa.Column("jobs_submitted", sa.Integer, nullable=False),
    sa.Column("jobs_completed", sa.Integer, nullable=False),
    sa.Column("jobs_failed", sa.Integer, nullable=False),
    sa.Column("jobs_cancelled", sa.Integer, nullable=False),
    sa.Column("images", sa.Integer, nullable=False),
    sa.Column("inference_seconds", sa.Double, nullable=False),
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
#: Claim order: by turn (owners take turns), then :data:`QUEUE_ORDER`.
FAIR_ORDER = (jobs.c.turn, *QUEUE_ORDER)
