"""What siyu remembers of each export: its checksum, verdict, quarantined rows and sync status."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.schemas.models import Export, QuarantinedRow, insert_or_update
from siyu.schemas.settings import PRIVATE_FILE_MODE, make_private_dir
from siyu.tasks.matching import BindingCount

# received: registered, not gated yet; blocked: the gate refused it; passed: the gate let it
# through (a dry run stops here); accepted: a real run planned its push (a rerun finishes that
# push first); synced: its push is drained, a rerun of the same content is a no-op.
RECEIVED, BLOCKED, PASSED, ACCEPTED, SYNCED = "received", "blocked", "passed", "accepted", "synced"
# A verdict is stored once a real run has committed to the content: a later gate of the same
# content (a dry-run preview of a synced file) must not rewrite it.
COMMITTED = (ACCEPTED, SYNCED)


@dataclass(frozen=True)
class ExportRecord:
    """An export as stored: the id that names its outbox batch, and where it stands."""

    id: int
    checksum: str
    status: str
    file_name: str
    export_date: date | None = None  # the business date the gate checked it against

    @property
    def label(self) -> str:
        """How ops name this export: its file and its stored id."""
        return f"{self.file_name} (export #{self.id})"

    @property
    def batch(self) -> str:
        """The outbox batch of this export's tag push."""
        return f"tag-sync:export:{self.id}"


def register_export(
    engine: sa.Engine, path: Path, checksum: str, flow_run_id: str | None
) -> ExportRecord:
    """The stored record for this file's content: an accepted or synced one is reused, never redone.

    One content has one live (not blocked) record: runs of the same file started together meet
    in it, by the unique `live_checksum`, so they plan into one outbox batch and its atomic
    claims send each change once. A blocked content's next run starts a new record.
    """
    with Session(engine) as session, session.begin():
        existing = session.scalars(
            sa.select(Export)
            .where(Export.checksum == checksum, Export.status.in_(COMMITTED))
            .order_by(Export.id.desc())
        ).first()
        if existing is None:
            insert = insert_or_update(engine.dialect.name, Export).values(
                file_name=path.name,
                checksum=checksum,
                live_checksum=checksum,
                status=RECEIVED,
                flow_run_id=flow_run_id,
                created_at=datetime.now(UTC),
                checks_total=0,
                checks_failed=0,
                rows_accepted=0,
                rows_quarantined=0,
            )
            session.execute(insert.on_conflict_do_nothing(index_elements=["live_checksum"]))
            existing = session.scalars(
                sa.select(Export).where(Export.live_checksum == checksum)
            ).one()
        return ExportRecord(
            existing.id,
            existing.checksum,
            existing.status,
            existing.file_name,
            existing.export_date,
        )


def previous_row_count(engine: sa.Engine, before_id: int) -> int | None:
    """Rows of the last export before this one the gate let through: the volume baseline."""
    with Session(engine) as session:
        return session.scalars(
            sa.select(Export.row_count)
            .where(Export.id < before_id, Export.status.in_([PASSED, *COMMITTED]))
            .order_by(Export.id.desc())
        ).first()


def record_verdict(
    engine: sa.Engine,
    export_id: int,
    *,
    passed: bool,
    export_date: date | None,
    row_count: int,
    checks_total: int,
    checks_failed: int,
    rows_accepted: int,
    quarantined: pd.DataFrame,
    message: str,
) -> None:
    """Store the gate's verdict and the quarantined rows (ids and reasons only).

    A passed export is `passed`, not yet `accepted`: only a real run's plan accepts it
    (`mark_accepted`), so a dry run leaves nothing for the next run to resume. An export a real
    run has already accepted or synced keeps its stored verdict (same content, same verdict).
    """
    with Session(engine) as session, session.begin():
        export = session.get(Export, export_id)
        if export.status in COMMITTED:
            return
        export.status = PASSED if passed else BLOCKED
        export.export_date = export_date
        export.row_count = row_count
        export.checks_total = checks_total
        export.checks_failed = checks_failed
        export.rows_accepted = rows_accepted
        export.rows_quarantined = len(quarantined)
        export.message = message[:4000]
        if not passed:
            export.finished_at = datetime.now(UTC)
            export.live_checksum = None  # a rerun of this content is a new attempt
        session.execute(sa.delete(QuarantinedRow).where(QuarantinedRow.export_id == export_id))
        rows = [
            {
                "export_id": export_id,
                "row_number": int(r.row_number)
                + 1,  # the gate counts from 0; we store data lines from 1
                "customer_id": None if pd.isna(r.customer_id) else str(r.customer_id)[:64],
                "reasons": str(r.reasons)[:255],
            }
            for r in quarantined.itertuples(index=False)
        ]
        for start in range(0, len(rows), 5_000):
            session.execute(sa.insert(QuarantinedRow), rows[start : start + 5_000])


def mark_accepted(engine: sa.Engine, export_id: int) -> None:
    """A real run is about to store this export's push: from now on a rerun finishes it first."""
    with Session(engine) as session, session.begin():
        export = session.get(Export, export_id)
        if export.status != SYNCED:
            export.status = ACCEPTED


