"""The quota planner: caps, priorities, quiet hours and days, keys already planned, a month of plans."""

from __future__ import annotations

import datetime as dt
import random
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from siyu.blocks.send_rules import SendCap, SendRules
from siyu.tasks.quota import LedgerCounts, PlanResult, plan_sends

SHANGHAI = ZoneInfo("Asia/Shanghai")
RULES = SendRules()
TUESDAY_10 = dt.datetime(2026, 12, 1, 10, 0, tzinfo=SHANGHAI)


def wanted(*rows: dict, at: dt.datetime = TUESDAY_10) -> pd.DataFrame:
    base = {
        "target_kind": "customer",
        "target_id": "C0001",
        "sender": "u1",
        "channel": "mass_template",
        "programme": "path:P",
        "step": "touch-1",
        "period": "2026-12",
        "priority": None,
        "wanted_at": at,
    }
    return pd.DataFrame([{**base, **row} for row in rows])


def outcome(plan: PlanResult) -> dict[tuple[str, str, str], str]:
    """(target, programme, step) -> 'fits' or the reason."""
    result = {}
    for frame, name in ((plan.fits, "fits"), (plan.deferred, None), (plan.skipped, None)):
        for row in frame.itertuples():
            result[(row.target_id, row.programme, row.step)] = name or row.reason
    return result


def test_a_send_within_the_caps_fits_and_counts_against_today() -> None:
    plan = plan_sends(wanted({}), RULES, TUESDAY_10)
    assert len(plan.fits) == 1 and plan.deferred.empty and plan.skipped.empty
    row = plan.fits.iloc[0]
    assert row["status"] == "planned"
    assert row["send_day"] == dt.date(2026, 12, 1)
    assert row["send_month"] == "2026-12"
    assert row["priority"] == 100  # path:* in the default priorities


def test_one_mass_message_a_day_per_sender_and_customer_the_rest_wait_for_tomorrow() -> None:
    plan = plan_sends(
        wanted(
            {"step": "touch-1"},
            {"step": "touch-2"},
            {"step": "touch-3", "sender": "u2"},  # another employee may send the same day
        ),
        RULES,
        TUESDAY_10,
    )
    got = outcome(plan)
    assert got[("C0001", "path:P", "touch-1")] == "fits"
    assert got[("C0001", "path:P", "touch-2")] == "day_cap"
    assert got[("C0001", "path:P", "touch-3")] == "fits"
    deferred = plan.deferred.iloc[0]
    assert deferred["not_before"] == pd.Timestamp("2026-12-02 08:00", tz=SHANGHAI)


def test_the_month_cap_counts_what_the_ledger_holds() -> None:
    counts = LedgerCounts.from_rows(
        pd.DataFrame(
            [
                {
                    "target_kind": "customer",
                    "target_id": "C0001",
                    "programme": "path:OLD",
                    "step": f"touch-{i}",
                    "period": "2026-12",
                    "sender": "u9",
                    "channel": "mass_template",
                    "status": status,
                    "send_day": dt.date(2026, 12, 1) - dt.timedelta(days=i),
                    "send_month": "2026-12" if i < 1 else "2026-11",
                }
                for i, status in enumerate(["delivered"])
            ]
            + [
                {
                    "target_kind": "customer",
                    "target_id": "C0001",
                    "programme": "path:OLD",
                    "step": f"x-{i}",
                    "period": "2026-12",
                    "sender": "u9",
                    "channel": "mass_template",
                    "status": status,
                    "send_day": dt.date(2026, 11, 30),
                    "send_month": "2026-12",  # counted in the month whatever the day
                }
                for i, status in enumerate(["planned", "created", "failed", "skipped", "deferred"])
            ]
        )
    )
    # delivered + planned + created = 3 of 4 used (failed, skipped, deferred hold no slot).
    plan = plan_sends(
        wanted({"sender": "u1", "step": "a"}, {"sender": "u2", "step": "b"}),
        RULES,
        TUESDAY_10,
        counts,
    )
    assert len(plan.fits) == 1
    assert list(plan.skipped["reason"]) == ["month_cap"]


