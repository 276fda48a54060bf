"""Slots as plain functions: occurrences in a week, who is served, product rotation, one reminder per owner."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pandas as pd

from siyu.blocks.group_cadence import (
    ActivityLibrary,
    CadenceTemplate,
    GroupOverride,
    ProductCalendar,
    Promotion,
)
from siyu.tasks.cadence import (
    iso_week,
    occurrences,
    pick_products,
    served_groups,
    slot_sends,
    slot_time,
)

CHINA = ZoneInfo("Asia/Shanghai")
MONDAY = dt.date(2026, 12, 7)


def roster() -> pd.DataFrame:
    return pd.DataFrame(
        {"chat_id": ["wr1", "wr2", "wr3"], "owner": ["mgrA", "mgrA", "mgrB"], "name": ""}
    )


def promo(pid: str, priority: int, start=MONDAY, end=MONDAY + dt.timedelta(days=20), groups=()):
    return Promotion(id=pid, title=pid, content="c", start=start, end=end, priority=priority,
                     groups=list(groups))  # fmt: skip


def test_a_week_of_the_default_template_has_its_six_slots_in_order():
    template = CadenceTemplate()
    start = dt.datetime.combine(MONDAY, dt.time(), tzinfo=CHINA)
    found = occurrences(template, start, start + dt.timedelta(days=7))
    assert [(at.strftime("%a %H:%M"), slot.name) for at, slot in found] == [
        ("Mon 10:00", "mon-post"),
        ("Tue 20:00", "tue-game"),
        ("Wed 10:00", "wed-post"),
        ("Thu 20:00", "thu-game"),
        ("Fri 10:00", "fri-post"),
        ("Fri 14:00", "fri-big"),
    ]
    assert iso_week(MONDAY) == "2026-W50"


def test_overrides_skip_a_slot_or_move_it_for_one_group():
    template = CadenceTemplate(
        overrides=[
            GroupOverride(chat_id="wr2", skip=["mon-post"]),
            GroupOverride(chat_id="wr3", times={"mon-post": dt.time(11, 30)}),
        ]
    )
    groups = served_groups(roster(), template, template.slot("mon-post"), MONDAY)
    assert groups["chat_id"].tolist() == ["wr1", "wr3"]
    assert groups["wanted_at"].tolist() == [
        slot_time(template.slot("mon-post"), MONDAY),
        dt.datetime.combine(MONDAY, dt.time(11, 30), tzinfo=CHINA),
    ]


def test_products_rotate_by_priority_skip_the_recently_seen_and_respect_windows_and_targets():
    calendar = ProductCalendar(
        rotation_days=7,
        promotions=[
            promo("card", 3),
            promo("fund", 2),
            promo("old", 9, start=dt.date(2026, 1, 1), end=dt.date(2026, 1, 31)),
            promo("vip", 5, groups=["wr3"]),
        ],
    )
    history = pd.DataFrame(
        {"chat_id": ["wr2"], "promotion_id": ["card"], "day": [MONDAY - dt.timedelta(days=2)]}
    )
    picked = pick_products(["wr1", "wr2", "wr3"], calendar, MONDAY, history)
    assert picked.to_dict() == {"wr1": "card", "wr2": "fund", "wr3": "vip"}
    # Everything seen lately: the longest unseen goes again.
    seen = pd.DataFrame(
        {"chat_id": ["wr1", "wr1"], "promotion_id": ["card", "fund"],
         "day": [MONDAY - dt.timedelta(days=1), MONDAY - dt.timedelta(days=3)]}
    )  # fmt: skip
    assert pick_products(["wr1"], calendar, MONDAY, seen).to_dict() == {"wr1": "fund"}


def test_one_reminder_per_owner_lists_all_their_groups_and_announces_tomorrows_game():
    template = CadenceTemplate()
    slot = template.slot("mon-post")
    groups = served_groups(roster(), template, slot, MONDAY)
    calendar = ProductCalendar(promotions=[promo("card", 3)])
    products = pd.Series({"wr1": "card", "wr2": "card", "wr3": "card"})
    wanted, contents = slot_sends(
        groups, template, slot, ActivityLibrary(), {p.id: p for p in calendar.promotions},
        products, "2026-W50",
    )  # fmt: skip
    assert sorted(contents) == ["owner:mgrA", "owner:mgrB"]
    assert "wr1" in contents["owner:mgrA"].text and "wr2" in contents["owner:mgrA"].text
    assert "预告" in contents["owner:mgrA"].text  # Tuesday's game, announced the day before
    assert set(wanted["channel"]) == {"employee_reminder"}
    assert wanted[["target_id", "step", "period"]].values.tolist() == [
        ["wr1", "mon-post", "2026-W50"], ["wr2", "mon-post", "2026-W50"],
        ["wr3", "mon-post", "2026-W50"],
    ]  # fmt: skip


def test_a_mass_template_slot_has_one_variant_per_product():
    template = CadenceTemplate()
    slot = template.slot("mon-post").model_copy(update={"delivery": "mass_template"})
    groups = served_groups(roster(), template, slot, MONDAY)
    products = pd.Series({"wr1": "card", "wr2": "fund"})
    calendar = ProductCalendar(promotions=[promo("card", 3), promo("fund", 2)])
    wanted, contents = slot_sends(
        groups, template, slot, ActivityLibrary(), {p.id: p for p in calendar.promotions},
        products, "2026-W50",
    )  # fmt: skip
    assert wanted["variant"].tolist() == ["product:card", "product:fund", "product:none"]
    assert set(contents) == {"product:card", "product:fund", "product:none"}
