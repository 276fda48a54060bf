"""Alerts to ops, queued and posted to the ops robot in digests: alerts, posts, event cursors."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from siyu.schemas.models import Base, utc_now

# Life of an alert: pending -> claimed (a post holds it) -> posted, or back to pending when the
# robot refused the post (nothing applied), or unknown when the post's outcome was lost (a
# crash or a timeout between the call and its mark): never posted again, ops are told instead.
PENDING, CLAIMED, POSTED, UNKNOWN = "pending", "claimed", "posted", "unknown"
ALERT_STATUSES: tuple[str, ...] = (PENDING, CLAIMED, POSTED, UNKNOWN)
# Life of a post: claimed -> posted, refused (the robot answered an error) or unknown.
REFUSED = "refused"
POST_STATUSES: tuple[str, ...] = (CLAIMED, POSTED, REFUSED, UNKNOWN)
# Posts that may have reached the robot: what its per-minute limit counts.
COUNTED_POST_STATUSES: tuple[str, ...] = (CLAIMED, POSTED, UNKNOWN)


class OpsAlert(Base):
    """One thing ops must act on, with the next step; its key makes it queued once."""

    __tablename__ = "ops_alerts"
    __table_args__ = (Index(None, "status", "occurred_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The alert's identity: a Prefect event id, or the emitter's own key (e.g. one per message).
    key: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(128))  # e.g. tag-sync failed, siyu.groups.dying
    subject: Mapped[str] = mapped_column(String(500))  # one line, ids masked
    next_step: Mapped[str] = mapped_column(Text)  # one line: what ops do now
    link: Mapped[str | None] = mapped_column(String(500))  # the run's page in the Prefect UI
    occurred_at: Mapped[dt.datetime] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    post_id: Mapped[int | None] = mapped_column(ForeignKey("ops_posts.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utc_now)


class OpsPost(Base):
    """One digest posted (or being posted) to a robot: the unit its per-minute limit counts."""

    __tablename__ = "ops_posts"
    __table_args__ = (Index(None, "robot", "claimed_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    robot: Mapped[str] = mapped_column(String(128))  # the robot block's name
    status: Mapped[str] = mapped_column(String(16), default=CLAIMED)
    alerts: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)  # UTF-8 bytes of the text
    error: Mapped[str | None] = mapped_column(String(255))  # the robot's answer when refused
    claimed_at: Mapped[dt.datetime] = mapped_column()
    posted_at: Mapped[dt.datetime | None] = mapped_column()


class OpsCursor(Base):
    """How far a reader of Prefect's events has queued: it re-reads a margin before it."""

    __tablename__ = "ops_cursors"

    # "cursor", not "name": no column of siyu's is called like a place for a person's name.
    cursor: Mapped[str] = mapped_column(String(64), primary_key=True)
    read_until: Mapped[dt.datetime] = mapped_column()
    updated_at: Mapped[dt.datetime] = mapped_column(default=utc_now, onupdate=utc_now)
