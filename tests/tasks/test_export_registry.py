"""What siyu remembers of each export: one record per content, verdicts, and where it stands."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.schemas.models import Export, QuarantinedRow
from siyu.tasks.export_registry import (
    ACCEPTED,
    BLOCKED,
    PASSED,
    RECEIVED,
    SYNCED,
    mark_accepted,
    mark_synced,
    previous_row_count,
    record_verdict,
    register_export,
)

DAY = date(2026, 11, 24)
FILE = Path("core_export_20261124.csv")
NO_ROWS = pd.DataFrame(columns=["row_number", "customer_id", "reasons"])


def verdict(engine, export_id: int, *, passed: bool, rows: int = 400, quarantined=NO_ROWS):
    record_verdict(
        engine,
        export_id,
        passed=passed,
        export_date=DAY,
        row_count=rows,
        checks_total=15,
        checks_failed=0 if passed else 1,
        rows_accepted=rows - len(quarantined),
        quarantined=quarantined,
        message="ok" if passed else "blocked",
    )


def status(engine, export_id: int) -> str:
    with Session(engine) as session:
        return session.get(Export, export_id).status


def test_a_new_file_is_received_and_its_batch_names_the_record(engine):
    record = register_export(engine, FILE, "a" * 64, "run-1")
    assert record.status == RECEIVED and record.file_name == FILE.name
    assert record.batch == f"tag-sync:export:{record.id}"
    assert record.label == f"{FILE.name} (export #{record.id})"


def test_a_passed_gate_does_not_accept_the_export(engine):
    """A dry run gates too: only a real run's plan accepts, so nothing is left to resume."""
    record = register_export(engine, FILE, "a" * 64, None)
    verdict(engine, record.id, passed=True)
    assert status(engine, record.id) == PASSED
    again = register_export(engine, FILE, "a" * 64, None)
    # The content's one live record, with nothing to resume: the real run gates and plans anew.
    assert again.id == record.id and again.status == PASSED


def test_runs_of_one_content_share_one_live_record_until_it_is_blocked(engine):
    first = register_export(engine, FILE, "e" * 64, None)
    assert register_export(engine, FILE, "e" * 64, None).id == first.id
    verdict(engine, first.id, passed=False)
    after_block = register_export(engine, FILE, "e" * 64, None)
    assert after_block.id != first.id and after_block.status == RECEIVED  # a new attempt


def test_an_accepted_or_synced_export_is_reused_with_its_date(engine):
    record = register_export(engine, FILE, "b" * 64, None)
    verdict(engine, record.id, passed=True)
    mark_accepted(engine, record.id)
    assert register_export(engine, FILE, "b" * 64, None).status == ACCEPTED
    mark_synced(engine, record.id, {"pairs_changed": 3})
    again = register_export(engine, FILE, "b" * 64, None)
    assert (again.id, again.status, again.export_date) == (record.id, SYNCED, DAY)
    mark_accepted(engine, record.id)  # a late plan never takes a synced export back
    assert status(engine, record.id) == SYNCED


def test_a_later_gate_of_synced_content_leaves_its_verdict_and_quarantine(engine):
    record = register_export(engine, FILE, "c" * 64, None)
    held = pd.DataFrame({"row_number": [0], "customer_id": ["C0000000042"], "reasons": ["aum"]})
    verdict(engine, record.id, passed=True, quarantined=held)
    mark_accepted(engine, record.id)
    mark_synced(engine, record.id, {})
    verdict(engine, record.id, passed=False, rows=10)  # a preview with another threshold
    with Session(engine) as session:
        export = session.get(Export, record.id)
        assert (export.status, export.row_count, export.message) == (SYNCED, 400, "ok")
        rows = session.scalars(sa.select(QuarantinedRow)).all()
        assert [(r.row_number, r.customer_id) for r in rows] == [(1, "C0000000042")]


def test_a_blocked_export_is_finished_and_never_reused(engine):
    record = register_export(engine, FILE, "d" * 64, None)
    verdict(engine, record.id, passed=False)
    with Session(engine) as session:
        export = session.get(Export, record.id)
        assert export.status == BLOCKED and export.finished_at is not None
    assert register_export(engine, FILE, "d" * 64, None).id != record.id


