"""Outbox keyed by business identity, scoped by plan, claimed atomically; contacts kept when gone;
one live export record per content.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every batch written before this revision came from the tag sync.
TAG_SYNC_PLAN = "tag-sync"


def upgrade() -> None:
    """Add the outbox's plan and claim columns, widen its key; give contacts a `left_at`."""
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.add_column(sa.Column("plan", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=True))
        # Business identities ("msg:customer:C1:path:P1:touch:2:2026-12") outgrow a sha256 hex.
        batch_op.alter_column(
            "key", existing_type=sa.String(length=64), type_=sa.String(length=255)
        )
    outbox = sa.table("outbox", sa.column("plan", sa.String), sa.column("kind", sa.String))
    op.execute(outbox.update().values(plan=TAG_SYNC_PLAN).where(outbox.c.kind == "mark_tag"))
    op.execute(outbox.update().values(plan=outbox.c.kind).where(outbox.c.plan.is_(None)))
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.alter_column("plan", existing_type=sa.String(length=128), nullable=False)
        batch_op.create_index("ix_outbox_plan_status", ["plan", "status"])

    with op.batch_alter_table("contacts") as batch_op:
        batch_op.add_column(sa.Column("left_at", sa.DateTime(timezone=True), nullable=True))

    # Records of before stay without it: the registry finds their committed ones by checksum.
    with op.batch_alter_table("exports") as batch_op:
        batch_op.add_column(sa.Column("live_checksum", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint("uq_exports_live_checksum", ["live_checksum"])


def downgrade() -> None:
    """Back to 0001's outbox and contacts (fails if a stored key is longer than 64 characters)."""
    with op.batch_alter_table("exports") as batch_op:
        batch_op.drop_constraint("uq_exports_live_checksum", type_="unique")
        batch_op.drop_column("live_checksum")
    with op.batch_alter_table("contacts") as batch_op:
        batch_op.drop_column("left_at")
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.drop_index("ix_outbox_plan_status")
        batch_op.alter_column(
            "key", existing_type=sa.String(length=255), type_=sa.String(length=64)
        )
        batch_op.drop_column("claimed_by")
        batch_op.drop_column("claimed_at")
        batch_op.drop_column("plan")
