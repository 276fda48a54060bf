"""The conversion path's state: cohorts, their members (enrollments), touch runs and conversions."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Date, Float, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from siyu.schemas.models import Base, utc_now

# Life of an enrollment: active until it converts, leaves (dropped) or its goal window ends.
ACTIVE, CONVERTED, DROPPED, EXPIRED = "active", "converted", "dropped", "expired"
ENROLLMENT_STATUSES: tuple[str, ...] = (ACTIVE, CONVERTED, DROPPED, EXPIRED)
# Why a member was dropped from its path before converting.
UNREACHABLE, LEFT = "unreachable", "left"

# Life of a touch run: scheduled (a Prefect run waits), done (it ran to the end).
SCHEDULED, DONE = "scheduled", "done"


class Cohort(Base):
    """The customers who entered one path on one day: the instance of the path's DAG."""

    __tablename__ = "path_cohorts"
    __table_args__ = (UniqueConstraint("path", "cohort_day"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(64))  # the path's name in the block
    title: Mapped[str] = mapped_column(String(64))  # what ops read, e.g. 代发稳健理财
    cohort_day: Mapped[dt.date] = mapped_column(Date)  # local day of entry
    cohort_month: Mapped[str] = mapped_column(String(7), index=True)  # 'YYYY-MM', uplift's unit
    path_version: Mapped[str] = mapped_column(String(64))
    export_checksum: Mapped[str | None] = mapped_column(String(64))  # the export they entered on
    members: Mapped[int] = mapped_column(Integer, default=0)
    holdout: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utc_now)


class Enrollment(Base):
    """One customer in one cohort: which contact reaches them, their state at entry, their exit."""

    __tablename__ = "path_enrollments"
    __table_args__ = (
        UniqueConstraint("cohort_id", "customer_id"),
        # "Is this customer in a path?": the enrolment's anti-join.
        Index(None, "customer_id", "status"),
        Index(None, "cohort_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cohort_id: Mapped[int] = mapped_column(ForeignKey("path_cohorts.id", ondelete="CASCADE"))
    customer_id: Mapped[str] = mapped_column(String(64))
    userid: Mapped[str] = mapped_column(String(64))  # the manager who sends
    external_userid: Mapped[str] = mapped_column(String(64))  # the contact WeCom addresses
    holdout: Mapped[bool] = mapped_column(default=False)  # enrolled, never touched
    status: Mapped[str] = mapped_column(String(16), default=ACTIVE)
    # The export the customer entered on, and the fields the goal compares against: typed
    # columns, not JSON, so 100,000 members read and write in one pass without decoding.
    base_export_date: Mapped[dt.date] = mapped_column(Date)
    base_aum: Mapped[float | None] = mapped_column(Float)
    base_aum_peak: Mapped[float | None] = mapped_column(Float)
    base_payroll: Mapped[bool | None] = mapped_column()
    base_holds_wealth: Mapped[bool | None] = mapped_column()
    base_holds_fund: Mapped[bool | None] = mapped_column()
    base_holds_insurance: Mapped[bool | None] = mapped_column()
    base_holds_loan: Mapped[bool | None] = mapped_column()
    base_holds_credit_card: Mapped[bool | None] = mapped_column()
    entered_on: Mapped[dt.date] = mapped_column(Date)
    exited_on: Mapped[dt.date | None] = mapped_column(Date)
    exit_reason: Mapped[str | None] = mapped_column(String(32))


class Conversion(Base):
    """A member's conversion: the export that showed it and the touch it is attributed to."""

    __tablename__ = "path_conversions"

    enrollment_id: Mapped[int] = mapped_column(
        ForeignKey("path_enrollments.id", ondelete="CASCADE"), primary_key=True
    )
    cohort_id: Mapped[int] = mapped_column(Integer, index=True)
    converted_on: Mapped[dt.date] = mapped_column(Date)  # the export's business date
    export_checksum: Mapped[str | None] = mapped_column(String(64))
    # The last touch delivered on or before the conversion; None: converted untouched.
    attributed_touch: Mapped[int | None] = mapped_column(Integer)
    holdout: Mapped[bool] = mapped_column(default=False)


class TouchRun(Base):
    """One touch of one cohort: when it is due, its Prefect run, and its report once done."""

    __tablename__ = "path_touch_runs"
    __table_args__ = (UniqueConstraint("cohort_id", "touch"), Index(None, "status", "due_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cohort_id: Mapped[int] = mapped_column(ForeignKey("path_cohorts.id", ondelete="CASCADE"))
    touch: Mapped[int] = mapped_column(Integer)  # 1..4
    due_at: Mapped[dt.datetime] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default=SCHEDULED)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))  # the scheduled Prefect run
    finished_at: Mapped[dt.datetime | None] = mapped_column()
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
