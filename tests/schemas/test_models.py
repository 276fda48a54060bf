"""The models on a migrated database: keys, defaults, cascades, UTC timestamps, both engines."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy
from sqlalchemy import func, inspect, select
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from siyu.schemas.models import (
    Contact,
    ContactMobile,
    Export,
    ManagedTag,
    OutboxEntry,
    QuarantinedRow,
    SyncedTag,
    insert_or_update,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")


def outbox_entry(key: str, batch: str = "tag-sync:export:1") -> OutboxEntry:
    return OutboxEntry(
        key=key,
        kind="mark_tag",
        plan="tag-sync",
        batch=batch,
        target="zhangsan/wmABC0042",
        payload={"userid": "zhangsan", "add_tag": ["et-high-aum"], "note": "高净值"},
        status="pending",
    )


def test_a_new_export_gets_its_defaults(engine: sqlalchemy.Engine) -> None:
    before = dt.datetime.now(dt.UTC)
    with Session(engine) as session:
        export = Export(file_name="export_20261124.csv", checksum="0" * 64, status="received")
        session.add(export)
        session.commit()
        export_id = export.id

    with Session(engine) as session:
        stored = session.get(Export, export_id)
        assert stored is not None
        assert (stored.checks_total, stored.checks_failed) == (0, 0)
        assert (stored.rows_accepted, stored.rows_quarantined) == (0, 0)
        assert stored.export_date is None and stored.finished_at is None
        assert stored.created_at.tzinfo is not None
        assert stored.created_at.utcoffset() == dt.timedelta(0)
        assert before <= stored.created_at <= dt.datetime.now(dt.UTC)


def test_timestamps_come_back_as_the_same_instant_in_utc(engine: sqlalchemy.Engine) -> None:
    morning_in_shanghai = dt.datetime(2026, 11, 24, 9, 30, tzinfo=SHANGHAI)
    with Session(engine) as session:
        session.add(Contact(userid="zhangsan", external_userid="wm1", added_at=morning_in_shanghai))
        session.commit()

    with Session(engine) as session:
        contact = session.get(Contact, ("zhangsan", "wm1"))
        assert contact is not None
        assert contact.added_at == morning_in_shanghai
        assert contact.added_at.utcoffset() == dt.timedelta(0)
        assert contact.added_at.hour == 1  # 09:30 in Shanghai is 01:30 UTC
        assert contact.reachable is True
        assert contact.seen_at.utcoffset() == dt.timedelta(0)


def test_naive_timestamps_are_refused(engine: sqlalchemy.Engine) -> None:
    with Session(engine) as session:
        session.add(Contact(userid="u", external_userid="wm1", added_at=dt.datetime(2026, 1, 1)))
        with pytest.raises(StatementError, match="timezone-aware"):
            session.commit()


def test_outbox_keys_are_unique(engine: sqlalchemy.Engine) -> None:
    with Session(engine) as session:
        session.add(outbox_entry("mark_tag:export:1:zhangsan/wmABC0042"))
        session.commit()

    with Session(engine) as session:
        session.add(outbox_entry("mark_tag:export:1:zhangsan/wmABC0042", batch="tag-sync:rerun"))
        with pytest.raises(IntegrityError):
            session.commit()


def test_an_outbox_entry_keeps_its_payload_and_defaults(engine: sqlalchemy.Engine) -> None:
    with Session(engine) as session:
        entry = outbox_entry("k-1")
        entry.updated_at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        session.add(entry)
        session.commit()
        entry_id = entry.id

    with Session(engine) as session:
        stored = session.get(OutboxEntry, entry_id)
        assert stored is not None
        assert stored.payload["note"] == "高净值"
        assert stored.attempts == 0
        assert stored.errcode is None and stored.result is None and stored.sent_at is None
        assert stored.claimed_at is None and stored.claimed_by is None
        assert stored.updated_at == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        stored.status = "done"
        stored.result = {"errcode": 0, "errmsg": "ok"}
        session.commit()
        # Settling an entry stamps it: ops read `updated_at` to find entries stuck in `sending`.
        assert session.get(OutboxEntry, entry_id).updated_at > dt.datetime(
            2026, 6, 1, tzinfo=dt.UTC
        )

    with Session(engine) as session:
        pending = select(func.count()).where(
            OutboxEntry.batch == "tag-sync:export:1", OutboxEntry.status == "pending"
        )
        assert session.scalar(pending) == 0


@pytest.mark.parametrize(
    ("first", "duplicate", "neighbour"),
    [
        (
            lambda: Contact(userid="zhangsan", external_userid="wm1"),
            lambda: Contact(userid="zhangsan", external_userid="wm1"),
            lambda: Contact(userid="zhangsan", external_userid="wm2"),
        ),
        (
            lambda: ContactMobile(userid="zhangsan", external_userid="wm1", mobile_hash="h1"),
            lambda: ContactMobile(userid="zhangsan", external_userid="wm1", mobile_hash="h1"),
            lambda: ContactMobile(userid="zhangsan", external_userid="wm1", mobile_hash="h2"),
        ),
        (
            lambda: SyncedTag(userid="zhangsan", external_userid="wm1", tag_id="et1"),
            lambda: SyncedTag(userid="zhangsan", external_userid="wm1", tag_id="et1"),
            lambda: SyncedTag(userid="lisi", external_userid="wm1", tag_id="et1"),
        ),
    ],
    ids=["contacts", "contact_mobiles", "synced_tags"],
)
def test_composite_primary_keys(engine: sqlalchemy.Engine, first, duplicate, neighbour) -> None:
    with Session(engine) as session:
        session.add_all([first(), neighbour()])
        session.commit()

    with Session(engine) as session:
        session.add(duplicate())
        with pytest.raises(IntegrityError):
            session.commit()


def test_managed_tags_are_unique_by_name_and_by_id(engine: sqlalchemy.Engine) -> None:
    def tag(group: str, name: str, tag_id: str) -> ManagedTag:
        return ManagedTag(group_name=group, tag_name=name, group_id="g1", tag_id=tag_id)

    with Session(engine) as session:
        session.add_all([tag("资产等级", "高净值", "et1"), tag("资产等级", "大众", "et2")])
        session.commit()

    for clash in (tag("资产等级", "高净值", "et3"), tag("产品持有", "理财", "et1")):
        with Session(engine) as session:
            session.add(clash)
            with pytest.raises(IntegrityError):
                session.commit()


def test_deleting_an_export_deletes_its_quarantine(engine: sqlalchemy.Engine) -> None:
    with Session(engine) as session:
        export = Export(file_name="export.csv", checksum="1" * 64, status="blocked")
        session.add(export)
        session.flush()
        session.add(QuarantinedRow(export_id=export.id, row_number=2, reasons="mobile_format"))
        session.commit()
        export_id = export.id

    with engine.begin() as connection:
        connection.execute(sqlalchemy.delete(Export).where(Export.id == export_id))

    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(QuarantinedRow)) == 0


def test_database_errors_do_not_quote_customer_data(engine: sqlalchemy.Engine) -> None:
    with Session(engine) as session:
        session.add(
            QuarantinedRow(export_id=999, row_number=2, customer_id="C00000042", reasons="x")
        )
        with pytest.raises(IntegrityError) as raised:
            session.commit()
    assert "C00000042" not in str(raised.value)
    assert "hidden due to hide_parameters" in str(raised.value)


def test_quarantine_rows_must_belong_to_an_export(engine: sqlalchemy.Engine) -> None:
    with Session(engine) as session:
        session.add(QuarantinedRow(export_id=999, row_number=2, reasons="aum_not_negative"))
        with pytest.raises(IntegrityError):
            session.commit()


def test_no_table_has_a_place_for_a_mobile_or_a_name(engine: sqlalchemy.Engine) -> None:
    inspector = inspect(engine)
    assert {c["name"] for c in inspector.get_columns("quarantined_rows")} == {
        "id",
        "export_id",
        "row_number",
        "customer_id",
        "reasons",
    }
    for table in inspector.get_table_names():
        columns = {c["name"] for c in inspector.get_columns(table)}
        assert not columns & {"mobile", "name", "phone", "customer_name"}, table


def test_a_gone_contact_keeps_its_row_and_says_when_it_left(engine: sqlalchemy.Engine) -> None:
    left = dt.datetime(2026, 12, 1, 3, tzinfo=dt.UTC)
    with Session(engine) as session:
        session.add(Contact(userid="zhangsan", external_userid="wm1", customer_id="C00000042"))
        session.commit()
        contact = session.get(Contact, ("zhangsan", "wm1"))
        assert contact.left_at is None
        contact.reachable, contact.left_at = False, left
        session.commit()

    with Session(engine) as session:
        stored = session.get(Contact, ("zhangsan", "wm1"))
        assert (stored.reachable, stored.left_at, stored.customer_id) == (False, left, "C00000042")


def test_insert_or_update_upserts_on_either_database(engine: sqlalchemy.Engine) -> None:
    first = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    later = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)
    insert = insert_or_update(engine.dialect.name, SyncedTag)
    upsert = insert.on_conflict_do_update(
        index_elements=["userid", "external_userid", "tag_id"],
        set_={"synced_at": insert.excluded.synced_at},
    )
    row = {"userid": "zhangsan", "external_userid": "wm1", "tag_id": "et1"}
    with engine.begin() as connection:
        connection.execute(upsert, [{**row, "synced_at": first}])
        connection.execute(upsert, [{**row, "synced_at": later}])
    with Session(engine) as session:
        assert [t.synced_at for t in session.scalars(select(SyncedTag))] == [later]
    with pytest.raises(ValueError, match="SQLite or PostgreSQL"):
        insert_or_update("mysql", SyncedTag)
