"""The quota planner: which wanted sends fit now, which wait for a later time, which are skipped.

Set-based over a batch (pandas), so 100,000 wanted sends cost the same few grouped operations
as ten. The rules (caps, quiet hours and days, priorities) come from the SendRules block; what
the ledger already holds comes in as LedgerCounts (tasks/ledger.py reads them in one query per
kind), so a dry run is the same call with nothing written afterwards.

Within a target and channel, sends are taken best first (priority, then earliest wanted, then
key): the first ones within the target's sender-day cap count against its month; once the month
is full the rest are skipped; a send over its sender's day cap with month slots left waits for
the next allowed day. That is exactly what a one-by-one greedy pass would decide, without one.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from siyu.blocks.send_rules import SendRules
from siyu.schemas.ledger import (
    ALREADY_PLANNED,
    COUNTED_STATUSES,
    DAY_CAP,
    DEFERRED,
    DUPLICATE,
    KEY_COLUMNS,
    MONTH_CAP,
    NON_WORKING_DAY,
    NOT_DUE,
    PLANNED,
    QUIET_HOURS,
    SKIPPED,
)
from siyu.tasks.working_days import (
    in_quiet_hours,
    is_working_day,
    next_allowed_time,
    unknown_date_message,
)

WANTED_COLUMNS: tuple[str, ...] = (
    "target_kind",
    "target_id",
    "sender",
    "channel",
    "programme",
    "step",
    "period",
    "priority",
    "wanted_at",
)
MONTH_COUNT_COLUMNS = ["target_kind", "target_id", "channel", "send_month", "sends"]
DAY_COUNT_COLUMNS = ["target_kind", "target_id", "sender", "channel", "send_day", "sends"]
EXISTING_COLUMNS = [*KEY_COLUMNS, "ledger_id", "status"]
# Added to every output frame beside the wanted columns.
PLAN_COLUMNS = ["status", "reason", "not_before", "send_day", "send_month", "ledger_id"]

# "No cap" inside array arithmetic.
_UNCAPPED = np.iinfo(np.int64).max // 2


@dataclass(frozen=True)
class LedgerCounts:
    """What the ledger already holds for the targets of a batch.

    month: sends counted per (target_kind, target_id, channel, send_month);
    day: per (target_kind, target_id, sender, channel, send_day);
    existing: the batch's keys already in the ledger, with their row id and status.
    """

    month: pd.DataFrame
    day: pd.DataFrame
    existing: pd.DataFrame

    @classmethod
    def empty(cls) -> LedgerCounts:
        """An empty ledger: a first plan, or a test."""
        return cls(
            month=pd.DataFrame(columns=MONTH_COUNT_COLUMNS),
            day=pd.DataFrame(columns=DAY_COUNT_COLUMNS),
            existing=pd.DataFrame(columns=EXISTING_COLUMNS),
        )

    @classmethod
    def from_rows(cls, rows: pd.DataFrame) -> LedgerCounts:
        """Counts of ledger-shaped rows held in memory (e.g. earlier plans of a dry run).

        `rows` needs the key columns, sender, channel, status, send_day and send_month; a
        `ledger_id` column is kept when present.
        """
        counted = rows[rows["status"].isin(COUNTED_STATUSES)]
        month = (
            counted.groupby(["target_kind", "target_id", "channel", "send_month"])
            .size()
            .rename("sends")
            .reset_index()
        )
        day = (
            counted.groupby(["target_kind", "target_id", "sender", "channel", "send_day"])
            .size()
            .rename("sends")
            .reset_index()
        )
        existing = rows.reindex(columns=EXISTING_COLUMNS).drop_duplicates(list(KEY_COLUMNS))
        return cls(month=month, day=day, existing=existing.reset_index(drop=True))


@dataclass
class PlanResult:
    """The planner's answer for one batch at one as-of time.

    fits: send now, counting against `send_day`/`send_month`; deferred: wait until
    `not_before` (reason quiet_hours, non_working_day, day_cap or not_due); skipped: not in
    this period (reason month_cap, already_planned or duplicate). Each frame holds the wanted
    columns plus status, reason, not_before, send_day, send_month and ledger_id (the row of a
    deferred key being planned again, else missing).
    """

    fits: pd.DataFrame
    deferred: pd.DataFrame
    skipped: pd.DataFrame
    as_of: dt.datetime
    calendar_warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        """Row counts by outcome and reason, for logs and artifacts (no customer data)."""
        counts: dict[str, int] = {"fits": len(self.fits)}
        for name, frame in (("deferred", self.deferred), ("skipped", self.skipped)):
            counts[name] = len(frame)
            for reason, n in frame["reason"].value_counts().sort_index().items():
                counts[f"{name}:{reason}"] = int(n)
        return counts


def priority_of(wanted: pd.DataFrame, rules: SendRules) -> pd.Series:
    """Each send's priority: the first matching rule, else the batch's own, else the default.

    Loops over the (few) rules, never over rows: each rule is one vectorised pattern match.
    """
    if "priority" in wanted.columns:
        given = pd.to_numeric(wanted["priority"], errors="coerce")
    else:
        given = pd.Series(np.nan, index=wanted.index)
    result = given.astype("float64")
    decided = pd.Series(False, index=wanted.index)
    programme = wanted["programme"].astype(str)
    step = wanted["step"].astype(str)
    for rule in rules.priorities:
        matches = programme.str.fullmatch(fnmatch.translate(rule.programme)) & step.str.fullmatch(
            fnmatch.translate(rule.step)
        )
        take = matches & ~decided
        result[take] = rule.priority
        decided |= take
    return result.fillna(rules.default_priority).astype("int64")


def _empty_like(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.iloc[0:0]


def _with_outcome(
    frame: pd.DataFrame,
    status: str,
    reason: str | pd.Series | None,
    *,
    not_before: pd.Series | None = None,
    send_day: dt.date | None = None,
    send_month: str | None = None,
) -> pd.DataFrame:
    out = frame.copy()
    out["status"] = status
    out["reason"] = reason
    out["not_before"] = (
        not_before
        if not_before is not None
        else pd.Series(pd.NaT, index=out.index, dtype="datetime64[us, UTC]")
    )
    out["send_day"] = send_day
    out["send_month"] = send_month
    return out


def _not_before(
    times: pd.Series, channels: pd.Series, rules: SendRules, unknown: set[dt.date]
) -> pd.Series:
    """next_allowed_time of each (time, channel), computed once per distinct pair."""
    pairs = pd.DataFrame({"t": times, "channel": channels})
    distinct = pairs.drop_duplicates()
    answers = {
        (t, channel): next_allowed_time(
            t.to_pydatetime(),
            rules,
            working_days_only=rules.timing(channel).working_days_only,
            quiet_hours=rules.timing(channel).quiet_hours,
            unknown=unknown,
        )
        for t, channel in distinct.itertuples(index=False)
    }
    keys = list(zip(pairs["t"], pairs["channel"], strict=True))
    return pd.Series(
        pd.to_datetime([answers[k] for k in keys], utc=True), index=times.index
    ).astype("datetime64[us, UTC]")


def plan_sends(
    wanted: pd.DataFrame,
    rules: SendRules,
    as_of: dt.datetime,
    counts: LedgerCounts | None = None,
) -> PlanResult:
    """Split a batch of wanted sends into fits, deferred and skipped at `as_of`.

    `wanted` has the columns of WANTED_COLUMNS (priority may be missing: the rules decide);
    `as_of` is timezone-aware; `counts` is what the ledger holds (empty when None). Nothing is
    written: reserve() in tasks/ledger.py stores the answer.
    """
    if as_of.tzinfo is None:
        raise ValueError("plan_sends needs a timezone-aware as_of, e.g. now in Asia/Shanghai")
    missing = [c for c in WANTED_COLUMNS if c not in wanted.columns and c != "priority"]
    if missing:
        raise ValueError(f"wanted sends lack the columns {', '.join(missing)}")
    counts = counts or LedgerCounts.empty()
    unknown: set[dt.date] = set()
    zone = rules.zone
    local = as_of.astimezone(zone)
    today, this_month = local.date(), f"{local.year:04d}-{local.month:02d}"
    as_of_utc = pd.Timestamp(as_of).tz_convert("UTC")

    batch = wanted.copy()
    batch["priority"] = priority_of(batch, rules)
    batch["wanted_at"] = pd.to_datetime(batch["wanted_at"], utc=True).fillna(as_of_utc)
    batch["wanted_at"] = batch["wanted_at"].astype("datetime64[us, UTC]")
    for column in ("target_kind", "target_id", "sender", "channel", "programme", "step", "period"):
        batch[column] = batch[column].astype(str)

    # Best first everywhere below: a stable, total order makes the plan reproducible.
    batch = batch.sort_values(
        ["priority", "wanted_at", *KEY_COLUMNS],
        ascending=[False, True, *([True] * len(KEY_COLUMNS))],
        kind="stable",
    )
    duplicate = batch.duplicated(list(KEY_COLUMNS), keep="first")
    skipped_parts = [_with_outcome(batch[duplicate], SKIPPED, DUPLICATE)]
    batch = batch[~duplicate]

    existing = counts.existing.reindex(columns=EXISTING_COLUMNS)
    if len(existing):
        existing = existing.astype({c: str for c in KEY_COLUMNS})
        batch = batch.merge(existing, on=list(KEY_COLUMNS), how="left", sort=False)
        batch = batch.rename(columns={"status": "_ledger_status"})
    else:
        batch["ledger_id"] = pd.NA
        batch["_ledger_status"] = pd.NA
    # A deferred key is planned again (its row is updated); any other status is done with.
    taken = batch["_ledger_status"].notna() & (batch["_ledger_status"] != DEFERRED)
    batch["ledger_id"] = pd.array(batch["ledger_id"].where(~taken), dtype="Int64")
    skipped_parts.append(
        _with_outcome(batch[taken].drop(columns="_ledger_status"), SKIPPED, ALREADY_PLANNED)
    )
    batch = batch[~taken].drop(columns="_ledger_status")

    deferred_parts: list[pd.DataFrame] = []
    not_due = batch["wanted_at"] > as_of_utc
    if not_due.any():
        later = batch[not_due]
        deferred_parts.append(
            _with_outcome(
                later,
                DEFERRED,
                NOT_DUE,
                not_before=_not_before(later["wanted_at"], later["channel"], rules, unknown),
            )
        )
        batch = batch[~not_due]

    # Every remaining send would go at as_of itself: whether it may is one answer per channel.
    working_today = is_working_day(today, rules, unknown=unknown)
    quiet_now = in_quiet_hours(local.time(), rules)
    held = pd.Series(False, index=batch.index)
    for channel in batch["channel"].unique():
        timing = rules.timing(channel)
        reason = None
        if timing.working_days_only and not working_today:
            reason = NON_WORKING_DAY
        elif timing.quiet_hours and quiet_now:
            reason = QUIET_HOURS
        if reason is None:
            continue
        on_channel = batch["channel"] == channel
        when = next_allowed_time(
            as_of,
            rules,
            working_days_only=timing.working_days_only,
            quiet_hours=timing.quiet_hours,
            unknown=unknown,
        )
        deferred_parts.append(
            _with_outcome(
                batch[on_channel],
                DEFERRED,
                reason,
                not_before=pd.Series(
                    pd.Timestamp(when).tz_convert("UTC"), index=batch.index[on_channel]
                ).astype("datetime64[us, UTC]"),
            )
        )
        held |= on_channel
    batch = batch[~held]

    fits, day_capped, month_capped = _apply_caps(batch, rules, counts, today, this_month)
    skipped_parts.append(_with_outcome(month_capped, SKIPPED, MONTH_CAP))
    if len(day_capped):
        tomorrow = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(0), zone)
        deferred_parts.append(
            _with_outcome(
                day_capped,
                DEFERRED,
                DAY_CAP,
                not_before=_not_before(
                    pd.Series(pd.Timestamp(tomorrow), index=day_capped.index),
                    day_capped["channel"],
                    rules,
                    unknown,
                ),
            )
        )

    template = _with_outcome(_empty_like(batch), PLANNED, None)
    result = PlanResult(
        fits=_tidy(
            _with_outcome(fits, PLANNED, None, send_day=today, send_month=this_month), template
        ),
        deferred=_tidy(pd.concat(deferred_parts) if deferred_parts else template, template),
        skipped=_tidy(pd.concat(skipped_parts), template),
        as_of=as_of,
        calendar_warnings=[unknown_date_message(d) for d in sorted(unknown)],
    )
    return result


def _tidy(frame: pd.DataFrame, template: pd.DataFrame) -> pd.DataFrame:
    columns = [c for c in template.columns if c in frame.columns] + [
        c for c in frame.columns if c not in template.columns
    ]
    out = frame.reindex(columns=columns).reset_index(drop=True)
    out["ledger_id"] = pd.array(out["ledger_id"], dtype="Int64")
    out["not_before"] = pd.to_datetime(out["not_before"], utc=True).astype("datetime64[us, UTC]")
    return out


def _apply_caps(
    batch: pd.DataFrame,
    rules: SendRules,
    counts: LedgerCounts,
    today: dt.date,
    this_month: str,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(fits, over the sender's day cap, over the month cap) of sends that could go now."""
    if batch.empty:
        return batch, batch, batch
    target = ["target_kind", "target_id", "channel"]
    sender = [*target[:2], "sender", "channel"]

    caps = pd.DataFrame(
        [
            {
                "target_kind": kind,
                "channel": channel,
                "_month_cap": rules.cap(kind, channel).per_month,
                "_day_cap": rules.cap(kind, channel).per_sender_per_day,
            }
            for kind, channel in batch[["target_kind", "channel"]]
            .drop_duplicates()
            .itertuples(index=False)
        ]
    )
    month_used = counts.month[counts.month["send_month"] == this_month]
    month_used = month_used.astype({c: str for c in target}).groupby(target)["sends"].sum()
    day_used = counts.day[pd.to_datetime(counts.day["send_day"]).dt.date == today]
    day_used = day_used.astype({c: str for c in sender}).groupby(sender)["sends"].sum()

    frame = batch.merge(caps, on=["target_kind", "channel"], how="left", sort=False)
    frame.index = batch.index
    frame = frame.join(month_used.rename("_month_used"), on=target).join(
        day_used.rename("_day_used"), on=sender
    )
    month_left = (
        frame["_month_cap"].fillna(_UNCAPPED).astype("int64")
        - frame["_month_used"].fillna(0).astype("int64")
    ).clip(lower=0)
    day_left = (
        frame["_day_cap"].fillna(_UNCAPPED).astype("int64")
        - frame["_day_used"].fillna(0).astype("int64")
    ).clip(lower=0)

    # `batch` is already sorted best first; groupby keeps that order within each group.
    sender_rank = frame.groupby(sender, sort=False).cumcount()
    within_day = sender_rank < day_left
    taken_before = frame.assign(_d=within_day.astype("int64")).groupby(target, sort=False)[
        "_d"
    ].cumsum() - within_day.astype("int64")
    month_full = taken_before >= month_left
    fits = within_day & ~month_full
    return batch[fits], batch[~within_day & ~month_full], batch[month_full]
