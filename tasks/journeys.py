"""The conversion path's logic over sets: enrolment, due times, variants, goals, attribution, uplift.

Every function takes and returns frames (one row a customer or a member) and loops over paths,
conditions, products or touches, never over customers: a cohort of 100,000 costs the same few
vectorised operations as one of ten. The database side (reading members, writing cohorts and
conversions) is at the end, one query or one bulk insert per step.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from scipy.stats import binomtest
from sqlalchemy.orm import Session

from siyu.blocks.conversion_paths import (
    DETAILED_PLAN,
    FLAG_FIELDS,
    FOLLOW_UP,
    GENERAL,
    INTRO,
    PRODUCT_PREFIX,
    REPEAT,
    ConversionPath,
    ConversionPaths,
    EntryCondition,
    GoalCondition,
    Product,
    TouchContent,
)
from siyu.blocks.send_rules import SendRules
from siyu.schemas.conversion import (
    ACTIVE,
    CONVERTED,
    DONE,
    DROPPED,
    EXPIRED,
    LEFT,
    SCHEDULED,
    UNREACHABLE,
    Cohort,
    Conversion,
    Enrollment,
    TouchRun,
)
from siyu.schemas.ledger import (
    CUSTOMER,
    DEFERRED,
    DELIVERED,
    FAILED,
    PATH_PAUSED,
    SKIPPED,
    Send,
)
from siyu.schemas.models import Contact
from siyu.tasks.ledger import Reserved, ledger_counts, reserve
from siyu.tasks.quota import PlanResult, plan_sends
from siyu.tasks.working_days import is_working_day

# The export fields kept at entry: what "turns true" and "rises by" compare against.
BASELINE_FIELDS: tuple[str, ...] = ("aum", "aum_peak", *sorted(FLAG_FIELDS))
HOLDOUT_BUCKETS = 10_000
_CHUNK = 5_000
# The reason every send of a paused path's touch run is skipped with: "path paused by ops".
PAUSED_BY_OPS = PATH_PAUSED


# -- entry ------------------------------------------------------------------------------------------


def _compare(values: pd.Series, op: str, value: Any) -> np.ndarray:
    if op == "is_true":
        return values.fillna(False).astype(bool).to_numpy()
    if op == "is_false":
        return ~values.fillna(False).astype(bool).to_numpy()
    if isinstance(value, int | float):
        values = pd.to_numeric(values, errors="coerce")
    result = {
        "eq": values == value,
        "ne": values != value,
        "gt": values > value,
        "ge": values >= value,
        "lt": values < value,
        "le": values <= value,
    }[op]
    return result.fillna(False).to_numpy(dtype=bool)


def _has_tag(customers: pd.DataFrame, tags: pd.DataFrame, tag: str) -> np.ndarray:
    holders = tags.loc[tags["tag"] == tag, "customer_id"]
    return customers["customer_id"].isin(holders).to_numpy()


def _condition(customers: pd.DataFrame, tags: pd.DataFrame, c: EntryCondition) -> np.ndarray:
    if c.tag is not None:
        has = _has_tag(customers, tags, c.tag)
        return has if c.has_tag else ~has
    if c.field not in customers.columns:
        raise ValueError(f"the customers lack the field {c.field!r} an entry rule reads")
    return _compare(customers[c.field], c.op, c.value)


def entry_mask(customers: pd.DataFrame, path: ConversionPath, tags: pd.DataFrame) -> np.ndarray:
    """Which customers match `path`'s entry rule (every condition), as a boolean array."""
    mask = np.ones(len(customers), dtype=bool)
    for condition in path.entry.all_of:
        mask &= _condition(customers, tags, condition)
    return mask


def holdout_mask(customer_ids: pd.Series, path: str, month: str, share: float) -> np.ndarray:
    """The stable holdout: a hash of (customer, path, month) below `share` of the buckets.

    The same customer entering the same path in the same month is always in or out, whatever
    the run, the machine or the order of the rows.
    """
    if share <= 0 or customer_ids.empty:
        return np.zeros(len(customer_ids), dtype=bool)
    buckets = np.fromiter(
        (
            int.from_bytes(
                hashlib.blake2b(f"{c}|{path}|{month}".encode(), digest_size=8).digest(), "big"
            )
            % HOLDOUT_BUCKETS
            for c in customer_ids.astype(str)
        ),
        dtype=np.int64,
        count=len(customer_ids),
    )
    return buckets < round(share * HOLDOUT_BUCKETS)


