"""The weekly management report: week-over-week figures from siyu's tables, charts, markdown.

Every figure is a SQL aggregate grouped by (week, manager / path / script / ...), so the rows
that reach Python are bounded by weeks x managers x paths, never by customers: the report
costs the same few queries at 1,000 customers and at 1,000,000. Weeks are ISO weeks (Monday to
Sunday) in Asia/Shanghai. Managers appear by their WeCom userid (employees, not customers);
customers appear only as counts and sums.
"""

from __future__ import annotations

import base64
import datetime as dt
import importlib.util
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.schemas.cadence import (
    FAILED as WIN_FAILED,
)
from siyu.schemas.cadence import (
    GRANTED,
    OVER_BUDGET,
    PAID,
    Activity,
    ActivityParticipation,
    GroupHealth,
    RewardWin,
)
from siyu.schemas.conversion import CONVERTED, Cohort, Conversion, Enrollment
from siyu.schemas.ledger import DEFERRED, DELIVERED, FAILED, SKIPPED, Send
from siyu.schemas.models import Contact, Export
from siyu.tasks.export_registry import SYNCED
from siyu.tasks.journeys import difference_interval

ZONE = ZoneInfo("Asia/Shanghai")
# Each chart stays under this: the markdown artifact holds them all as data URLs and must load.
MAX_PNG_BYTES = 150_000
DPI = 80
# Series a chart draws at most (managers, paths, touches): the rest are summed as 其他.
CHART_SERIES = 8

# The CJK fonts tried, in order: the one the `mplfonts` package ships (pip installs it with
# siyu, so a fresh machine with only Python draws Chinese), then a system Noto CJK (Debian's
# fonts-noto-cjk) for installs without it.
PACKAGED_FONT = ("mplfonts", "fonts/NotoSansCJKsc-Regular.otf")
SYSTEM_FONTS: tuple[str, ...] = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
)


# -- weeks ------------------------------------------------------------------------------------------


def week_monday(day: dt.date) -> dt.date:
    """The Monday of `day`'s ISO week."""
    return day - dt.timedelta(days=day.weekday())


def last_full_week(at: dt.datetime) -> dt.date:
    """The Monday of the last week that has fully ended at `at` (Beijing time)."""
    local = at.astimezone(ZONE).date()
    return week_monday(local) - dt.timedelta(days=7)


