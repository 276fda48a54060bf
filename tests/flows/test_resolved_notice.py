"""After a blocked export, the next synced one tells the ops robot the alert is resolved."""

from __future__ import annotations

from datetime import timedelta

from prefect.blocks.notifications import CustomWebhookNotificationBlock

from siyu.deployments.up import SANDBOX_ROBOT_KEY
from siyu.flows.contacts_sync import contacts_sync
from siyu.flows.tag_sync import OPS_ROBOT_BLOCK
from tests.flows.conftest import DAY
from tests.flows.test_tag_sync import run_tag_sync


def test_a_sync_after_a_blocked_export_posts_resolved_once(system):
    CustomWebhookNotificationBlock(
        name="siyu ops robot",
        url=f"{system.sandbox.api_base}webhook/send?key={{{{key}}}}",
        method="POST",
        json_data={"msgtype": "text", "text": {"content": "{{subject}}\n{{body}}"}},
        secrets={"key": SANDBOX_ROBOT_KEY},
    ).save(OPS_ROBOT_BLOCK, overwrite=True)
    assert contacts_sync(return_state=True).is_completed()

    blocked = run_tag_sync(business_date=DAY + timedelta(days=1))  # the export is a day old
    assert blocked.is_failed()
    assert system.sandbox.webhook_posts() == []  # the failure alert is the automation's job

    assert run_tag_sync().is_completed()
    posts = [p for p in system.sandbox.webhook_posts() if "resolved" in str(p)]
    assert len(posts) == 1
    assert system.export_path.name in str(posts[0])

    run_tag_sync()  # already synced: nothing new to resolve
    assert len([p for p in system.sandbox.webhook_posts() if "resolved" in str(p)]) == 1