def choose_entrants(
    customers: pd.DataFrame,
    playbooks: ConversionPaths,
    tags: pd.DataFrame,
    in_a_path: pd.Series,
    day: dt.date,
) -> pd.DataFrame:
    """Who enters which path on `day`: customers matching an entry rule and in no path.

    `customers`: one row per customer (customer_id, userid, external_userid and the export
    fields); `tags`: (customer_id, tag) of the tags their contact carries; `in_a_path`: ids of
    customers with an active enrolment. A customer matching several paths enters the one of
    highest priority. Returns the entrants with `path` and `holdout` columns.
    """
    month = f"{day.year:04d}-{day.month:02d}"
    free = ~customers["customer_id"].isin(in_a_path).to_numpy()
    chosen = pd.Series(pd.NA, index=customers.index, dtype="string")
    for path in sorted(playbooks.paths, key=lambda p: -p.priority):
        if not path.active:
            continue
        take = free & chosen.isna().to_numpy() & entry_mask(customers, path, tags)
        chosen[take] = path.name
    entrants = customers.loc[chosen.notna()].copy()
    entrants["path"] = chosen[chosen.notna()].astype(str)
    entrants["holdout"] = False
    for name, rows in entrants.groupby("path"):
        share = playbooks.path(str(name)).holdout_share
        entrants.loc[rows.index, "holdout"] = holdout_mask(
            rows["customer_id"], str(name), month, share
        )
    return entrants.reset_index(drop=True)


# -- due times --------------------------------------------------------------------------------------


def touch_due_times(
    path: ConversionPath, cohort_day: dt.date, rules: SendRules, not_before: dt.datetime
) -> list[dt.datetime]:
    """When each touch of a cohort is due: its day offset, inside the path's send window.

    A day off moves a touch to the next working day; a touch never shares a day with the one
    before it; touch 1 of a cohort enrolled after the window opened is due at once if the window
    is still open, else at the next window.
    """
    zone = rules.zone
    window = path.send_window
    due: list[dt.datetime] = []
    earliest = not_before.astimezone(zone)
    previous: dt.date | None = None
    for touch in path.touches:
        day = cohort_day + dt.timedelta(days=touch.day_offset)
        if previous is not None and day <= previous:
            day = previous + dt.timedelta(days=1)
        while True:
            if window.working_days_only and not is_working_day(day, rules):
                day += dt.timedelta(days=1)
                continue
            opens = dt.datetime.combine(day, window.start, zone)
            closes = dt.datetime.combine(day, window.end, zone)
            at = max(opens, earliest)
            if at < closes:
                break
            day += dt.timedelta(days=1)
        due.append(at)
        previous = day
        earliest = at
    return due


def flow_run_name(path: ConversionPath, cohort_day: dt.date, touch: int) -> str:
    """What ops read in the UI: "代发稳健理财 · 2026-12-01 cohort · touch 2"."""
    return f"{path.title} · {cohort_day.isoformat()} cohort · touch {touch}"


# -- touch runs: who is still in, which variant -----------------------------------------------------


@dataclass(frozen=True)
class Eligibility:
    """A touch's members split: who gets it, and how many were dropped and why."""

    eligible: pd.DataFrame
    dropped: dict[str, int]
    holdout: int


def split_eligible(
    members: pd.DataFrame, contacts: pd.DataFrame, in_export: pd.Series
) -> Eligibility:
    """Drop members who converted, became unreachable (84061, deleted the manager) or left.

    `members`: enrollment_id, customer_id, userid, external_userid, holdout, status (and
    exit_reason, when known); `contacts`: userid, external_userid, reachable, left_at;
    `in_export`: customer ids in the newest accepted export (a customer missing from it left
    the bank). The counts are of the whole cohort so far: a member the daily enrolment already
    dropped as unreachable or gone counts there, not as closed.
    """
    frame = members.merge(
        contacts[["userid", "external_userid", "reachable", "left_at"]],
        on=["userid", "external_userid"],
        how="left",
    )
    reason = (
        frame["exit_reason"].astype(object)
        if "exit_reason" in frame.columns
        else pd.Series(None, index=frame.index, dtype=object)
    )
    converted = (frame["status"] == CONVERTED).to_numpy()
    exited = frame["status"].isin([DROPPED, EXPIRED]).to_numpy() & ~converted
    dropped_as = (frame["status"] == DROPPED).to_numpy()
    was_unreachable = exited & dropped_as & (reason == UNREACHABLE).to_numpy()
    was_left = exited & dropped_as & (reason == LEFT).to_numpy()
    closed = exited & ~was_unreachable & ~was_left
    unreachable = (
        (~frame["reachable"].fillna(False).astype(bool) | frame["left_at"].notna()).to_numpy()
        & ~converted
        & ~exited
    )
    left = ~frame["customer_id"].isin(in_export).to_numpy() & ~(converted | exited | unreachable)
    holdout = frame["holdout"].astype(bool).to_numpy()
    out = converted | exited | unreachable | left
    dropped = {
        CONVERTED: int(converted.sum()),
        "closed": int(closed.sum()),
        UNREACHABLE: int((unreachable | was_unreachable).sum()),
        LEFT: int((left | was_left).sum()),
    }
    frame["drop_reason"] = np.select([unreachable, left], [UNREACHABLE, LEFT], default="")
    eligible = frame.loc[~out & ~holdout].reset_index(drop=True)
    return Eligibility(
        eligible=eligible,
        dropped=dropped,
        holdout=int((holdout & ~out).sum()),
    )


