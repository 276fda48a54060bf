"""The bank's working-day calendar: statutory holidays, worked weekends, quiet hours, unknown years."""

from __future__ import annotations

import datetime as dt
import warnings
from zoneinfo import ZoneInfo

import pytest

from siyu.blocks.send_rules import SendRules
from siyu.tasks.working_days import (
    CalendarWarning,
    add_working_days,
    calendar_day,
    in_quiet_hours,
    is_working_day,
    next_allowed_time,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
RULES = SendRules()
# The bank's own data for a year the package does not know yet (2027's New Year: 1-3 January off).
BANK_2027 = SendRules(
    holidays=[dt.date(2027, 1, 1)],
    workdays=[],
    known_until=dt.date(2027, 12, 31),
)


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=SHANGHAI)


def test_national_day_2026_10_01_is_a_statutory_holiday() -> None:
    assert dt.date(2026, 10, 1).weekday() == 3  # a Thursday
    assert is_working_day(dt.date(2026, 10, 1), RULES) is False


def test_saturday_2026_10_10_is_worked_in_lieu() -> None:
    assert dt.date(2026, 10, 10).weekday() == 5
    assert is_working_day(dt.date(2026, 10, 10), RULES) is True
    assert is_working_day(dt.date(2026, 10, 11), RULES) is False  # the Sunday after is not


def test_the_banks_dates_override_the_package() -> None:
    rules = SendRules(holidays=[dt.date(2026, 12, 31)], workdays=[dt.date(2026, 10, 11)])
    assert is_working_day(dt.date(2026, 12, 31), rules) is False
    assert is_working_day(dt.date(2026, 10, 11), rules) is True
    assert calendar_day(dt.date(2026, 12, 31), rules).source == "bank"


def test_2027_01_04_without_the_banks_data_is_a_loud_monday_guess(caplog) -> None:
    unknown: set[dt.date] = set()
    with pytest.warns(CalendarWarning, match="2027-01-04 is outside the working-day calendar"):
        working = is_working_day(dt.date(2027, 1, 4), RULES, unknown=unknown)
    assert working is True  # Mon-Fri fallback, said out loud
    assert unknown == {dt.date(2027, 1, 4)}
    assert "2027-01-04" in caplog.text
    assert calendar_day(dt.date(2027, 1, 4), RULES).known is False


def test_2027_01_04_with_the_banks_data_is_known_and_quiet() -> None:
    unknown: set[dt.date] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalendarWarning)
        assert is_working_day(dt.date(2027, 1, 4), BANK_2027, unknown=unknown) is True
        assert is_working_day(dt.date(2027, 1, 1), BANK_2027, unknown=unknown) is False
        assert is_working_day(dt.date(2027, 1, 2), BANK_2027, unknown=unknown) is False  # Saturday
    assert unknown == set()
    # Past known_until the bank's data says nothing either.
    with pytest.warns(CalendarWarning):
        is_working_day(dt.date(2028, 1, 4), BANK_2027)


