"""Storage quotas and one-time tokens: a row per stored file (owner, size, expiry), a lock row per owner, a managed
key's own storage quota (``api_keys``), and the used one-time login links.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stored_files",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("key", sa.Text),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("unpacked", sa.BigInteger),
        sa.Column("pending", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
    )
    op.create_index("ix_stored_files_owner", "stored_files", ["owner", "expires_at"])
    op.create_index("ix_stored_files_key", "stored_files", ["key"])
    op.create_index("ix_stored_files_expires", "stored_files", ["expires_at"])
    op.create_table("storage_owners", sa.Column("owner", sa.String(200), primary_key=True))
    op.create_table(
        "used_tokens",
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.Double, nullable=False),
    )
    op.add_column("api_keys", sa.Column("storage_quota_bytes", sa.BigInteger))
    op.add_column("api_keys", sa.Column("storage_quota_files", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:  # SQLite drops columns by copying the table
        batch.drop_column("storage_quota_files")
        batch.drop_column("storage_quota_bytes")
    op.drop_table("used_tokens")
    op.drop_table("storage_owners")
    op.drop_index("ix_stored_files_expires", "stored_files")
    op.drop_index("ix_stored_files_key", "stored_files")
    op.drop_index("ix_stored_files_owner", "stored_files")
    op.drop_table("stored_files")