def newly_dropped(
    members: pd.DataFrame, contacts: pd.DataFrame, in_export: pd.Series
) -> pd.DataFrame:
    """Active members who are unreachable or left now: (enrollment_id, drop_reason)."""
    frame = members.merge(
        contacts[["userid", "external_userid", "reachable", "left_at"]],
        on=["userid", "external_userid"],
        how="left",
    )
    active = (frame["status"] == ACTIVE).to_numpy()
    unreachable = (
        ~frame["reachable"].fillna(False).astype(bool) | frame["left_at"].notna()
    ).to_numpy()
    left = ~frame["customer_id"].isin(in_export).to_numpy()
    reason = np.select([unreachable, left], [UNREACHABLE, LEFT], default="")
    take = active & (reason != "")
    return pd.DataFrame({"enrollment_id": frame.loc[take, "enrollment_id"], "reason": reason[take]})


def touch2_variants(delivered: np.ndarray, interested: np.ndarray) -> np.ndarray:
    """Touch 2 follows touch 1: not delivered -> touch 1 again; interested -> the detailed
    plan; no signal -> a short follow-up question."""
    return np.select([~delivered, interested], [REPEAT, DETAILED_PLAN], default=FOLLOW_UP).astype(
        object
    )


def fitting_products(
    members: pd.DataFrame, tags: pd.DataFrame, products: list[Product], day: dt.date
) -> list[tuple[str, np.ndarray]]:
    """Per product on offer on `day`: which members it fits (any target tag, no excluding flag)."""
    fits: list[tuple[str, np.ndarray]] = []
    for product in products:
        if not product.on_offer(day):
            continue
        mask = np.ones(len(members), dtype=bool)
        if product.target_tags:
            holders = tags.loc[tags["tag"].isin(product.target_tags), "customer_id"]
            mask &= members["customer_id"].isin(holders).to_numpy()
        for flag in product.exclude_if:
            if flag in members.columns:
                mask &= ~members[flag].fillna(False).astype(bool).to_numpy()
        fits.append((product.code, mask))
    return fits


def product_variants(
    members: pd.DataFrame,
    tags: pd.DataFrame,
    products: list[Product],
    day: dt.date,
    *,
    avoid: pd.Series | None = None,
) -> np.ndarray:
    """Touches 3 and 4: the first catalogue product that fits each member, other than `avoid`
    (touch 3's product, for touch 4); `general` content when none fits."""
    chosen = np.full(len(members), GENERAL, dtype=object)
    open_ = np.ones(len(members), dtype=bool)
    avoided = avoid.to_numpy(dtype=object) if avoid is not None else None
    for code, mask in fitting_products(members, tags, products, day):
        variant = PRODUCT_PREFIX + code
        take = open_ & mask
        if avoided is not None:
            take &= avoided != variant
        chosen[take] = variant
        open_ &= ~take
    return chosen


def touch_contents(
    path: ConversionPath, touch: int, products: list[Product]
) -> dict[str, TouchContent]:
    """Every variant's content for `touch` of `path` (products from the catalogue)."""
    contents = dict(path.touches[touch - 1].contents)
    if touch == 2 and REPEAT not in contents:
        contents[REPEAT] = path.touches[0].contents[INTRO]
    if touch >= 3:
        for product in products:
            contents[PRODUCT_PREFIX + product.code] = product.content
    return contents


# -- goals and attribution --------------------------------------------------------------------------


def _goal_condition(frame: pd.DataFrame, c: GoalCondition) -> np.ndarray:
    now = frame[c.field]
    if c.kind == "compare":
        return _compare(now, c.op, c.value)
    before = frame[f"base_{c.field}"]
    if c.kind == "turns_true":
        return (~before.fillna(False).astype(bool) & now.fillna(False).astype(bool)).to_numpy()
    now_n = pd.to_numeric(now, errors="coerce")
    before_n = pd.to_numeric(before, errors="coerce")
    if c.kind == "rises_by_amount":
        return ((now_n - before_n) >= c.value).fillna(False).to_numpy(dtype=bool)
    rise = (now_n - before_n) / before_n.where(before_n > 0)
    return (rise >= c.value).fillna(False).to_numpy(dtype=bool)


