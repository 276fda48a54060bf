"""Dead runs are told apart: siyu's flow runs beat, and a silent one is marked Crashed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
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
