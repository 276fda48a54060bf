"""Slots as plain functions: occurrences in a week, who is served, product rotation, one reminder per owner."""

from __future__ import annotations

import datetime as dt
import uuid
from zoneinfo import ZoneInfo

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.group_cadence import (
    ActivityLibrary,
    CadenceTemplate,
    GroupOverride,
    ProductCalendar,
    Promotion,
)
from siyu.blocks.wecom import WeComClient
from siyu.schemas.models import OutboxEntry
from siyu.tasks.cadence import (
    ALERT_BATCH,
    CadenceAlert,
    iso_week,
    load_roster,
    occurrences,
    pick_products,
    queue_alerts,
    send_alerts,
    served_groups,
    slot_sends,
    slot_time,
)
from siyu.tasks.outbox import DONE, SENDING
from tests.fixtures.sandbox import SEED_CHAT_IDS

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


def test_a_paused_group_is_served_by_no_slot():
    template = CadenceTemplate(overrides=[GroupOverride(chat_id="wr2", paused=True)])
    assert template.paused() == {"wr2"}
    for slot in template.slots:
        assert served_groups(roster(), template, slot, MONDAY)["chat_id"].tolist() == ["wr1", "wr3"]


def test_group_tags_name_groups_by_id_or_pattern():
    template = CadenceTemplate(tagged_groups={"北区": ["wr1", "wrNorth*"], "信用卡": ["wrNorth2"]})
    assert template.tags_of("wr1") == {"北区"}
    assert template.tags_of("wrNorth2") == {"北区", "信用卡"}
    assert template.tags_of("wr10") == set()  # an id is no prefix


def test_the_roster_keeps_the_groups_carrying_one_of_the_templates_tags(sandbox, seed_dir):
    sandbox.seed(seed_dir)
    client = WeComClient(sandbox.api_base, sandbox.corp_id, sandbox.secret)
    tags = {"北区": [SEED_CHAT_IDS[0]], "南区": ["wrSeedChat000[2-9]"]}

    def roster_of(**template) -> list[str]:
        chosen = load_roster(client, CadenceTemplate(tagged_groups=tags, **template))
        assert list(chosen.columns) == ["chat_id", "owner", "name"]
        return sorted(chosen["chat_id"])

    assert roster_of() == sorted(SEED_CHAT_IDS)
    assert roster_of(group_tags=["北区"]) == [SEED_CHAT_IDS[0]]
    assert roster_of(group_tags=["南区", "北区"]) == sorted(SEED_CHAT_IDS)
    assert roster_of(group_tags=["西区"]) == []  # a tag no group carries chooses none
    # Tags combine with owners and name patterns.
    owner = client.get_group_chat(SEED_CHAT_IDS[1]).owner
    assert SEED_CHAT_IDS[1] in roster_of(group_tags=["南区"], owners=[owner], name_patterns=["*"])
    assert roster_of(group_tags=["北区"], name_patterns=["no such name"]) == []


def alert(key: str) -> CadenceAlert:
    return CadenceAlert(key=key, event="siyu.test.alert", resource=f"siyu.group-cadence.test.{key}",
                    subject="one\nline", next_step="do  this", details={"count": 3})  # fmt: skip


def test_an_alert_is_emitted_once_by_its_key_and_a_crash_resends_it_under_the_same_id(engine):
    emitted: list[dict] = []

    def emit(**event) -> bool:
        emitted.append(event)
        return True

    assert queue_alerts(engine, [alert("a"), alert("b")]) == 2
    assert queue_alerts(engine, [alert("a")]) == 0  # found again: not queued twice
    send_alerts(engine, emit=emit)
    send_alerts(engine, emit=emit)
    assert [e["payload"]["subject"] for e in emitted] == ["one line", "one line"]
    assert emitted[0]["payload"] == {"count": 3, "subject": "one line", "next_step": "do this",
                                     "key": "group-cadence:a"}  # fmt: skip
    assert emitted[0]["resource"] == {"prefect.resource.id": "siyu.group-cadence.test.a"}
    # Killed after the emit, before its outcome was stored: the entry is left sending, and the
    # next run emits it again under the same event id, which Prefect's automations have seen.
    queue_alerts(engine, [alert("c")])
    send_alerts(engine, emit=emit)
    with Session(engine) as session, session.begin():
        session.execute(
            sa.update(OutboxEntry).where(OutboxEntry.key == "alert:c").values(status=SENDING)
        )
    send_alerts(engine, emit=emit)
    assert len(emitted) == 4 and emitted[2]["id"] == emitted[3]["id"] != emitted[0]["id"]
    assert isinstance(emitted[0]["id"], uuid.UUID)
    # With nothing to emit to (no Prefect API), an alert waits for a run that has one.
    queue_alerts(engine, [alert("d")])
    send_alerts(engine, emit=lambda **_: False)
    send_alerts(engine, emit=emit)
    assert [e["payload"]["key"] for e in emitted[4:]] == ["group-cadence:d"]
    with Session(engine) as session:
        statuses = session.scalars(
            sa.select(OutboxEntry.status).where(OutboxEntry.batch == ALERT_BATCH)
        ).all()
    assert statuses == [DONE] * 4