def goal_mask(frame: pd.DataFrame, path: ConversionPath) -> np.ndarray:
    """Members whose goal holds: ALL of the goal's conditions at once, never any one of them."""
    mask = np.ones(len(frame), dtype=bool)
    for condition in path.goal.conditions:
        mask &= _goal_condition(frame, condition)
    return mask


def evaluate_goals(
    members: pd.DataFrame,
    export: pd.DataFrame,
    playbooks: ConversionPaths,
    export_date: dt.date,
) -> pd.DataFrame:
    """Which active members (holdout too) convert in the export of `export_date`, and whose
    window has ended without it.

    `members`: enrollment_id, customer_id, path, entered_on, base_export_date and base_<field>
    of BASELINE_FIELDS; `export`: customer_id and the export fields. Only an export later than
    the one a member entered on counts. Returns enrollment_id, outcome (converted | expired).
    """
    frame = members.merge(export, on="customer_id", how="left")
    outcome = np.full(len(frame), "", dtype=object)
    later = (pd.to_datetime(frame["base_export_date"]).dt.date < export_date).to_numpy()
    for name, rows in frame.groupby("path"):
        try:
            path = playbooks.path(str(name))
        except KeyError:
            continue  # a deleted path: its members wait until it is restored
        positions = frame.index.get_indexer(rows.index)
        entered = pd.to_datetime(rows["entered_on"]).dt.date
        window_end = entered + dt.timedelta(days=path.goal.window_days)
        inside = (window_end >= export_date).to_numpy()
        converted = goal_mask(rows, path) & later[positions] & inside
        outcome[positions[converted]] = CONVERTED
        outcome[positions[~inside & ~converted]] = EXPIRED
    return (
        pd.DataFrame({"enrollment_id": frame["enrollment_id"], "outcome": outcome})
        .query("outcome != ''")
        .reset_index(drop=True)
    )


def touch_number(step: pd.Series) -> pd.Series:
    """touch-3 -> 3."""
    return pd.to_numeric(step.str.removeprefix("touch-"), errors="coerce")


def attribute(conversions: pd.DataFrame, delivered: pd.DataFrame) -> pd.Series:
    """The last touch delivered on or before each conversion's day (NA: converted untouched).

    `conversions`: external_userid, programme, period, converted_on; `delivered`: target_id,
    programme, period, step, delivered_on (local day) of the path's delivered sends.
    """
    if conversions.empty:
        return pd.Series(dtype="Int64")
    keyed = conversions.reset_index(drop=True).reset_index(names="row")
    joined = keyed.merge(
        delivered.rename(columns={"target_id": "external_userid"}),
        on=["external_userid", "programme", "period"],
        how="inner",
    )
    joined = joined[joined["delivered_on"] <= joined["converted_on"]]
    last = touch_number(joined["step"]).groupby(joined["row"]).max()
    return last.reindex(keyed["row"]).astype("Int64").set_axis(conversions.index)


# -- the touch funnel: what each touch of a cohort did, and the conversions it earned ---------------

FUNNEL_COLUMNS = [
    "touch",
    "eligible",
    "dropped converted",
    "dropped unreachable",
    "dropped left",
    "holdout",
    "planned",
    "deferred",
    "skipped",
    "created",
    "confirmed",
    "delivered",
    "failed",
    "conversions",
]


def _by_reason(rows: pd.DataFrame, status: str) -> str:
    """ "3 (month_cap 2, day_cap 1)": a status's count with its reasons, as ops read it."""
    picked = rows[rows["status"] == status]
    if picked.empty:
        return "0"
    reasons = picked["reason"].fillna("no reason").value_counts().sort_index()
    return f"{len(picked):,} (" + ", ".join(f"{r} {n:,}" for r, n in reasons.items()) + ")"