def test_a_bank_holiday_in_an_unknown_year_is_honoured_without_known_until() -> None:
    rules = SendRules(holidays=[dt.date(2027, 1, 4)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalendarWarning)
        assert is_working_day(dt.date(2027, 1, 4), rules) is False


def test_quiet_hours_span_midnight_by_default() -> None:
    assert in_quiet_hours(dt.time(21, 0), RULES)
    assert in_quiet_hours(dt.time(23, 59), RULES)
    assert in_quiet_hours(dt.time(7, 59), RULES)
    assert not in_quiet_hours(dt.time(8, 0), RULES)
    assert not in_quiet_hours(dt.time(20, 59), RULES)


def test_a_quiet_hour_moves_to_eight_the_next_morning() -> None:
    # Tuesday 2026-12-01 22:30 is quiet: the next allowed time is Wednesday 08:00.
    assert next_allowed_time(at(2026, 12, 1, 22, 30), RULES, working_days_only=True) == at(
        2026, 12, 2, 8, 0
    )
    assert next_allowed_time(at(2026, 12, 2, 6, 15), RULES, working_days_only=True) == at(
        2026, 12, 2, 8, 0
    )
    noon = at(2026, 12, 2, 12, 0)
    assert next_allowed_time(noon, RULES, working_days_only=True) == noon


def test_next_allowed_time_skips_the_national_day_week_when_asked() -> None:
    evening = at(2026, 9, 30, 22, 0)
    assert next_allowed_time(evening, RULES, working_days_only=True) == at(2026, 10, 8, 8, 0)
    assert next_allowed_time(evening, RULES, working_days_only=False) == at(2026, 10, 1, 8, 0)
    # Without quiet hours the evening is open, but a holiday still holds it until it ends.
    assert next_allowed_time(evening, RULES, working_days_only=True, quiet_hours=False) == evening
    holiday_noon = at(2026, 10, 3, 12, 0)
    assert next_allowed_time(holiday_noon, RULES, working_days_only=True, quiet_hours=False) == at(
        2026, 10, 8, 0, 0
    )


def test_next_allowed_time_answers_in_the_rules_zone_for_a_utc_input() -> None:
    utc = dt.datetime(2026, 12, 1, 14, 30, tzinfo=dt.UTC)  # 22:30 in Shanghai
    answer = next_allowed_time(utc, RULES, working_days_only=True)
    assert answer == at(2026, 12, 2, 8, 0)
    assert answer.utcoffset() == dt.timedelta(hours=8)


def test_next_allowed_time_refuses_a_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_allowed_time(dt.datetime(2026, 12, 1, 12), RULES, working_days_only=True)


def test_a_midday_quiet_window_leaves_morning_and_afternoon_open() -> None:
    rules = SendRules(quiet_start=dt.time(12, 0), quiet_end=dt.time(14, 0))
    assert in_quiet_hours(dt.time(13, 0), rules)
    assert not in_quiet_hours(dt.time(23, 0), rules)
    assert next_allowed_time(at(2026, 12, 1, 12, 30), rules, working_days_only=True) == at(
        2026, 12, 1, 14, 0
    )


def test_add_working_days_counts_bank_days() -> None:
    assert add_working_days(dt.date(2026, 9, 30), 1, RULES) == dt.date(2026, 10, 8)
    assert add_working_days(dt.date(2026, 10, 9), 1, RULES) == dt.date(2026, 10, 10)  # worked Sat
    assert add_working_days(dt.date(2026, 10, 10), 1, RULES) == dt.date(2026, 10, 12)
    assert add_working_days(dt.date(2026, 10, 8), -1, RULES) == dt.date(2026, 9, 30)
    assert add_working_days(dt.date(2026, 10, 1), 0, RULES) == dt.date(2026, 10, 1)
    # "paid five working days later": 2026-11-27 (Fri) -> 2026-12-04 (Fri)
    assert add_working_days(dt.date(2026, 11, 27), 5, RULES) == dt.date(2026, 12, 4)


def test_an_unknown_date_tells_ops_once_a_day(prefect_server) -> None:
    from siyu.tasks import working_days
    from tests.tasks.test_ops_alerts import wait_for_events

    since = dt.datetime.now(dt.UTC)
    day, sentinel = dt.date(2029, 3, 5), dt.date(2029, 3, 6)
    working_days._told.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalendarWarning)
        for _ in range(50):  # a planner looks a date up again and again
            is_working_day(day, RULES)
    tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    assert working_days.tell_ops_unknown(day, today=tomorrow) is True  # a new day: told again
    assert working_days.tell_ops_unknown(sentinel) is True

    events = wait_for_events(working_days.UNKNOWN_DATE_EVENT, since, 3)
    assert any(sentinel.isoformat() in e.payload["subject"] for e in events)
    told = [e for e in events if e.payload["subject"].startswith(day.isoformat())]
    assert len(told) == 2 and len({e.payload["key"] for e in told}) == 2
    assert "known_until" in told[0].payload["next_step"]
