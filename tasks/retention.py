"""Housekeeping of a year of daily runs: what is older than its retention period goes, never less.

Each kind of record has its period (`RetentionPeriods`, a parameter of the housekeeping
deployment, edited in the UI like any run parameter). Only what has reached its end goes:
- send-ledger rows in a final status (skipped, delivered, failed) settled before the cutoff;
- outbox rows in a final status (done, delivered, failed, superseded, cancelled) last touched
  before the cutoff: pending, sending and created rows stay whatever their age (their outcome
  is still to be settled);
- quarantined rows of exports received before the cutoff whose record is final (synced,
  blocked, or gated and left), and the quarantine files of business dates before it;
- Data Docs folders, by the export source's own `data_docs_keep_days` and
  `data_docs_keep_blocked` (one place for that period, where the gate reads it too).
A dry run counts what would go and removes nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from siyu.blocks.database import SiyuDatabase
from siyu.blocks.export_source import ExportSource
from siyu.schemas.ledger import FINAL_STATUSES, Send
from siyu.schemas.models import Export, OutboxEntry, QuarantinedRow
from siyu.tasks.export_registry import BLOCKED, PASSED, QUARANTINE_DIR, SYNCED
from siyu.tasks.outbox import CANCELLED, DELIVERED, DONE, FAILED, SUPERSEDED
from siyu.tasks.quality import VERDICT_FILE, prune_data_docs

# An outbox row in one of these never moves again.
FINAL_OUTBOX_STATUSES: frozenset[str] = frozenset({DONE, DELIVERED, FAILED, SUPERSEDED, CANCELLED})
# Exports whose quarantine can go: nothing will resume them (an accepted one may be resumed).
FINAL_EXPORT_STATUSES: frozenset[str] = frozenset({SYNCED, BLOCKED, PASSED})
# Ids per DELETE: well under SQLite's and psycopg2's limits on bound parameters.
_CHUNK = 5_000
# The quarantine file names the export's business date first (export_registry writes them).
_QUARANTINE_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})-[0-9a-f]{8}\.csv$")

REPORT_KEY = "housekeeping-report"

# Ledger and outbox rows are what makes a send once-only: a key whose row is gone could be
# planned again. Two months outlive the longest period a key is counted in (a calendar month),
# so no rerun within a period can meet a removed key.
MIN_SEND_DAYS = 62


class RetentionPeriods(BaseModel):
    """How long each kind of record is kept after it reached its end, in days."""

    model_config = ConfigDict(title="Retention periods", extra="forbid")

    ledger_days: int = Field(
        default=400,
        ge=MIN_SEND_DAYS,
        le=3650,
        description="Days a send-ledger row is kept after its final status (a year's reports "
        "need a year and a month)",
    )
    outbox_days: int = Field(
        default=90,
        ge=MIN_SEND_DAYS,
        le=3650,
        description="Days a finished outbox row (done, delivered, failed, superseded, "
        "cancelled) is kept after its last change",
    )
    quarantine_days: int = Field(
        default=90,
        ge=1,
        le=3650,
        description="Days quarantined rows and the data team's quarantine files are kept",
    )


@dataclass
class RetentionReport:
    """What one housekeeping pass removed (or, in a dry run, would remove)."""

    as_of: str
    dry_run: bool
    ledger_rows: int = 0
    outbox_rows: int = 0
    quarantined_rows: int = 0
    quarantine_files: int = 0
    data_docs_runs: int = 0
    cutoffs: dict[str, str] = field(default_factory=dict)


def _cutoff(as_of: datetime, days: int) -> datetime:
    return as_of.astimezone(UTC) - timedelta(days=days)


def _delete_ids(session: Session, column: sa.ColumnElement, ids: list[int]) -> None:
    table = column.table
    for start in range(0, len(ids), _CHUNK):
        session.execute(sa.delete(table).where(column.in_(ids[start : start + _CHUNK])))


def old_ledger_rows(engine: sa.Engine, before: datetime, *, dry_run: bool) -> int:
    """Remove send-ledger rows in a final status settled before `before`; returns how many."""
    # A skipped row is final at planning: it may carry no settled time, its planned time counts.
    settled = sa.func.coalesce(Send.settled_at, Send.planned_at)
    where = (Send.status.in_(sorted(FINAL_STATUSES)), settled < before)
    return _remove(engine, Send.id, where, dry_run=dry_run)


def old_outbox_rows(engine: sa.Engine, before: datetime, *, dry_run: bool) -> int:
    """Remove outbox rows in a final status last changed before `before`; returns how many."""
    where = (
        OutboxEntry.status.in_(sorted(FINAL_OUTBOX_STATUSES)),
        OutboxEntry.updated_at < before,
    )
    return _remove(engine, OutboxEntry.id, where, dry_run=dry_run)


def old_quarantined_rows(engine: sa.Engine, before: datetime, *, dry_run: bool) -> int:
    """Remove the quarantined rows of final exports received before `before`."""
    exports = sa.select(Export.id).where(
        Export.created_at < before, Export.status.in_(sorted(FINAL_EXPORT_STATUSES))
    )
    return _remove(
        engine, QuarantinedRow.id, (QuarantinedRow.export_id.in_(exports),), dry_run=dry_run
    )


def _remove(
    engine: sa.Engine,
    id_column: sa.ColumnElement,
    where: tuple[sa.ColumnElement[bool], ...],
    *,
    dry_run: bool,
) -> int:
    """Count, or delete in chunks of ids, the rows matching `where`, in one transaction."""
    with Session(engine) as session, session.begin():
        if dry_run:
            return int(
                session.scalar(
                    sa.select(sa.func.count()).select_from(id_column.table).where(*where)
                )
                or 0
            )
        ids = list(session.scalars(sa.select(id_column).where(*where)))
        _delete_ids(session, id_column, ids)
        return len(ids)


def old_quarantine_files(reports_dir: Path, before: date, *, dry_run: bool) -> list[Path]:
    """The quarantine files of business dates before `before`, removed unless `dry_run`.

    Files that are not siyu's (another name) are left alone.
    """
    folder = Path(reports_dir) / QUARANTINE_DIR
    if not folder.is_dir():
        return []
    old = []
    for path in sorted(folder.iterdir()):
        match = _QUARANTINE_FILE.match(path.name)
        if match is None or not path.is_file():
            continue
        try:
            day = date.fromisoformat(match.group(1))
        except ValueError:
            continue
        if day < before:
            old.append(path)
            if not dry_run:
                path.unlink(missing_ok=True)
    return old


def old_data_docs(source: ExportSource, as_of: datetime, *, dry_run: bool) -> int:
    """Data Docs runs past the export source's keep period (blocked ones kept if it says so)."""
    root = source.reports_path() / "data-docs"
    if dry_run:
        cutoff = as_of.timestamp() - source.data_docs_keep_days * 86_400
        if not root.is_dir():
            return 0
        return sum(
            1
            for folder in root.iterdir()
            if folder.is_dir()
            and folder.stat().st_mtime < cutoff
            and not (source.data_docs_keep_blocked and _blocked(folder))
        )
    removed = prune_data_docs(
        root,
        keep_days=source.data_docs_keep_days,
        keep_blocked=source.data_docs_keep_blocked,
        now=as_of,
    )
    return len(removed)


