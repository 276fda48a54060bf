"""The ops alert queue: alerts made from events, queued once, posted in digests within the limit."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import sqlalchemy as sa
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.events.schemas.events import Event
from sqlalchemy.orm import Session

from siyu.schemas.ops import POSTED, UNKNOWN, OpsAlert, OpsPost
from siyu.tasks.ops_alerts import (
    NEXT_STEPS,
    Alert,
    BlockRobot,
    FlushSettings,
    alert_from_event,
    choose_digest,
    collect,
    flush,
    one_line,
    post_text,
    queue_alerts,
)

T0 = dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.UTC)
ROBOT_KEY = "ops-test-robot"


class Clock:
    """A clock the test moves: the rolling minute is checked without waiting a real one."""

    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def __call__(self) -> dt.datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += dt.timedelta(seconds=seconds)


def robot_block(sandbox, key: str = ROBOT_KEY) -> CustomWebhookNotificationBlock:
    return CustomWebhookNotificationBlock(
        name="siyu ops robot",
        url=f"{sandbox.api_base}webhook/send?key={{{{key}}}}",
        method="POST",
        json_data={"msgtype": "text", "text": {"content": "{{subject}}\n{{body}}"}},
        secrets={"key": key},
    )


def make_alert(i: int, kind: str = "siyu.groups.dying", **changes) -> Alert:
    values = {
        "key": f"test:{i}",
        "kind": kind,
        "subject": f"group wr****{i:04d} is dying: 2 messages in 7 days (alert {i})",
        "next_step": "ask the owner to post the Friday activity, or archive the group",
        "link": None,
        "occurred_at": T0 + dt.timedelta(seconds=i),
    }
    values.update(changes)
    return Alert(**values)


def failed_run_event(
    flow_name: str, message: str, state: str = "Failed", tags: tuple[str, ...] = ()
) -> Event:
    run_id = uuid.uuid4()
    return Event(
        occurred=T0,
        event=f"prefect.flow-run.{state}",
        resource={
            "prefect.resource.id": f"prefect.flow-run.{run_id}",
            "prefect.resource.name": "brave-fox",
        },
        related=[
            {
                "prefect.resource.id": f"prefect.flow.{uuid.uuid4()}",
                "prefect.resource.role": "flow",
                "prefect.resource.name": flow_name,
            },
            *(
                {"prefect.resource.id": f"prefect.tag.{t}", "prefect.resource.role": "tag"}
                for t in tags
            ),
        ],
        payload={"validated_state": {"type": state.upper(), "name": state, "message": message}},
    )


def contents(sandbox) -> list[str]:
    return [p["body"]["text"]["content"] for p in sandbox.webhook_posts()]


def test_one_line_flattens_and_cuts_at_a_byte_budget() -> None:
    assert one_line("export blocked\n  fix it\tnow") == "export blocked fix it now"
    cut = one_line("群" * 200, 100)  # 3 bytes a character
    assert len(cut.encode()) <= 100 and cut.endswith("…")


def test_a_digest_groups_by_kind_states_a_shared_next_step_once_and_fits() -> None:
    pending = [make_alert(i) for i in range(60)] + [
        make_alert(100, kind="tag-sync Failed", next_step="fix the export and rerun tag-sync")
    ]
    chosen = choose_digest(pending, 2048)
    subject, body = post_text(chosen)
    assert 1 < len(chosen) < 60  # the rest waits for the next post
    assert len((subject + "\n" + body).encode()) <= 2048
    assert body.count("next: ask the owner") == 1
    assert chosen == pending[: len(chosen)]  # oldest first, none skipped


def test_a_failed_run_of_a_watched_flow_alerts_with_its_flows_next_step() -> None:
    event = failed_run_event("tag-sync", "export 2026-11-24 failed 3 of 14 checks")
    alert = alert_from_event(
        event, watched_flows={"tag-sync"}, link_for=lambda run: f"http://ui/runs/flow-run/{run}"
    )
    assert alert is not None
    assert alert.kind == "tag-sync Failed"
    assert "brave-fox" in alert.subject and "failed 3 of 14 checks" in alert.subject
    assert alert.next_step == NEXT_STEPS["tag-sync"]
    assert "re-export" in alert.next_step
    assert alert.link == f"http://ui/runs/flow-run/{event.resource.id.split('.')[-1]}"
    assert alert_from_event(event, watched_flows={"contacts-sync"}) is None
    # A run of a deployment siyu serves carries the siyu tag: watched whatever its flow's name.
    tagged = failed_run_event("cadence-due", "boom", tags=("siyu", "group-cadence"))
    assert alert_from_event(tagged, watched_flows=(), link_for=lambda run: None) is not None
    # The alert flow's own failure is its watchdog's, posted directly: not queued too.
    own = failed_run_event("ops-alerts", "robot block missing", tags=("siyu",))
    assert alert_from_event(own, watched_flows={"ops-alerts"}) is None

    crashed = alert_from_event(
        failed_run_event("contacts-sync", "stopped beating", "Crashed"),
        watched_flows={"contacts-sync"},
        link_for=lambda run: None,
    )
    assert crashed is not None and "process" in crashed.next_step and crashed.link is None


def test_a_siyu_event_alerts_by_its_own_key_even_without_a_subject() -> None:
    event = Event(
        occurred=T0,
        event="siyu.rewards.budget-80",
        resource={"prefect.resource.id": "siyu.cadence.default"},
        payload={
            "subject": "rewards budget 2026-12 at 81 %",
            "next_step": "raise the budget or pause games",
            "key": "budget-80:2026-12",
            "link": "http://ui/x",
        },
    )
    alert = alert_from_event(event, watched_flows=())
    assert alert is not None
    assert (alert.key, alert.kind, alert.link) == ("budget-80:2026-12", event.event, "http://ui/x")
    bare = Event(occurred=T0, event="siyu.x.y", resource={"prefect.resource.id": "siyu.x"})
    alert = alert_from_event(bare, watched_flows=())
    assert alert is not None and "siyu.x.y" in alert.subject and alert.key == f"event:{bare.id}"
    other = Event(
        occurred=T0,
        event="prefect.flow-run.Completed",
        resource={"prefect.resource.id": "prefect.flow-run.1"},
    )
    assert alert_from_event(other, watched_flows={"tag-sync"}) is None


def test_an_alert_is_queued_once_by_its_key(engine) -> None:
    assert queue_alerts(engine, [make_alert(1), make_alert(2)]) == 2
    assert queue_alerts(engine, [make_alert(1), make_alert(3)]) == 1
    with Session(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(OpsAlert)) == 3


def test_collect_rereads_a_margin_and_queues_nothing_twice(engine) -> None:
    events = [failed_run_event("tag-sync", "blocked") for _ in range(3)]
    windows = []

    def reader(since, until):
        windows.append((since, until))
        return events

    assert collect(engine, now=T0, watched_flows={"tag-sync"}, reader=reader) == (3, 3)
    later = T0 + dt.timedelta(minutes=1)
    assert collect(engine, now=later, watched_flows={"tag-sync"}, reader=reader) == (3, 0)
    assert windows[0] == (T0 - dt.timedelta(hours=1), T0)
    assert windows[1] == (T0 - dt.timedelta(minutes=5), later)  # the margin before the cursor


def test_flush_posts_digests_within_the_rolling_minute_and_marks_them(engine, sandbox) -> None:
    clock = Clock(T0)
    queue_alerts(engine, [make_alert(i) for i in range(120)])
    settings = FlushSettings(per_minute=3)
    robot = BlockRobot(robot_block(sandbox))

    first = flush(engine, robot, robot_name="ops", clock=clock, settings=settings)
    assert first.posts == 3 and first.waiting_for_window and first.left_pending > 0
    clock.advance(30)
    assert flush(engine, robot, robot_name="ops", clock=clock, settings=settings).posts == 0
    clock.advance(31)  # the first three leave the window
    while (
        report := flush(engine, robot, robot_name="ops", clock=clock, settings=settings)
    ).left_pending:
        assert report.posts == 3
        clock.advance(61)

    posted = contents(sandbox)
    assert all(len(text.encode()) <= 2048 for text in posted)
    for i in range(120):
        assert sum(f"(alert {i})" in text for text in posted) == 1
    with Session(engine) as session:
        assert set(session.scalars(sa.select(OpsAlert.status))) == {POSTED}
        assert set(session.scalars(sa.select(OpsPost.status))) == {POSTED}


def test_a_refused_post_leaves_its_alerts_pending_for_the_next_flush(engine, sandbox) -> None:
    queue_alerts(engine, [make_alert(1)])
    bad = BlockRobot(robot_block(sandbox, key=""))  # no key: WeCom answers 93000
    report = flush(engine, bad, robot_name="ops", clock=Clock(T0))
    assert report.posts == 0 and report.refused and "93000" in report.refused[0]
    assert report.left_pending == 1

    good = BlockRobot(robot_block(sandbox))
    assert flush(engine, good, robot_name="ops", clock=Clock(T0)).alerts_posted == 1
    assert len(contents(sandbox)) == 1


class CrashAfterPost:
    """The real robot, then the process dies before the post is marked (kill -9's effect)."""

    def __init__(self, robot: BlockRobot) -> None:
        self.robot = robot

    def post(self, subject: str, body: str) -> None:
        self.robot.post(subject, body)
        raise KeyboardInterrupt("killed after posting")


def test_a_post_whose_outcome_was_lost_is_not_repeated_and_ops_are_told(engine, sandbox) -> None:
    clock = Clock(T0)
    queue_alerts(engine, [make_alert(i) for i in range(3)])
    robot = BlockRobot(robot_block(sandbox))
    with pytest.raises(KeyboardInterrupt):
        flush(engine, CrashAfterPost(robot), robot_name="ops", clock=clock)

    clock.advance(30)  # still in flight: left alone
    assert flush(engine, robot, robot_name="ops", clock=clock).posts == 0
    clock.advance(120)
    report = flush(engine, robot, robot_name="ops", clock=clock)
    assert report.unknown_posts == 1 and report.alerts_posted == 1

    posted = contents(sandbox)
    assert len(posted) == 2
    for i in range(3):
        assert sum(f"(alert {i})" in text for text in posted) == 1
    assert "may not have reached" in posted[1]
    with Session(engine) as session:
        statuses = dict(session.execute(sa.select(OpsAlert.key, OpsAlert.status)).all())
    assert {statuses[f"test:{i}"] for i in range(3)} == {UNKNOWN}


def wait_for_events(name: str, since: dt.datetime, count: int, timeout: float = 60) -> list:
    """The `name` events since `since` once `count` reached Prefect's store (seconds after)."""
    import time

    from siyu.tasks.ops_alerts import read_events

    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in read_events(since, dt.datetime.now(dt.UTC)) if e.event == name]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(1)
