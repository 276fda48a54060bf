"""Dead runs are told apart: siyu's flow runs beat, and a silent one is marked Crashed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from siyu.deployments import alerts
from siyu.deployments.specs import DEPLOYMENTS, HEARTBEAT_SECONDS

# A flow named like one siyu watches, that only waits: its process is what the test kills.
SLEEPER = textwrap.dedent(
    """
    import sys, time
    from prefect import flow
    from prefect.runtime import flow_run

    @flow(name=sys.argv[1], persist_result=False)
    def sleeper() -> None:
        print(flow_run.id, flush=True)
        time.sleep(600)

    sleeper()
    """
)


def _read_automation():
    from prefect.automations import Automation

    return Automation.read(name=alerts.CRASH_DETECTION)


def _delete_automation() -> None:
    from prefect.automations import Automation

    with contextlib.suppress(ValueError):
        Automation.read(name=alerts.CRASH_DETECTION).delete()


def test_crash_detection_is_created_once_with_a_heartbeat_trigger(prefect_server) -> None:
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import Posture

    _delete_automation()
    try:
        alerts.ensure_crash_detection()
        alerts.ensure_crash_detection()  # kept, not doubled

        automation = _read_automation()
        trigger = automation.trigger
        assert trigger.posture == Posture.Proactive
        assert trigger.after == {"prefect.flow-run.heartbeat"}
        assert {"prefect.flow-run.heartbeat", "prefect.flow-run.Completed"} <= trigger.expect
        assert trigger.within == timedelta(seconds=3 * HEARTBEAT_SECONDS)
        assert trigger.for_each == {"prefect.resource.id"}
        # Every deployed flow is watched, whichever deployments the table lists today.
        assert set(trigger.match_related["prefect.resource.name"]) >= {
            "tag-sync",
            "contacts-sync",
            "sends-track",
        }
        assert set(trigger.match_related["prefect.resource.name"]) == {
            spec.flow_name for spec in DEPLOYMENTS
        }
        (action,) = automation.actions
        assert isinstance(action, ChangeFlowRunState)
        assert action.state == StateType.CRASHED
        assert "heartbeats" in action.message
    finally:
        _delete_automation()


def test_prepare_server_creates_the_crash_detection(prefect_server) -> None:

    from siyu.deployments.serve import prepare_server

    _delete_automation()
    try:
        prepare_server()
        prepare_server()

        assert _read_automation().name == alerts.CRASH_DETECTION
    finally:
        _delete_automation()


def _wait(what, timeout: float, describe: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {describe}")


def test_a_run_killed_9_is_marked_crashed_within_a_minute_or_so(
    prefect_server, tmp_path: Path
) -> None:
    """Slow-ish (~1 min): a run's process killed -9 says nothing; its silence does."""
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client

    flow_name = "siyu-test-sleeper"
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    _delete_automation()
    # The production trigger, for this flow and with a shorter silence, so the test is quick.
    automation = alerts.crash_detection_automation(
        timedelta(seconds=HEARTBEAT_SECONDS + 10), flows=[flow_name]
    )
    automation.create()
    env = dict(os.environ, PREFECT_API_URL=prefect_server, PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30")
    log = (tmp_path / "sleeper.log").open("w")
    process = subprocess.Popen(
        [sys.executable, str(script), flow_name],
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
        text=True,
    )
    try:
        flow_run_id = process.stdout.readline().strip()
        assert flow_run_id, (tmp_path / "sleeper.log").read_text()[-2000:]
        with get_client(sync_client=True) as client:
            _wait(lambda: client.read_flow_run(flow_run_id).state.is_running(), 30, "Running")
            # The first heartbeat goes out as the run starts; give it a moment to be sent.
            time.sleep(3)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)

            state = _wait(
                lambda: (s := client.read_flow_run(flow_run_id).state).is_crashed() and s,
                100,
                "the killed run to be marked Crashed",
            )
        assert "heartbeats" in state.message
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
        Automation.read(name=alerts.CRASH_DETECTION).delete()


def _delete(name: str) -> None:
    from prefect.automations import Automation

    with contextlib.suppress(ValueError):
        Automation.read(name=name).delete()