def test_the_volume_baseline_is_the_last_export_the_gate_let_through(engine):
    first = register_export(engine, FILE, "e" * 64, None)
    verdict(engine, first.id, passed=True, rows=1_000)
    blocked = register_export(engine, FILE, "f" * 64, None)
    verdict(engine, blocked.id, passed=False, rows=10)
    later = register_export(engine, FILE, "g" * 64, None)
    assert previous_row_count(engine, later.id) == 1_000
    assert previous_row_count(engine, first.id) is None


def test_the_sync_report_joins_what_the_gate_kept_in_the_record(engine):
    record = register_export(engine, FILE, "h" * 64, None)
    verdict(engine, record.id, passed=True)
    with Session(engine) as session, session.begin():
        session.get(Export, record.id).report = {"gate_profile": {"rows": 400}}
    mark_synced(engine, record.id, {"pairs_changed": 3})
    with Session(engine) as session:
        report = session.get(Export, record.id).report
    assert report == {"gate_profile": {"rows": 400}, "pairs_changed": 3}


def test_the_quarantine_file_holds_line_id_and_reasons_only_and_is_private(tmp_path):
    import stat

    from siyu.tasks.export_registry import write_quarantine_file

    quarantined = pd.DataFrame(
        {
            "row_number": [0, 41],
            "customer_id": ["C00000001", None],
            "reasons": ["mobile_format", "customer_id_present,aum_non_negative"],
        }
    )
    path = write_quarantine_file(quarantined, tmp_path / "reports", DAY, "ab12cd34" + "0" * 56)
    assert path == tmp_path / "reports" / "quarantine" / "2026-11-24-ab12cd34.csv"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text().splitlines() == [
        "row_number,customer_id,reasons",
        "1,C00000001,mobile_format",
        '42,,"customer_id_present,aum_non_negative"',
    ]
    assert write_quarantine_file(NO_ROWS, tmp_path / "reports", DAY, "f" * 64) is None
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no part file left


def test_a_refused_export_is_blocked_and_its_rerun_is_a_new_attempt(engine):
    from siyu.tasks.export_registry import blocked_since_last_sync, mark_refused

    first = register_export(engine, FILE, "c" * 64, None)
    verdict(engine, first.id, passed=True)
    mark_refused(engine, first.id, "bound 0 of 20 contacts")
    assert status(engine, first.id) == BLOCKED
    again = register_export(engine, FILE, "c" * 64, None)
    assert again.id != first.id and again.status == RECEIVED
    assert blocked_since_last_sync(engine, again.id + 1) == [FILE.name]


def test_the_last_synced_binding_comes_from_the_last_synced_report(engine):
    from siyu.tasks.export_registry import last_synced_binding

    first = register_export(engine, FILE, "d" * 64, None)
    assert last_synced_binding(engine, first.id + 1) is None  # nothing synced yet
    verdict(engine, first.id, passed=True)
    mark_accepted(engine, first.id)
    mark_synced(engine, first.id, {"pairs_managed": 180, "pairs_unbound": 15, "pairs_ambiguous": 5})
    later = register_export(engine, Path("next.csv"), "e" * 64, None)
    last = last_synced_binding(engine, later.id)
    assert (last.bound, last.contacts, last.export_date) == (180, 200, DAY.isoformat())
    assert last_synced_binding(engine, first.id) is None  # only exports before this one


def test_the_sync_history_lists_gated_exports_of_the_window_newest_first(engine):
    from datetime import timedelta

    from siyu.tasks.export_registry import sync_history

    ids = []
    for offset, passed in [(0, True), (1, False), (40, True)]:
        record = register_export(engine, Path(f"f{offset}.csv"), f"{offset:064d}", None)
        record_verdict(
            engine,
            record.id,
            passed=passed,
            export_date=DAY - timedelta(days=offset),
            row_count=400,
            checks_total=15,
            checks_failed=0 if passed else 2,
            rows_accepted=400,
            quarantined=NO_ROWS,
            message="",
        )
        ids.append(record.id)
    mark_synced(engine, ids[0], {"pairs_changed": 7, "gate_profile": {"x": 1}})
    register_export(engine, Path("unread.csv"), "9" * 64, None)  # received, never gated
    history = sync_history(engine, DAY - timedelta(days=27), DAY)
    assert [(h.file_name, h.status, h.checks_failed) for h in history] == [
        ("f0.csv", SYNCED, 0),
        ("f1.csv", BLOCKED, 2),
    ]
    assert history[0].report == {"pairs_changed": 7}  # counts only, not the gate's profile