def touch_funnel(
    reports: dict[int, dict[str, Any]], sends: pd.DataFrame, attributed: pd.Series
) -> pd.DataFrame:
    """Per touch of one cohort: who was in, what the ledger did with them, what it converted.

    `reports`: each run touch's stored report (eligible, dropped, holdout, plan); `sends`: the
    cohort's ledger rows (step, status, reason, created_at, confirmed_at) as they are now;
    `attributed`: each conversion's attributed touch (NA: converted with no touch delivered).
    Created, confirmed and delivered count every row that reached that stage (a delivered row
    was created and confirmed); deferred, skipped and failed are the rows there now, by reason.
    The last row holds the conversions no touch earned (the holdout's, mostly).
    """
    numbers = touch_number(sends["step"]) if len(sends) else pd.Series(dtype="float64")
    touches = pd.to_numeric(attributed, errors="coerce")
    rows = []
    for touch in range(1, 5):
        report = reports.get(touch)
        mine = sends[(numbers == touch).to_numpy()] if len(sends) else sends
        delivered = mine["status"] == DELIVERED
        dropped = report.get("dropped", {}) if report else {}
        rows.append(
            {
                "touch": str(touch),
                "eligible": report.get("eligible") if report else None,
                "dropped converted": dropped.get(CONVERTED) if report else None,
                "dropped unreachable": dropped.get(UNREACHABLE) if report else None,
                "dropped left": dropped.get(LEFT) if report else None,
                "holdout": report.get("holdout") if report else None,
                "planned": report.get("plan", {}).get("fits", 0) if report else None,
                "deferred": _by_reason(mine, DEFERRED),
                "skipped": _by_reason(mine, SKIPPED),
                "created": int((mine["created_at"].notna() | delivered).sum()),
                "confirmed": int((mine["confirmed_at"].notna() | delivered).sum()),
                "delivered": int(delivered.sum()),
                "failed": _by_reason(mine, FAILED),
                "conversions": int((touches == touch).sum()),
            }
        )
    untouched = {c: None for c in FUNNEL_COLUMNS}
    untouched.update(touch="no touch delivered", conversions=int(touches.isna().sum()))
    rows.append(untouched)
    # Object columns: counts stay integers beside the "not run yet" blanks.
    return pd.DataFrame(rows, columns=FUNNEL_COLUMNS, dtype=object)


def funnel_markdown(funnel: pd.DataFrame) -> str:
    """The funnel as a markdown table; "–" where a touch has not run yet."""

    def cell(value: Any) -> str:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return "–"
        return f"{value:,}" if isinstance(value, int | np.integer) else str(value)

    lines = [
        "| " + " | ".join(FUNNEL_COLUMNS) + " |",
        "|---|" + "---:|" * (len(FUNNEL_COLUMNS) - 1),
    ]
    for row in funnel.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def read_funnel(session: Session, cohort_id: int, programme: str) -> pd.DataFrame:
    """The touch funnel of one cohort, from its touch runs, its ledger rows and conversions."""
    cohort = session.get(Cohort, cohort_id)
    if cohort is None:
        raise LookupError(f"no cohort {cohort_id}: list the cohorts with `siyu path due`")
    reports = {
        r.touch: r.report or {}
        for r in session.scalars(
            sa.select(TouchRun).where(TouchRun.cohort_id == cohort_id, TouchRun.status == DONE)
        )
    }
    sends = pd.DataFrame(
        session.execute(
            sa.select(
                Send.step, Send.status, Send.reason, Send.created_at, Send.confirmed_at
            ).where(
                Send.target_kind == CUSTOMER,
                Send.programme == programme,
                Send.period == cohort.cohort_day.isoformat(),
            )
        ).all(),
        columns=["step", "status", "reason", "created_at", "confirmed_at"],
    )
    attributed = pd.Series(
        list(
            session.scalars(
                sa.select(Conversion.attributed_touch).where(Conversion.cohort_id == cohort_id)
            )
        ),
        dtype="Float64",
    )
    return touch_funnel(reports, sends, attributed)


def running_cohorts(session: Session, since: dt.date) -> list[int]:
    """Cohorts with a member still in their path, or one who left it on or after `since`."""
    rows = session.scalars(
        sa.select(Enrollment.cohort_id)
        .where(sa.or_(Enrollment.status == ACTIVE, Enrollment.exited_on >= since))
        .distinct()
        .order_by(Enrollment.cohort_id)
    )
    return list(rows)


# -- a paused path: every wanted send recorded skipped ----------------------------------------------


def paused_plan(plan: PlanResult) -> PlanResult:
    """The planner's answer with everything that would go (now or later) skipped, paused by ops.

    What the planner skipped already (its key is in the ledger, a duplicate, the month is full)
    keeps its own reason; a deferred row of an earlier run is settled skipped too.
    """
    moved = [f for f in (plan.fits, plan.deferred) if len(f)]
    if not moved:
        return plan
    paused = pd.concat(moved).copy()
    paused["status"] = SKIPPED
    paused["reason"] = PAUSED_BY_OPS
    paused["not_before"] = pd.Series(pd.NaT, index=paused.index, dtype="datetime64[us, UTC]")
    paused["send_day"] = None
    paused["send_month"] = None
    skipped = pd.concat([f for f in (plan.skipped, paused) if len(f)])
    return PlanResult(
        fits=plan.fits.iloc[0:0],
        deferred=plan.deferred.iloc[0:0],
        skipped=skipped,
        as_of=plan.as_of,
        calendar_warnings=list(plan.calendar_warnings),
    )


