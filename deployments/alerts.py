"""Alerts: a failed or crashed sync posts to the ops team's WeCom group robot (Prefect automation)."""

from __future__ import annotations

ROBOT_BLOCK = "siyu-ops-robot"
AUTOMATION = "siyu: tell ops when a sync fails"
WATCHED_FLOWS = ["tag-sync", "contacts-sync"]

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
