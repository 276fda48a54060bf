"""The group cadence: activities, participation, the reward ledger, group health, placements.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the cadence's five tables."""
    op.create_table(
        "cadence_activities",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("cadence", sa.String(length=32), nullable=False),
        sa.Column("slot", sa.String(length=32), nullable=False),
        sa.Column("week", sa.String(length=16), nullable=False),
        sa.Column("script", sa.String(length=32), nullable=False),
        sa.Column("chat_ids", sa.JSON(), nullable=False),
        sa.Column("asked_at", TS, nullable=False),
        sa.Column("announce_at", TS, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("correct", sa.Integer(), nullable=False),
        sa.Column("winners", sa.Integer(), nullable=False),
        sa.Column("announced_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cadence_activities"),
        sa.UniqueConstraint("key", name="uq_cadence_activities_key"),
    )
    op.create_table(
        "cadence_participation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("activity_key", sa.String(length=128), nullable=False),
        sa.Column("chat_id", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.Column("players", sa.Integer(), nullable=False),
        sa.Column("correct", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cadence_participation"),
        sa.UniqueConstraint(
            "activity_key", "chat_id", name="uq_cadence_participation_activity_key_chat_id"
        ),
    )
    op.create_table(
        "reward_wins",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("activity_key", sa.String(length=128), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("member", sa.String(length=64), nullable=False),
        sa.Column("chat_id", sa.String(length=64), nullable=False),
        sa.Column("script", sa.String(length=32), nullable=False),
        sa.Column("amount_fen", sa.Integer(), nullable=False),
        sa.Column("billno", sa.String(length=28), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("week", sa.String(length=16), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("won_at", TS, nullable=False),
        sa.Column("pay_due", sa.Date(), nullable=False),
        sa.Column("paid_at", TS, nullable=True),
        sa.Column("send_listid", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_reward_wins"),
        sa.UniqueConstraint("billno", name="uq_reward_wins_billno"),
        sa.UniqueConstraint(
            "activity_key", "round", "member", name="uq_reward_wins_activity_key_round_member"
        ),
    )
    op.create_index("ix_reward_wins_status_pay_due", "reward_wins", ["status", "pay_due"])
    op.create_index("ix_reward_wins_chat_id_week", "reward_wins", ["chat_id", "week"])
    op.create_index("ix_reward_wins_month", "reward_wins", ["month"])
    op.create_table(
        "group_health",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chat_id", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.Column("joins_week", sa.Integer(), nullable=False),
        sa.Column("leaves_week", sa.Integer(), nullable=False),
        sa.Column("participation", sa.Float(), nullable=True),
        sa.Column("dying", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_group_health"),
        sa.UniqueConstraint("chat_id", "day", name="uq_group_health_chat_id_day"),
    )
    op.create_table(
        "cadence_placements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chat_id", sa.String(length=64), nullable=False),
        sa.Column("cadence", sa.String(length=32), nullable=False),
        sa.Column("slot", sa.String(length=32), nullable=False),
        sa.Column("week", sa.String(length=16), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("promotion_id", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cadence_placements"),
        sa.UniqueConstraint(
            "chat_id",
            "cadence",
            "slot",
            "week",
            name="uq_cadence_placements_chat_id_cadence_slot_week",
        ),
    )
    op.create_index("ix_cadence_placements_chat_id_day", "cadence_placements", ["chat_id", "day"])


def downgrade() -> None:
    """Drop the cadence's tables (their rows go with them)."""
    op.drop_index("ix_cadence_placements_chat_id_day", table_name="cadence_placements")
    op.drop_table("cadence_placements")
    op.drop_table("group_health")
    op.drop_index("ix_reward_wins_month", table_name="reward_wins")
    op.drop_index("ix_reward_wins_chat_id_week", table_name="reward_wins")
    op.drop_index("ix_reward_wins_status_pay_due", table_name="reward_wins")
    op.drop_table("reward_wins")
    op.drop_table("cadence_participation")
    op.drop_table("cadence_activities")