def test_ensure_automations_sets_up_the_robot_watchdog_and_crash_detection_once(
    prefect_server, monkeypatch
) -> None:
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    for name in (alerts.AUTOMATION, alerts.LEGACY_AUTOMATION, alerts.CRASH_DETECTION):
        _delete(name)
    with contextlib.suppress(Exception):
        CustomWebhookNotificationBlock.delete(alerts.ROBOT_BLOCK)
    # An older setup's automation, one post an event: it would flood the robot.
    legacy = Automation(
        name=alerts.LEGACY_AUTOMATION,
        trigger=EventTrigger(expect={"prefect.flow-run.Failed"}, posture=Posture.Reactive),
        actions=[],
    ).create()
    # The table deploys the ops-alerts flow: failures go through its queue.
    monkeypatch.setattr(alerts, "WATCHED_FLOWS", [*alerts.WATCHED_FLOWS, alerts.ALERT_FLOW])
    try:
        url = "http://robot.invalid/cgi-bin/webhook/send?key={{key}}"
        alerts.ensure_automations(url, "k1")
        watchdog = Automation.read(name=alerts.AUTOMATION)
        watchdog.description = "ops wrote this"
        watchdog.update()
        alerts.ensure_automations("http://other.invalid/?key={{key}}", "k2")  # kept, not redone

        robot = CustomWebhookNotificationBlock.load(alerts.ROBOT_BLOCK)
        assert robot.url == url and robot.secrets.get_secret_value() == {"key": "k1"}
        assert Automation.read(name=alerts.LEGACY_AUTOMATION).enabled is False
        watchdog = Automation.read(name=alerts.AUTOMATION)
        assert watchdog.description == "ops wrote this"
        assert watchdog.trigger.match_related["prefect.resource.name"] == [alerts.ALERT_FLOW]
        (action,) = watchdog.actions
        assert isinstance(action, SendNotification)
        assert "flow_run|ui_url" in action.body
        assert Automation.read(name=alerts.CRASH_DETECTION).name == alerts.CRASH_DETECTION
        with get_client(sync_client=True) as client:
            assert len(client.read_automations_by_name(alerts.AUTOMATION)) == 1
    finally:
        legacy.delete()
        for name in (alerts.AUTOMATION, alerts.CRASH_DETECTION):
            _delete(name)
        CustomWebhookNotificationBlock.delete(alerts.ROBOT_BLOCK)  # later tests save their own


def test_the_alert_flow_and_the_tag_sync_share_one_robot_block() -> None:
    from siyu.flows.ops_alerts import OPS_ROBOT_BLOCK

    assert alerts.ROBOT_BLOCK == OPS_ROBOT_BLOCK


def test_a_failed_alert_flow_is_posted_straight_to_the_robot(
    prefect_server, sandbox, database_url, monkeypatch
) -> None:
    """The queue cannot tell about itself: its watchdog automation posts its failure directly.

    Prefect's triggers take each event at least once: when the server's SQLite is locked while
    it evaluates the Failed event (the dead-run automation's bucket), the event is evaluated
    again and the watchdog may post a second, identical message. Every post is about this run.
    """
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from siyu.flows.ops_alerts import ops_alerts
    from siyu.schemas.database import upgrade

    monkeypatch.setenv("SIYU_DATABASE_URL", database_url)
    monkeypatch.setattr(alerts, "WATCHED_FLOWS", [*alerts.WATCHED_FLOWS, alerts.ALERT_FLOW])
    upgrade(database_url)
    for name in (alerts.AUTOMATION, alerts.LEGACY_AUTOMATION, alerts.CRASH_DETECTION):
        _delete(name)
    with contextlib.suppress(Exception):
        CustomWebhookNotificationBlock.delete(alerts.ROBOT_BLOCK)
    # Its own robot key: the sandbox is the session's, and the other database's run posts too.
    key = f"watchdog-{uuid.uuid4().hex[:8]}"
    alerts.ensure_automations(f"{sandbox.api_base}webhook/send?key={{{{key}}}}", key)
    try:
        time.sleep(2)  # the server's triggers pick up a new automation within a moment
        state = ops_alerts(robot_block="siyu-no-such-robot", return_state=True)
        assert state.is_failed() and "no ops robot block 'siyu-no-such-robot'" in state.message

        def watchdog_posts() -> list:
            return [p for p in sandbox.webhook_posts() if p["key"] == key]

        post, *again = _wait(watchdog_posts, 60, "the watchdog's post")
        content = post["body"]["text"]["content"]
        assert "ops alert flow run" in content and "no ops robot block" in content
        assert all(p["body"]["text"]["content"] == content for p in again)
        # The link where the server has PREFECT_UI_URL (`siyu up` sets it); the run id otherwise.
        assert (
            "/runs/flow-run/" in content or f"run id {state.state_details.flow_run_id}" in content
        )
    finally:
        for name in (alerts.AUTOMATION, alerts.LEGACY_AUTOMATION, alerts.CRASH_DETECTION):
            _delete(name)
        CustomWebhookNotificationBlock.delete(alerts.ROBOT_BLOCK)


def test_without_the_queue_deployed_failures_keep_their_direct_automation(
    prefect_server, monkeypatch
) -> None:
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    monkeypatch.setattr(
        alerts, "WATCHED_FLOWS", [f for f in alerts.WATCHED_FLOWS if f != alerts.ALERT_FLOW]
    )
    for name in (alerts.AUTOMATION, alerts.LEGACY_AUTOMATION, alerts.CRASH_DETECTION):
        _delete(name)
    try:
        alerts.ensure_automations("http://robot.invalid/?key={{key}}", "k1")
        direct = Automation.read(name=alerts.LEGACY_AUTOMATION)
        assert direct.enabled
        assert set(direct.trigger.match_related["prefect.resource.name"]) >= {"tag-sync"}
    finally:
        for name in (alerts.AUTOMATION, alerts.LEGACY_AUTOMATION, alerts.CRASH_DETECTION):
            _delete(name)
        with contextlib.suppress(Exception):
            CustomWebhookNotificationBlock.delete(alerts.ROBOT_BLOCK)
