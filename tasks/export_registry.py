"""What siyu remembers of each export: its checksum, verdict, quarantined rows and sync status."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.schemas.models import Export, QuarantinedRow, insert_or_update

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
