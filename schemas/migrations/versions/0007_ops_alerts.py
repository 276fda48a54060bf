"""Ops alerts: the queue of alerts, the digests posted to the ops robot, the events cursor.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the ops alerts' three tables."""
    op.create_table(
        "ops_posts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("robot", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("alerts", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(length=255), nullable=True),
        sa.Column("claimed_at", TS, nullable=False),
        sa.Column("posted_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_ops_posts"),
    )
    op.create_index("ix_ops_posts_robot_claimed_at", "ops_posts", ["robot", "claimed_at"])
    op.create_table(
        "ops_alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=128), nullable=False),
        sa.Column("subject", sa.String(length=500), nullable=False),
        sa.Column("next_step", sa.Text(), nullable=False),
        sa.Column("link", sa.String(length=500), nullable=True),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("post_id", sa.Integer(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["post_id"], ["ops_posts.id"], name="fk_ops_alerts_post_id_ops_posts"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_ops_alerts"),
        sa.UniqueConstraint("key", name="uq_ops_alerts_key"),
    )
    op.create_index("ix_ops_alerts_status_occurred_at", "ops_alerts", ["status", "occurred_at"])
    op.create_table(
        "ops_cursors",
        sa.Column("cursor", sa.String(length=64), nullable=False),
        sa.Column("read_until", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("cursor", name="pk_ops_cursors"),
    )


def downgrade() -> None:
    """Drop the ops alerts' tables (queued alerts go with them)."""
    op.drop_table("ops_cursors")
    op.drop_index("ix_ops_alerts_status_occurred_at", table_name="ops_alerts")
    op.drop_table("ops_alerts")
    op.drop_index("ix_ops_posts_robot_claimed_at", table_name="ops_posts")
    op.drop_table("ops_posts")