def mark_synced(engine: sa.Engine, export_id: int, report: dict) -> None:
    """The export's push is drained: a rerun of the same file is now a no-op.

    The sync's report joins what the gate kept in the record's report (its value profile,
    the next export's baseline); it does not replace it.
    """
    with Session(engine) as session, session.begin():
        export = session.get(Export, export_id)
        export.status = SYNCED
        export.report = {**(export.report or {}), **report}
        export.finished_at = datetime.now(UTC)


def blocked_since_last_sync(engine: sa.Engine, before_id: int) -> list[str]:
    """Files blocked after the last synced export and before this one: what a sync now resolves."""
    with Session(engine) as session:
        last_synced = session.scalar(
            sa.select(sa.func.max(Export.id)).where(Export.id < before_id, Export.status == SYNCED)
        )
        return list(
            session.scalars(
                sa.select(Export.file_name)
                .where(
                    Export.id < before_id,
                    Export.id > (last_synced or 0),
                    Export.status == BLOCKED,
                )
                .order_by(Export.id)
            )
        )


def mark_refused(engine: sa.Engine, export_id: int, message: str) -> None:
    """The gate let the export through, but siyu refused to sync it (its binding collapsed).

    Stored as blocked, like a gate's refusal: the export is not synced, its next run is a new
    attempt, and the sync after the fix tells ops the alert is resolved.
    """
    with Session(engine) as session, session.begin():
        export = session.get(Export, export_id)
        if export.status in COMMITTED:
            return
        export.status = BLOCKED
        export.message = message[:4000]
        export.finished_at = datetime.now(UTC)
        export.live_checksum = None


def last_synced_binding(engine: sa.Engine, before_id: int) -> BindingCount | None:
    """The binding of the last synced export before this one, from its report; None if none.

    An export synced before the report carried binding counts gives None (not compared).
    """
    with Session(engine) as session:
        row = session.execute(
            sa.select(Export.report, Export.export_date)
            .where(Export.id < before_id, Export.status == SYNCED)
            .order_by(Export.id.desc())
            .limit(1)
        ).first()
    if row is None or not row.report or "pairs_managed" not in row.report:
        return None
    report = row.report
    bound = int(report.get("pairs_managed", 0))
    contacts = bound + int(report.get("pairs_unbound", 0)) + int(report.get("pairs_ambiguous", 0))
    return BindingCount(
        bound=bound,
        contacts=contacts,
        export_date=row.export_date.isoformat() if row.export_date else None,
    )


QUARANTINE_DIR = "quarantine"


def quarantine_file_name(business_date: date, checksum: str) -> str:
    """`<business_date>-<checksum8>.csv`: one file per export content and date."""
    return f"{business_date.isoformat()}-{checksum[:8]}.csv"


def write_quarantine_file(
    quarantined: pd.DataFrame, reports_dir: Path, business_date: date, checksum: str
) -> Path | None:
    """Write the quarantined rows for the bank's data team: line, customer id, reasons; 0600.

    Under `<reports_dir>/quarantine/` (0700), replaced atomically, so a reader never meets half
    a file. The customer id is the bank's own; no mobile, no name, no other value of the row.
    None when nothing was quarantined.
    """
    if quarantined.empty:
        return None
    folder = make_private_dir(Path(reports_dir) / QUARANTINE_DIR)
    path = folder / quarantine_file_name(business_date, checksum)
    rows = pd.DataFrame(
        {
            # The gate counts from 0; the file, like the database, counts data lines from 1.
            "row_number": quarantined["row_number"].astype("int64") + 1,
            "customer_id": quarantined["customer_id"].fillna("").astype(str),
            "reasons": quarantined["reasons"].astype(str),
        }
    )
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            rows.to_csv(out, index=False)
        os.chmod(partial, PRIVATE_FILE_MODE)  # an existing part file keeps its old mode
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


# What the sync history reads of a synced export's report.
HISTORY_KEYS = frozenset(
    {"pairs_managed", "pairs_unbound", "pairs_ambiguous", "pairs_changed", "tag_counts"}
)


@dataclass(frozen=True)
class HistoryRecord:
    """One export in the sync history: what was decided, and the sync's counts if it synced."""

    export_id: int
    export_date: date
    file_name: str
    status: str
    checks_total: int
    checks_failed: int
    report: dict[str, Any]


def sync_history(engine: sa.Engine, since: date, until: date) -> list[HistoryRecord]:
    """Exports gated for business dates in [since, until], newest first (one row per attempt)."""
    with Session(engine) as session:
        rows = session.execute(
            sa.select(
                Export.id,
                Export.export_date,
                Export.file_name,
                Export.status,
                Export.checks_total,
                Export.checks_failed,
                Export.report,
            )
            .where(
                Export.export_date >= since,
                Export.export_date <= until,
                Export.status != RECEIVED,
            )
            .order_by(Export.export_date.desc(), Export.id.desc())
        ).all()
    return [
        HistoryRecord(
            export_id=r.id,
            export_date=r.export_date,
            file_name=r.file_name,
            status=r.status,
            checks_total=r.checks_total or 0,
            checks_failed=r.checks_failed or 0,
            # The gate's value profile rides in the report too; the history needs only counts.
            report={k: v for k, v in (r.report or {}).items() if k in HISTORY_KEYS},
        )
        for r in rows
    ]
