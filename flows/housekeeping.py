"""The daily housekeeping: remove what outlived its retention period, never what is unsettled."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from zoneinfo import ZoneInfo

from prefect import flow
from prefect.states import Completed, State

from siyu.blocks.environment import load_environment
from siyu.tasks.reports import dry_run_aware_name, tag_as_dry_run
from siyu.tasks.retention import RetentionPeriods, remove_expired


@flow(name="housekeeping", flow_run_name=dry_run_aware_name, persist_result=False, log_prints=False)
def housekeeping(
    as_of: dt.datetime | None = None,
    periods: RetentionPeriods = RetentionPeriods(),  # noqa: B008 - a frozen default, read only
    dry_run: bool = False,
) -> State:
    """Remove send-ledger, outbox and quarantine records older than their periods, and old Data Docs.

    Args:
        as_of: The time the pass runs for; empty means now in the export source's time zone.
        periods: Days each kind of record is kept after it reached its end.
        dry_run: Count what would be removed, remove nothing.
    """
    if dry_run:
        tag_as_dry_run()
    # Only the database and the export source are read: a bad edit of the tag rules or of the
    # WeCom app never stops housekeeping.
    env = load_environment()
    zone = ZoneInfo(env.export_source.timezone)
    at = as_of or dt.datetime.now(zone)
    at = at if at.tzinfo else at.replace(tzinfo=zone)
    report = remove_expired(env.database, env.export_source, periods, at, dry_run)
    removed = (
        f"{report.ledger_rows:,} ledger rows, {report.outbox_rows:,} outbox rows, "
        f"{report.quarantined_rows:,} quarantined rows, {report.quarantine_files:,} quarantine "
        f"files, {report.data_docs_runs:,} Data Docs runs"
    )
    message = (
        f"dry run: would remove {removed}; nothing was removed" if dry_run else f"removed {removed}"
    )
    return Completed(message=message, data=asdict(report))
