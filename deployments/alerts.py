"""Automations: what posts to ops (through the batched alert queue), and dead runs marked Crashed.

Failures of siyu's flows and `siyu.*` events are not posted one by one: the `ops-alerts` flow
(every minute) reads them from Prefect's events, queues them once and posts digests within
the robot's 20 a minute. Only the alert flow's own failure is posted directly (at most one a
minute: the flow runs once a minute, one at a time), since the queue cannot tell about itself.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from siyu.deployments.specs import DEPLOYMENTS, HEARTBEAT_SECONDS
from siyu.flows.tag_sync import OPS_ROBOT_BLOCK

if TYPE_CHECKING:
    from prefect.automations import Automation

ROBOT_BLOCK = OPS_ROBOT_BLOCK  # the tag sync posts "resolved" through the same block
ALERT_FLOW = "ops-alerts"
# The automation that posted every failure directly (one post an event: a flood of failures
# went past the robot's 20 a minute). Disabled, not deleted, where a server still has it.
LEGACY_AUTOMATION = "siyu: tell ops when a sync fails"
AUTOMATION = "siyu: tell ops when the alert flow itself fails"
CRASH_DETECTION = "siyu: mark runs that stopped beating Crashed"
WATCHED_FLOWS = sorted({spec.flow_name for spec in DEPLOYMENTS})
# A run is taken for dead after three heartbeats it did not send (its process or machine died),
# and marked Crashed: it then frees its deployment's slot, and the failure alert tells ops.
SILENT_AFTER = timedelta(seconds=3 * HEARTBEAT_SECONDS)
CRASHED_MESSAGE = (
    "the process running this flow stopped sending heartbeats (killed, or its machine was "
    "lost): marked Crashed; run it again (the outbox sends nothing twice)"
)
# The events that show a run is alive or over: its next heartbeat, or a final state.
_ALIVE_OR_OVER = {
    "prefect.flow-run.heartbeat",
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Crashed",
}

# A WeCom group robot's text message; {{subject}} and {{body}} come from whoever posts.
ROBOT_MESSAGE = {"msgtype": "text", "text": {"content": "{{subject}}\n{{body}}"}}
# The watchdog's own templates: the state message says what failed, the link where.
# `flow_run|ui_url` is rendered by the server: it needs PREFECT_UI_URL set on the server.
SUBJECT = "siyu: the ops alert flow run {{ flow_run.name }} is {{ flow_run.state.name }}"
BODY = (
    "{{ flow_run.state.message }}\nAlerts stay queued until it runs again: check the robot "
    "block and the database, then run ops-alerts by hand.\n"
    # Without PREFECT_UI_URL on the server the link is None: the run's id still finds it.
    "{{ flow_run|ui_url or ('run id ' ~ flow_run.id) }}"
)


def ensure_robot(robot_url: str, robot_key: str) -> object:
    """The ops robot's notification block, saved where missing (an edited one is kept).

    `robot_url` holds `{{key}}` where the robot's key goes; the key is kept as a block secret.
    """
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    try:
        return CustomWebhookNotificationBlock.load(ROBOT_BLOCK)
    except ValueError:
        CustomWebhookNotificationBlock(
            name="siyu ops robot",
            url=robot_url,
            method="POST",
            json_data=ROBOT_MESSAGE,
            secrets={"key": robot_key},
        ).save(ROBOT_BLOCK)
        return CustomWebhookNotificationBlock.load(ROBOT_BLOCK)


# Until the ops-alerts deployment is in the table, failures keep their direct automation (one
# post a failure), so no setup is left without failure alerts.
LEGACY_SUBJECT = "siyu: {{ flow.name }} run {{ flow_run.name }} is {{ flow_run.state.name }}"
LEGACY_BODY = "{{ flow_run.state.message }}\n{{ flow_run|ui_url }}"


def queue_is_deployed(flows: list[str] | None = None) -> bool:
    """True when the ops-alerts flow is among the deployed flows (it then posts failures)."""
    return ALERT_FLOW in (WATCHED_FLOWS if flows is None else flows)


def ensure_direct_failure_alerts(robot: Any) -> None:
    """The older one-post-a-failure automation, where the alert queue is not deployed yet."""
    from prefect.automations import Automation
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    try:
        Automation.read(name=LEGACY_AUTOMATION)
    except ValueError:
        Automation(
            name=LEGACY_AUTOMATION,
            description="Post every failed or crashed siyu run to the ops robot (one post each).",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                match_related={
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": WATCHED_FLOWS,
                },
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=[
                SendNotification(
                    block_document_id=robot._block_document_id,
                    subject=LEGACY_SUBJECT,
                    body=LEGACY_BODY,
                )
            ],
        ).create()


def disable_legacy_automation() -> bool:
    """Disable the one-post-per-failure automation older setups made; True if it was on."""
    from prefect.automations import Automation

    try:
        legacy = Automation.read(name=LEGACY_AUTOMATION)
    except ValueError:
        return False
    if not legacy.enabled:
        return False
    return bool(legacy.disable())


def ensure_alerts(robot_url: str, robot_key: str) -> None:
    """Save the robot block and the alert flow's watchdog where missing; ops' edits are kept.

    The automation that posted every failure directly is disabled once the ops-alerts flow
    is deployed (it posts them, batched); until then it is kept (or made).
    """
    from prefect.automations import Automation
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    robot = ensure_robot(robot_url, robot_key)
    if queue_is_deployed():
        disable_legacy_automation()
    else:
        ensure_direct_failure_alerts(robot)
    try:
        Automation.read(name=AUTOMATION)
    except ValueError:
        Automation(
            name=AUTOMATION,
            description=(
                "Post a failed or crashed ops-alerts run straight to the ops robot: every other "
                "failure and siyu.* event goes through that flow's queue, batched."
            ),
            trigger=EventTrigger(
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                match_related={
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": [ALERT_FLOW],
                },
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=[
                SendNotification(
                    block_document_id=robot._block_document_id, subject=SUBJECT, body=BODY
                )
            ],
        ).create()


def crash_detection_automation(
    silent_after: timedelta = SILENT_AFTER, flows: list[str] | None = None
) -> Automation:
    """The automation that marks a siyu flow run (of `flows`) Crashed when its heartbeats stop.

    Prefect's zombie-run recipe, limited to siyu's flows: other flows on a shared server may
    beat at another pace. After each heartbeat of a run, another heartbeat or a final state is
    expected within `silent_after`; when none comes, the run is set Crashed.
    """
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    return Automation(
        name=CRASH_DETECTION,
        description=(
            f"A siyu flow run silent for {silent_after.total_seconds():.0f} s (heartbeat every "
            f"{HEARTBEAT_SECONDS} s) has lost its process: mark it Crashed."
        ),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect=set(_ALIVE_OR_OVER),
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification(
                {
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": list(flows or WATCHED_FLOWS),
                }
            ),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=silent_after,
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=CRASHED_MESSAGE)],
    )


def ensure_crash_detection(silent_after: timedelta = SILENT_AFTER) -> None:
    """Create the dead-run automation where the server has none (production setups call it too)."""
    from prefect.automations import Automation

    try:
        Automation.read(name=CRASH_DETECTION)
    except ValueError:
        crash_detection_automation(silent_after).create()


def ensure_automations(robot_url: str, robot_key: str) -> None:
    """Everything ops' alerts need on the server: the robot block and every automation.

    The one call `siyu up` and `siyu deploy` make; idempotent, and what ops edited is kept.
    Failures and `siyu.*` events need no automation of their own: the ops-alerts deployment
    (every minute) reads them from Prefect's events and posts them batched.
    """
    ensure_alerts(robot_url, robot_key)
    ensure_crash_detection()
