"""The ops alerts (every minute): queue failed runs and siyu.* events, post digests to the robot."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed, Failed, State
from pydantic import Field

from siyu.blocks.environment import load_environment
from siyu.tasks.ops_alerts import (
    ALERT_FLOW,
    KNOWN_FLOWS,
    BlockRobot,
    FlushReport,
    FlushSettings,
    collect,
    flush,
    queue_summary,
)

# The notification block of the ops group's robot (saved by `siyu up` / `siyu deploy`).
OPS_ROBOT_BLOCK = "siyu-ops-robot"
FLOW_NAME = ALERT_FLOW
# A run every five minutes that keeps looking for 285 s: alerts reach ops within seconds, the
# run is over before the next one is due (the deployment runs one at a time), and Prefect keeps
# 288 runs a day of it, not 1,440 (a run a minute would be the largest part of its database).
LISTEN_SECONDS = 285
POLL_SECONDS = 5.0


def load_robot(name: str = OPS_ROBOT_BLOCK) -> Any | None:
    """The robot's notification block, or None when none is saved under `name`."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    try:
        return CustomWebhookNotificationBlock.load(name)
    except ValueError:
        return None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _markdown(read: int, queued: int, report: FlushReport, queue: dict[str, int]) -> str:
    lines = [
        "# Ops alerts",
        "",
        f"Events read: {read}; new alerts queued: {queued}.",
        f"Digests posted: {report.posts} ({report.alerts_posted} alerts; bytes: "
        f"{', '.join(map(str, report.sizes)) or '-'}).",
        f"Left pending: {report.left_pending}"
        + (
            " (the robot's minute is full: the next run posts them)"
            if report.waiting_for_window
            else ""
        )
        + ".",
    ]
    if report.refused:
        lines.append(f"Refused by the robot: {'; '.join(report.refused)}.")
    if report.unknown_posts:
        lines.append(f"Posts whose outcome was lost (told to ops once): {report.unknown_posts}.")
    lines += ["", "| status | alerts |", "|---|---|"]
    lines += [f"| {status} | {n} |" for status, n in queue.items()]
    return "\n".join(lines) + "\n"


@flow(name=FLOW_NAME, persist_result=False, log_prints=False)
def ops_alerts(
    settings: FlushSettings | None = None,
    watched_flows: list[str] | None = None,
    robot_block: str = OPS_ROBOT_BLOCK,
    listen_seconds: Annotated[int, Field(ge=0, le=295)] = LISTEN_SECONDS,
    poll_seconds: Annotated[float, Field(gt=0, le=30)] = POLL_SECONDS,
) -> State:
    """Queue what ops must act on and post it to the ops robot in digests, within its limit.

    Reads Prefect's events since the last run: failed or crashed runs of siyu's flows, and
    every `siyu.*` event (a dying group, a budget at 80 %, an unconfirmed mass message, a date
    outside the calendar...). Each is queued once; pending alerts go out as digests grouped by
    kind, each with its next step and the run's link, at most 18 posts a minute. A run keeps
    looking for `listen_seconds` (the deployment starts one every five minutes), so an alert reaches ops
    within seconds, not at the next minute.

    Args:
        settings: The robot's limits (posts a minute, bytes a post) as data.
        watched_flows: Flow names whose failures alert; empty means siyu's own flows (and any
            run tagged siyu).
        robot_block: The notification block of the ops group's robot.
        listen_seconds: How long this run keeps looking for new alerts (0: look once).
        poll_seconds: Seconds between two looks while listening.
    """
    env = load_environment()
    engine = env.database.get_engine()
    watched = set(watched_flows or KNOWN_FLOWS) - {FLOW_NAME}
    started = time.monotonic()
    read = queued = 0
    report = FlushReport()
    while True:
        events, new = collect(engine, now=_now(), watched_flows=watched)
        read, queued = read + events, queued + new
        robot = load_robot(robot_block)
        if robot is None:
            pending = queue_summary(engine).get("pending", 0)
            return Failed(
                message=(
                    f"no ops robot block {robot_block!r} is saved: {pending} alerts wait in the "
                    "queue; run `siyu deploy` (or `siyu up`) or save the block in the Blocks page"
                )
            )
        report = report.merge(
            flush(engine, BlockRobot(robot), robot_name=robot_block, clock=_now, settings=settings)
        )
        if report.refused or time.monotonic() - started + poll_seconds > listen_seconds:
            break
        time.sleep(poll_seconds)
    # A quiet minute leaves no artifact: 1,440 runs a day would bury the ones that did something.
    busy_minute = queued or report.posts or report.refused or report.left_pending
    if busy_minute or report.unknown_posts:
        create_markdown_artifact(
            key="ops-alerts",
            markdown=_markdown(read, queued, report, queue_summary(engine)),
            description="Alerts queued and digests posted to the ops robot (counts only)",
        )
    message = (
        f"{queued} alerts queued from {read} events; {report.posts} digests posted "
        f"({report.alerts_posted} alerts), {report.left_pending} pending"
        + (f"; the robot was busy {report.busy} times (posted later)" if report.busy else "")
    )
    if report.refused:
        return Failed(
            message=f"{message}; the ops robot refused: {report.refused[-1]} - check the "
            f"{robot_block!r} block's URL and key; the alerts stay queued"
        )
    return Completed(message=message, data=report.as_dict())