def iso_week(day: dt.date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


@dataclass(frozen=True)
class Week:
    """One report week: its Monday, its label and its bounds as local days and UTC instants."""

    monday: dt.date

    @property
    def label(self) -> str:
        return iso_week(self.monday)

    @property
    def sunday(self) -> dt.date:
        return self.monday + dt.timedelta(days=6)

    @property
    def start(self) -> dt.datetime:
        return dt.datetime.combine(self.monday, dt.time(), ZONE).astimezone(dt.UTC)

    @property
    def end(self) -> dt.datetime:
        return self.start + dt.timedelta(days=7)


def report_weeks(week_start: dt.date, weeks: int) -> list[Week]:
    """The `weeks` weeks ending with `week_start`'s, oldest first."""
    if weeks < 1:
        raise ValueError("a weekly report needs at least one week")
    monday = week_monday(week_start)
    return [Week(monday - dt.timedelta(days=7 * back)) for back in range(weeks - 1, -1, -1)]


def _instant_week(column: Any, weeks: Sequence[Week]) -> sa.Case:
    """Which report week (its label) a timestamp column falls in; NULL outside them."""
    return sa.case(
        *[(sa.and_(column >= w.start, column < w.end), w.label) for w in weeks], else_=None
    )


def _day_week(column: Any, weeks: Sequence[Week]) -> sa.Case:
    """Which report week (its label) a local-date column falls in; NULL outside them."""
    return sa.case(
        *[(sa.and_(column >= w.monday, column <= w.sunday), w.label) for w in weeks], else_=None
    )


def _frame(session: Session, query: Any, columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(session.execute(query).all(), columns=columns)


def _fill(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    for column in columns:
        frame[column] = pd.to_numeric(frame[column]).fillna(0).astype("int64")
    return frame


# -- the figures ------------------------------------------------------------------------------------


@dataclass
class RewardBudget:
    """The reward budgets the Activity Library sets: per group a week, per programme a month."""

    group_week_fen: int
    programme_month_fen: int


@dataclass
class WeeklyFigures:
    """The report's figures, one table each, every row keyed by its week (label)."""

    weeks: list[str]
    week_start: dt.date
    customers: pd.DataFrame  # week, manager, bound, added, left
    tags: pd.DataFrame  # week, syncs, pairs_changed, tags_added, tags_removed
    touches: pd.DataFrame  # week, manager, planned, skipped, confirmed, delivered, failed, lag
    conversions: pd.DataFrame  # week, path, title, touch, converted, holdout_converted
    uplift: pd.DataFrame  # week (cohort week), path, title, treated, ..., uplift, low, high
    aum: pd.DataFrame  # week, path, title, converted, aum_before, aum_after
    groups: pd.DataFrame  # week, active, dying, dead, groups
    participation: pd.DataFrame  # week, script, activities, groups, members, players, correct
    rewards: pd.DataFrame  # week, paid_fen, granted_fen, over_budget, failed, budget_fen
    notes: list[str] = field(default_factory=list)

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        """Every figure as JSON-safe rows, for the table artifacts and the flow's result."""
        out: dict[str, list[dict[str, Any]]] = {}
        for name in TABLES:
            frame: pd.DataFrame = getattr(self, name)
            records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
            out[name] = [{k: _plain(v) for k, v in r.items()} for r in records]
        return out


TABLES: tuple[str, ...] = (
    "customers",
    "tags",
    "touches",
    "conversions",
    "uplift",
    "aum",
    "groups",
    "participation",
    "rewards",
)


def _plain(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


BEFORE = "before"


def _instant_bucket(column: Any, weeks: Sequence[Week]) -> sa.Case:
    """Which report week a timestamp falls in, BEFORE for earlier ones (and NULL: no time)."""
    return sa.case(
        (sa.or_(column.is_(None), column < weeks[0].start), BEFORE),
        *[(column < w.end, w.label) for w in weeks],
        else_=None,
    )


def customer_figures(session: Session, weeks: Sequence[Week]) -> pd.DataFrame:
    """Per week and manager: customers bound at the week's end, contacts added and lost in it.

    Bound: the pair is bound to a bank customer (its remark's mobile matched), was added before
    the week ended and had not left by then. The binding's own time is not stored, so a pair
    bound late counts from its add time. One scan of the contacts: each pair is counted in the
    week it was added (or before the weeks) and in the week it left; bound at a week's end is
    the running sum of the bound ones added minus the bound ones that left.
    """
    c = Contact.__table__.c
    is_bound = sa.func.sum(sa.case((c.customer_id.is_not(None), 1), else_=0))
    frames = []
    for column, name in ((c.added_at, "added"), (c.left_at, "left")):
        bucket = _instant_bucket(column, weeks)
        span = column < weeks[-1].end
        if name == "added":
            span = sa.or_(column.is_(None), span)
        frames.append(
            _frame(
                session,
                sa.select(bucket, c.userid, sa.func.count(), is_bound)
                .where(span)
                .group_by(bucket, c.userid),
                ["week", "manager", name, f"bound_{name}"],
            )
        )
    added, left = frames
    order = [BEFORE, *[w.label for w in weeks]]
    managers = sorted(set(added["manager"]) | set(left["manager"]))
    if not managers:
        return pd.DataFrame(columns=["week", "manager", "bound", "added", "left"])
    grid = pd.MultiIndex.from_product([managers, order], names=["manager", "week"])
    counts = (
        added.set_index(["manager", "week"])
        .join(left.set_index(["manager", "week"]), how="outer")
        .reindex(grid)
        .fillna(0)
    )
    running = counts[["bound_added", "bound_left"]].groupby(level="manager").cumsum()
    counts["bound"] = running["bound_added"] - running["bound_left"]
    out = counts.reset_index()
    out = _fill(out[out["week"] != BEFORE], ["bound", "added", "left"])
    return _sorted(out[["week", "manager", "bound", "added", "left"]], weeks, ["manager"])


def _in_weeks(column: Any, weeks: Sequence[Week]) -> Any:
    """The range condition of a timestamp column: cheap to test before any CASE (and indexable)."""
    return sa.and_(column >= weeks[0].start, column < weeks[-1].end)


def _in_days(column: Any, weeks: Sequence[Week]) -> Any:
    """The range condition of a local-date column."""
    return sa.and_(column >= weeks[0].monday, column <= weeks[-1].sunday)


def _sorted(frame: pd.DataFrame, weeks: Sequence[Week], by: list[str]) -> pd.DataFrame:
    order = {w.label: i for i, w in enumerate(weeks)}
    frame = frame.assign(_w=frame["week"].map(order))
    return frame.sort_values(["_w", *by], kind="stable").drop(columns="_w").reset_index(drop=True)


def tag_figures(session: Session, weeks: Sequence[Week]) -> pd.DataFrame:
    """Per week: synced exports by business date, and the tag changes their pushes made.

    One export a day: the rows read here are the week's few sync reports, not contacts.
    """
    week = _day_week(Export.export_date, weeks)
    rows = _frame(
        session,
        sa.select(week, Export.report).where(
            Export.status == SYNCED, _in_days(Export.export_date, weeks)
        ),
        ["week", "report"],
    )
    records = [
        {
            "week": w,
            "syncs": 1,
            "pairs_changed": int((r or {}).get("pairs_changed", 0)),
            "tags_added": int((r or {}).get("tags_added", 0)),
            "tags_removed": int((r or {}).get("tags_removed", 0)),
        }
        for w, r in zip(rows["week"], rows["report"], strict=True)
    ]
    frame = pd.DataFrame(
        records, columns=["week", "syncs", "pairs_changed", "tags_added", "tags_removed"]
    )
    full = pd.DataFrame({"week": [w.label for w in weeks]})
    totals = frame.groupby("week", as_index=False).sum()
    out = _fill(
        full.merge(totals, on="week", how="left"),
        ["syncs", "pairs_changed", "tags_added", "tags_removed"],
    )
    return out


def touch_figures(session: Session, weeks: Sequence[Week]) -> pd.DataFrame:
    """Per week and manager: sends planned, skipped, confirmed, delivered, failed; lag.

    Planned and skipped count by the local day a send counts against; confirmed, delivered and
    failed by when that happened. The confirmation lag (minutes from WeCom's msgid to the
    employee's confirmation, median over the sends) is read per message, never per customer.
    """
    s = Send.__table__.c
    day_week = _day_week(s.send_day, weeks)
    planned = _frame(
        session,
        sa.select(
            day_week,
            s.sender,
            sa.func.sum(sa.case((s.status.not_in([DEFERRED, SKIPPED]), 1), else_=0)),
            sa.func.sum(sa.case((s.status == SKIPPED, 1), else_=0)),
        )
        .where(_in_days(s.send_day, weeks))
        .group_by(day_week, s.sender),
        ["week", "manager", "planned", "skipped"],
    )
    parts = [planned]
    for name, column, condition in (
        ("confirmed", s.confirmed_at, s.confirmed_at.is_not(None)),
        ("delivered", s.delivered_at, s.status == DELIVERED),
        ("failed", s.settled_at, s.status == FAILED),
    ):
        week = _instant_week(column, weeks)
        parts.append(
            _frame(
                session,
                sa.select(week, s.sender, sa.func.count())
                .where(_in_weeks(column, weeks), condition)
                .group_by(week, s.sender),
                ["week", "manager", name],
            )
        )
    out = parts[0]
    for part in parts[1:]:
        out = out.merge(part, on=["week", "manager"], how="outer")
    out = _fill(out, ["planned", "skipped", "confirmed", "delivered", "failed"])
    lag = confirmation_lag(session, weeks)
    out = out.merge(lag, on=["week", "manager"], how="left")
    return _sorted(out, weeks, ["manager"])


def confirmation_lag(session: Session, weeks: Sequence[Week]) -> pd.DataFrame:
    """Per week and manager: median minutes from creation to confirmation, over the sends.

    One row per (manager, message) comes back from the database (its sends share the times),
    so the median over sends is a weighted median over messages.
    """
    s = Send.__table__.c
    week = _instant_week(s.confirmed_at, weeks)
    messages = _frame(
        session,
        sa.select(
            week,
            s.sender,
            s.msgid,
            sa.func.min(s.created_at),
            sa.func.min(s.confirmed_at),
            sa.func.count(),
        )
        .where(_in_weeks(s.confirmed_at, weeks), s.created_at.is_not(None), s.msgid.is_not(None))
        .group_by(week, s.sender, s.msgid),
        ["week", "manager", "msgid", "created_at", "confirmed_at", "sends"],
    )
    if messages.empty:
        return pd.DataFrame(columns=["week", "manager", "median_lag_minutes"])
    created = pd.to_datetime(messages["created_at"], utc=True)
    confirmed = pd.to_datetime(messages["confirmed_at"], utc=True)
    messages["lag"] = (confirmed - created).dt.total_seconds() / 60
    rows = []
    for (w, manager), group in messages.groupby(["week", "manager"], sort=True):
        lags = np.repeat(group["lag"].to_numpy(), group["sends"].to_numpy().astype(int))
        rows.append((w, manager, round(float(np.median(lags)), 1)))
    return pd.DataFrame(rows, columns=["week", "manager", "median_lag_minutes"])


def _path_titles(session: Session) -> dict[str, str]:
    """Each path's title as ops read it (代发稳健理财), from its newest cohort."""
    rows = session.execute(
        sa.select(Cohort.path, Cohort.title).order_by(Cohort.cohort_day, Cohort.id)
    ).all()
    return {path: title for path, title in rows}


def conversion_figures(session: Session, weeks: Sequence[Week]) -> pd.DataFrame:
    """Per week, path and attributed touch (0: converted untouched): conversions, holdout's."""
    week = _day_week(Conversion.converted_on, weeks)
    touch = sa.func.coalesce(Conversion.attributed_touch, 0)
    out = _frame(
        session,
        sa.select(
            week,
            Cohort.path,
            touch,
            sa.func.sum(sa.case((Conversion.holdout.is_(False), 1), else_=0)),
            sa.func.sum(sa.case((Conversion.holdout.is_(True), 1), else_=0)),
        )
        .join(Cohort, Cohort.id == Conversion.cohort_id)
        .where(_in_days(Conversion.converted_on, weeks))
        .group_by(week, Cohort.path, touch),
        ["week", "path", "touch", "converted", "holdout_converted"],
    )
    out = _fill(out, ["touch", "converted", "holdout_converted"])
    out.insert(2, "title", out["path"].map(_path_titles(session)))
    return _sorted(out, weeks, ["path", "touch"])


UPLIFT_COLUMNS = [
    "week", "path", "title", "treated", "treated_converted", "holdout", "holdout_converted",
    "treated_rate", "holdout_rate", "uplift", "uplift_low", "uplift_high",
]  # fmt: skip


def uplift_figures(session: Session, weeks: Sequence[Week]) -> pd.DataFrame:
    """Per cohort week and path: treated against holdout conversion so far, with its interval.

    The interval is the path's own (journeys.difference_interval: Newcombe over Wilson); the
    counts come from one grouped query over the enrolments.
    """
    week = _day_week(Cohort.cohort_day, weeks)
    e = Enrollment.__table__.c
    converted = e.status == CONVERTED
    counts = _frame(
        session,
        sa.select(
            week,
            Cohort.path,
            sa.func.sum(sa.case((e.holdout.is_(False), 1), else_=0)),
            sa.func.sum(sa.case((sa.and_(e.holdout.is_(False), converted), 1), else_=0)),
            sa.func.sum(sa.case((e.holdout.is_(True), 1), else_=0)),
            sa.func.sum(sa.case((sa.and_(e.holdout.is_(True), converted), 1), else_=0)),
        )
        .join(Cohort, Cohort.id == e.cohort_id)
        .where(_in_days(Cohort.cohort_day, weeks))
        .group_by(week, Cohort.path),
        ["week", "path", "treated", "treated_converted", "holdout", "holdout_converted"],
    )
    counts = _fill(counts, ["treated", "treated_converted", "holdout", "holdout_converted"])
    titles = _path_titles(session)
    rows = []
    for r in counts.itertuples(index=False):  # one row per (week, path)
        interval = difference_interval(
            r.treated_converted, r.treated, r.holdout_converted, r.holdout
        )
        rows.append(
            [
                r.week, r.path, titles.get(r.path), r.treated, r.treated_converted, r.holdout,
                r.holdout_converted,
                r.treated_converted / r.treated if r.treated else None,
                r.holdout_converted / r.holdout if r.holdout else None,
                *(interval if interval else (None, None, None)),
            ]
        )  # fmt: skip
    return _sorted(pd.DataFrame(rows, columns=UPLIFT_COLUMNS), weeks, ["path"])


def aum_figures(
    session: Session, weeks: Sequence[Week], aum_now: pd.DataFrame | None
) -> pd.DataFrame:
    """Per week of conversion and path: converted customers' AUM at entry and now.

    Before is the AUM the member entered with (stored on the enrolment); after is the AUM in
    `aum_now` (customer_id, aum: the newest accepted export), when the flow could read one.
    Only the week's converted customer ids are read, and summed in one vectorised merge.
    """
    week = _day_week(Conversion.converted_on, weeks)
    e = Enrollment.__table__.c
    base = (
        sa.select(week.label("week"), Cohort.path, e.customer_id, e.base_aum)
        .select_from(Conversion.__table__)
        .join(Enrollment, Enrollment.id == Conversion.enrollment_id)
        .join(Cohort, Cohort.id == Conversion.cohort_id)
        .where(_in_days(Conversion.converted_on, weeks), Conversion.holdout.is_(False))
    )
    columns = ["week", "path", "title", "converted", "aum_before", "aum_after"]
    if aum_now is None:
        totals = _frame(
            session,
            sa.select(
                week, Cohort.path, sa.func.count(), sa.func.coalesce(sa.func.sum(e.base_aum), 0)
            )
            .select_from(Conversion.__table__)
            .join(Enrollment, Enrollment.id == Conversion.enrollment_id)
            .join(Cohort, Cohort.id == Conversion.cohort_id)
            .where(_in_days(Conversion.converted_on, weeks), Conversion.holdout.is_(False))
            .group_by(week, Cohort.path),
            ["week", "path", "converted", "aum_before"],
        )
        totals["aum_after"] = None
    else:
        members = _frame(session, base, ["week", "path", "customer_id", "aum_before"])
        now = aum_now[["customer_id", "aum"]].drop_duplicates("customer_id")
        members = members.merge(now, on="customer_id", how="left")
        totals = (
            members.groupby(["week", "path"], as_index=False)
            .agg(
                converted=("customer_id", "size"),
                aum_before=("aum_before", "sum"),
                aum_after=("aum", "sum"),
            )
            .reindex(columns=["week", "path", "converted", "aum_before", "aum_after"])
        )
    totals.insert(2, "title", totals["path"].map(_path_titles(session)))
    return _sorted(totals[columns], weeks, ["path"])


def group_figures(session: Session, weeks: Sequence[Week]) -> pd.DataFrame:
    """Per week: groups active, dying and dead, by each group's last health check of the week.

    Dead: no members left, or nobody played any activity of the week (participation 0);
    dying: flagged by group-health (low participation weeks running, or a heavy loss) and not
    dead; active: the rest.
    """
    h = GroupHealth.__table__.c
    week = _day_week(h.day, weeks)
    last = (
        sa.select(week.label("week"), h.chat_id, sa.func.max(h.day).label("day"))
        .where(_in_days(h.day, weeks))
        .group_by(week, h.chat_id)
        .subquery()
    )
    dead = sa.or_(h.members == 0, h.participation == 0)
    rows = _frame(
        session,
        sa.select(
            last.c.week,
            sa.func.count(),
            sa.func.sum(sa.case((dead, 1), else_=0)),
            sa.func.sum(sa.case((sa.and_(sa.not_(dead), h.dying.is_(True)), 1), else_=0)),
        )
        .select_from(last)
        .join(GroupHealth, sa.and_(h.chat_id == last.c.chat_id, h.day == last.c.day))
        .group_by(last.c.week),
        ["week", "groups", "dead", "dying"],
    )
    full = pd.DataFrame({"week": [w.label for w in weeks]})
    out = _fill(full.merge(rows, on="week", how="left"), ["groups", "dead", "dying"])
    out["active"] = out["groups"] - out["dead"] - out["dying"]
    return out[["week", "active", "dying", "dead", "groups"]]


def dying_groups(session: Session, week: Week, limit: int = 20) -> pd.DataFrame:
    """The groups dying or dead at the end of `week` (chat_id, owner, members, participation)."""
    h = GroupHealth.__table__.c
    last = (
        sa.select(h.chat_id, sa.func.max(h.day).label("day"))
        .where(h.day >= week.monday, h.day <= week.sunday)
        .group_by(h.chat_id)
        .subquery()
    )
    return _frame(
        session,
        sa.select(h.chat_id, h.owner, h.members, h.participation, h.reason)
        .join(last, sa.and_(h.chat_id == last.c.chat_id, h.day == last.c.day))
        .where(sa.or_(h.dying.is_(True), h.members == 0, h.participation == 0))
        .order_by(h.members, h.chat_id)
        .limit(limit),
        ["chat_id", "owner", "members", "participation", "reason"],
    )


def participation_figures(
    session: Session, weeks: Sequence[Week], script_titles: dict[str, str] | None = None
) -> pd.DataFrame:
    """Per week and activity script: activities, groups asked, members, players, correct.

    `script_titles` (script -> theme, e.g. quiz -> 理财知识) names the scripts as ops do.
    """
    a = Activity.__table__.c
    p = ActivityParticipation.__table__.c
    labels = [w.label for w in weeks]
    out = _frame(
        session,
        sa.select(
            a.week,
            a.script,
            sa.func.count(sa.distinct(a.key)),
            sa.func.count(),
            sa.func.sum(p.members),
            sa.func.sum(p.players),
            sa.func.sum(p.correct),
        )
        .join(Activity, Activity.key == p.activity_key)
        .where(a.week.in_(labels))
        .group_by(a.week, a.script),
        ["week", "script", "activities", "groups", "members", "players", "correct"],
    )
    out = _fill(out, ["activities", "groups", "members", "players", "correct"])
    out["participation"] = (out["players"] / out["members"].where(out["members"] > 0)).round(4)
    titles = script_titles or {}
    out.insert(2, "title", [titles.get(script) or script for script in out["script"]])
    return _sorted(out, weeks, ["script"])


def reward_figures(
    session: Session, weeks: Sequence[Week], budget: RewardBudget | None
) -> pd.DataFrame:
    """Per budget week: fen paid, granted (waiting for their pay day), wins over budget, failed.

    The week's budget is the group budget times the groups that won something that week (the
    budget is per group); month_paid_fen is the programme's month so far against its budget.
    """
    r = RewardWin.__table__.c
    labels = [w.label for w in weeks]
    rows = _frame(
        session,
        sa.select(
            r.week,
            sa.func.sum(sa.case((r.status == PAID, r.amount_fen), else_=0)),
            sa.func.sum(sa.case((r.status == GRANTED, r.amount_fen), else_=0)),
            sa.func.sum(sa.case((r.status == OVER_BUDGET, 1), else_=0)),
            sa.func.sum(sa.case((r.status == WIN_FAILED, 1), else_=0)),
            sa.func.count(sa.distinct(r.chat_id)),
        )
        .where(r.week.in_(labels))
        .group_by(r.week),
        ["week", "paid_fen", "granted_fen", "over_budget", "failed", "groups"],
    )
    full = pd.DataFrame({"week": labels})
    out = _fill(
        full.merge(rows, on="week", how="left"),
        ["paid_fen", "granted_fen", "over_budget", "failed", "groups"],
    )
    out["budget_fen"] = out["groups"] * budget.group_week_fen if budget is not None else pd.NA
    month = weeks[-1].sunday.strftime("%Y-%m")
    month_paid = session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(r.amount_fen), 0)).where(
            r.month == month, r.status == PAID
        )
    )
    out["month"] = month
    out["month_paid_fen"] = int(month_paid or 0)
    out["month_budget_fen"] = budget.programme_month_fen if budget is not None else pd.NA
    return out


def weekly_figures(
    session: Session,
    week_start: dt.date,
    weeks: int = 4,
    *,
    aum_now: pd.DataFrame | None = None,
    budget: RewardBudget | None = None,
    script_titles: dict[str, str] | None = None,
) -> WeeklyFigures:
    """Every figure of the report for the week of `week_start` and the `weeks - 1` before it.

    `aum_now` (customer_id, aum) is the newest accepted export's AUM, `budget` the Activity
    Library's reward budgets and `script_titles` its scripts' themes; each is optional and the
    report says what it leaves out.
    """
    span = report_weeks(week_start, weeks)
    notes = []
    if aum_now is None:
        notes.append(
            "AUM after conversion is not shown: no accepted core-banking export could be read"
        )
    return WeeklyFigures(
        weeks=[w.label for w in span],
        week_start=span[-1].monday,
        customers=customer_figures(session, span),
        tags=tag_figures(session, span),
        touches=touch_figures(session, span),
        conversions=conversion_figures(session, span),
        uplift=uplift_figures(session, span),
        aum=aum_figures(session, span, aum_now),
        groups=group_figures(session, span),
        participation=participation_figures(session, span, script_titles),
        rewards=reward_figures(session, span, budget),
        notes=notes,
    )


# -- charts -----------------------------------------------------------------------------------------


def cjk_font_path() -> Path | None:
    """The CJK font file the charts use: the packaged Noto Sans CJK SC, else a system Noto CJK."""
    spec = importlib.util.find_spec(PACKAGED_FONT[0])
    if spec is not None and spec.submodule_search_locations:
        packaged = Path(next(iter(spec.submodule_search_locations))) / PACKAGED_FONT[1]
        if packaged.is_file():
            return packaged
    for candidate in SYSTEM_FONTS:
        if Path(candidate).is_file():
            return Path(candidate)
    return None


_FONT_NAME: str | None = None


def use_cjk_font() -> str:
    """Register the CJK font with matplotlib (once) and make it the default; return its name.

    Raises with what to install when none is found: charts with Chinese labels drawn as empty
    boxes would be a report nobody can read.
    """
    global _FONT_NAME
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import font_manager, rcParams

    if _FONT_NAME is None:
        path = cjk_font_path()
        if path is None:
            raise RuntimeError(
                "no CJK font found for the weekly report's charts: `pip install mplfonts` "
                "(siyu depends on it) or `apt-get install fonts-noto-cjk`"
            )
        font_manager.fontManager.addfont(str(path))
        _FONT_NAME = font_manager.FontProperties(fname=str(path)).get_name()
    rcParams["font.family"] = ["sans-serif"]
    rcParams["font.sans-serif"] = [_FONT_NAME, "DejaVu Sans"]
    rcParams["axes.unicode_minus"] = False
    rcParams["font.size"] = 11
    return _FONT_NAME


def _png(figure: Any) -> bytes:
    from matplotlib import pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    return buffer.getvalue()


def _pivot(
    frame: pd.DataFrame, weeks: list[str], column: str, value: str, top: int | None = None
) -> pd.DataFrame:
    """Weeks x categories of `value`; with `top`, the largest categories of the last week and
    the rest summed as 其他 (a bank has hundreds of managers: the tables list them all)."""
    if frame.empty:
        return pd.DataFrame(index=weeks)
    table = frame.pivot_table(index="week", columns=column, values=value, aggfunc="sum")
    table = table.reindex(weeks).fillna(0)
    if top is not None and len(table.columns) > top:
        order = table.iloc[-1].sort_values(ascending=False, kind="stable").index
        kept = table[order[:top]]
        table = kept.assign(其他=table[order[top:]].sum(axis=1))
    return table


def _slowest(frame: pd.DataFrame, weeks: list[str], top: int) -> pd.DataFrame:
    """Weeks x managers of the median confirmation lag: the `top` slowest of the last week."""
    lags = frame.dropna(subset=["median_lag_minutes"])
    if lags.empty:
        return pd.DataFrame(index=weeks)
    table = lags.pivot_table(index="week", columns="manager", values="median_lag_minutes")
    table = table.reindex(weeks)
    order = table.iloc[-1].fillna(-1).sort_values(ascending=False, kind="stable").index
    return table[order[:top]]


def _bars(ax: Any, table: pd.DataFrame, title: str, ylabel: str) -> None:
    weeks = list(table.index)
    n = max(len(table.columns), 1)
    width = 0.8 / n
    x = np.arange(len(weeks))
    for i, name in enumerate(table.columns):
        ax.bar(x + (i - (n - 1) / 2) * width, table[name].to_numpy(), width, label=str(name))
    ax.set_xticks(x, weeks)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if len(table.columns):
        ax.legend(fontsize=9, loc="best", framealpha=0.8)


def render_charts(figures: WeeklyFigures) -> dict[str, bytes]:
    """The report's charts as PNG bytes (matplotlib, Agg), Chinese labels in the CJK font."""
    from matplotlib import pyplot as plt

    use_cjk_font()
    weeks = figures.weeks
    charts: dict[str, bytes] = {}

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    added = _pivot(figures.customers, weeks, "manager", "added", top=CHART_SERIES)
    _bars(left, added, "新增客户 (每周)", "客户")
    bound = _pivot(figures.customers, weeks, "manager", "bound", top=CHART_SERIES)
    _bars(right, bound, "绑定客户 (周末)", "客户")
    charts["customers"] = _png(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    totals = figures.touches.groupby("week")[["planned", "confirmed", "delivered"]].sum()
    totals = (
        totals.reindex(weeks)
        .fillna(0)
        .rename(columns={"planned": "计划", "confirmed": "确认", "delivered": "送达"})
    )
    _bars(left, totals, "触达: 计划 / 确认 / 送达", "条")
    lag = _slowest(figures.touches, weeks, CHART_SERIES)
    for manager in lag.columns:
        right.plot(weeks, lag[manager].to_numpy(), marker="o", label=str(manager))
    right.set_title("确认时长中位数 (分钟, 最慢的客户经理)")
    if len(lag.columns):
        right.legend(fontsize=9)
    charts["touches"] = _png(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    conv = figures.conversions.assign(
        name=figures.conversions["title"].fillna(figures.conversions["path"])
    )
    _bars(left, _pivot(conv, weeks, "name", "converted", top=CHART_SERIES), "转化 (按路径)", "客户")
    by_touch = conv.assign(touch=conv["touch"].map(lambda t: f"第{t}触达" if t else "未触达"))
    _bars(right, _pivot(by_touch, weeks, "touch", "converted"), "转化 (按触达)", "客户")
    charts["conversions"] = _png(fig)

    fig, ax = plt.subplots(figsize=(10, 3.6))
    up = figures.uplift.dropna(subset=["uplift"])
    if not up.empty:
        names = sorted(set(up["title"].fillna(up["path"])))
        x = np.arange(len(weeks))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            rows = up[up["title"].fillna(up["path"]) == name].set_index("week").reindex(weeks)
            center = 100 * rows["uplift"].astype(float).to_numpy()
            low = center - 100 * rows["uplift_low"].astype(float).to_numpy()
            high = 100 * rows["uplift_high"].astype(float).to_numpy() - center
            ax.errorbar(x + (i - (len(names) - 1) / 2) * width, center, yerr=[low, high],
                        fmt="o", capsize=4, label=name)  # fmt: skip
        ax.set_xticks(x, weeks)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.legend(fontsize=9)
    ax.set_title("提升 (实验组 - 对照组, 百分点, 95% 区间; 按入组周)")
    charts["uplift"] = _png(fig)

    fig, ax = plt.subplots(figsize=(10, 3.4))
    aum = figures.aum.groupby("week")[["aum_before", "aum_after"]].sum(min_count=1)
    aum = (aum.reindex(weeks) / 10_000).rename(
        columns={"aum_before": "入组时", "aum_after": "最新"}
    )
    _bars(ax, aum.fillna(0), "转化客户资产 (万元)", "万元")
    charts["aum"] = _png(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    groups = figures.groups.set_index("week").reindex(weeks).fillna(0)
    bottom = np.zeros(len(weeks))
    for column, label, colour in (("active", "活跃", "#4c9a2a"), ("dying", "衰退", "#e8a33d"),
                                  ("dead", "沉寂", "#b03a2e")):  # fmt: skip
        values = groups[column].to_numpy(dtype=float)
        left.bar(weeks, values, bottom=bottom, label=label, color=colour)
        bottom += values
    left.set_title("社群: 活跃 / 衰退 / 沉寂")
    left.legend(fontsize=9)
    part = _pivot(figures.participation, weeks, "title", "participation") * 100
    _bars(right, part, "活动参与率 (%)", "%")
    charts["groups"] = _png(fig)

    fig, ax = plt.subplots(figsize=(10, 3.4))
    rewards = figures.rewards.set_index("week").reindex(weeks)
    table = pd.DataFrame(
        {
            "已发放": rewards["paid_fen"].fillna(0) / 100,
            "待发放": rewards["granted_fen"].fillna(0) / 100,
            "预算": pd.to_numeric(rewards["budget_fen"], errors="coerce").fillna(0) / 100,
        },
        index=weeks,
    )
    _bars(ax, table, "奖励发放与预算 (元)", "元")
    charts["rewards"] = _png(fig)
    return charts


def chart_labels(figures: WeeklyFigures) -> list[str]:
    """Every text the charts draw from data (path titles, managers, scripts): what the font
    must cover."""
    texts = set(figures.conversions["title"].dropna()) | set(figures.uplift["title"].dropna())
    texts |= set(figures.customers["manager"]) | set(figures.participation["title"])
    return sorted(str(t) for t in texts)


# -- markdown ---------------------------------------------------------------------------------------


CHART_TITLES: dict[str, str] = {
    "customers": "Customers bound and added per manager",
    "touches": "Touches planned / confirmed / delivered, and confirmation lag",
    "conversions": "Conversions per path and per touch",
    "uplift": "Uplift per path (cohort week), with its 95 % interval",
    "aum": "AUM of converted customers, at entry and now",
    "groups": "Groups active / dying / dead, participation per activity",
    "rewards": "Rewards paid against budget",
}


def _table(frame: pd.DataFrame, columns: dict[str, str], formats: dict[str, Any]) -> list[str]:
    if frame.empty:
        return ["", "_nothing this period_", ""]
    lines = [
        "",
        "| " + " | ".join(columns.values()) + " |",
        "|" + "|".join("---" if c in ("week", "manager", "path", "title", "script") else "---:"
                       for c in columns) + "|",
    ]  # fmt: skip
    for row in frame.itertuples(index=False):
        cells = []
        for column in columns:
            value = getattr(row, column)
            if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
                cells.append("–")
            elif column in formats:
                cells.append(formats[column](value))
            elif isinstance(value, int | np.integer):
                cells.append(f"{int(value):,}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _pct(value: Any) -> str:
    return f"{100 * float(value):.1f} %"


def _pp(value: Any) -> str:
    return f"{100 * float(value):+.1f} pp"


def _yuan(value: Any) -> str:
    return f"{float(value) / 100:,.2f}"


def _wan(value: Any) -> str:
    return f"{float(value) / 10_000:,.1f}"


def report_markdown(
    figures: WeeklyFigures, charts: dict[str, bytes], dying: pd.DataFrame | None = None
) -> str:
    """The report as one markdown document: charts as PNG data URLs, the figures as tables."""
    week = figures.weeks[-1]
    monday = figures.week_start
    lines = [
        f"# Weekly report {week} ({monday:%Y-%m-%d} to {monday + dt.timedelta(days=6):%Y-%m-%d})",
        "",
        f"Week over week: {', '.join(figures.weeks)} (Beijing time, Monday to Sunday). "
        "Managers by WeCom userid; customers only as counts.",
    ]
    lines += [f"\n> {note}" for note in figures.notes]
    # Charts first (what management looks at), then the figures behind them.
    for name, title in CHART_TITLES.items():
        if name in charts:
            data = base64.b64encode(charts[name]).decode()
            lines += ["", f"## {title}", "", f"![{title}](data:image/png;base64,{data})"]
    lines += ["", "# Figures", "", "The same figures are table artifacts `weekly-report-*`."]
    for name, title in CHART_TITLES.items():
        lines += ["", f"## {title}"]
        lines += _SECTIONS[name](figures)
    if dying is not None and not dying.empty:
        lines += ["", "## Groups dying or dead at the end of the week"]
        lines += _table(
            dying,
            {"name": "group", "chat_id": "chat id", "owner": "owner", "members": "members",
             "participation": "participation", "reason": "reason"},
            {"participation": _pct},
        )  # fmt: skip
    return "\n".join(lines)


def _customers(f: WeeklyFigures) -> list[str]:
    return _table(f.customers, {"week": "week", "manager": "manager", "bound": "bound",
                                "added": "added", "left": "left"}, {})  # fmt: skip


def _touches(f: WeeklyFigures) -> list[str]:
    return _table(
        f.touches,
        {"week": "week", "manager": "manager", "planned": "planned", "skipped": "skipped",
         "confirmed": "confirmed", "delivered": "delivered", "failed": "failed",
         "median_lag_minutes": "median lag (min)"},
        {"median_lag_minutes": lambda v: f"{float(v):g}"},
    ) + ["Tags synced:"] + _table(
        f.tags,
        {"week": "week", "syncs": "syncs", "pairs_changed": "pairs changed",
         "tags_added": "tags added", "tags_removed": "tags removed"},
        {},
    )  # fmt: skip


def _conversions(f: WeeklyFigures) -> list[str]:
    return _table(
        f.conversions.assign(touch=f.conversions["touch"].map(lambda t: str(t) if t else "none")),
        {"week": "week", "title": "path", "touch": "touch", "converted": "converted",
         "holdout_converted": "holdout converted"},
        {},
    )  # fmt: skip


def _uplift(f: WeeklyFigures) -> list[str]:
    frame = f.uplift.assign(
        interval=[
            "–" if low is None or pd.isna(low) else f"{100 * low:+.1f} to {100 * high:+.1f} pp"
            for low, high in zip(f.uplift["uplift_low"], f.uplift["uplift_high"], strict=True)
        ]
    )
    return _table(
        frame,
        {"week": "cohort week", "title": "path", "treated": "treated",
         "treated_rate": "converted", "holdout": "holdout", "holdout_rate": "converted",
         "uplift": "uplift", "interval": "95 % interval"},
        {"treated_rate": _pct, "holdout_rate": _pct, "uplift": _pp},
    )  # fmt: skip


def _aum(f: WeeklyFigures) -> list[str]:
    return _table(
        f.aum,
        {"week": "week", "title": "path", "converted": "converted",
         "aum_before": "AUM at entry (10k yuan)", "aum_after": "AUM now (10k yuan)"},
        {"aum_before": _wan, "aum_after": _wan},
    )  # fmt: skip


def _groups(f: WeeklyFigures) -> list[str]:
    return _table(
        f.groups,
        {"week": "week", "active": "active", "dying": "dying", "dead": "dead", "groups": "groups"},
        {},
    ) + ["Participation per activity:"] + _table(
        f.participation,
        {"week": "week", "title": "activity", "activities": "runs", "groups": "groups",
         "members": "members", "players": "players", "correct": "correct",
         "participation": "participation"},
        {"participation": _pct},
    )  # fmt: skip


def _rewards(f: WeeklyFigures) -> list[str]:
    return _table(
        f.rewards,
        {"week": "week", "paid_fen": "paid (yuan)", "granted_fen": "granted, not yet due (yuan)",
         "over_budget": "wins over budget", "failed": "payouts failed",
         "budget_fen": "week budget (yuan)", "month_paid_fen": "month paid (yuan)",
         "month_budget_fen": "month budget (yuan)"},
        {"paid_fen": _yuan, "granted_fen": _yuan, "budget_fen": _yuan,
         "month_paid_fen": _yuan, "month_budget_fen": _yuan},
    )  # fmt: skip


_SECTIONS = {
    "customers": _customers,
    "touches": _touches,
    "conversions": _conversions,
    "uplift": _uplift,
    "aum": _aum,
    "groups": _groups,
    "rewards": _rewards,
}
