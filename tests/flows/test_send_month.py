"""A month of sends to customers and groups through the sandbox, day by day on its movable clock.

Two programmes want the customers (a path with five touches, a Christmas greeting of lower
priority), a weekly cadence and a daily employee reminder want the groups; one customer
deletes their manager mid-month; one manager confirms late. At the end: no customer or group
received more than WeCom's caps, every row ended with its status and reason, and the
tracker's artifact and the ledger agree with what the sandbox delivered.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from sqlalchemy.orm import Session

from siyu.blocks.send_rules import SendRules
from siyu.blocks.wecom import WeComClient
from siyu.flows.sends_track import sends_track
from siyu.schemas.database import make_engine, upgrade
from siyu.schemas.ledger import Send
from siyu.tasks.delivery import MessageContent, send_batch
from siyu.tasks.tracking import REMINDER_TEXT, TrackSettings, track_sends
from tests.fixtures.sandbox import SEED_CHAT_IDS, SEED_CONTACT_IDS, SEED_EMPLOYEES

ZONE = ZoneInfo("Asia/Shanghai")
DAYS = [dt.date(2026, 12, d) for d in range(1, 32)]
# Customer i's manager (the seed's first follow); contacts 1 and 2 have a second one unused.
MANAGER_OF = {ext: SEED_EMPLOYEES[i % 3][0] for i, ext in enumerate(SEED_CONTACT_IDS)}
GROUP_OWNER = {SEED_CHAT_IDS[0]: "mgr001", SEED_CHAT_IDS[1]: "mgr002"}
# Path touches (priority 100): the 2nd on a Saturday, the 4th with the greeting, the 5th over
# the month's 4; the greeting (priority 10) loses the day to touch 4, then the month.
TOUCHES = {1: "touch-1", 5: "touch-2", 10: "touch-3", 24: "touch-4", 28: "touch-5"}
GREETING_DAY = 24
WEEKLY = {1: "w1", 8: "w2", 15: "w3", 22: "w4", 29: "w5"}  # Tuesdays: the 5th is over the cap
GONE = SEED_CONTACT_IDS[3]  # deletes mgr001 on the 9th
LATE = "mgr003"


@pytest.fixture
def month(prefect_server, sandbox, seed_dir, database_url, monkeypatch) -> Iterator[tuple]:
    sandbox.seed(seed_dir)
    sandbox.config(confirm_delay_seconds=600, late_factor=30, employee_confirm={LATE: "late"})
    monkeypatch.setenv("SIYU_DATABASE_URL", database_url)
    monkeypatch.setenv("SIYU_WECOM_BASE_URL", sandbox.api_base)
    monkeypatch.setenv("SIYU_WECOM_CORP_ID", sandbox.corp_id)
    monkeypatch.setenv("SIYU_WECOM_SECRET", sandbox.secret)
    monkeypatch.setenv("SIYU_WECOM_AGENT_ID", str(sandbox.agent_id))
    upgrade(database_url)
    engine = make_engine(database_url)
    with WeComClient(
        sandbox.api_base, sandbox.corp_id, sandbox.secret, agent_id=sandbox.agent_id
    ) as client:
        yield engine, client
    engine.dispose()


def wanted_on(day: dt.date) -> tuple[pd.DataFrame, dict[str, MessageContent]]:
    """What the programmes want on `day`, and the content of each variant."""
    rows = []
    at = dt.datetime.combine(day, dt.time(9), ZONE)

    def add(kind, target, sender, channel, programme, step, variant):
        rows.append(
            {
                "target_kind": kind,
                "target_id": target,
                "sender": sender,
                "channel": channel,
                "programme": programme,
                "step": step,
                "period": "2026-12",
                "wanted_at": at,
                "variant": variant,
            }
        )

    for ext, manager in MANAGER_OF.items():
        if day.day in TOUCHES:
            add("customer", ext, manager, "mass_template", "path:onboard", TOUCHES[day.day], "path")
        if day.day == GREETING_DAY:
            add("customer", ext, manager, "mass_template", "greeting:xmas", "hello", "greeting")
    for chat_id, owner in GROUP_OWNER.items():
        if day.day in WEEKLY:
            add("group", chat_id, owner, "mass_template", "cadence:weekly", WEEKLY[day.day], "week")
        if day.weekday() < 5:
            add(
                "group",
                chat_id,
                owner,
                "employee_reminder",
                "cadence:daily",
                f"d{day.day:02d}",
                "daily",
            )
    contents = {
        "path": MessageContent(text=f"理财入门第{day.day}天"),
        "greeting": MessageContent(text="圣诞快乐"),
        "week": MessageContent(text="本周群活动预告"),
        "daily": MessageContent(text="今日群内话题", instruction="请在群内发布以下内容。"),
    }
    return pd.DataFrame(rows), contents


def ledger(engine) -> pd.DataFrame:
    with Session(engine) as session:
        return pd.DataFrame(
            session.execute(
                sa.select(
                    Send.target_kind,
                    Send.target_id,
                    Send.sender,
                    Send.channel,
                    Send.programme,
                    Send.step,
                    Send.status,
                    Send.reason,
                )
            ).all(),
            columns=[
                "target_kind",
                "target_id",
                "sender",
                "channel",
                "programme",
                "step",
                "status",
                "reason",
            ],
        )


def artifact_rows() -> dict[str, dict[str, str]]:
    """The newest sends-track artifact's table, per manager."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["sends-track"]))
        )
    newest = max(found, key=lambda a: a.created)
    lines = [line for line in newest.data.splitlines() if line.startswith("| ")]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
        rows[cells["manager"]] = cells
    return rows


