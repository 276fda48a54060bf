"""The group cadence's own tables: activities, the reward ledger (one row per win) and group health."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Date, Float, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from siyu.schemas.models import Base, utc_now

# Life of a win: granted (within budget, waits for its pay day) -> paid, or failed (reason);
# over_budget wins are recorded unpaid with the budget that stopped them.
GRANTED, PAID, FAILED, OVER_BUDGET = "granted", "paid", "failed", "over_budget"
WIN_STATUSES: tuple[str, ...] = (GRANTED, PAID, FAILED, OVER_BUDGET)
GROUP_WEEK, PROGRAMME_MONTH = "group_week_budget", "programme_month_budget"

# Life of an activity: asked (question out) -> announced (winners chosen and granted).
ASKED, ANNOUNCED = "asked", "announced"


class Activity(Base):
    """One activity run: a script asked in one slot of one week to the groups on the template."""

    __tablename__ = "cadence_activities"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(128), unique=True)  # cadence:slot:week
    cadence: Mapped[str] = mapped_column(String(32))
    slot: Mapped[str] = mapped_column(String(32))
    week: Mapped[str] = mapped_column(String(16))  # ISO week, e.g. 2026-W49
    script: Mapped[str] = mapped_column(String(32))
    chat_ids: Mapped[dict[str, Any]] = mapped_column()  # {"chat_ids": [...]}: who was asked
    asked_at: Mapped[dt.datetime] = mapped_column()
    announce_at: Mapped[dt.datetime] = mapped_column()  # asked_at + window + delay
    status: Mapped[str] = mapped_column(String(16), default=ASKED)
    entries: Mapped[int] = mapped_column(Integer, default=0)
    correct: Mapped[int] = mapped_column(Integer, default=0)
    winners: Mapped[int] = mapped_column(Integer, default=0)
    announced_at: Mapped[dt.datetime | None] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=utc_now)


class ActivityParticipation(Base):
    """Per activity and group: members asked, entries, members who played, correct answers."""

    __tablename__ = "cadence_participation"
    __table_args__ = (UniqueConstraint("activity_key", "chat_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    activity_key: Mapped[str] = mapped_column(String(128))
    chat_id: Mapped[str] = mapped_column(String(64))
    day: Mapped[dt.date] = mapped_column(Date)
    members: Mapped[int] = mapped_column(Integer)
    players: Mapped[int] = mapped_column(Integer)
    correct: Mapped[int] = mapped_column(Integer)


class RewardWin(Base):
    """One win: (activity, round, member), its amount, its bill number and where its payout is."""

    __tablename__ = "reward_wins"
    __table_args__ = (
        UniqueConstraint("activity_key", "round", "member"),
        Index(None, "status", "pay_due"),
        Index(None, "chat_id", "week"),
        Index(None, "month"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    activity_key: Mapped[str] = mapped_column(String(128))
    round: Mapped[int] = mapped_column(Integer)
    member: Mapped[str] = mapped_column(String(64))  # external_userid
    chat_id: Mapped[str] = mapped_column(String(64))
    script: Mapped[str] = mapped_column(String(32))
    amount_fen: Mapped[int] = mapped_column(Integer)
    # Made when the win is granted, before any attempt, and never changed: the payout's identity.
    billno: Mapped[str] = mapped_column(String(28), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64))
    week: Mapped[str] = mapped_column(String(16))  # the group's budget week
    month: Mapped[str] = mapped_column(String(7))  # the programme's budget month
    won_at: Mapped[dt.datetime] = mapped_column()
    pay_due: Mapped[dt.date] = mapped_column(Date)  # local day the payout may go
    paid_at: Mapped[dt.datetime | None] = mapped_column()
    send_listid: Mapped[str | None] = mapped_column(String(64))


class GroupHealth(Base):
    """One group's health on one day: members, the week's joins and leaves, participation."""

    __tablename__ = "group_health"
    __table_args__ = (UniqueConstraint("chat_id", "day"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chat_id: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(String(64))
    day: Mapped[dt.date] = mapped_column(Date)
    members: Mapped[int] = mapped_column(Integer)
    joins_week: Mapped[int] = mapped_column(Integer)
    leaves_week: Mapped[int] = mapped_column(Integer)
    participation: Mapped[float | None] = mapped_column(Float)  # players / members, last week
    dying: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str | None] = mapped_column(String(64))


class ProductPlacement(Base):
    """A promotion placed in a group by one slot of one week: what the rotation remembers."""

    __tablename__ = "cadence_placements"
    __table_args__ = (
        UniqueConstraint("chat_id", "cadence", "slot", "week"),
        Index(None, "chat_id", "day"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chat_id: Mapped[str] = mapped_column(String(64))
    cadence: Mapped[str] = mapped_column(String(32))
    slot: Mapped[str] = mapped_column(String(32))
    week: Mapped[str] = mapped_column(String(16))
    day: Mapped[dt.date] = mapped_column(Date)
    promotion_id: Mapped[str] = mapped_column(String(32))