def test_the_senders_day_count_in_the_ledger_defers_a_second_send() -> None:
    counts = LedgerCounts(
        month=pd.DataFrame(columns=["target_kind", "target_id", "channel", "send_month", "sends"]),
        day=pd.DataFrame(
            [["customer", "C0001", "u1", "mass_template", dt.date(2026, 12, 1), 1]],
            columns=["target_kind", "target_id", "sender", "channel", "send_day", "sends"],
        ),
        existing=LedgerCounts.empty().existing,
    )
    plan = plan_sends(wanted({}), RULES, TUESDAY_10, counts)
    assert list(plan.deferred["reason"]) == ["day_cap"]


def test_priorities_decide_who_gets_the_last_slot_of_the_month() -> None:
    counts = LedgerCounts(
        month=pd.DataFrame(
            [["customer", "C0001", "mass_template", "2026-12", 3]],
            columns=["target_kind", "target_id", "channel", "send_month", "sends"],
        ),
        day=LedgerCounts.empty().day,
        existing=LedgerCounts.empty().existing,
    )
    plan = plan_sends(
        wanted(
            {"programme": "greeting:new-year", "step": "eve", "sender": "u1"},
            {"programme": "path:P", "step": "touch-2", "sender": "u2"},
        ),
        RULES,
        TUESDAY_10,
        counts,
    )
    got = outcome(plan)
    assert got[("C0001", "path:P", "touch-2")] == "fits"
    assert got[("C0001", "greeting:new-year", "eve")] == "month_cap"


def test_a_priority_rule_by_step_and_the_batch_own_priority() -> None:
    rules = SendRules(
        priorities=[{"programme": "path:*", "step": "touch-1", "priority": 5}],
        default_priority=1,
    )
    plan = plan_sends(
        wanted(
            {"step": "touch-1"},
            {"step": "touch-2", "priority": 3},
            {"step": "touch-3", "target_id": "C2"},
        ),
        rules,
        TUESDAY_10,
    )
    by_step = dict(
        zip(
            pd.concat([plan.fits, plan.deferred])["step"],
            pd.concat([plan.fits, plan.deferred])["priority"],
            strict=True,
        )
    )
    assert by_step == {"touch-1": 5, "touch-2": 3, "touch-3": 1}


def test_a_quiet_hour_defers_to_the_morning() -> None:
    evening = dt.datetime(2026, 12, 1, 21, 30, tzinfo=SHANGHAI)
    plan = plan_sends(wanted({}, at=evening), RULES, evening)
    assert plan.fits.empty
    assert list(plan.deferred["reason"]) == ["quiet_hours"]
    assert plan.deferred.iloc[0]["not_before"] == pd.Timestamp("2026-12-02 08:00", tz=SHANGHAI)


def test_a_statutory_holiday_defers_to_the_next_working_morning() -> None:
    national_day = dt.datetime(2026, 10, 1, 10, 0, tzinfo=SHANGHAI)
    plan = plan_sends(wanted({}, at=national_day), RULES, national_day)
    assert list(plan.deferred["reason"]) == ["non_working_day"]
    assert plan.deferred.iloc[0]["not_before"] == pd.Timestamp("2026-10-08 08:00", tz=SHANGHAI)


def test_a_worked_saturday_sends() -> None:
    worked_saturday = dt.datetime(2026, 10, 10, 10, 0, tzinfo=SHANGHAI)
    plan = plan_sends(wanted({}, at=worked_saturday), RULES, worked_saturday)
    assert len(plan.fits) == 1


def test_a_channel_may_ignore_quiet_days() -> None:
    rules = SendRules(
        timings=[
            {"channel": "mass_template"},
            {"channel": "employee_reminder", "working_days_only": False},
        ]
    )
    national_day = dt.datetime(2026, 10, 1, 10, 0, tzinfo=SHANGHAI)
    plan = plan_sends(
        wanted({"channel": "employee_reminder"}, {"step": "touch-2"}, at=national_day),
        rules,
        national_day,
    )
    assert list(plan.fits["channel"]) == ["employee_reminder"]
    assert list(plan.deferred["reason"]) == ["non_working_day"]


