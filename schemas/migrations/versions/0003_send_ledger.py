"""The send ledger: one row per business identity of a send, from planned to its final status.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the `sends` table and the indexes the planner and the tracker count by."""
    op.create_table(
        "sends",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("target_kind", sa.String(length=16), nullable=False),
        sa.Column("target_id", sa.String(length=64), nullable=False),
        sa.Column("programme", sa.String(length=128), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=False),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("sender", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("msgid", sa.String(length=128), nullable=True),
        sa.Column("outbox_key", sa.String(length=255), nullable=True),
        sa.Column("playbook", sa.String(length=128), nullable=False),
        sa.Column("playbook_version", sa.String(length=64), nullable=False),
        sa.Column("export_checksum", sa.String(length=64), nullable=True),
        sa.Column("planned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("send_day", sa.Date(), nullable=True),
        sa.Column("send_month", sa.String(length=7), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sends"),
        sa.UniqueConstraint(
            "target_kind",
            "target_id",
            "programme",
            "step",
            "period",
            name="uq_sends_target_kind_target_id_programme_step_period",
        ),
    )
    op.create_index(
        "ix_sends_target_kind_target_id_send_month",
        "sends",
        ["target_kind", "target_id", "send_month"],
    )
    op.create_index(
        "ix_sends_target_kind_target_id_sender_send_day",
        "sends",
        ["target_kind", "target_id", "sender", "send_day"],
    )
    op.create_index("ix_sends_status", "sends", ["status"])
    op.create_index("ix_sends_msgid", "sends", ["msgid"])


def downgrade() -> None:
    """Drop the send ledger (its rows go with it)."""
    op.drop_index("ix_sends_msgid", table_name="sends")
    op.drop_index("ix_sends_status", table_name="sends")
    op.drop_index("ix_sends_target_kind_target_id_sender_send_day", table_name="sends")
    op.drop_index("ix_sends_target_kind_target_id_send_month", table_name="sends")
    op.drop_table("sends")
