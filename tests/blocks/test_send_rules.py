"""The SendRules block: WeCom's caps and China's quiet hours as defaults, validated edits."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from siyu.blocks.send_rules import SendRules


def test_defaults_are_wecoms_caps_and_the_banks_quiet_hours() -> None:
    rules = SendRules()
    assert rules.get_block_type_slug() == "siyu-send-rules"
    assert rules.time_zone == "Asia/Shanghai"
    customer = rules.cap("customer", "mass_template")
    assert (customer.per_month, customer.per_sender_per_day) == (4, 1)
    group = rules.cap("group", "mass_template")
    assert (group.per_month, group.per_sender_per_day) == (4, None)
    reminder = rules.cap("customer", "employee_reminder")
    assert (reminder.per_month, reminder.per_sender_per_day) == (None, None)
    assert (rules.quiet_start, rules.quiet_end) == (dt.time(21), dt.time(8))
    assert rules.timing("mass_template").working_days_only is True
    assert rules.known_until is None and rules.holidays == [] and rules.workdays == []


def test_the_rules_survive_the_json_the_ui_stores() -> None:
    rules = SendRules(
        holidays=[dt.date(2027, 1, 1)],
        workdays=[dt.date(2027, 2, 7)],
        known_until=dt.date(2027, 12, 31),
        quiet_start="22:00",
    )
    again = SendRules.model_validate_json(rules.model_dump_json())
    assert again.holidays == [dt.date(2027, 1, 1)]
    assert again.quiet_start == dt.time(22)
    assert again.known_until == dt.date(2027, 12, 31)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"time_zone": "Mars/Olympus"}, "unknown time zone"),
        (
            {
                "caps": [
                    {"target_kind": "group", "channel": "mass_template", "per_month": 4},
                    {"target_kind": "group", "channel": "mass_template", "per_month": 2},
                ]
            },
            "twice",
        ),
        ({"holidays": [dt.date(2027, 1, 4)], "workdays": [dt.date(2027, 1, 4)]}, "both a holiday"),
        (
            {"caps": [{"target_kind": "customer", "channel": "mass_template", "per_month": -1}]},
            "greater",
        ),
    ],
)
def test_inconsistent_rules_are_refused_with_a_clear_message(changes: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SendRules(**changes)
