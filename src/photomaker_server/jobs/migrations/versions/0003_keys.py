"""Managed API keys, per-key usage, and fair scheduling between keys (a job's turn).

Additive only: two new tables, one column with a default (existing queued jobs get turn 0, so they keep today's
order) and three indexes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("max_concurrent", sa.Integer),
        sa.Column("max_queued", sa.Integer),
        sa.Column("requests_per_minute", sa.Integer),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("last_used_at", sa.Double),
        sa.Column("revoked_at", sa.Double),
    )
    op.create_table(
        "key_usage",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("jobs_submitted", sa.Integer, nullable=False),
        sa.Column("jobs_completed", sa.Integer, nullable=False),
        sa.Column("jobs_failed", sa.Integer, nullable=False),
        sa.Column("jobs_cancelled", sa.Integer, nullable=False),
        sa.Column("images", sa.Integer, nullable=False),
        sa.Column("inference_seconds", sa.Double, nullable=False),
    )
    op.add_column("jobs", sa.Column("turn", sa.BigInteger, nullable=False, server_default="0"))
    op.create_index("ix_jobs_fair", "jobs", ["status", "turn", sa.text("priority DESC"), "created_at", "seq"])
    op.create_index("ix_jobs_owner_turn", "jobs", ["owner", "status", "priority", "turn"])
    op.create_index("ix_jobs_owner_created", "jobs", ["owner", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_created", "jobs")
    op.drop_index("ix_jobs_owner_turn", "jobs")
    op.drop_index("ix_jobs_fair", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("turn")
    op.drop_table("key_usage")
    op.drop_table("api_keys")
