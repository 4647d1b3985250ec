"""Scale-out: the worker registry, cluster secrets, a PostgreSQL sequence for submission order, and webhook
bodies rendered at delivery time (the outbox's ``body`` column goes).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
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
    op.create_index("ix_workers_heartbeat", "workers", ["heartbeat_at"])
    op.create_table(
        "secrets",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_column("body")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE SEQUENCE jobs_seq")
        op.execute("SELECT setval('jobs_seq', COALESCE((SELECT max(seq) FROM jobs), 0) + 1, false)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP SEQUENCE jobs_seq")
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.add_column(sa.Column("body", sa.Text, nullable=False, server_default=""))
    op.drop_table("secrets")
    op.drop_index("ix_workers_heartbeat", "workers")
    op.drop_table("workers")
