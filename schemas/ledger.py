"""The send ledger: one row per business identity of a send, from planned to its final status."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Date, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from siyu.schemas.models import Base, utc_now

# Who a send reaches.
CUSTOMER, GROUP = "customer", "group"
TARGET_KINDS: tuple[str, ...] = (CUSTOMER, GROUP)

# How it travels: an enterprise mass message the employee confirms (WeCom caps it), or an app
# message to the employee with the prepared content, which WeCom does not cap.
MASS_TEMPLATE, EMPLOYEE_REMINDER = "mass_template", "employee_reminder"
CHANNELS: tuple[str, ...] = (MASS_TEMPLATE, EMPLOYEE_REMINDER)

# Life of a row: planned -> deferred (reason, not_before) or skipped (reason) -> created (msgid)
# -> confirmed (the employee sent it) -> delivered, or failed (reason).
PLANNED = "planned"
DEFERRED = "deferred"
SKIPPED = "skipped"
CREATED = "created"
CONFIRMED = "confirmed"
DELIVERED = "delivered"
FAILED = "failed"
STATUSES: tuple[str, ...] = (PLANNED, DEFERRED, SKIPPED, CREATED, CONFIRMED, DELIVERED, FAILED)
FINAL_STATUSES: frozenset[str] = frozenset({SKIPPED, DELIVERED, FAILED})
# Rows that hold or have used one of the target's slots: what the caps count. A deferred row
# holds none until it is planned again; skipped and failed rows never reached the customer.
COUNTED_STATUSES: frozenset[str] = frozenset({PLANNED, CREATED, CONFIRMED, DELIVERED})

# Why a row was deferred: it may go later, at its not_before.
QUIET_HOURS = "quiet_hours"
NON_WORKING_DAY = "non_working_day"
DAY_CAP = "day_cap"
NOT_DUE = "not_due"  # wanted later than the planner's as-of time
DEFERRED_REASONS: frozenset[str] = frozenset({QUIET_HOURS, NON_WORKING_DAY, DAY_CAP, NOT_DUE})

# Why a row was skipped: it will not go in its period.
MONTH_CAP = "month_cap"
ALREADY_PLANNED = "already_planned"  # the key is in the ledger already (never written twice)
DUPLICATE = "duplicate"  # the same key twice in one batch: the better one is kept
PATH_PAUSED = "path paused by ops"  # the path's `paused` switch (ConversionPaths block)
GROUP_PAUSED = "group paused by ops"  # the group's override `paused` (CadenceTemplate block)
SKIPPED_REASONS: frozenset[str] = frozenset(
    {MONTH_CAP, ALREADY_PLANNED, DUPLICATE, PATH_PAUSED, GROUP_PAUSED}
)

# Why a row failed after it was planned.
NOT_A_CONTACT = "not_a_contact"  # send result status 2
CAPPED_BY_WECOM = "capped_by_wecom"  # send result status 3
CANCELLED = "cancelled"
EXPIRED = "expired"  # its send window passed before the employee confirmed
REFUSED = "refused"  # WeCom refused the message itself (errcode on add_msg_template)
FAILED_REASONS: frozenset[str] = frozenset(
    {NOT_A_CONTACT, CAPPED_BY_WECOM, CANCELLED, EXPIRED, REFUSED}
)

REASONS_BY_STATUS: dict[str, frozenset[str]] = {
    DEFERRED: DEFERRED_REASONS,
    SKIPPED: SKIPPED_REASONS,
    FAILED: FAILED_REASONS,
}

# The moves settle() allows; a final status has none.
TRANSITIONS: dict[str, frozenset[str]] = {
    PLANNED: frozenset({DEFERRED, SKIPPED, CREATED, FAILED}),
    DEFERRED: frozenset({PLANNED, DEFERRED, SKIPPED, FAILED}),
    # The tracker may see the send result before it sees the employee's confirmation.
    CREATED: frozenset({CONFIRMED, DELIVERED, FAILED}),
    CONFIRMED: frozenset({DELIVERED, FAILED}),
    SKIPPED: frozenset(),
    DELIVERED: frozenset(),
    FAILED: frozenset(),
}

# The business identity of a send: the idempotency key all the way down.
KEY_COLUMNS: tuple[str, ...] = ("target_kind", "target_id", "programme", "step", "period")


def is_final(status: str) -> bool:
    """True when a row in `status` never moves again (skipped, delivered, failed)."""
    if status not in TRANSITIONS:
        raise ValueError(f"unknown send status {status!r}: expected one of {', '.join(STATUSES)}")
    return status in FINAL_STATUSES


def allowed_predecessors(status: str) -> frozenset[str]:
    """The statuses a row may be in to move to `status`."""
    return frozenset(before for before, after in TRANSITIONS.items() if status in after)


class Send(Base):
    """One send's business identity (target, programme, step, period) and where its life is.

    Every row says what caused it (playbook, version, export checksum) and ends in a final
    status: delivered, failed with a reason, or skipped with a reason.
    """

    __tablename__ = "sends"
    __table_args__ = (
        UniqueConstraint(*KEY_COLUMNS),
        # The planner's counts: a target's sends in a month, a (target, sender)'s in a day.
        Index(None, "target_kind", "target_id", "send_month"),
        Index(None, "target_kind", "target_id", "sender", "send_day"),
        # The tracker's worklist: rows created but not yet settled.
        Index(None, "status"),
        Index(None, "msgid"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target_kind: Mapped[str] = mapped_column(String(16))  # customer | group
    target_id: Mapped[str] = mapped_column(String(64))  # customer id or chat_id
    programme: Mapped[str] = mapped_column(String(128))  # e.g. path:P, cadence:K
    step: Mapped[str] = mapped_column(String(64))  # e.g. touch-2, tue-game
    period: Mapped[str] = mapped_column(String(16))  # e.g. 2026-12, 2026-W49
    sender: Mapped[str] = mapped_column(String(64))  # the employee's userid
    channel: Mapped[str] = mapped_column(String(32))  # mass_template | employee_reminder
    priority: Mapped[int] = mapped_column(Integer, default=0)  # higher wins the last slot
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(32))
    not_before: Mapped[dt.datetime | None] = mapped_column()  # next allowed time (deferred)
    msgid: Mapped[str | None] = mapped_column(String(128))
    outbox_key: Mapped[str | None] = mapped_column(String(255))  # the outbox row that sends it
    playbook: Mapped[str] = mapped_column(String(128))
    playbook_version: Mapped[str] = mapped_column(String(64))
    export_checksum: Mapped[str | None] = mapped_column(
        String(64)
    )  # the export that made it eligible
    planned_at: Mapped[dt.datetime] = mapped_column(default=utc_now)  # the planner's as-of time
    created_at: Mapped[dt.datetime | None] = mapped_column()  # WeCom gave the msgid
    confirmed_at: Mapped[dt.datetime | None] = mapped_column()  # the employee sent it
    delivered_at: Mapped[dt.datetime | None] = mapped_column()
    settled_at: Mapped[dt.datetime | None] = mapped_column()  # reached a final status
    send_day: Mapped[dt.date | None] = mapped_column(Date)  # local day it counts against
    send_month: Mapped[str | None] = mapped_column(String(7))  # 'YYYY-MM' of send_day
