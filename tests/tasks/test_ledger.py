"""The send ledger on SQLite and PostgreSQL: counts, reserve in the caller's transaction, settle."""

from __future__ import annotations

import datetime as dt
import random
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.send_rules import SendRules
from siyu.schemas.ledger import Send
from siyu.tasks.ledger import ledger_counts, reserve, settle
from siyu.tasks.quota import LedgerCounts, plan_sends
from tests.tasks.test_quota import assert_within_caps, random_month_of_wanted_sends, wanted

SHANGHAI = ZoneInfo("Asia/Shanghai")
RULES = SendRules()
TUESDAY_10 = dt.datetime(2026, 12, 1, 10, 0, tzinfo=SHANGHAI)


def plan_and_reserve(session: Session, batch: pd.DataFrame, as_of: dt.datetime):
    counts = ledger_counts(session, batch, as_of=as_of, rules=RULES)
    plan = plan_sends(batch, RULES, as_of, counts)
    reserved = reserve(
        session, plan, playbook="path-welcome", version="3", export_checksum="ab" * 32
    )
    return plan, reserved


def ledger(session: Session) -> pd.DataFrame:
    rows = session.execute(sa.select(Send.__table__)).mappings().all()
    return pd.DataFrame([dict(r) for r in rows])


def test_reserve_writes_fits_deferred_and_skipped_with_what_caused_them(engine) -> None:
    batch = wanted(
        {"step": "touch-1"},
        {"step": "touch-2"},  # same sender and day: waits
        *({"step": f"x{i}", "sender": f"u{i + 2}"} for i in range(4)),  # 3 fit, 1 over the month
    )
    with Session(engine) as session, session.begin():
        plan, reserved = plan_and_reserve(session, batch, TUESDAY_10)
    assert (reserved.planned, reserved.deferred, reserved.skipped) == (4, 1, 1)
    with Session(engine) as session:
        rows = ledger(session)
    assert sorted(rows["status"]) == [
        "deferred",
        "planned",
        "planned",
        "planned",
        "planned",
        "skipped",
    ]
    assert set(rows.loc[rows["status"] == "skipped", "reason"]) == {"month_cap"}
    deferred = rows[rows["status"] == "deferred"].iloc[0]
    assert deferred["reason"] == "day_cap"
    assert deferred["not_before"] == dt.datetime(2026, 12, 2, 0, 0, tzinfo=dt.UTC)
    assert set(rows["playbook"]) == {"path-welcome"} and set(rows["playbook_version"]) == {"3"}
    assert set(rows["export_checksum"]) == {"ab" * 32}
    planned = rows[rows["status"] == "planned"]
    assert set(planned["send_day"]) == {dt.date(2026, 12, 1)} and set(planned["send_month"]) == {
        "2026-12"
    }
    assert set(rows["planned_at"]) == {TUESDAY_10.astimezone(dt.UTC)}


def test_ledger_counts_read_only_the_batch_targets_and_match_the_rows(engine) -> None:
    batch = wanted(
        *(
            {"target_id": f"C{i}", "step": f"s{j}", "sender": f"u{j}"}
            for i in range(5)
            for j in range(3)
        )
    )
    with Session(engine) as session, session.begin():
        plan_and_reserve(session, batch, TUESDAY_10)
    with Session(engine) as session:
        probe = wanted({"target_id": "C1", "step": "s0"}, {"target_id": "C9", "step": "s0"})
        counts = ledger_counts(session, probe, as_of=TUESDAY_10, rules=RULES)
        expected = LedgerCounts.from_rows(ledger(session).rename(columns={"id": "ledger_id"}))
    assert counts.month.values.tolist() == [["customer", "C1", "mass_template", "2026-12", 3]]
    exp_month = expected.month[expected.month["target_id"] == "C1"]
    assert counts.month["sends"].tolist() == exp_month["sends"].tolist()
    assert sorted(counts.day["sender"]) == ["u0", "u1", "u2"]
    assert counts.existing[["target_id", "step", "status"]].values.tolist() == [
        ["C1", "s0", "planned"]
    ]


def test_a_second_plan_skips_what_is_planned_and_caps_count_the_first(engine) -> None:
    with Session(engine) as session, session.begin():
        plan_and_reserve(session, wanted({"step": "a"}, {"step": "b", "sender": "u2"}), TUESDAY_10)
    wednesday = TUESDAY_10 + dt.timedelta(days=1)
    with Session(engine) as session, session.begin():
        plan, reserved = plan_and_reserve(
            session,
            wanted(
                {"step": "a"},
                *({"step": f"c{i}", "sender": f"v{i}"} for i in range(3)),
                at=wednesday,
            ),
            wednesday,
        )
    assert list(plan.skipped["reason"]) == ["already_planned", "month_cap"]
    assert len(plan.fits) == 2 and reserved.not_written == 1
    with Session(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Send)) == 5


