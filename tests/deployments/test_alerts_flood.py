"""A flood of alerts (failed runs and siyu.* events) reaches the ops robot batched, under its limit."""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid

import pytest
import sqlalchemy as sa
from prefect.blocks.notifications import CustomWebhookNotificationBlock

from siyu.deployments.alerts import ROBOT_MESSAGE
from siyu.flows.ops_alerts import ops_alerts
from siyu.schemas.database import make_engine, upgrade
from siyu.tasks.ops_alerts import ROBOT_PER_MINUTE, emit_ops_event, queue_summary, save_cursor

FLOOD_FLOW = "siyu-flood-test"
ROBOT = "siyu-ops-robot-flood-test"
# A customer's mobile or name in a post would match one of these (the seeds use 138..., 客户01).
# A mobile stands alone, not inside a run's id (a UUID's last group can be eleven digits).
CUSTOMER_DATA = re.compile(r"(?<![0-9A-Za-z-])1[3-9]\d{9}(?![0-9A-Za-z])|客户\d")


def _fail_runs(count: int, token: str) -> None:
    """`count` runs of a watched flow ending Failed (a few Crashed), as the server records them."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed, Failed

    @flow(name=FLOOD_FLOW)
    def flood() -> None:
        """Never runs: its runs are created and ended by the test."""

    with get_client(sync_client=True) as client:
        for i in range(count):
            run = client.create_flow_run(flow=flood, name=f"flood-run-{i:03d}")
            state = Crashed if i % 10 == 0 else Failed
            client.set_flow_run_state(
                run.id,
                state(message=f"flood failure {token} {i:03d}: contact wm****{i:04d}"),
                force=True,
            )


def _emit_events(count: int, token: str) -> None:
    kinds = ["siyu.groups.dying", "siyu.rewards.budget-80", "siyu.sends.unconfirmed-24h"]
    for i in range(count):
        emit_ops_event(
            kinds[i % len(kinds)],
            subject=f"flood event {token} {i:03d}: group wr****{i:04d}",
            next_step="look at the group's health artifact and act",
            key=f"flood:{token}:{i}",
            resource_id=f"siyu.test.flood.{i}",
        )


def _setup(sandbox, database_url, monkeypatch) -> tuple[sa.Engine, str]:
    """A migrated database, its events cursor at now, the flood robot's block and its key.

    The sandbox and the Prefect server are the session's: each test has a robot of its own
    (its own minute at the sandbox) and its own subjects, as the alert flow re-reads a margin
    of minutes of events that other tests' runs also made.
    """
    key = f"flood-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SIYU_DATABASE_URL", database_url)
    upgrade(database_url)
    engine = make_engine(database_url)
    # Only this test's alerts: the session's other tests also fail runs and emit events.
    save_cursor(engine, dt.datetime.now(dt.UTC))
    CustomWebhookNotificationBlock(
        name="siyu ops robot (flood test)",
        url=f"{sandbox.api_base}webhook/send?key={{{{key}}}}",
        method="POST",
        json_data=ROBOT_MESSAGE,
        secrets={"key": key},
    ).save(ROBOT, overwrite=True)
    return engine, key


def _windows_ok(times: list[float], limit: int) -> int:
    """The most posts in any 60 s window starting at a post."""
    times = sorted(times)
    return max((sum(1 for u in times if t <= u < t + 60) for t in times), default=0)


def test_200_alerts_in_a_minute_reach_the_robot_batched_once_each(
    prefect_server, sandbox, database_url, monkeypatch
) -> None:
    """Slow-ish (one to two minutes): the limit is a real minute."""
    engine, key = _setup(sandbox, database_url, monkeypatch)
    token = uuid.uuid4().hex[:6]

    _fail_runs(100, token)
    _emit_events(100, token)
    expected = [f"flood failure {token} {i:03d}" for i in range(100)] + [
        f"flood event {token} {i:03d}" for i in range(100)
    ]

    deadline = time.monotonic() + 240
    runs = 0
    while True:
        state = ops_alerts(
            watched_flows=[FLOOD_FLOW], robot_block=ROBOT, listen_seconds=0, return_state=True
        )
        runs += 1
        assert state.is_completed(), state.message
        posted = [p for p in sandbox.webhook_posts() if p["key"] == key]
        text = "\n".join(p["body"]["text"]["content"] for p in posted)
        if all(s in text for s in expected):
            break
        if time.monotonic() > deadline:
            missing = [s for s in expected if s not in text]
            pytest.fail(f"{len(missing)} alerts not posted after {runs} runs, e.g. {missing[:3]}")
        time.sleep(5)

    contents = [p["body"]["text"]["content"] for p in posted]
    for subject in expected:
        assert sum(c.count(subject) for c in contents) == 1, subject
    assert _windows_ok([p["real_at"] for p in posted], ROBOT_PER_MINUTE) <= ROBOT_PER_MINUTE
    assert len(posted) < 50  # digests, not one post an alert
    assert all(len(c.encode()) <= 2048 for c in contents)
    leaks = [m.group(0) for c in contents if (m := CUSTOMER_DATA.search(c))]
    assert leaks == []
    refused = [
        e
        for e in sandbox.requests("webhook/send")
        if e["errcode"] and e["errcode"] != 0 and key in str(e)
    ]
    assert refused == []  # the robot never had to say "over the limit"
    # Each failure says what to do and links its run.
    assert "/runs/flow-run/" in text and "next:" in text
    engine.dispose()


def test_the_sandbox_robot_holds_wecoms_limits_the_flood_is_measured_against(sandbox) -> None:
    """20 posts a minute per robot (45009 past it) and 2048 bytes of text: as WeCom's robot."""
    import requests

    url = f"{sandbox.api_base}webhook/send"

    def post(key: str, content: str) -> int:
        body = {"msgtype": "text", "text": {"content": content}}
        return requests.post(url, params={"key": key}, json=body, timeout=10).json()["errcode"]

    assert [post("limit-a", f"n{i}") for i in range(20)] == [0] * 20
    assert post("limit-a", "one too many") == 45009
    assert post("limit-b", "another robot has its own minute") == 0
    assert post("limit-c", "群" * 683) == 40058  # 2049 bytes
    assert post("limit-c", "群" * 682) == 0
    recorded = [p for p in sandbox.webhook_posts() if p["key"] == "limit-a"]
    assert len(recorded) == 20 and all("real_at" in p for p in recorded)


