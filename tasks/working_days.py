"""The bank's working-day calendar and the next time a send is allowed (quiet hours and days).

China's statutory calendar (public holidays off, some weekends worked in lieu) comes from the
`chinesecalendar` package; the bank's own dates in the SendRules block override it and extend
it past the years the package knows. A date neither knows is never guessed silently: it is
treated as Mon-Fri, a CalendarWarning says so, and ops are told (`siyu.calendar.unknown-date`,
once per date a day).
"""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import chinese_calendar

from siyu.blocks.send_rules import SendRules
from siyu.tasks.ops_alerts import emit_ops_event

logger = logging.getLogger(__name__)

# How far next_allowed_time looks ahead: longer than any run of days off China has.
MAX_DAYS_AHEAD = 60

UNKNOWN_DATE_EVENT = "siyu.calendar.unknown-date"
# (unknown date, the UTC day it was told) already told by this process: a planner looks the
# same date up thousands of times a run.
_told: set[tuple[dt.date, dt.date]] = set()

DaySource = Literal["bank", "package", "bank_weekday", "fallback"]


class CalendarWarning(UserWarning):
    """A date outside what the calendar knows: treated as Mon-Fri, which may be wrong."""


@dataclass(frozen=True)
class CalendarDay:
    """What the calendar says about one date, and where that came from."""

    day: dt.date
    working: bool
    source: DaySource  # fallback: nobody knew, Mon-Fri was assumed

    @property
    def known(self) -> bool:
        return self.source != "fallback"


@lru_cache(maxsize=8192)
def _package_is_workday(day: dt.date) -> bool | None:
    try:
        return bool(chinese_calendar.is_workday(day))
    except NotImplementedError:  # a year the installed release does not cover
        return None


def unknown_date_message(day: dt.date) -> str:
    """What ops read about a date nobody's calendar covers."""
    return (
        f"{day.isoformat()} is outside the working-day calendar (the chinesecalendar package has "
        f"no data for {day.year} and the bank's calendar in the SendRules block is known only "
        "until its known_until): treated as Mon-Fri; add the bank's holidays and worked days for "
        f"{day.year} and set known_until"
    )


def calendar_day(day: dt.date, rules: SendRules) -> CalendarDay:
    """Look `day` up: the bank's dates first, then the package, then the bank's known range."""
    if day in rules.holidays:
        return CalendarDay(day, False, "bank")
    if day in rules.workdays:
        return CalendarDay(day, True, "bank")
    package = _package_is_workday(day)
    if package is not None:
        return CalendarDay(day, package, "package")
    weekday = day.weekday() < 5
    if rules.known_until is not None and day <= rules.known_until:
        # The bank's data is complete here and lists no exception for this day.
        return CalendarDay(day, weekday, "bank_weekday")
    return CalendarDay(day, weekday, "fallback")


def warn_unknown(day: dt.date) -> str:
    """Say loudly that `day` is a guess: a CalendarWarning and a log line. Returns the message."""
    message = unknown_date_message(day)
    warnings.warn(message, CalendarWarning, stacklevel=3)
    logger.warning(message)
    tell_ops_unknown(day)
    return message


def tell_ops_unknown(day: dt.date, today: dt.date | None = None) -> bool:
    """Tell ops about an unknown date once a day (this process; the alert queue's key makes it
    once a day across processes too). Returns True when an event was emitted."""
    today = today or dt.datetime.now(dt.UTC).date()
    if (day, today) in _told:
        return False
    _told.add((day, today))
    return emit_ops_event(
        UNKNOWN_DATE_EVENT,
        subject=f"{day.isoformat()} is outside the working-day calendar: treated as Mon-Fri",
        next_step=(
            f"add the bank's {day.year} holidays and worked weekend days to the SendRules block "
            "(holidays, workdays) and set its known_until past this date"
        ),
        key=f"{UNKNOWN_DATE_EVENT}:{day.isoformat()}:{today.isoformat()}",
        resource_id=f"siyu.calendar.{day.isoformat()}",
    )


def is_working_day(day: dt.date, rules: SendRules, *, unknown: set[dt.date] | None = None) -> bool:
    """True on a bank working day. An unknown date warns, is added to `unknown`, and is Mon-Fri."""
    looked_up = calendar_day(day, rules)
    if not looked_up.known:
        warn_unknown(day)
        if unknown is not None:
            unknown.add(day)
    return looked_up.working


def add_working_days(
    day: dt.date, n: int, rules: SendRules, *, unknown: set[dt.date] | None = None
) -> dt.date:
    """The n-th working day after `day` (before it when n < 0); `day` itself when n == 0."""
    step = 1 if n >= 0 else -1
    remaining = abs(n)
    current = day
    while remaining:
        current += dt.timedelta(days=step)
        if is_working_day(current, rules, unknown=unknown):
            remaining -= 1
    return current


def _open_windows(rules: SendRules, quiet_hours: bool) -> list[tuple[dt.time, dt.time | None]]:
    """The parts of a local day outside quiet hours, as [start, end) (end None: midnight)."""
    start, end = rules.quiet_start, rules.quiet_end
    if not quiet_hours or start == end:
        return [(dt.time(0), None)]
    if start > end:  # spans midnight, e.g. 21:00-08:00: open 08:00-21:00
        return [(end, start)]
    # e.g. 12:00-14:00: open before and after
    return [(dt.time(0), start), (end, None)]


def in_quiet_hours(local_time: dt.time, rules: SendRules) -> bool:
    """True when a local wall-clock time falls in the quiet hours."""
    return not any(
        begin <= local_time and (finish is None or local_time < finish)
        for begin, finish in _open_windows(rules, True)
    )


def next_allowed_time(
    t: dt.datetime,
    rules: SendRules,
    *,
    working_days_only: bool,
    quiet_hours: bool = True,
    unknown: set[dt.date] | None = None,
) -> dt.datetime:
    """The first instant at or after `t` outside quiet hours (and on a working day if asked).

    `t` must be timezone-aware; the answer is in the rules' time zone.
    """
    if t.tzinfo is None:
        raise ValueError("next_allowed_time needs a timezone-aware time, not a naive one")
    zone = rules.zone
    local = t.astimezone(zone)
    windows = _open_windows(rules, quiet_hours)
    day = local.date()
    for _ in range(MAX_DAYS_AHEAD):
        if not working_days_only or is_working_day(day, rules, unknown=unknown):
            for begin, finish in windows:
                opens = dt.datetime.combine(day, begin, zone)
                closes = (
                    dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), zone)
                    if finish is None
                    else dt.datetime.combine(day, finish, zone)
                )
                if local < closes:
                    return max(local, opens)
        day += dt.timedelta(days=1)
    raise ValueError(
        f"no allowed send time within {MAX_DAYS_AHEAD} days of {local.isoformat()}: "
        "check the quiet hours and the bank's holidays in the SendRules block"
    )