def test_a_deferred_row_is_planned_again_on_its_day(engine) -> None:
    with Session(engine) as session, session.begin():
        plan_and_reserve(session, wanted({"step": "a"}, {"step": "b"}), TUESDAY_10)
    wednesday = TUESDAY_10 + dt.timedelta(days=1)
    with Session(engine) as session, session.begin():
        plan, reserved = plan_and_reserve(session, wanted({"step": "b"}, at=wednesday), wednesday)
    assert reserved.replanned == 1 and len(plan.fits) == 1
    with Session(engine) as session:
        row = session.scalars(sa.select(Send).where(Send.step == "b")).one()
    assert (row.status, row.reason, row.not_before) == ("planned", None, None)
    assert row.send_day == dt.date(2026, 12, 2)


def test_reserve_rolls_back_with_the_callers_transaction(engine) -> None:
    with Session(engine) as session:
        with pytest.raises(RuntimeError), session.begin():
            plan_and_reserve(session, wanted({}), TUESDAY_10)
            raise RuntimeError("the outbox write failed")
        assert session.scalar(sa.select(sa.func.count()).select_from(Send)) == 0


def test_a_dry_run_writes_nothing(engine) -> None:
    with Session(engine) as session:
        counts = ledger_counts(session, wanted({}), as_of=TUESDAY_10, rules=RULES)
        plan = plan_sends(wanted({}), RULES, TUESDAY_10, counts)
        session.commit()
        assert len(plan.fits) == 1
        assert session.scalar(sa.select(sa.func.count()).select_from(Send)) == 0


def _one_planned_id(engine) -> int:
    with Session(engine) as session, session.begin():
        plan_and_reserve(session, wanted({}), TUESDAY_10)
        return session.scalar(sa.select(Send.id))


def test_settle_walks_a_send_to_delivered_and_a_final_row_never_moves(engine) -> None:
    send_id = _one_planned_id(engine)
    later = TUESDAY_10 + dt.timedelta(hours=1)
    with Session(engine) as session, session.begin():
        assert settle(session, [send_id], "created", at=later, msgid="msgA").moved == 1
        assert settle(session, [send_id], "confirmed", at=later + dt.timedelta(hours=2)).moved == 1
        assert settle(session, [send_id], "delivered", at=later + dt.timedelta(hours=3)).moved == 1
    with Session(engine) as session, session.begin():
        again = settle(session, [send_id], "failed", at=later, reason="expired")
        assert (again.moved, again.refused) == (0, [send_id])
        row = session.get(Send, send_id)
        assert (row.status, row.msgid) == ("delivered", "msgA")
        assert row.created_at == later and row.settled_at == later + dt.timedelta(hours=3)


def test_settle_refuses_out_of_order_moves_and_missing_reasons(engine) -> None:
    send_id = _one_planned_id(engine)
    with Session(engine) as session, session.begin():
        assert settle(session, [send_id, 999_999], "delivered", at=TUESDAY_10).refused == [
            send_id,
            999_999,
        ]
        with pytest.raises(ValueError, match="needs a reason"):
            settle(session, [send_id], "failed", at=TUESDAY_10)
        with pytest.raises(ValueError, match="msgid"):
            settle(session, [send_id], "created", at=TUESDAY_10)
        done = settle(session, [send_id], "failed", at=TUESDAY_10, reason="capped_by_wecom")
        assert done.moved == 1
        assert session.get(Send, send_id).reason == "capped_by_wecom"


def test_a_month_planned_through_the_ledger_never_exceeds_the_caps(engine) -> None:
    rng = random.Random(7)
    for offset in range(31):
        day = dt.date(2026, 12, 1) + dt.timedelta(days=offset)
        as_of = dt.datetime.combine(day, dt.time(10), SHANGHAI)
        with Session(engine) as session, session.begin():
            plan_and_reserve(session, random_month_of_wanted_sends(rng, day, 80), as_of)
    with Session(engine) as session:
        rows = ledger(session)
    assert_within_caps(rows)
    assert not rows.duplicated(["target_kind", "target_id", "programme", "step", "period"]).any()
    assert {"month_cap", "day_cap"} <= set(rows["reason"].dropna())
    # Every row is planned (held), or carries its reason.
    assert rows.loc[rows["status"] != "planned", "reason"].notna().all()


def test_an_empty_plan_reserves_nothing(engine) -> None:
    with Session(engine) as session, session.begin():
        empty = wanted({}).iloc[0:0]
        counts = ledger_counts(session, empty, as_of=TUESDAY_10, rules=RULES)
        reserved = reserve(
            session, plan_sends(empty, RULES, TUESDAY_10, counts), playbook="p", version="1"
        )
    assert reserved.written == 0 and reserved.replanned == 0
