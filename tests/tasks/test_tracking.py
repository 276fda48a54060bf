"""Tracking over real HTTP against the sandbox and its movable clock: settle, remind, expire, replan."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.send_rules import SendRules
from siyu.blocks.wecom import WeComClient
from siyu.schemas.models import OutboxEntry
from siyu.tasks.tracking import Paused, TrackSettings, manager_summary, track_sends
from tests.tasks.test_delivery import (
    MGR001,
    SATURDAY_10,
    TUESDAY_10,
    ZONE,
    ledger,
    send,
    wanted,
)

HOUR = dt.timedelta(hours=1)


@pytest.fixture
def wecom(sandbox, seed_dir) -> Iterator[WeComClient]:
    sandbox.seed(seed_dir)
    with WeComClient(
        sandbox.api_base, sandbox.corp_id, sandbox.secret, agent_id=sandbox.agent_id
    ) as client:
        yield client


def at(sandbox, when: dt.datetime) -> dt.datetime:
    sandbox.set_clock(when.timestamp(), frozen=True)
    return when


def track(engine, client, when, **settings):
    return track_sends(
        engine, client, rules=SendRules(), as_of=when, settings=TrackSettings(**settings)
    )


def test_confirmed_message_settles_delivered_and_closes_its_outbox_entry(
    engine, wecom, sandbox
) -> None:
    sandbox.config(confirm_delay_seconds=600)
    send(engine, wecom, wanted(MGR001[:3]), as_of=at(sandbox, TUESDAY_10))
    early = track(engine, wecom, at(sandbox, TUESDAY_10 + dt.timedelta(minutes=5)))
    assert early.settled == {} and set(ledger(engine)["status"]) == {"created"}

    report = track(engine, wecom, at(sandbox, TUESDAY_10 + HOUR))
    assert report.settled == {"confirmed": 3, "delivered": 3}
    assert set(ledger(engine)["status"]) == {"delivered"}
    with Session(engine) as session:
        assert session.scalar(sa.select(OutboxEntry.status)) == "delivered"
    summary = manager_summary(engine).set_index("manager").loc["mgr001"]
    assert (summary["created"], summary["delivered"], summary["median_lag_minutes"]) == (3, 3, 10)


def test_status_3_becomes_capped_by_wecom(engine, wecom, sandbox) -> None:
    # WeCom counts another app's mass messages too: our plan fits, WeCom caps at confirmation.
    sandbox.config(confirm_delay_seconds=60, monthly_cap=0)
    send(engine, wecom, wanted(MGR001[:2]), as_of=at(sandbox, TUESDAY_10))
    report = track(engine, wecom, at(sandbox, TUESDAY_10 + HOUR))
    assert report.settled["failed:capped_by_wecom"] == 2
    assert manager_summary(engine).set_index("manager").loc["mgr001", "capped"] == 2


def test_late_employee_is_reminded_at_most_3_times_in_24h_then_settled(
    engine, wecom, sandbox
) -> None:
    # mgr001 confirms 30 h after creation; tracking runs every hour meanwhile.
    sandbox.config(confirm_delay_seconds=3600, late_factor=30, employee_confirm={"mgr001": "late"})
    send(engine, wecom, wanted(MGR001[:2]), as_of=at(sandbox, TUESDAY_10))
    reminded: list[dt.datetime] = []
    for hour in range(1, 32):
        when = at(sandbox, TUESDAY_10 + hour * HOUR)
        report = track(engine, wecom, when, remind_after=HOUR, remind_every=HOUR)
        assert report.reminders_refused == 0  # we never asked WeCom past its limit
        reminded += [when] * report.reminders
    assert len(reminded) >= 4  # reminded again once a day had passed
    for first in reminded:
        assert sum(first <= t < first + dt.timedelta(hours=24) for t in reminded) <= 3
    assert len(sandbox.app_messages("mgr001")) == len(reminded)
    assert set(ledger(engine)["status"]) == {"delivered"}


def test_two_tracking_rounds_at_once_remind_a_late_employee_once(
    engine, wecom, sandbox, monkeypatch
) -> None:
    """The deployment's round and `siyu sends track` (or an ops rerun) can run at the same time."""
    import threading

    from siyu.tasks import tracking

    sandbox.config(confirm_delay_seconds=3600, late_factor=30, employee_confirm={"mgr001": "late"})
    send(engine, wecom, wanted(MGR001[:2]), as_of=at(sandbox, TUESDAY_10))
    when = at(sandbox, TUESDAY_10 + 3 * HOUR)
    # Both rounds read the entry before either writes: the race, every time.
    both_read = threading.Barrier(2, timeout=10)
    read = tracking._Tracker._entry

    def entry_then_wait(self, session, message):
        found = read(self, session, message)
        if threading.current_thread().name.startswith("round"):
            with contextlib.suppress(threading.BrokenBarrierError):
                both_read.wait()
        return found

    monkeypatch.setattr(tracking._Tracker, "_entry", entry_then_wait)
    monkeypatch.setattr(tracking._Tracker, "_alert_unconfirmed", lambda self, message: None)
    reports: list = []

    def round_() -> None:
        with WeComClient(
            sandbox.api_base, sandbox.corp_id, sandbox.secret, agent_id=sandbox.agent_id
        ) as client:
            reports.append(track(engine, client, when, remind_after=HOUR, remind_every=HOUR))

    rounds = [threading.Thread(target=round_, name=f"round-{i}") for i in range(2)]
    for thread in rounds:
        thread.start()
    for thread in rounds:
        thread.join(60)
    assert len(reports) == 2
    assert sum(r.reminders for r in reports) == 1
    assert len(sandbox.app_messages("mgr001")) == 1