def test_employee_reminders_are_uncapped_by_default() -> None:
    plan = plan_sends(
        wanted(*({"channel": "employee_reminder", "step": f"s{i}"} for i in range(10))),
        RULES,
        TUESDAY_10,
    )
    assert len(plan.fits) == 10


def test_a_group_gets_four_a_month_and_no_day_cap() -> None:
    plan = plan_sends(
        wanted(
            *(
                {
                    "target_kind": "group",
                    "target_id": "wrG1",
                    "programme": "cadence:K",
                    "step": f"s{i}",
                }
                for i in range(6)
            )
        ),
        RULES,
        TUESDAY_10,
    )
    assert len(plan.fits) == 4
    assert list(plan.skipped["reason"]) == ["month_cap", "month_cap"]


def test_caps_are_data_in_the_rules() -> None:
    rules = SendRules(
        caps=[
            SendCap(
                target_kind="customer", channel="mass_template", per_month=2, per_sender_per_day=2
            )
        ]
    )
    plan = plan_sends(wanted(*({"step": f"s{i}"} for i in range(3))), rules, TUESDAY_10)
    assert len(plan.fits) == 2
    assert list(plan.skipped["reason"]) == ["month_cap"]


def test_a_send_wanted_later_is_not_due_yet() -> None:
    later = dt.datetime(2026, 12, 3, 9, 0, tzinfo=SHANGHAI)
    plan = plan_sends(wanted({"wanted_at": later}), RULES, TUESDAY_10)
    assert list(plan.deferred["reason"]) == ["not_due"]
    assert plan.deferred.iloc[0]["not_before"] == pd.Timestamp(later)


def test_keys_already_in_the_ledger_are_skipped_but_a_deferred_key_is_planned_again() -> None:
    existing = pd.DataFrame(
        [
            ["customer", "C0001", "path:P", "touch-1", "2026-12", 11, "created"],
            ["customer", "C0001", "path:P", "touch-2", "2026-12", 12, "deferred"],
        ],
        columns=["target_kind", "target_id", "programme", "step", "period", "ledger_id", "status"],
    )
    counts = LedgerCounts(
        month=LedgerCounts.empty().month, day=LedgerCounts.empty().day, existing=existing
    )
    plan = plan_sends(wanted({"step": "touch-1"}, {"step": "touch-2"}), RULES, TUESDAY_10, counts)
    assert list(plan.skipped["reason"]) == ["already_planned"]
    assert list(plan.fits["step"]) == ["touch-2"]
    assert plan.fits.iloc[0]["ledger_id"] == 12


def test_the_same_key_twice_in_a_batch_is_planned_once() -> None:
    plan = plan_sends(wanted({"sender": "u1"}, {"sender": "u2"}), RULES, TUESDAY_10)
    assert len(plan.fits) == 1
    assert list(plan.skipped["reason"]) == ["duplicate"]


def test_a_plan_on_a_date_past_the_calendar_carries_the_warning() -> None:
    monday = dt.datetime(2027, 1, 4, 10, 0, tzinfo=SHANGHAI)
    with pytest.warns(UserWarning, match="2027-01-04"):
        plan = plan_sends(wanted({"period": "2027-01"}, at=monday), RULES, monday)
    assert len(plan.fits) == 1  # a Monday, by the Mon-Fri fallback
    assert plan.calendar_warnings and "2027-01-04" in plan.calendar_warnings[0]
    bank = SendRules(holidays=[dt.date(2027, 1, 1)], known_until=dt.date(2027, 12, 31))
    assert (
        plan_sends(wanted({"period": "2027-01"}, at=monday), bank, monday).calendar_warnings == []
    )


def test_the_plan_is_a_pure_function_of_its_inputs() -> None:
    batch = wanted(*({"step": f"s{i}", "sender": f"u{i % 2}"} for i in range(8)))
    first = plan_sends(batch, RULES, TUESDAY_10)
    second = plan_sends(batch.sample(frac=1, random_state=3), RULES, TUESDAY_10)
    for a, b in (
        (first.fits, second.fits),
        (first.deferred, second.deferred),
        (first.skipped, second.skipped),
    ):
        pd.testing.assert_frame_equal(a, b)
    assert len(batch) == 8 and "status" not in batch.columns  # the input is left alone


