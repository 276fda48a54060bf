"""The conversion path: cohorts, enrollments, conversions and touch runs.

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the path tables and the indexes enrolment, touches and `path due` look up by."""
    op.create_table(
        "path_cohorts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(length=64), nullable=False),
        sa.Column("cohort_day", sa.Date(), nullable=False),
        sa.Column("cohort_month", sa.String(length=7), nullable=False),
        sa.Column("path_version", sa.String(length=64), nullable=False),
        sa.Column("export_checksum", sa.String(length=64), nullable=True),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.Column("holdout", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_path_cohorts"),
        sa.UniqueConstraint("path", "cohort_day", name="uq_path_cohorts_path_cohort_day"),
    )
    op.create_index("ix_path_cohorts_cohort_month", "path_cohorts", ["cohort_month"])
    op.create_table(
        "path_enrollments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cohort_id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("userid", sa.String(length=64), nullable=False),
        sa.Column("external_userid", sa.String(length=64), nullable=False),
        sa.Column("holdout", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("base_export_date", sa.Date(), nullable=False),
        sa.Column("base_aum", sa.Float(), nullable=True),
        sa.Column("base_aum_peak", sa.Float(), nullable=True),
        sa.Column("base_payroll", sa.Boolean(), nullable=True),
        sa.Column("base_holds_wealth", sa.Boolean(), nullable=True),
        sa.Column("base_holds_fund", sa.Boolean(), nullable=True),
        sa.Column("base_holds_insurance", sa.Boolean(), nullable=True),
        sa.Column("base_holds_loan", sa.Boolean(), nullable=True),
        sa.Column("base_holds_credit_card", sa.Boolean(), nullable=True),
        sa.Column("entered_on", sa.Date(), nullable=False),
        sa.Column("exited_on", sa.Date(), nullable=True),
        sa.Column("exit_reason", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["cohort_id"],
            ["path_cohorts.id"],
            name="fk_path_enrollments_cohort_id_path_cohorts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_path_enrollments"),
        sa.UniqueConstraint(
            "cohort_id", "customer_id", name="uq_path_enrollments_cohort_id_customer_id"
        ),
    )
    op.create_index(
        "ix_path_enrollments_customer_id_status", "path_enrollments", ["customer_id", "status"]
    )
    op.create_index(
        "ix_path_enrollments_cohort_id_status", "path_enrollments", ["cohort_id", "status"]
    )
    op.create_table(
        "path_conversions",
        sa.Column("enrollment_id", sa.Integer(), nullable=False),
        sa.Column("cohort_id", sa.Integer(), nullable=False),
        sa.Column("converted_on", sa.Date(), nullable=False),
        sa.Column("export_checksum", sa.String(length=64), nullable=True),
        sa.Column("attributed_touch", sa.Integer(), nullable=True),
        sa.Column("holdout", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["enrollment_id"],
            ["path_enrollments.id"],
            name="fk_path_conversions_enrollment_id_path_enrollments",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("enrollment_id", name="pk_path_conversions"),
    )
    op.create_index("ix_path_conversions_cohort_id", "path_conversions", ["cohort_id"])
    op.create_table(
        "path_touch_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cohort_id", sa.Integer(), nullable=False),
        sa.Column("touch", sa.Integer(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("flow_run_id", sa.String(length=64), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["cohort_id"],
            ["path_cohorts.id"],
            name="fk_path_touch_runs_cohort_id_path_cohorts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_path_touch_runs"),
        sa.UniqueConstraint("cohort_id", "touch", name="uq_path_touch_runs_cohort_id_touch"),
    )
    op.create_index("ix_path_touch_runs_status_due_at", "path_touch_runs", ["status", "due_at"])


def downgrade() -> None:
    """Drop the path tables (their sends stay in the ledger)."""
    op.drop_index("ix_path_touch_runs_status_due_at", table_name="path_touch_runs")
    op.drop_table("path_touch_runs")
    op.drop_index("ix_path_conversions_cohort_id", table_name="path_conversions")
    op.drop_table("path_conversions")
    op.drop_index("ix_path_enrollments_cohort_id_status", table_name="path_enrollments")
    op.drop_index("ix_path_enrollments_customer_id_status", table_name="path_enrollments")
    op.drop_table("path_enrollments")
    op.drop_index("ix_path_cohorts_cohort_month", table_name="path_cohorts")
    op.drop_table("path_cohorts")