def test_message_past_its_window_is_cancelled_and_expires(engine, wecom, sandbox) -> None:
    sandbox.config(employee_confirm={"mgr001": "never"})
    send(engine, wecom, wanted(MGR001[:2]), as_of=at(sandbox, TUESDAY_10))
    report = track(engine, wecom, at(sandbox, TUESDAY_10 + 49 * HOUR))
    assert report.cancelled == 1
    assert report.settled == {"failed:expired": 2}
    assert sandbox.mass_messages()[0]["cancelled"] is True
    with Session(engine) as session:
        assert session.scalar(sa.select(OutboxEntry.status)) == "cancelled"


def test_deferred_rows_are_planned_again_and_sent_when_due(engine, wecom, sandbox) -> None:
    send(engine, wecom, wanted(MGR001[:2]), as_of=at(sandbox, SATURDAY_10))
    sunday = track(engine, wecom, at(sandbox, SATURDAY_10 + 24 * HOUR))
    assert sunday.replanned == {} and set(ledger(engine)["status"]) == {"deferred"}

    monday = dt.datetime(2026, 12, 7, 9, 0, tzinfo=ZONE)
    report = track(engine, wecom, at(sandbox, monday))
    assert report.replanned["fits"] == 2
    assert set(ledger(engine)["status"]) == {"created"}
    assert len(sandbox.mass_messages()) == 1
    assert isinstance(manager_summary(engine, month="2026-12"), pd.DataFrame)


def test_a_deferred_row_of_a_path_paused_since_is_skipped_not_sent(engine, wecom, sandbox) -> None:
    send(engine, wecom, wanted(MGR001[:2]), as_of=at(sandbox, SATURDAY_10))
    monday = dt.datetime(2026, 12, 7, 9, 0, tzinfo=ZONE)

    report = track_sends(
        engine,
        wecom,
        rules=SendRules(),
        as_of=at(sandbox, monday),
        paused=Paused(programmes=frozenset({"path:welcome"})),
    )

    assert report.replanned == {"skipped": 2, "skipped:path paused by ops": 2}
    rows = ledger(engine)
    assert set(rows["status"]) == {"skipped"}
    assert set(rows["reason"]) == {"path paused by ops"}
    assert sandbox.mass_messages() == []
    # A later round (resumed or not) has nothing left to send: skipped is final.
    track(engine, wecom, at(sandbox, monday + HOUR))
    assert sandbox.mass_messages() == []


def test_siyu_sends_track_takes_an_iso_time_read_in_beijing_time() -> None:
    from siyu.deployments.cli import build_parser, cmd_sends_track

    args = build_parser().parse_args(["sends", "track", "--at", "2026-12-01T10:00"])
    assert args.handler is cmd_sends_track
    assert args.at == dt.datetime(2026, 12, 1, 10, 0, tzinfo=ZONE)
    assert build_parser().parse_args(["sends", "track"]).at is None


def test_a_message_unconfirmed_for_24h_tells_ops_once(
    engine, wecom, sandbox, prefect_server
) -> None:
    from siyu.tasks.tracking import UNCONFIRMED_EVENT
    from tests.tasks.test_ops_alerts import wait_for_events

    since = dt.datetime.now(dt.UTC)
    sandbox.config(employee_confirm={"mgr001": "never"})
    send(engine, wecom, wanted(MGR001[:2]), as_of=at(sandbox, TUESDAY_10))
    assert track(engine, wecom, at(sandbox, TUESDAY_10 + 23 * HOUR)).unconfirmed_alerts == 0
    assert track(engine, wecom, at(sandbox, TUESDAY_10 + 25 * HOUR)).unconfirmed_alerts == 1
    assert track(engine, wecom, at(sandbox, TUESDAY_10 + 26 * HOUR)).unconfirmed_alerts == 0

    (msgid,) = {m["msgid"] for m in sandbox.mass_messages()}
    events = [
        e for e in wait_for_events(UNCONFIRMED_EVENT, since, 1) if msgid in e.payload["subject"]
    ]
    assert len(events) == 1
    assert "mgr001" in events[0].payload["subject"]
    assert "message-cancel" in events[0].payload["next_step"]
    assert events[0].payload["key"] == f"{UNCONFIRMED_EVENT}:{msgid}:mgr001"
