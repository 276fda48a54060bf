"""The outbox sends each stored call once, across crashes, on SQLite and PostgreSQL."""

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.wecom_client import ContactUnreachable, WeComOutcomeUnknown, WeComUnavailable
from siyu.schemas.models import OutboxEntry
from siyu.tasks.outbox import (
    PlannedCall,
    batch_counts,
    drain,
    enqueue,
    outbox_key,
    supersede,
    unsettled_batches,
)


class Platform:
    """A stand-in for WeCom's side: which targets got their change, and what was called."""

    def __init__(
        self,
        crash_after_effect_on: set[str] = (),
        refuse: set[str] = (),
        unknown_once: set[str] = (),
    ):
        self.applied: list[str] = []
        self.calls: list[str] = []
        self.crash_after_effect_on = set(crash_after_effect_on)
        self.refuse = set(refuse)
        self.unknown_once = set(unknown_once)

    def send(self, entry):
        self.calls.append(entry.target)
        if entry.target in self.refuse:
            raise ContactUnreachable(84061, "no relation", "externalcontact/mark_tag")
        self.applied.append(entry.target)
        if entry.target in self.unknown_once:
            self.unknown_once.discard(entry.target)
            raise WeComOutcomeUnknown(None, "connection dropped", "externalcontact/mark_tag")
        if entry.target in self.crash_after_effect_on:
            self.crash_after_effect_on.discard(entry.target)
            raise KeyboardInterrupt("the process dies between the call and the commit")
        return {"ok": True}

    def reconcile(self, entry) -> bool:
        return entry.target in self.applied


def calls(n: int) -> list[PlannedCall]:
    return [PlannedCall("mark_tag", f"u/wm{i}", {"n": i}) for i in range(n)]


def run(engine, platform, batch="b1", effects=None):
    effects = effects if effects is not None else []
    return drain(
        engine,
        batch,
        send=platform.send,
        reconcile=platform.reconcile,
        on_done=lambda session, entry: effects.append(entry.target),
    )


def test_key_is_deterministic_and_content_bound():
    assert outbox_key("mark_tag", "b", "t", {"a": [1]}) == outbox_key(
        "mark_tag", "b", "t", {"a": [1]}
    )
    assert outbox_key("mark_tag", "b", "t", {"a": [1]}) != outbox_key(
        "mark_tag", "b", "t", {"a": [2]}
    )


def test_enqueue_twice_stores_once(engine):
    assert enqueue(engine, "b1", calls(3)) == 3
    assert enqueue(engine, "b1", calls(4)) == 1
    assert batch_counts(engine, "b1") == {"pending": 4}


def test_drain_sends_each_once_and_a_second_drain_sends_nothing(engine):
    enqueue(engine, "b1", calls(5))
    platform = Platform()
    effects = []
    report = run(engine, platform, effects=effects)
    assert report.sent == 5 and sorted(platform.calls) == sorted(effects)
    assert run(engine, platform).sent == 0
    assert len(platform.calls) == 5
    assert batch_counts(engine, "b1") == {"done": 5}


def test_crash_between_call_and_commit_is_reconciled_not_resent(engine):
    enqueue(engine, "b1", calls(4))
    platform = Platform(crash_after_effect_on={"u/wm1"})
    with pytest.raises(KeyboardInterrupt):
        run(engine, platform)
    assert batch_counts(engine, "b1") == {"done": 1, "sending": 1, "pending": 2}
    assert unsettled_batches(engine, "mark_tag") == ["b1"]
    effects = []
    report = run(engine, platform, effects=effects)
    assert report.reconciled == 1 and report.sent == 2
    assert sorted(platform.calls) == ["u/wm0", "u/wm1", "u/wm2", "u/wm3"]  # nothing twice
    assert "u/wm1" in effects  # our state records the reconciled effect too
    assert batch_counts(engine, "b1") == {"done": 4}


def test_crash_before_the_call_lands_is_resent_once(engine):
    enqueue(engine, "b1", calls(2))
    with Session(engine) as session, session.begin():  # a process died right after marking it
        session.execute(
            sa.update(OutboxEntry).where(OutboxEntry.target == "u/wm0").values(status="sending")
        )
    platform = Platform()
    report = run(engine, platform)
    assert report.resent == 1 and report.sent == 1
    assert platform.calls.count("u/wm0") == 1


def test_unknown_outcome_is_reconciled_in_the_same_drain(engine):
    enqueue(engine, "b1", calls(3))
    platform = Platform(unknown_once={"u/wm1"})
    report = run(engine, platform)
    assert report.reconciled == 1 and report.sent == 2
    assert platform.calls.count("u/wm1") == 1
    assert batch_counts(engine, "b1") == {"done": 3}


def test_refused_rows_fail_without_retry_and_the_rest_goes_on(engine):
    enqueue(engine, "b1", calls(3))
    platform = Platform(refuse={"u/wm1"})
    report = run(engine, platform)
    assert report.failed == 1 and report.errors == {84061: 1} and report.sent == 2
    assert run(engine, platform).failed == 0
    assert platform.calls.count("u/wm1") == 1
    with Session(engine) as session:
        failed = session.scalars(sa.select(OutboxEntry).where(OutboxEntry.status == "failed")).one()
        assert failed.errcode == 84061


def test_platform_down_stops_the_drain_and_keeps_the_entry_for_later(engine):
    enqueue(engine, "b1", calls(2))

    def down(entry):
        raise WeComUnavailable(-1, "busy", "externalcontact/mark_tag")

    with pytest.raises(WeComUnavailable):
        drain(engine, "b1", send=down, reconcile=lambda e: False, on_done=lambda s, e: None)
    platform = Platform()
    report = run(engine, platform)
    assert report.resent == 1 and report.sent == 1
    assert batch_counts(engine, "b1") == {"done": 2}


def test_a_newer_plan_supersedes_older_pending_entries(engine):
    enqueue(engine, "b1", calls(2))
    enqueue(engine, "b2", calls(1))
    assert supersede(engine, "mark_tag", "b2") == 2
    assert batch_counts(engine, "b1") == {"superseded": 2}
    assert batch_counts(engine, "b2") == {"pending": 1}