def skip_paused_sends(
    session: Session,
    wanted: pd.DataFrame,
    rules: SendRules,
    as_of: dt.datetime,
    *,
    playbook: str,
    version: str,
    export_checksum: str | None,
) -> tuple[dict[str, int], Reserved]:
    """Record a paused path's wanted sends as skipped in the ledger (caller's transaction).

    Each send still gets its ledger row (a final status and a reason, never silence), and no
    outbox entry: nothing reaches WeCom. Returns the plan's summary and what was written.
    """
    counts = ledger_counts(session, wanted, as_of=as_of, rules=rules)
    plan = paused_plan(plan_sends(wanted, rules, as_of, counts))
    written = reserve(
        session, plan, playbook=playbook, version=version, export_checksum=export_checksum
    )
    return plan.summary(), written


# -- uplift -----------------------------------------------------------------------------------------


def difference_interval(
    treated_converted: int,
    treated: int,
    holdout_converted: int,
    holdout: int,
    confidence: float = 0.95,
) -> tuple[float, float, float] | None:
    """Treated minus holdout conversion rate with its interval (Newcombe's hybrid score
    method over scipy's Wilson intervals: sound for small groups and rates near 0 or 1).
    None when a group is empty."""
    if treated <= 0 or holdout <= 0:
        return None
    p1, p2 = treated_converted / treated, holdout_converted / holdout
    ci1 = binomtest(treated_converted, treated).proportion_ci(confidence, method="wilson")
    ci2 = binomtest(holdout_converted, holdout).proportion_ci(confidence, method="wilson")
    difference = p1 - p2
    low = difference - math.sqrt((p1 - ci1.low) ** 2 + (ci2.high - p2) ** 2)
    high = difference + math.sqrt((ci1.high - p1) ** 2 + (p2 - ci2.low) ** 2)
    return difference, low, high


UPLIFT_COLUMNS = [
    "path",
    "cohort_month",
    "treated",
    "treated_converted",
    "holdout",
    "holdout_converted",
    "treated_rate",
    "holdout_rate",
    "uplift",
    "uplift_low",
    "uplift_high",
]


def uplift(members: pd.DataFrame) -> pd.DataFrame:
    """Per path and cohort month: conversion of treated against holdout, with a 95 % interval.

    `members`: path, cohort_month, holdout (bool), converted (bool).
    """
    rows = []
    for (path, month), group in members.groupby(["path", "cohort_month"], sort=True):
        held = group["holdout"].astype(bool)
        converted = group["converted"].astype(bool)
        n1, x1 = int((~held).sum()), int((converted & ~held).sum())
        n2, x2 = int(held.sum()), int((converted & held).sum())
        interval = difference_interval(x1, n1, x2, n2)
        rows.append(
            [
                path,
                month,
                n1,
                x1,
                n2,
                x2,
                x1 / n1 if n1 else None,
                x2 / n2 if n2 else None,
                *(interval if interval else (None, None, None)),
            ]
        )
    return pd.DataFrame(rows, columns=UPLIFT_COLUMNS)


