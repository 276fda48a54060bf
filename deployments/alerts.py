"""Automations: a failed or crashed sync posts to the ops robot; a silent run is marked Crashed."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from siyu.deployments.specs import DEPLOYMENTS, HEARTBEAT_SECONDS
from siyu.flows.tag_sync import OPS_ROBOT_BLOCK

if TYPE_CHECKING:
    from prefect.automations import Automation

ROBOT_BLOCK = OPS_ROBOT_BLOCK  # the tag sync posts "resolved" through the same block
AUTOMATION = "siyu: tell ops when a sync fails"
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

# A WeCom group robot's text message; {{subject}} and {{body}} come from the automation below.
ROBOT_MESSAGE = {"msgtype": "text", "text": {"content": "{{subject}}\n{{body}}"}}
# Run details go in the automation's own templates: the state message says what failed and what
# to do, with customer ids masked (the flows never put a mobile or a name in it).
SUBJECT = "siyu: {{ flow.name }} run {{ flow_run.name }} is {{ flow_run.state.name }}"
BODY = "{{ flow_run.state.message }}\n{{ flow_run|ui_url }}"


def ensure_alerts(robot_url: str, robot_key: str) -> None:
    """Save the robot block and the automation where they are missing; ops' edits are kept.

    `robot_url` holds `{{key}}` where the robot's key goes; the key is kept as a block secret.
    """
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    try:
        robot = CustomWebhookNotificationBlock.load(ROBOT_BLOCK)
    except ValueError:
        robot = CustomWebhookNotificationBlock(
            name="siyu ops robot",
            url=robot_url,
            method="POST",
            json_data=ROBOT_MESSAGE,
            secrets={"key": robot_key},
        )
        robot.save(ROBOT_BLOCK)
        robot = CustomWebhookNotificationBlock.load(ROBOT_BLOCK)
    try:
        Automation.read(name=AUTOMATION)
    except ValueError:
        Automation(
            name=AUTOMATION,
            description="Post every failed or crashed tag-sync or contacts-sync to the ops robot.",
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