def _blocked(folder: Path) -> bool:
    """Whether a Data Docs folder records a blocked gate (the prune keeps those)."""
    try:
        verdict = json.loads((folder / VERDICT_FILE).read_text())
    except (OSError, ValueError):
        return False
    return not verdict.get("passed", True)


def clean_up(
    engine: sa.Engine,
    source: ExportSource,
    periods: RetentionPeriods,
    as_of: datetime,
    *,
    dry_run: bool,
) -> RetentionReport:
    """One housekeeping pass at `as_of`: every kind of record against its period."""
    ledger_before = _cutoff(as_of, periods.ledger_days)
    outbox_before = _cutoff(as_of, periods.outbox_days)
    quarantine_before = _cutoff(as_of, periods.quarantine_days)
    report = RetentionReport(as_of=as_of.isoformat(), dry_run=dry_run)
    report.cutoffs = {
        "ledger": ledger_before.isoformat(),
        "outbox": outbox_before.isoformat(),
        "quarantine": quarantine_before.isoformat(),
    }
    report.ledger_rows = old_ledger_rows(engine, ledger_before, dry_run=dry_run)
    report.outbox_rows = old_outbox_rows(engine, outbox_before, dry_run=dry_run)
    report.quarantined_rows = old_quarantined_rows(engine, quarantine_before, dry_run=dry_run)
    local_day = as_of.astimezone(ZoneInfo(source.timezone)).date()
    report.quarantine_files = len(
        old_quarantine_files(
            source.reports_path(),
            local_day - timedelta(days=periods.quarantine_days),
            dry_run=dry_run,
        )
    )
    report.data_docs_runs = old_data_docs(source, as_of, dry_run=dry_run)
    return report


def retention_markdown(report: RetentionReport, periods: RetentionPeriods) -> str:
    """The pass in a table ops read: what went (or would go), and the period behind each."""
    verb = "would be removed (dry run: nothing was)" if report.dry_run else "removed"
    lines = [
        f"# Housekeeping as of {report.as_of}: {verb}",
        "",
        "| records | kept for | older than | count |",
        "|---|---|---|---:|",
        f"| send-ledger rows in a final status | {periods.ledger_days} days | "
        f"{report.cutoffs['ledger'][:10]} | {report.ledger_rows:,} |",
        f"| finished outbox rows | {periods.outbox_days} days | "
        f"{report.cutoffs['outbox'][:10]} | {report.outbox_rows:,} |",
        f"| quarantined rows | {periods.quarantine_days} days | "
        f"{report.cutoffs['quarantine'][:10]} | {report.quarantined_rows:,} |",
        f"| quarantine files | {periods.quarantine_days} days | "
        f"{report.cutoffs['quarantine'][:10]} | {report.quarantine_files:,} |",
        f"| Data Docs runs | the export source's keep days | | {report.data_docs_runs:,} |",
    ]
    return "\n".join(lines)


@task(name="remove what outlived its period", persist_result=False, cache_policy=NO_CACHE)
def remove_expired(
    database: SiyuDatabase,
    source: ExportSource,
    periods: RetentionPeriods,
    as_of: datetime,
    dry_run: bool,
) -> RetentionReport:
    """Run one housekeeping pass against siyu's database and the reports directory."""
    engine = database.get_engine()
    try:
        report = clean_up(engine, source, periods, as_of, dry_run=dry_run)
    finally:
        engine.dispose()
    create_markdown_artifact(
        retention_markdown(report, periods),
        key=REPORT_KEY,
        description="What housekeeping removed, by kind of record and its retention period",
    )
    get_run_logger().info(
        "%s: %s ledger rows, %s outbox rows, %s quarantined rows, %s quarantine files, "
        "%s Data Docs runs",
        "would remove" if dry_run else "removed",
        report.ledger_rows,
        report.outbox_rows,
        report.quarantined_rows,
        report.quarantine_files,
        report.data_docs_runs,
    )
    return report
