"""siyu's own state as SQLAlchemy models: exports, quarantine, contacts, tags and the outbox."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Explicit constraint names: SQLite and PostgreSQL would otherwise name them differently (or not
# at all), and a later migration could not drop or alter them by name on both.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utc_now() -> dt.datetime:
    """The current time, timezone-aware in UTC: the default of every timestamp column."""
    return dt.datetime.now(dt.UTC)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored in UTC and read back timezone-aware on SQLite and PostgreSQL alike.

    SQLite keeps no offset (SQLAlchemy writes the wall clock and drops tzinfo), so an aware time
    in another zone would be stored shifted, and values come back naive; PostgreSQL returns them
    in the session's zone. Converting on the way in and out gives one behaviour on both.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            # Naive times are ambiguous (UTC? Asia/Shanghai?): refuse them rather than guess.
            raise ValueError(
                "siyu stores timezone-aware timestamps only: pass datetime.now(datetime.UTC) "
                "or another aware datetime, not a naive one"
            )
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    """The declarative base of siyu's tables, with the constraint naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UtcDateTime(), dict[str, Any]: JSON()}


class Export(Base):
    """One core-banking export file as received, gated and synced."""

    __tablename__ = "exports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_name: Mapped[str] = mapped_column(String(255))
    checksum: Mapped[str] = mapped_column(String(64), index=True)  # sha256 hex of the file
    # The checksum while the record is the live one of its content (not blocked): unique, so two
    # runs of one file started together share one record and one outbox batch.
    live_checksum: Mapped[str | None] = mapped_column(String(64), unique=True)
    export_date: Mapped[dt.date | None] = mapped_column(Date)
    row_count: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # received, blocked, accepted, synced
    checks_total: Mapped[int] = mapped_column(Integer, default=0)
    checks_failed: Mapped[int] = mapped_column(Integer, default=0)
    rows_accepted: Mapped[int] = mapped_column(Integer, default=0)
    rows_quarantined: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str | None] = mapped_column(Text)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utc_now)
    finished_at: Mapped[dt.datetime | None] = mapped_column()


class QuarantinedRow(Base):
    """A row the quality gate held back: where it was and why, never its personal data."""

    __tablename__ = "quarantined_rows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    export_id: Mapped[int] = mapped_column(ForeignKey("exports.id", ondelete="CASCADE"), index=True)
    row_number: Mapped[int] = mapped_column(Integer)  # 1-based data line, header excluded
    customer_id: Mapped[str | None] = mapped_column(String(64))
    reasons: Mapped[str] = mapped_column(String(255))  # comma-separated check names


class Contact(Base):
    """An (account manager, external contact) pair as the last contacts sync saw it in WeCom."""

    __tablename__ = "contacts"

    userid: Mapped[str] = mapped_column(String(64), primary_key=True)
    external_userid: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str | None] = mapped_column(String(64))
    add_way: Mapped[int | None] = mapped_column(Integer)
    added_at: Mapped[dt.datetime | None] = mapped_column()
    reachable: Mapped[bool] = mapped_column(default=True)
    unreachable_code: Mapped[int | None] = mapped_column(Integer)
    customer_id: Mapped[str | None] = mapped_column(String(64), index=True)
    seen_at: Mapped[dt.datetime] = mapped_column(default=utc_now)
    # When WeCom stopped listing the pair (the customer deleted the employee); None while listed.
    # The row stays, so later tables (cohorts, sends) can keep referring to the contact.
    left_at: Mapped[dt.datetime | None] = mapped_column()


class ContactMobile(Base):
    """A salted hash of a mobile found in a contact's remark: how a contact meets a customer."""

    __tablename__ = "contact_mobiles"

    userid: Mapped[str] = mapped_column(String(64), primary_key=True)
    external_userid: Mapped[str] = mapped_column(String(64), primary_key=True)
    mobile_hash: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class ManagedTag(Base):
    """A WeCom corp tag that siyu owns, by its group and name."""

    __tablename__ = "managed_tags"
    __table_args__ = (UniqueConstraint("group_name", "tag_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_name: Mapped[str] = mapped_column(String(30))
    tag_name: Mapped[str] = mapped_column(String(30))
    group_id: Mapped[str] = mapped_column(String(64))
    tag_id: Mapped[str] = mapped_column(String(64), unique=True)


class SyncedTag(Base):
    """A managed tag siyu believes is on a pair in WeCom: the 'synced' side of the diff."""

    __tablename__ = "synced_tags"

    userid: Mapped[str] = mapped_column(String(64), primary_key=True)
    external_userid: Mapped[str] = mapped_column(String(64), primary_key=True)
    tag_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    synced_at: Mapped[dt.datetime] = mapped_column(default=utc_now)


class OutboxEntry(Base):
    """One side effect on the outside world, written before the call and settled after it."""

    __tablename__ = "outbox"
    __table_args__ = (Index(None, "batch", "status"), Index(None, "plan", "status"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The business identity of the call (what is sent to whom for which step), never a payload
    # hash: a text edited between a crash and its rerun must find the entry it already has.
    key: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # mark_tag; later message, reward
    # The plan whose newer batches replace its older pending entries, e.g. tag-sync.
    plan: Mapped[str] = mapped_column(String(128))
    batch: Mapped[str] = mapped_column(String(128), index=True)  # e.g. tag-sync:export:12
    target: Mapped[str] = mapped_column(String(160))  # e.g. userid/external_userid
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending, sending, done, ...
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    errcode: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(255))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Who holds a `sending` entry and since when: another drain leaves it alone until the claim
    # is older than the in-flight window (a slow reply is not a lost one).
    claimed_at: Mapped[dt.datetime | None] = mapped_column()
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utc_now, onupdate=utc_now)
    sent_at: Mapped[dt.datetime | None] = mapped_column()


def insert_or_update(dialect_name: str, model: type[Base]) -> postgresql.Insert | sqlite.Insert:
    """An INSERT of `model` that can take ON CONFLICT clauses, on SQLite and PostgreSQL alike."""
    if dialect_name == "postgresql":
        return postgresql.insert(model)
    if dialect_name == "sqlite":
        return sqlite.insert(model)
    raise ValueError(f"siyu runs on SQLite or PostgreSQL, not {dialect_name}")


# The send ledger lives in its own module; importing it here puts its table in Base.metadata for
# the migrations and for create_all.
from siyu.schemas import cadence as _cadence  # noqa: E402, F401
from siyu.schemas import conversion as _conversion  # noqa: E402, F401
from siyu.schemas import ledger as _ledger  # noqa: E402, F401
from siyu.schemas import ops as _ops  # noqa: E402, F401