def random_month_of_wanted_sends(rng: random.Random, day: dt.date, n: int) -> pd.DataFrame:
    at = dt.datetime.combine(day, dt.time(10), SHANGHAI)
    rows = []
    for _ in range(n):
        kind = rng.choice(["customer", "customer", "group"])
        rows.append(
            {
                "target_kind": kind,
                "target_id": f"{kind[0].upper()}{rng.randrange(40):04d}",
                "sender": f"u{rng.randrange(3)}",
                "channel": rng.choice(["mass_template"] * 4 + ["employee_reminder"]),
                "programme": rng.choice(["path:P", "path:Q", "cadence:K", "greeting:x"]),
                "step": f"s{rng.randrange(12)}",
                "period": rng.choice(["2026-12", "2026-W49", "2026-W50"]),
                "priority": None,
                "wanted_at": at,
            }
        )
    return pd.DataFrame(rows)


def assert_within_caps(ledger: pd.DataFrame) -> None:
    counted = ledger[ledger["status"].isin(["planned", "created", "confirmed", "delivered"])]
    mass = counted[counted["channel"] == "mass_template"]
    per_month = mass.groupby(["target_kind", "target_id", "send_month"]).size()
    assert per_month.max() <= 4
    customers = mass[mass["target_kind"] == "customer"]
    per_day = customers.groupby(["target_id", "sender", "send_day"]).size()
    assert per_day.max() <= 1


def test_a_month_of_random_plans_never_exceeds_the_caps() -> None:
    rng = random.Random(20261201)
    ledger = pd.DataFrame()
    next_id = 1
    for offset in range(31):
        day = dt.date(2026, 12, 1) + dt.timedelta(days=offset)
        batch = random_month_of_wanted_sends(rng, day, 150)
        as_of = dt.datetime.combine(day, dt.time(10), SHANGHAI)
        counts = LedgerCounts.from_rows(ledger) if len(ledger) else LedgerCounts.empty()
        plan = plan_sends(batch, RULES, as_of, counts)
        assert len(plan.fits) + len(plan.deferred) + len(plan.skipped) == len(batch)
        new = pd.concat(
            [
                plan.fits,
                plan.deferred,
                plan.skipped[~plan.skipped["reason"].isin(["already_planned", "duplicate"])],
            ]
        )
        replanned = new["ledger_id"].notna()
        if len(ledger):
            ledger = ledger[~ledger["ledger_id"].isin(new.loc[replanned, "ledger_id"])]
        new = new.copy()
        ids = new["ledger_id"].astype("Int64")
        fresh = ids.isna()
        ids[fresh] = range(next_id, next_id + int(fresh.sum()))
        next_id += int(fresh.sum())
        new["ledger_id"] = ids
        ledger = pd.concat([ledger, new], ignore_index=True)
        assert not ledger.duplicated(
            ["target_kind", "target_id", "programme", "step", "period"]
        ).any()
    assert_within_caps(ledger)
    # The caps did bite: otherwise the test proves nothing.
    assert (ledger["reason"] == "month_cap").any() and (ledger["reason"] == "day_cap").any()
    # Weekends hold mass messages (5, 6, 12, 13 ... December 2026 are plain weekends).
    fitted_days = set(ledger.loc[ledger["status"] == "planned", "send_day"])
    assert dt.date(2026, 12, 5) not in fitted_days and dt.date(2026, 12, 7) in fitted_days


def test_an_empty_batch_plans_nothing() -> None:
    plan = plan_sends(wanted({}).iloc[0:0], RULES, TUESDAY_10)
    assert plan.summary() == {"fits": 0, "deferred": 0, "skipped": 0}
    assert "send_day" in plan.fits.columns


def test_a_naive_as_of_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_sends(wanted({}), RULES, dt.datetime(2026, 12, 1, 10))