def test_a_listening_run_posts_an_alert_raised_while_it_runs(
    prefect_server, sandbox, database_url, monkeypatch
) -> None:
    """The deployment's run listens most of its minute: an alert does not wait for the next."""
    import threading

    engine, key = _setup(sandbox, database_url, monkeypatch)
    token = uuid.uuid4().hex[:6]
    # What the session's other tests raised in the last minutes is re-read (the cursor's margin)
    # and posted first: let it go, so that this run listens for one new alert alone.
    deadline = time.monotonic() + 180
    while True:
        assert ops_alerts(
            watched_flows=[FLOOD_FLOW], robot_block=ROBOT, listen_seconds=0, return_state=True
        ).is_completed()
        if not queue_summary(engine).get("pending"):
            break
        assert time.monotonic() < deadline, queue_summary(engine)
        time.sleep(2)

    def raise_later() -> None:
        time.sleep(1)
        emit_ops_event(
            "siyu.groups.dying",
            subject=f"listened-for alert {token}: group wr****0001",
            next_step="look at the group",
            key=f"listen:{time.time()}",
            resource_id="siyu.test.listen",
        )

    thread = threading.Thread(target=raise_later)
    thread.start()
    state = ops_alerts(
        watched_flows=[FLOOD_FLOW],
        robot_block=ROBOT,
        listen_seconds=30,
        poll_seconds=1,
        return_state=True,
    )
    thread.join()
    assert state.is_completed(), state.message
    posted = [p["body"]["text"]["content"] for p in sandbox.webhook_posts() if p["key"] == key]
    assert sum(f"listened-for alert {token}" in c for c in posted) == 1
    engine.dispose()
