"""The sends tracker (every 15 minutes): settle mass messages, remind, expire, send what was deferred."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import ObjectNotFound
from prefect.states import Completed, State

from siyu.blocks.environment import BLOCK_NAME, load_environment
from siyu.blocks.send_rules import SendRules
from siyu.tasks.tracking import (
    Paused,
    TrackSettings,
    manager_markdown,
    manager_summary,
    track_sends,
)

ZONE = ZoneInfo("Asia/Shanghai")


def load_send_rules(name: str = BLOCK_NAME) -> SendRules:
    """The SendRules block saved under `name`; WeCom's published defaults when none is saved."""
    try:
        return SendRules.load(name)
    except ValueError as exc:
        if isinstance(exc.__cause__, ObjectNotFound):
            get_run_logger().warning(
                "no siyu Send Rules block %r is saved: using WeCom's published caps and the "
                "default quiet hours (save one in the Blocks page to change them)",
                name,
            )
            return SendRules()
        raise


def paused_by_ops() -> Paused:
    """The paths and groups ops paused, from the playbook blocks (their defaults pause nothing)."""
    from siyu.blocks.group_cadence import CadenceTemplate
    from siyu.flows.conversion_path import load_playbooks
    from siyu.flows.group_cadence import load_block

    paths = frozenset(f"path:{p.name}" for p in load_playbooks().paths if p.paused)
    template = load_block(CadenceTemplate, BLOCK_NAME, CadenceTemplate)
    groups = frozenset(o.chat_id for o in template.overrides if o.paused)
    return Paused(programmes=paths, groups=groups)


@flow(name="sends-track", persist_result=False, log_prints=False)
def sends_track(as_of: dt.datetime | None = None, settings: TrackSettings | None = None) -> State:
    """Settle every created mass message, remind late employees, expire, and send deferred rows.

    Args:
        as_of: The time to track for (ISO, e.g. 2026-12-01T10:00+08:00); empty means now in
            Asia/Shanghai. Catch-ups and tests pass their own.
        settings: When to remind an employee who has not confirmed, and when a message expires.
    """
    now = as_of or dt.datetime.now(ZONE)
    if now.tzinfo is None:
        now = now.replace(tzinfo=ZONE)
    env = load_environment()
    rules = load_send_rules()
    engine = env.database.get_engine()
    with env.wecom.get_client() as client:
        report = track_sends(
            engine, client, rules=rules, as_of=now, settings=settings, paused=paused_by_ops()
        )
    local = now.astimezone(rules.zone)
    summary = manager_summary(engine, month=f"{local.year:04d}-{local.month:02d}")
    create_markdown_artifact(
        key="sends-track",
        markdown=manager_markdown(summary, report, now),
        description="Per manager: created, confirmed, delivered, capped, failed, lag",
    )
    settled = sum(report.settled.values())
    return Completed(
        message=(
            f"{report.messages} messages tracked, {settled} ledger rows settled, "
            f"{report.reminders} reminders, {report.cancelled} cancelled, "
            f"{report.unconfirmed_alerts} unconfirmed for 24 h told to ops"
        ),
        data={"report": report.as_dict(), "managers": summary.to_dict(orient="records")},
    )
