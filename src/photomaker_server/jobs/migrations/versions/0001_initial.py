"""The schema of the SQLite-only releases, exactly (jobs, job_logs, webhook_deliveries with a stored body).

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), primary_key=True),
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
    op.create_index("ix_jobs_queue", "jobs", ["status", sa.text("priority DESC"), "created_at", "seq"])
    op.create_index("ix_jobs_finished", "jobs", ["status", "finished_at"])
    op.create_index("ix_jobs_owner", "jobs", ["owner"])

    op.create_table(
        "job_logs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("ts", sa.Double, nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
    )
    op.create_index("ix_job_logs_job", "job_logs", ["job_id", "id"])

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.Double, nullable=False),
        sa.Column("delivered_at", sa.Double),
        sa.Column("last_error", sa.Text),
        sa.Column("given_up", sa.Boolean, nullable=False),
    )
    op.create_index("ix_webhook_due", "webhook_deliveries", ["delivered_at", "given_up", "next_attempt_at"])
    op.create_index("ix_webhook_job", "webhook_deliveries", ["job_id"])


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("job_logs")
    op.drop_table("jobs")
