"""The daily tag sync: gate the core-banking export, compute tags, push the difference to WeCom."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from prefect import flow
from prefect.concurrency.sync import concurrency
from prefect.states import Completed, Failed, State
from pydantic import BaseModel, Field

from siyu.blocks.environment import Environment, load_environment
from siyu.tasks.contacts import CONTACT_STATE_LIMIT
from siyu.tasks.export_registry import ACCEPTED, SYNCED
from siyu.tasks.outbox import DrainReport
from siyu.tasks.reports import SyncSummary, record_push
from siyu.tasks.tag_sync import (
    ReceivedExport,
    gate_export,
    plan_tag_changes,
    push_tags,
    receive_export,
    report_tag_sync,
)


class TagSyncParameters(BaseModel):
    """What ops can set when they run the tag sync by hand."""

    export_file: str | None = Field(
        default=None,
        description="Export file to sync; default: the newest file in the landing directory",
    )
    dry_run: bool = Field(
        default=False, description="Compute and report the difference, send nothing to WeCom"
    )
    business_date: str | None = Field(
        default=None,
        pattern=r"^\d{8}$",
        description="Expected export date YYYYMMDD; default: today in Asia/Shanghai",
    )
    row_failure_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Share of quarantined rows above which the whole sync blocks (default 0.01)",
    )


@flow(name="tag-sync", persist_result=False, log_prints=False)
def tag_sync(params: TagSyncParameters | None = None) -> State:
    """Sync tags from the core-banking export to WeCom contacts, sending only the difference.

    Args:
        params: which export, dry run, business date and quarantine threshold.
    """
    params = params or TagSyncParameters()
    env = load_environment()
    received = receive_export(env.export_source, env.database, params.export_file)
    record = received.record
    summary = SyncSummary(export_file=received.path.name, export_date=None, dry_run=params.dry_run)
    if record.status == SYNCED:
        summary.message = (
            f"{received.path.name} was already synced (export #{record.id}): nothing to do"
        )
        report_tag_sync(env.database, record, summary, finished=False)
        return Completed(message=summary.message, data=summary.as_dict())

    # Never while contacts-sync rewrites contacts; a killed run's 60 s lease lapses on its own.
    with concurrency(CONTACT_STATE_LIMIT, occupy=1, lease_duration=60):
        return _gate_plan_push(params, env, received, summary)


def _gate_plan_push(
    params: TagSyncParameters, env: Environment, received: ReceivedExport, summary: SyncSummary
) -> State:
    """The sync proper: finish an interrupted push, gate, plan, push, report."""
    record = received.record
    resumed = DrainReport()
    if record.status == ACCEPTED and not params.dry_run:
        # A push of this export was cut short: finish it before anything else.
        resumed = push_tags(env.wecom, env.database, record.batch)

    business_date = _business_date(params.business_date, env.export_source.timezone)
    summary.export_date = business_date.isoformat()
    gate = gate_export(
        env.export_source, env.database, received, business_date, params.row_failure_threshold
    )
    summary.checks_total = len(gate.checks)
    summary.checks_failed = sum(not c.passed for c in gate.checks)
    summary.rows_read = len(gate.accepted) + len(gate.quarantined)
    summary.rows_accepted = len(gate.accepted)
    summary.rows_quarantined = len(gate.quarantined)
    if not gate.passed:
        summary.message = gate.message
        report_tag_sync(env.database, record, summary, finished=False)
        return Failed(message=gate.message, data=summary.as_dict())

    plan = plan_tag_changes(
        env.wecom,
        env.database,
        env.export_source,
        env.tag_rules.rule_set,
        record,
        gate.accepted,
        summary,
    )
    if params.dry_run:
        summary.message = (
            f"dry run: {summary.pairs_changed:,} contact pairs would change "
            f"(+{summary.tags_added:,} / -{summary.tags_removed:,} tags); nothing was sent"
        )
        report_tag_sync(env.database, record, summary, finished=False)
        return Completed(message=summary.message, data=summary.as_dict())

    pushed = resumed.merge(push_tags(env.wecom, env.database, plan.batch))
    too_many_refused = record_push(summary, pushed, env.export_source.row_error_threshold)
    report_tag_sync(env.database, record, summary, finished=True)
    if too_many_refused:
        return Failed(message=summary.message, data=summary.as_dict())
    return Completed(message=summary.message, data=summary.as_dict())


def _business_date(given: str | None, timezone: str) -> date:
    if given:
        return datetime.strptime(given, "%Y%m%d").date()
    return datetime.now(ZoneInfo(timezone)).date()
