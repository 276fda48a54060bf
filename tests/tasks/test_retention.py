"""Retention: what outlived its period goes, what is not final stays whatever its age; dry runs count."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pandas as pd
import pydantic
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.export_source import ExportSource
from siyu.schemas.ledger import Send
from siyu.schemas.models import Export, OutboxEntry, QuarantinedRow
from siyu.tasks.export_registry import (
    mark_accepted,
    record_verdict,
    register_export,
    write_quarantine_file,
)
from siyu.tasks.outbox import PlannedCall, enqueue
from siyu.tasks.retention import RetentionPeriods, clean_up, old_quarantine_files

UTC = dt.UTC
AS_OF = dt.datetime(2027, 12, 1, 3, 0, tzinfo=UTC)
LONG_AGO = AS_OF - dt.timedelta(days=500)
LAST_MONTH = AS_OF - dt.timedelta(days=30)
PERIODS = RetentionPeriods(ledger_days=400, outbox_days=90, quarantine_days=90)


def source(tmp_path: Path, **kwargs) -> ExportSource:
    return ExportSource(
        landing_dir=str(tmp_path / "landing"),
        reports_dir=str(tmp_path / "reports"),
        mobile_salt="s",
        **kwargs,
    )


def add_send(session: Session, key: str, status: str, settled_at: dt.datetime | None) -> None:
    session.add(
        Send(
            target_kind="customer",
            target_id=key,
            programme="path:P1",
            step="touch-1",
            period="2026-07",
            sender="u1",
            channel="mass_template",
            priority=0,
            status=status,
            reason="month_cap" if status == "skipped" else None,
            playbook="p",
            playbook_version="1",
            planned_at=settled_at or LONG_AGO,
            settled_at=settled_at,
        )
    )


def add_entry(engine, key: str, status: str, updated_at: dt.datetime) -> None:
    enqueue(engine, "b1", [PlannedCall("mark_tag", key, "u/x", {})], plan="tag-sync")
    with engine.begin() as connection:
        connection.execute(
            sa.update(OutboxEntry)
            .where(OutboxEntry.key == key)
            .values(status=status, updated_at=updated_at)
        )


def keys(engine, column) -> set[str]:
    with Session(engine) as session:
        return set(session.scalars(sa.select(column)))


def test_only_final_rows_older_than_their_period_go(engine, tmp_path):
    with Session(engine) as session, session.begin():
        add_send(session, "old-delivered", "delivered", LONG_AGO)
        add_send(session, "old-failed", "failed", LONG_AGO)
        add_send(session, "old-skipped", "skipped", None)  # final at planning, long ago
        add_send(session, "recent-delivered", "delivered", LAST_MONTH)
        add_send(session, "old-created", "created", None)  # its outcome is still to come
        add_send(session, "old-deferred", "deferred", None)
    for key, status, at in [
        ("old-done", "done", LONG_AGO),
        ("old-superseded", "superseded", LONG_AGO),
        ("recent-done", "done", LAST_MONTH),
        ("old-pending", "pending", LONG_AGO),
        ("old-sending", "sending", LONG_AGO),
        ("old-created", "created", LONG_AGO),
    ]:
        add_entry(engine, key, status, at)

    counted = clean_up(engine, source(tmp_path), PERIODS, AS_OF, dry_run=True)
    assert (counted.ledger_rows, counted.outbox_rows) == (3, 2)
    assert len(keys(engine, Send.target_id)) == 6 and len(keys(engine, OutboxEntry.key)) == 6

    removed = clean_up(engine, source(tmp_path), PERIODS, AS_OF, dry_run=False)
    assert (removed.ledger_rows, removed.outbox_rows) == (3, 2)
    assert keys(engine, Send.target_id) == {"recent-delivered", "old-created", "old-deferred"}
    assert keys(engine, OutboxEntry.key) == {
        "recent-done",
        "old-pending",
        "old-sending",
        "old-created",
    }
    again = clean_up(engine, source(tmp_path), PERIODS, AS_OF, dry_run=False)
    assert (again.ledger_rows, again.outbox_rows) == (0, 0)


def quarantine(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"row_number": range(n), "customer_id": [f"C{i}" for i in range(n)], "reasons": "x"}
    )


def gated(engine, name: str, checksum: str, created_at: dt.datetime, *, accept=False) -> int:
    record = register_export(engine, Path(name), checksum, None)
    record_verdict(
        engine,
        record.id,
        passed=True,
        export_date=created_at.date(),
        row_count=10,
        checks_total=1,
        checks_failed=0,
        rows_accepted=8,
        quarantined=quarantine(2),
        message="",
    )
    if accept:
        mark_accepted(engine, record.id)
    with Session(engine) as session, session.begin():
        session.get(Export, record.id).created_at = created_at
    return record.id


def test_quarantine_rows_and_files_past_their_period_go_and_the_rest_stay(engine, tmp_path):
    src = source(tmp_path)
    old = gated(engine, "old.csv", "a" * 64, LONG_AGO)
    unfinished = gated(engine, "open.csv", "b" * 64, LONG_AGO, accept=True)
    recent = gated(engine, "new.csv", "c" * 64, LAST_MONTH)
    old_file = write_quarantine_file(quarantine(2), src.reports_path(), LONG_AGO.date(), "a" * 64)
    new_file = write_quarantine_file(quarantine(2), src.reports_path(), LAST_MONTH.date(), "c" * 64)
    stranger = src.reports_path() / "quarantine" / "notes.csv"  # not siyu's: left alone
    stranger.write_text("x")

    counted = clean_up(engine, src, PERIODS, AS_OF, dry_run=True)
    assert (counted.quarantined_rows, counted.quarantine_files) == (2, 1)
    assert old_file.exists()

    removed = clean_up(engine, src, PERIODS, AS_OF, dry_run=False)
    assert (removed.quarantined_rows, removed.quarantine_files) == (2, 1)
    with Session(engine) as session:
        left = set(session.scalars(sa.select(QuarantinedRow.export_id)))
    assert left == {unfinished, recent} and old not in left
    assert not old_file.exists() and new_file.exists() and stranger.exists()


def test_data_docs_follow_the_export_sources_keep_days(engine, tmp_path):
    import json

    src = source(tmp_path, data_docs_keep_days=30, data_docs_keep_blocked=True)
    root = src.reports_path() / "data-docs"
    ages = {"old-passed": 60, "old-blocked": 60, "fresh": 5}
    for name, days in ages.items():
        folder = root / name
        folder.mkdir(parents=True)
        verdict = {"passed": name != "old-blocked", "export_date": "x"}
        (folder / "siyu-gate.json").write_text(json.dumps(verdict))
        stamp = (AS_OF - dt.timedelta(days=days)).timestamp()
        os.utime(folder, (stamp, stamp))
    assert clean_up(engine, src, PERIODS, AS_OF, dry_run=True).data_docs_runs == 1
    assert len(list(root.iterdir())) == 3
    assert clean_up(engine, src, PERIODS, AS_OF, dry_run=False).data_docs_runs == 1
    assert sorted(p.name for p in root.iterdir()) == ["fresh", "old-blocked"]


def test_quarantine_files_are_aged_by_their_business_date(tmp_path):
    folder = tmp_path / "quarantine"
    folder.mkdir()
    for name in ["2027-08-01-0123abcd.csv", "2027-09-10-0123abcd.csv", "2027-13-01-0123abcd.csv"]:
        (folder / name).write_text("row_number,customer_id,reasons\n")
    old = old_quarantine_files(tmp_path, dt.date(2027, 9, 2), dry_run=False)
    assert [p.name for p in old] == ["2027-08-01-0123abcd.csv"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "2027-09-10-0123abcd.csv",
        "2027-13-01-0123abcd.csv",  # not a date: not siyu's to judge
    ]


def test_periods_too_short_to_keep_sends_once_only_are_refused():
    with pytest.raises(pydantic.ValidationError, match="greater than or equal to 62"):
        RetentionPeriods(outbox_days=7)
    with pytest.raises(pydantic.ValidationError):
        RetentionPeriods(ledger_days=30)
    assert RetentionPeriods(quarantine_days=1).quarantine_days == 1
