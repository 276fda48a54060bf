"""The send ledger's model: statuses and their moves, the exactly-once key, its table and indexes."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from siyu.schemas import ledger
from siyu.schemas.ledger import Send, allowed_predecessors, is_final
from siyu.schemas.models import Base


def test_final_statuses_are_skipped_delivered_and_failed() -> None:
    assert [s for s in ledger.STATUSES if is_final(s)] == ["skipped", "delivered", "failed"]
    for status in ledger.FINAL_STATUSES:
        assert ledger.TRANSITIONS[status] == frozenset()
    with pytest.raises(ValueError, match="unknown send status"):
        is_final("sent")


def test_the_life_of_a_send() -> None:
    assert allowed_predecessors("created") == {"planned"}
    assert allowed_predecessors("delivered") == {"created", "confirmed"}
    assert allowed_predecessors("planned") == {"deferred"}
    assert "skipped" in ledger.TRANSITIONS["deferred"]
    # Every status is reachable, and every non-final one can end.
    reachable = set().union(*ledger.TRANSITIONS.values())
    assert reachable == set(ledger.STATUSES)  # planned again after deferred
    assert all(
        ledger.TRANSITIONS[s] & ledger.FINAL_STATUSES for s in ledger.STATUSES if not is_final(s)
    )


def test_reasons_are_named_per_status() -> None:
    assert ledger.REASONS_BY_STATUS["failed"] == {
        "not_a_contact",
        "capped_by_wecom",
        "cancelled",
        "expired",
        "refused",
    }
    assert {"quiet_hours", "non_working_day", "day_cap"} <= ledger.REASONS_BY_STATUS["deferred"]
    assert {"month_cap", "already_planned"} <= ledger.REASONS_BY_STATUS["skipped"]


def test_the_ledger_is_on_the_shared_metadata_with_its_indexes() -> None:
    table = Base.metadata.tables["sends"]
    indexed = {tuple(c.name for c in index.columns) for index in table.indexes}
    assert ("target_kind", "target_id", "send_month") in indexed
    assert ("target_kind", "target_id", "sender", "send_day") in indexed
    unique = {
        tuple(c.name for c in constraint.columns)
        for constraint in table.constraints
        if isinstance(constraint, sa.UniqueConstraint)
    }
    assert unique == {ledger.KEY_COLUMNS}


def _send(**overrides) -> Send:
    values = {
        "target_kind": "customer",
        "target_id": "C0001",
        "programme": "path:P",
        "step": "touch-2",
        "period": "2026-12",
        "sender": "u1",
        "channel": "mass_template",
        "priority": 100,
        "status": "planned",
        "playbook": "path-welcome",
        "playbook_version": "1",
        "planned_at": dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.UTC),
        "send_day": dt.date(2026, 12, 1),
        "send_month": "2026-12",
    }
    return Send(**{**values, **overrides})


def test_one_row_per_business_identity(engine) -> None:
    with Session(engine) as session:
        session.add(_send())
        session.commit()
        session.add(_send(sender="u2", status="deferred"))  # same key, another sender
        with pytest.raises(IntegrityError):
            session.commit()
        session.rollback()
        session.add(_send(period="2027-01"))
        session.commit()
        assert session.scalar(sa.select(sa.func.count()).select_from(Send)) == 2


def test_times_come_back_aware_in_utc(engine) -> None:
    shanghai = dt.timezone(dt.timedelta(hours=8))
    with Session(engine) as session:
        session.add(_send(not_before=dt.datetime(2026, 12, 2, 8, 0, tzinfo=shanghai)))
        session.commit()
    with Session(engine) as session:
        row = session.scalars(sa.select(Send)).one()
        assert row.not_before == dt.datetime(2026, 12, 2, 0, 0, tzinfo=dt.UTC)
        assert row.not_before.tzinfo is not None
        assert row.send_day == dt.date(2026, 12, 1)