def test_a_month_of_sends_stays_inside_the_caps_and_every_row_ends(month, sandbox) -> None:
    engine, client = month
    rules = SendRules()
    settings = TrackSettings(in_flight_seconds=5)
    warnings: list[str] = []
    for day in DAYS:
        for hour in (10, 13, 17):
            when = dt.datetime.combine(day, dt.time(hour), ZONE)
            sandbox.set_clock(when.timestamp(), frozen=True)
            track_sends(engine, client, rules=rules, as_of=when, settings=settings)
            if hour == 10:
                if day.day == 9:
                    sandbox.delete_follow("mgr001", GONE)
                frame, contents = wanted_on(day)
                if len(frame):
                    report = send_batch(
                        engine,
                        client,
                        frame,
                        contents,
                        rules=rules,
                        as_of=when,
                        playbook="december",
                        version="v1",
                        export_checksum="feedbeef",
                    )
                    warnings += report.calendar_warnings
    end = dt.datetime(2026, 12, 31, 23, 0, tzinfo=ZONE)
    sandbox.set_clock(end.timestamp(), frozen=True)
    state = sends_track(as_of=end, return_state=True)
    assert state.is_completed(), state.message
    assert warnings == []

    messages = sandbox.mass_messages()
    results = [r for m in messages for r in m["results"]]
    delivered = [r for r in results if r["status"] == 1]
    # WeCom's caps, counted where they apply: the sandbox's send results.
    month_count = Counter(r.get("chat_id") or r["external_userid"] for r in delivered)
    assert max(month_count.values()) <= 4
    day_count = Counter(
        (dt.datetime.fromtimestamp(r["send_time"], ZONE).date(), r["userid"], r["external_userid"])
        for r in delivered
        if r.get("external_userid")
    )
    assert max(day_count.values()) == 1
    assert not [r for r in results if r["status"] == 3]  # planned inside the caps: none capped

    rows = ledger(engine)
    assert set(rows["status"]) <= {"delivered", "failed", "skipped", "deferred"}
    ended_with_reason = rows[rows["status"].isin(["failed", "skipped", "deferred"])]
    assert ended_with_reason["reason"].notna().all()
    outcome = (
        rows.assign(reason=rows["reason"].fillna("-"))
        .groupby(["programme", "step", "status", "reason"])
        .size()
    )
    others = len(MANAGER_OF) - 1
    assert outcome[("path:onboard", "touch-5", "skipped", "month_cap")] == others
    assert outcome[("greeting:xmas", "hello", "skipped", "month_cap")] == others
    assert outcome[("cadence:weekly", "w5", "skipped", "month_cap")] == 2
    assert outcome[("path:onboard", "touch-2", "delivered", "-")] == len(MANAGER_OF)  # Monday
    gone = rows[rows["target_id"] == GONE].set_index("step")
    assert gone.loc["touch-3", "reason"] == "not_a_contact"
    assert set(gone["status"]) == {"delivered", "failed"}

    # The ledger agrees with what the sandbox delivered, target by target.
    mass = rows[(rows["channel"] == "mass_template") & (rows["status"] == "delivered")]
    assert Counter(zip(mass["target_id"], mass["sender"], strict=True)) == Counter(
        (r.get("chat_id") or r["external_userid"], r["userid"]) for r in delivered
    )
    reminders = rows[rows["channel"] == "employee_reminder"]
    assert set(reminders["status"]) == {"delivered"}
    posts = sandbox.app_messages()
    content_posts = [p for p in posts if REMINDER_TEXT not in str(p)]
    assert len(content_posts) == len(reminders)  # one reminder per group and working day here
    late_reminders = [p for p in posts if REMINDER_TEXT in str(p)]
    assert late_reminders and all(LATE in str(p) for p in late_reminders)

    # The artifact's figures are the ledger's, and the sandbox's.
    table = artifact_rows()
    for manager, _ in SEED_EMPLOYEES:
        mine = rows[rows["sender"] == manager]
        cells = table[manager]
        assert int(cells["delivered"]) == (mine["status"] == "delivered").sum()
        assert int(cells["capped"]) == 0
        assert int(cells["failed"]) == (mine["status"] == "failed").sum()
        assert int(cells["skipped"]) == (mine["status"] == "skipped").sum()
        sandbox_delivered = sum(r["userid"] == manager for r in delivered)
        mine_reminders = (reminders["sender"] == manager).sum()
        assert int(cells["delivered"]) == sandbox_delivered + mine_reminders
    lag = {m: float(table[m]["median confirmation lag (min)"]) for m in ("mgr001", LATE)}
    assert lag["mgr001"] == 10 and lag[LATE] == 300
