"""What siyu remembers of each export: its checksum, verdict, quarantined rows and sync status."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.schemas.models import Export, QuarantinedRow

RECEIVED, BLOCKED, ACCEPTED, SYNCED = "received", "blocked", "accepted", "synced"


@dataclass(frozen=True)
class ExportRecord:
    """An export as stored: the id that names its outbox batch, and where it stands."""

    id: int
    checksum: str
    status: str
    file_name: str

    @property
    def batch(self) -> str:
        """The outbox batch of this export's tag push."""
        return f"tag-sync:export:{self.id}"


def register_export(
    engine: sa.Engine, path: Path, checksum: str, flow_run_id: str | None
) -> ExportRecord:
    """The stored record for this file's content: an accepted or synced one is reused, never redone."""
    with Session(engine) as session, session.begin():
        existing = session.scalars(
            sa.select(Export)
            .where(Export.checksum == checksum, Export.status.in_([ACCEPTED, SYNCED]))
            .order_by(Export.id.desc())
        ).first()
        if existing is None:
            existing = Export(
                file_name=path.name,
                checksum=checksum,
                status=RECEIVED,
                flow_run_id=flow_run_id,
                created_at=datetime.now(UTC),
            )
            session.add(existing)
            session.flush()
        return ExportRecord(existing.id, existing.checksum, existing.status, existing.file_name)


def previous_row_count(engine: sa.Engine, before_id: int) -> int | None:
    """Rows of the last accepted export before this one: the baseline of the volume check."""
    with Session(engine) as session:
        return session.scalars(
            sa.select(Export.row_count)
            .where(Export.id < before_id, Export.status.in_([ACCEPTED, SYNCED]))
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
    """Store the gate's verdict and the quarantined rows (ids and reasons only)."""
    with Session(engine) as session, session.begin():
        export = session.get(Export, export_id)
        export.status = ACCEPTED if passed else BLOCKED
        export.export_date = export_date
        export.row_count = row_count
        export.checks_total = checks_total
        export.checks_failed = checks_failed
        export.rows_accepted = rows_accepted
        export.rows_quarantined = len(quarantined)
        export.message = message[:4000]
        if not passed:
            export.finished_at = datetime.now(UTC)
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


def mark_synced(engine: sa.Engine, export_id: int, report: dict) -> None:
    """The export's push is drained: a rerun of the same file is now a no-op."""
    with Session(engine) as session, session.begin():
        export = session.get(Export, export_id)
        export.status = SYNCED
        export.report = report
        export.finished_at = datetime.now(UTC)