def uplift_markdown(table: pd.DataFrame) -> str:
    """The uplift table as ops read it: rates and the interval in percentage points."""

    def pct(value: Any) -> str:
        return "–" if value is None or pd.isna(value) else f"{100 * value:.1f} %"

    lines = [
        "| path | month | treated | converted | holdout | converted | uplift | 95 % interval |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in table.itertuples(index=False):
        interval = (
            "–"
            if r.uplift_low is None or pd.isna(r.uplift_low)
            else f"{100 * r.uplift_low:+.1f} to {100 * r.uplift_high:+.1f} pp"
        )
        lines.append(
            f"| {r.path} | {r.cohort_month} | {r.treated:,} | {pct(r.treated_rate)} | "
            f"{r.holdout:,} | {pct(r.holdout_rate)} | "
            f"{'–' if r.uplift is None or pd.isna(r.uplift) else f'{100 * r.uplift:+.1f} pp'} | "
            f"{interval} |"
        )
    return "\n".join(lines)


# -- the database side ------------------------------------------------------------------------------


def active_customer_ids(session: Session) -> pd.Series:
    """Customers with an active enrolment in any path."""
    rows = session.scalars(sa.select(Enrollment.customer_id).where(Enrollment.status == ACTIVE))
    return pd.Series(list(rows), dtype=object)


def ever_enrolled_customer_ids(session: Session) -> pd.Series:
    """Customers who were ever in a path, active or not: a new contact's enrolment skips them."""
    rows = session.scalars(sa.select(Enrollment.customer_id).distinct())
    return pd.Series(list(rows), dtype=object)


def store_cohorts(
    session: Session,
    entrants: pd.DataFrame,
    playbooks: ConversionPaths,
    day: dt.date,
    *,
    export_date: dt.date,
    export_checksum: str | None,
) -> list[int]:
    """Write one cohort per (path, day) and its enrollments, in the caller's transaction.

    A second enrolment the same day adds to that day's cohort. Returns the cohort ids that
    gained members.
    """
    month = f"{day.year:04d}-{day.month:02d}"
    touched: list[int] = []
    for name, rows in entrants.groupby("path", sort=True):
        path = playbooks.path(str(name))
        cohort = session.scalar(
            sa.select(Cohort).where(Cohort.path == path.name, Cohort.cohort_day == day)
        )
        if cohort is None:
            cohort = Cohort(
                path=path.name,
                title=path.title,
                cohort_day=day,
                cohort_month=month,
                path_version=path.version(),
                export_checksum=export_checksum,
                members=0,
                holdout=0,
            )
            session.add(cohort)
            session.flush()
        records = pd.DataFrame(
            {
                "cohort_id": cohort.id,
                "customer_id": rows["customer_id"].astype(str),
                "userid": rows["userid"].astype(str),
                "external_userid": rows["external_userid"].astype(str),
                "holdout": rows["holdout"].astype(bool),
                "status": ACTIVE,
                "entered_on": day,
                "base_export_date": export_date,
            }
        )
        for field in BASELINE_FIELDS:
            values = rows[field] if field in rows.columns else pd.Series(None, index=rows.index)
            records[f"base_{field}"] = values.astype(object).where(values.notna(), None)
        # Core insert of plain dicts: the ORM's per-row bookkeeping costs seconds at 100,000.
        table = Enrollment.__table__
        dicts = records.to_dict("records")
        for start in range(0, len(dicts), _CHUNK):
            session.execute(table.insert(), dicts[start : start + _CHUNK])
        cohort.members += len(dicts)
        cohort.holdout += int(rows["holdout"].sum())
        touched.append(cohort.id)
    return touched


def read_members(
    session: Session, *, cohort_id: int | None = None, active: bool = False
) -> pd.DataFrame:
    """Members with their path and baseline (base_<field>), of one cohort or of all."""
    base = [f"base_{f}" for f in (*BASELINE_FIELDS, "export_date")]
    table = Enrollment.__table__
    query = sa.select(
        table.c.id.label("enrollment_id"),
        table.c.cohort_id,
        table.c.customer_id,
        table.c.userid,
        table.c.external_userid,
        table.c.holdout,
        table.c.status,
        table.c.exit_reason,
        table.c.entered_on,
        *(table.c[c] for c in base),
        Cohort.path,
        Cohort.cohort_day,
        Cohort.cohort_month,
    ).join(Cohort, Cohort.id == table.c.cohort_id)
    if cohort_id is not None:
        query = query.where(table.c.cohort_id == cohort_id)
    if active:
        query = query.where(table.c.status == ACTIVE)
    result = session.execute(query)
    return pd.DataFrame(result.all(), columns=list(result.keys()))


def read_contacts(session: Session) -> pd.DataFrame:
    """Every (manager, contact) pair with whether it is reachable and when it left."""
    rows = session.execute(
        sa.select(Contact.userid, Contact.external_userid, Contact.reachable, Contact.left_at)
    ).all()
    return pd.DataFrame(rows, columns=["userid", "external_userid", "reachable", "left_at"])


def delivered_sends(session: Session, programmes: list[str], zone: Any) -> pd.DataFrame:
    """The delivered path sends: target_id, programme, period, step, delivered_on (local day)."""
    rows = session.execute(
        sa.select(Send.target_id, Send.programme, Send.period, Send.step, Send.delivered_at).where(
            Send.target_kind == CUSTOMER,
            Send.programme.in_(programmes),
            Send.status == DELIVERED,
        )
    ).all()
    frame = pd.DataFrame(rows, columns=["target_id", "programme", "period", "step", "at"])
    frame["delivered_on"] = [t.astimezone(zone).date() if t else None for t in frame["at"]]
    return frame.drop(columns=["at"])


def step_status(
    session: Session, programme: str, period: str, step: str, targets: list[str]
) -> pd.DataFrame:
    """target_id, status of one step's ledger rows for `targets`."""
    found = []
    for start in range(0, len(targets), _CHUNK):
        found += session.execute(
            sa.select(Send.target_id, Send.status).where(
                Send.target_kind == CUSTOMER,
                Send.programme == programme,
                Send.period == period,
                Send.step == step,
                Send.target_id.in_(targets[start : start + _CHUNK]),
            )
        ).all()
    return pd.DataFrame(found, columns=["target_id", "status"])


def apply_outcomes(
    session: Session,
    outcomes: pd.DataFrame,
    members: pd.DataFrame,
    *,
    export_date: dt.date,
    export_checksum: str | None,
    zone: Any,
) -> dict[str, int]:
    """Settle conversions (with attribution) and expiries, in the caller's transaction."""
    if outcomes.empty:
        return {CONVERTED: 0, EXPIRED: 0}
    frame = outcomes.merge(members, on="enrollment_id")
    converted = frame[frame["outcome"] == CONVERTED].copy()
    if not converted.empty:
        converted["programme"] = "path:" + converted["path"]
        converted["period"] = converted["cohort_day"].map(lambda d: d.isoformat())
        converted["converted_on"] = export_date
        delivered = delivered_sends(session, sorted(set(converted["programme"])), zone)
        converted["attributed_touch"] = attribute(
            converted[["external_userid", "programme", "period", "converted_on"]], delivered
        )
        session.execute(
            sa.insert(Conversion),
            [
                {
                    "enrollment_id": int(r.enrollment_id),
                    "cohort_id": int(r.cohort_id),
                    "converted_on": export_date,
                    "export_checksum": export_checksum,
                    "attributed_touch": None
                    if pd.isna(r.attributed_touch)
                    else int(r.attributed_touch),
                    "holdout": bool(r.holdout),
                }
                for r in converted.itertuples(index=False)
            ],
        )
    for outcome in (CONVERTED, EXPIRED):
        ids = [int(i) for i in frame.loc[frame["outcome"] == outcome, "enrollment_id"]]
        for start in range(0, len(ids), _CHUNK):
            session.execute(
                sa.update(Enrollment)
                .where(Enrollment.id.in_(ids[start : start + _CHUNK]), Enrollment.status == ACTIVE)
                .values(status=outcome, exited_on=export_date, exit_reason=outcome)
            )
    return {
        CONVERTED: int((frame["outcome"] == CONVERTED).sum()),
        EXPIRED: int((frame["outcome"] == EXPIRED).sum()),
    }


def drop_members(session: Session, dropped: pd.DataFrame, day: dt.date) -> int:
    """Mark members who became unreachable or left as dropped, with the reason."""
    for reason, rows in dropped.groupby("reason"):
        ids = [int(i) for i in rows["enrollment_id"]]
        for start in range(0, len(ids), _CHUNK):
            session.execute(
                sa.update(Enrollment)
                .where(Enrollment.id.in_(ids[start : start + _CHUNK]), Enrollment.status == ACTIVE)
                .values(status=DROPPED, exited_on=day, exit_reason=str(reason))
            )
    return len(dropped)


def cohort_uplift(session: Session, months: list[str] | None = None) -> pd.DataFrame:
    """Uplift per path and cohort month, from the stored enrollments and conversions."""
    query = sa.select(Cohort.path, Cohort.cohort_month, Enrollment.holdout, Enrollment.status).join(
        Cohort, Cohort.id == Enrollment.cohort_id
    )
    if months:
        query = query.where(Cohort.cohort_month.in_(months))
    frame = pd.DataFrame(
        session.execute(query).all(), columns=["path", "cohort_month", "holdout", "status"]
    )
    frame["converted"] = frame["status"] == CONVERTED
    return uplift(frame)


def due_touch_runs(session: Session, until: dt.datetime) -> list[tuple[int, int, dt.datetime]]:
    """(cohort id, touch, due time) of every touch due by `until` that has not run, oldest first."""
    rows = session.execute(
        sa.select(TouchRun.cohort_id, TouchRun.touch, TouchRun.due_at)
        .where(TouchRun.status == SCHEDULED, TouchRun.due_at <= until)
        .order_by(TouchRun.due_at, TouchRun.cohort_id, TouchRun.touch)
    ).all()
    return [(c, t, d) for c, t, d in rows]


def mark_touch_done(
    session: Session, cohort_id: int, touch: int, report: dict, at: dt.datetime
) -> None:
    """Record that a touch ran to its end, with its report (counts only)."""
    session.execute(
        sa.update(TouchRun)
        .where(TouchRun.cohort_id == cohort_id, TouchRun.touch == touch)
        .values(status=DONE, finished_at=at, report=report)
    )
