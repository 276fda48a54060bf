"""The daily tag sync: gate the core-banking export, compute tags, push the difference to WeCom."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from prefect import flow
from prefect.states import Completed, Failed, State
from pydantic import BeforeValidator, Field

from siyu.blocks.environment import Environment, load_environment
from siyu.blocks.tag_rules import TagRulesInvalid
from siyu.schemas.tag_rules import TagRuleSet
from siyu.tasks.export_registry import ACCEPTED, SYNCED
from siyu.tasks.outbox import DrainReport
from siyu.tasks.quality import GateResult
from siyu.tasks.reports import (
    ALREADY_SYNCED,
    BLOCKED,
    DRY_RUN,
    SyncSummary,
    dry_run_aware_name,
    record_push,
    tag_as_dry_run,
)
from siyu.tasks.tag_sync import (
    MARK_TAG_API,
    ExportNotFound,
    ReceivedExport,
    RequestTally,
    find_export,
    gate_export,
    plan_tag_changes,
    push_tags,
    receive_export,
    report_tag_sync,
    retire_tags,
    tell_ops_resolved,
)

# The notification block the failure automation posts through (saved by `siyu up`).
OPS_ROBOT_BLOCK = "siyu-ops-robot"
# The export-source block's own default; a run can set another for itself.
DEFAULT_ROW_FAILURE_THRESHOLD = 0.01


def parse_business_date(value: Any) -> Any:
    """Accept the bank's YYYYMMDD beside ISO dates, and refuse a non-date in words."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            if re.fullmatch(r"\d{8}", text):
                return datetime.strptime(text, "%Y%m%d").date()
            return date.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"{text!r} is not a calendar date: write the export's business date as "
                "YYYY-MM-DD (e.g. 2026-11-24) or YYYYMMDD, or leave it empty for today"
            ) from None
    return value


# Nullable, so the Run form submits as it opens: a "date | None" switch on None (today). A plain
# date picker with a null default is refused by the form itself ("None is not of type 'string'"):
# the browser test submits the form untouched but for dry_run.
BusinessDate = Annotated[date | None, BeforeValidator(parse_business_date)]
Share = Annotated[float, Field(ge=0, le=1)]


# A dry run is named "... · dry run" and tagged dry-run: the Runs list tells it from a real one.
@flow(name="tag-sync", flow_run_name=dry_run_aware_name, persist_result=False, log_prints=False)
def tag_sync(
    export_file: str = "",
    dry_run: bool = False,
    business_date: BusinessDate = None,
    row_failure_threshold: Share = DEFAULT_ROW_FAILURE_THRESHOLD,
) -> State:
    """Sync tags from the core-banking export to WeCom contacts, sending only the difference.

    Args:
        export_file: Export file to sync; empty means the newest file in the landing directory.
        dry_run: Compute and report what the current rules would change, send and store nothing
            (also on an export that is already synced: a preview of edited rules).
        business_date: The date the export must be of; empty means today in Asia/Shanghai.
        row_failure_threshold: Share of quarantined rows (0 to 1) above which the sync blocks.
    """
    if dry_run:
        tag_as_dry_run()
    env = load_environment()
    expected = business_date or datetime.now(ZoneInfo(env.export_source.timezone)).date()
    try:
        rules = env.tag_rules.rule_set  # before the export is touched: a bad edit stops here
    except TagRulesInvalid as exc:
        return Failed(message=f"tag-sync did not start: {exc}")
    try:
        path = find_export(env.export_source, export_file or None)
    except ExportNotFound as refused:  # said in words, without a traceback: nothing was read
        return Failed(message=f"tag-sync did not start: {refused}")
    received = receive_export(env.export_source, env.database, path)
    record = received.record
    summary = SyncSummary(
        export_file=received.path.name, export_date=expected.isoformat(), dry_run=dry_run
    )
    if record.status == SYNCED and record.export_date not in (None, expected):
        summary.outcome = BLOCKED
        summary.message = (
            f"{record.label} was synced as the export of {record.export_date.isoformat()}, "
            f"not of {expected.isoformat()} - if this is the file you meant, set business_date "
            f"to {record.export_date.isoformat()}; otherwise wait for the export of "
            f"{expected.isoformat()} to land and rerun tag-sync"
        )
        report_tag_sync(env.database, record, summary, finished=False)
        return Failed(message=summary.message)
    if record.status == SYNCED and not dry_run:
        summary.outcome = ALREADY_SYNCED
        summary.message = f"{record.label} was already synced: nothing to do"
        report_tag_sync(env.database, record, summary, finished=False)
        return Completed(message=summary.message, data=summary.as_dict())

    # No Prefect slot is held: a concurrent run or contacts-sync is safe because every outbox
    # entry is claimed atomically and contacts-sync re-applies what a push settles meanwhile. A
    # held slot would outlive a killed run and stall every later sync.
    return _gate_plan_push(env, rules, received, summary, expected, row_failure_threshold, dry_run)


