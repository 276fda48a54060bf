"""Housekeeping end to end: a real sync's records age out, unsettled ones stay, a dry run counts."""

from __future__ import annotations

import asyncio
import datetime as dt

import sqlalchemy as sa
from prefect.client.orchestration import get_client
from sqlalchemy.orm import Session

from siyu.flows.contacts_sync import contacts_sync
from siyu.flows.housekeeping import housekeeping
from siyu.flows.tag_sync import tag_sync
from siyu.sandbox.export_files import write_export
from siyu.schemas.models import OutboxEntry, QuarantinedRow
from tests.flows.conftest import DAY

HALF_A_YEAR_LATER = dt.datetime(2027, 6, 1, 4, 0, tzinfo=dt.UTC)


def _counts(system) -> tuple[int, int, int]:
    with Session(system.engine()) as session:
        entries = session.scalar(sa.select(sa.func.count()).select_from(OutboxEntry))
        pending = session.scalar(
            sa.select(sa.func.count())
            .select_from(OutboxEntry)
            .where(OutboxEntry.status == "pending")
        )
        quarantined = session.scalar(sa.select(sa.func.count()).select_from(QuarantinedRow))
    return entries, pending, quarantined


def test_housekeeping_removes_aged_records_keeps_unsettled_ones_and_dry_runs_count(system):
    contacts_sync()
    export = system.export_frame()
    export.loc[:1, "mobile"] = "12345"  # two quarantined rows and their file
    write_export(export, system.export_path)
    state = tag_sync(business_date=DAY, return_state=True)
    assert state.is_completed(), state.message
    done = state.result()["calls_sent"]
    quarantine_file = system.home / "reports" / state.result()["quarantine_file"]
    with system.engine().begin() as connection:  # an entry a crash left unsettled
        connection.execute(
            sa.insert(OutboxEntry).values(
                key="mark_tag:left:u/x",
                kind="mark_tag",
                plan="tag-sync",
                batch="left",
                target="u/x",
                payload={},
                status="pending",
                attempts=0,
                created_at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
                updated_at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
            )
        )
    assert _counts(system) == (done + 1, 1, 2)

    # Today nothing is old enough.
    assert "removed 0 ledger rows, 0 outbox rows, 0 quarantined rows" in (
        housekeeping(return_state=True).message
    )
    dry = housekeeping(as_of=HALF_A_YEAR_LATER, dry_run=True, return_state=True)
    assert dry.is_completed(), dry.message
    assert dry.result()["outbox_rows"] == done and dry.result()["quarantined_rows"] == 2
    assert dry.result()["quarantine_files"] == 1 and "nothing was removed" in dry.message
    assert _counts(system) == (done + 1, 1, 2) and quarantine_file.exists()

    real = housekeeping(as_of=HALF_A_YEAR_LATER, return_state=True)
    assert real.is_completed(), real.message
    assert real.result()["outbox_rows"] == done
    assert _counts(system) == (1, 1, 0)  # only the unsettled entry is left
    assert not quarantine_file.exists()

    async def run_of(state):
        async with get_client() as client:
            return await client.read_flow_run(state.state_details.flow_run_id)

    dry_run = asyncio.run(run_of(dry))
    assert dry_run.name.endswith(" · dry run") and "dry-run" in dry_run.tags
    assert "dry-run" not in asyncio.run(run_of(real)).tags


def test_the_run_form_shows_the_periods_with_their_bounds():
    schema = housekeeping.parameters.model_dump()
    props = schema["properties"]
    assert set(props) == {"as_of", "periods", "dry_run"} and schema.get("required", []) == []
    assert all(props[name].get("description") for name in props)
    assert props["periods"]["default"] == {
        "ledger_days": 400,
        "outbox_days": 90,
        "quarantine_days": 90,
    }
    periods = schema["definitions"]["RetentionPeriods"]["properties"]
    assert (periods["outbox_days"]["minimum"], periods["ledger_days"]["minimum"]) == (62, 62)
    assert all(field.get("description") for field in periods.values())
