"""Initial schema: exports, quarantine, contacts and their mobiles, tags, the outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create siyu's tables."""
    op.create_table(
        "exports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("file_name", sa.String(length=255), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("export_date", sa.Date(), nullable=True),
        sa.Column("row_count", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("checks_total", sa.Integer(), nullable=False),
        sa.Column("checks_failed", sa.Integer(), nullable=False),
        sa.Column("rows_accepted", sa.Integer(), nullable=False),
        sa.Column("rows_quarantined", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("flow_run_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_exports"),
    )
    op.create_index("ix_exports_checksum", "exports", ["checksum"])

    op.create_table(
        "quarantined_rows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("export_id", sa.Integer(), nullable=False),
        sa.Column("row_number", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=True),
        sa.Column("reasons", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["export_id"],
            ["exports.id"],
            name="fk_quarantined_rows_export_id_exports",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_quarantined_rows"),
    )
    op.create_index("ix_quarantined_rows_export_id", "quarantined_rows", ["export_id"])

    op.create_table(
        "contacts",
        sa.Column("userid", sa.String(length=64), nullable=False),
        sa.Column("external_userid", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=64), nullable=True),
        sa.Column("add_way", sa.Integer(), nullable=True),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reachable", sa.Boolean(), nullable=False),
        sa.Column("unreachable_code", sa.Integer(), nullable=True),
        sa.Column("customer_id", sa.String(length=64), nullable=True),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("userid", "external_userid", name="pk_contacts"),
    )
    op.create_index("ix_contacts_customer_id", "contacts", ["customer_id"])

    op.create_table(
        "contact_mobiles",
        sa.Column("userid", sa.String(length=64), nullable=False),
        sa.Column("external_userid", sa.String(length=64), nullable=False),
        sa.Column("mobile_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint(
            "userid", "external_userid", "mobile_hash", name="pk_contact_mobiles"
        ),
    )
    op.create_index("ix_contact_mobiles_mobile_hash", "contact_mobiles", ["mobile_hash"])

    op.create_table(
        "managed_tags",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_name", sa.String(length=30), nullable=False),
        sa.Column("tag_name", sa.String(length=30), nullable=False),
        sa.Column("group_id", sa.String(length=64), nullable=False),
        sa.Column("tag_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_managed_tags"),
        sa.UniqueConstraint("group_name", "tag_name", name="uq_managed_tags_group_name_tag_name"),
        sa.UniqueConstraint("tag_id", name="uq_managed_tags_tag_id"),
    )

    op.create_table(
        "synced_tags",
        sa.Column("userid", sa.String(length=64), nullable=False),
        sa.Column("external_userid", sa.String(length=64), nullable=False),
        sa.Column("tag_id", sa.String(length=64), nullable=False),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("userid", "external_userid", "tag_id", name="pk_synced_tags"),
    )

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("batch", sa.String(length=128), nullable=False),
        sa.Column("target", sa.String(length=160), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("errcode", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=255), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("key", name="uq_outbox_key"),
    )
    op.create_index("ix_outbox_batch", "outbox", ["batch"])
    op.create_index("ix_outbox_status", "outbox", ["status"])
    op.create_index("ix_outbox_batch_status", "outbox", ["batch", "status"])


def downgrade() -> None:
    """Drop siyu's tables (their indexes go with them), children before parents."""
    op.drop_table("outbox")
    op.drop_table("synced_tags")
    op.drop_table("managed_tags")
    op.drop_table("contact_mobiles")
    op.drop_table("contacts")
    op.drop_table("quarantined_rows")
    op.drop_table("exports")