def _gate_plan_push(
    env: Environment,
    rules: TagRuleSet,
    received: ReceivedExport,
    summary: SyncSummary,
    expected: date,
    row_failure_threshold: float,
    dry_run: bool,
) -> State:
    """The sync proper: finish an interrupted push, gate, plan, push, retire, report."""
    record = received.record
    tally = RequestTally()
    resumed = DrainReport()
    if record.status == ACCEPTED and not dry_run:
        # A push of this export was cut short: finish it before anything else.
        resumed = push_tags(env.wecom, env.database, record.batch, tally)

    gate = gate_export(
        env.export_source, env.database, received, expected, row_failure_threshold, summary
    )
    if not gate.passed:
        summary.outcome = BLOCKED
        summary.message = blocked_message(received.path.name, gate)
        report_tag_sync(env.database, record, summary, finished=False)
        # A message only: Prefect cannot turn a Failed state's dict data into an exception.
        return Failed(message=summary.message)

    plan = plan_tag_changes(
        env.wecom, env.database, env.export_source, rules, record, gate.accepted, summary
    )
    if plan.refused is not None:
        summary.outcome = BLOCKED
        summary.message = refused_message(received.path.name, plan.refused, dry_run)
        report_tag_sync(env.database, record, summary, finished=False)
        return Failed(message=summary.message)
    if dry_run:
        summary.outcome = DRY_RUN
        retiring = len(plan.catalog.retired) if plan.catalog else 0
        summary.message = (
            f"dry run of {received.path.name}: {summary.pairs_changed:,} contact pairs would "
            f"change (+{summary.tags_added:,} / -{summary.tags_removed:,} tags)"
            + (f", {retiring} retired tags would be removed and deleted" if retiring else "")
            + "; nothing was sent or stored"
        )
        report_tag_sync(env.database, record, summary, finished=False)
        return Completed(message=summary.message, data=summary.as_dict())

    pushed = resumed.merge(push_tags(env.wecom, env.database, plan.batch, tally))
    summary.tags_retired = retire_tags(env.wecom, env.database, plan.catalog)
    too_many_refused = record_push(
        summary,
        pushed,
        env.export_source.row_error_threshold,
        requests=tally.get(MARK_TAG_API),
    )
    report_tag_sync(env.database, record, summary, finished=True)
    if too_many_refused:
        return Failed(message=summary.message)
    robot = _ops_robot()
    if robot is not None:
        tell_ops_resolved(robot, env.database, record)
    return Completed(message=summary.message, data=summary.as_dict())


def _ops_robot() -> Any | None:
    """The ops robot's notification block, where one is saved (siyu up saves it)."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    try:
        return CustomWebhookNotificationBlock.load(OPS_ROBOT_BLOCK)
    except ValueError:
        return None


def blocked_message(file_name: str, gate: GateResult) -> str:
    """The gate's reason, naming the file, and saying so when business_date is the likely fix."""
    message = f"{file_name}: {gate.message}"
    if any(not c.passed and "date" in c.name for c in gate.checks):
        message += (
            " - if the file is right and only the date differs, rerun tag-sync with "
            "business_date set to the export's date"
        )
    return message


def refused_message(file_name: str, reason: str, dry_run: bool) -> str:
    """A collapsed binding in words: what happened, that nothing changed, what to check."""
    return (
        f"{'dry run of ' if dry_run else ''}{file_name}: {reason} - check the mobile salt of the "
        "export-source block (every worker must use the same one) and the export's mobile "
        "column, then rerun tag-sync; the export is not marked synced"
    )
