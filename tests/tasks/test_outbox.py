"""The outbox sends each stored call once: across crashes, slow replies and drains side by side."""

from __future__ import annotations

import ast
import datetime as dt
import inspect
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import siyu.tasks.outbox as outbox_module
from siyu.schemas.database import make_engine
from siyu.schemas.models import Export, OutboxEntry
from siyu.tasks.outbox import (
    CANCELLED,
    CREATED,
    DELIVERED,
    UNKNOWN_ROUNDS,
    DrainReport,
    OutboxError,
    OutcomeUnknown,
    PlannedCall,
    RowRefused,
    batch_counts,
    drain,
    enqueue,
    mark,
    supersede,
    unsettled_batches,
)

WINDOW = 30.0


class FakeClock:
    """Time that moves only when the drain sleeps (or the test says so)."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.UTC)
        self.slept: list[float] = []
        self.on_sleep: list = []  # callables run at each sleep: what happens meanwhile

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)
        for hook in list(self.on_sleep):
            hook()


class Platform:
    """A stand-in for the platform: which targets got their change, and every call made."""

    def __init__(
        self,
        clock: FakeClock,
        *,
        crash_after_effect_on: set[str] = frozenset(),
        refuse: set[str] = frozenset(),
        lost_reply: set[str] = frozenset(),
        lost_request: set[str] = frozenset(),
        lands_after: float = 0.0,
    ) -> None:
        self.clock = clock
        self.landed: dict[str, dt.datetime] = {}  # target -> when its change takes effect
        self.calls: list[str] = []
        self.payloads: list[dict] = []
        self.reconciled_at: list[dt.datetime] = []
        self.crash_after_effect_on = set(crash_after_effect_on)
        self.refuse = set(refuse)
        self.lost_reply = set(lost_reply)
        self.lost_request = set(lost_request)
        self.lands_after = lands_after

    def send(self, entry: OutboxEntry) -> dict:
        self.calls.append(entry.target)
        self.payloads.append(entry.payload)
        if entry.target in self.refuse:
            raise RowRefused(84061, "the customer deleted the employee")
        if entry.target in self.lost_request:
            self.lost_request.discard(entry.target)
            raise OutcomeUnknown("connection dropped before the request arrived")
        self.landed[entry.target] = self.clock() + dt.timedelta(seconds=self.lands_after)
        if entry.target in self.lost_reply:
            self.lost_reply.discard(entry.target)
            raise OutcomeUnknown("read timed out: the reply is slower than the client waits")
        if entry.target in self.crash_after_effect_on:
            self.crash_after_effect_on.discard(entry.target)
            raise KeyboardInterrupt("the process dies between the call and the commit")
        return {"ok": True}

    def reconcile(self, entry: OutboxEntry) -> bool:
        self.reconciled_at.append(self.clock())
        landed = self.landed.get(entry.target)
        return landed is not None and landed <= self.clock()


def calls(n: int, batch: str = "b1", text: str = "hello") -> list[PlannedCall]:
    return [
        PlannedCall("mark_tag", f"mark_tag:{batch}:u/wm{i}", f"u/wm{i}", {"n": i, "text": text})
        for i in range(n)
    ]


def run(engine, platform: Platform, batch: str = "b1", effects: list | None = None, **options):
    effects = effects if effects is not None else []
    return drain(
        engine,
        batch,
        send=platform.send,
        reconcile=platform.reconcile,
        on_done=lambda session, entry: effects.append(entry.target),
        in_flight_seconds=WINDOW,
        clock=platform.clock,
        sleep=platform.clock.sleep,
        **options,
    )


def statuses(engine) -> dict[str, str]:
    with Session(engine) as session:
        return dict(session.execute(sa.select(OutboxEntry.target, OutboxEntry.status)).all())


def claim_by_another_drain(engine, target: str, at: dt.datetime) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.update(OutboxEntry)
            .where(OutboxEntry.target == target)
            .values(status="sending", claimed_at=at, claimed_by="another-drain", attempts=1)
        )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_enqueue_twice_stores_once(engine):
    assert enqueue(engine, "b1", calls(3), plan="tag-sync") == 3
    assert enqueue(engine, "b1", calls(4), plan="tag-sync") == 1
    assert batch_counts(engine, "b1") == {"pending": 4}


def test_an_edited_text_after_a_crash_is_neither_a_second_entry_nor_a_second_send(engine, clock):
    enqueue(engine, "b1", calls(2, text="您好, 本月理财讲座"), plan="path:P1")
    platform = Platform(clock, crash_after_effect_on={"u/wm0"})
    with pytest.raises(KeyboardInterrupt):
        run(engine, platform)
    clock.advance(WINDOW)  # the rerun comes after the in-flight window

    # Ops fixed a typo in the text before the rerun: the same business identity, a new payload.
    assert enqueue(engine, "b1", calls(2, text="您好, 本月理财讲座(改)"), plan="path:P1") == 0
    report = run(engine, platform)

    assert platform.calls.count("u/wm0") == 1
    assert report.reconciled == 1 and report.sent == 1 and report.resent == 0
    with Session(engine) as session:
        texts = set(session.scalars(sa.select(OutboxEntry.payload["text"].as_string())))
    assert texts == {"您好, 本月理财讲座"}  # the first plan wins
    assert batch_counts(engine, "b1") == {"done": 2}


def test_drain_sends_each_once_and_a_second_drain_sends_nothing(engine, clock):
    enqueue(engine, "b1", calls(5), plan="tag-sync")
    platform = Platform(clock)
    effects: list[str] = []
    progress: list[tuple[int, int]] = []
    report = run(engine, platform, effects=effects, progress=lambda d, t: progress.append((d, t)))
    assert report.sent == 5 and report.attempts == 5
    assert sorted(platform.calls) == sorted(effects)
    assert progress[-1] == (5, 5)
    assert run(engine, platform) == DrainReport()
    assert len(platform.calls) == 5
    assert batch_counts(engine, "b1") == {"done": 5}
    with Session(engine) as session:
        entry = session.scalars(sa.select(OutboxEntry)).first()
        assert entry.result == {"ok": True} and entry.attempts == 1
        assert entry.claimed_at == clock.now and entry.sent_at == clock.now


def test_crash_between_call_and_commit_is_reconciled_after_the_window_not_resent(engine, clock):
    enqueue(engine, "b1", calls(4), plan="tag-sync")
    platform = Platform(clock, crash_after_effect_on={"u/wm1"})
    with pytest.raises(KeyboardInterrupt):
        run(engine, platform)
    assert batch_counts(engine, "b1") == {"done": 1, "sending": 1, "pending": 2}
    assert unsettled_batches(engine, "mark_tag") == ["b1"]
    crashed_at = clock.now

    effects: list[str] = []
    report = run(engine, platform, effects=effects)  # an immediate rerun: the claim is fresh

    assert report.reconciled == 1 and report.sent == 2 and report.attempts == 2
    assert platform.reconciled_at == [crashed_at + dt.timedelta(seconds=WINDOW)]
    assert sorted(platform.calls) == ["u/wm0", "u/wm1", "u/wm2", "u/wm3"]  # nothing twice
    assert "u/wm1" in effects  # our state records the reconciled effect too
    assert batch_counts(engine, "b1") == {"done": 4}


def test_crash_before_the_call_lands_is_resent_once(engine, clock):
    enqueue(engine, "b1", calls(2), plan="tag-sync")
    with Session(engine) as session, session.begin():  # a process died right after marking it
        session.execute(
            sa.update(OutboxEntry).where(OutboxEntry.target == "u/wm0").values(status="sending")
        )
    platform = Platform(clock)
    report = run(engine, platform)
    assert report.resent == 1 and report.sent == 1 and report.attempts == 2
    assert platform.calls.count("u/wm0") == 1
    assert clock.slept == []  # an entry nobody claims is not waited for


def test_a_slow_reply_is_not_a_lost_one(engine, clock):
    # The reply is slower than the client waits; the change lands 10 s later on the platform.
    enqueue(engine, "b1", calls(3), plan="tag-sync")
    platform = Platform(clock, lost_reply={"u/wm1"}, lands_after=10.0)
    sent_at = clock.now

    report = run(engine, platform)

    assert platform.calls.count("u/wm1") == 1  # reconciled, never sent again
    assert report.reconciled == 1 and report.sent == 2 and report.resent == 0
    assert report.attempts == 3
    assert min(platform.reconciled_at) >= sent_at + dt.timedelta(seconds=WINDOW)
    assert sum(clock.slept) == pytest.approx(WINDOW)
    assert batch_counts(engine, "b1") == {"done": 3}


def test_a_lost_request_is_sent_again_after_the_window(engine, clock):
    enqueue(engine, "b1", calls(2), plan="tag-sync")
    platform = Platform(clock, lost_request={"u/wm0"})
    report = run(engine, platform)
    assert platform.calls == ["u/wm0", "u/wm1", "u/wm0"]
    assert report.sent == 1 and report.resent == 1 and report.attempts == 3
    assert platform.reconciled_at == [dt.datetime(2026, 12, 1, 2, 0, 30, tzinfo=dt.UTC)]
    with Session(engine) as session:
        entry = session.scalars(sa.select(OutboxEntry).where(OutboxEntry.target == "u/wm0")).one()
        assert (entry.status, entry.attempts) == ("done", 2)


def test_an_entry_that_never_gets_an_answer_is_left_in_flight_for_the_next_run(engine, clock):
    enqueue(engine, "b1", calls(2), plan="tag-sync")

    def no_answer(entry):
        if entry.target == "u/wm0":
            raise OutcomeUnknown("platform unreachable")

    with pytest.raises(OutcomeUnknown, match="left in flight"):
        drain(
            engine,
            "b1",
            send=no_answer,
            reconcile=lambda entry: False,
            on_done=lambda s, e: None,
            clock=clock,
            sleep=clock.sleep,
        )
    assert statuses(engine) == {"u/wm0": "sending", "u/wm1": "done"}
    with Session(engine) as session:
        entry = session.scalars(sa.select(OutboxEntry).where(OutboxEntry.target == "u/wm0")).one()
        assert entry.attempts == UNKNOWN_ROUNDS


def test_a_rerun_during_a_live_push_leaves_its_entry_to_its_owner(engine, clock):
    enqueue(engine, "b1", calls(3), plan="tag-sync")
    claim_by_another_drain(engine, "u/wm0", at=clock.now)  # its request is on the way now
    platform = Platform(clock)

    def owner_settles_it():
        if clock.now >= dt.datetime(2026, 12, 1, 2, 0, 3, tzinfo=dt.UTC):
            with engine.begin() as connection:
                connection.execute(
                    sa.update(OutboxEntry)
                    .where(OutboxEntry.target == "u/wm0")
                    .values(status="done", sent_at=clock.now)
                )
            clock.on_sleep.clear()

    clock.on_sleep.append(owner_settles_it)
    report = run(engine, platform)

    assert platform.calls == ["u/wm1", "u/wm2"]  # u/wm0 is neither sent nor asked about
    assert platform.reconciled_at == []
    assert report.in_flight_elsewhere == 1 and report.sent == 2
    assert sum(clock.slept) < WINDOW  # it looked again soon and found it settled
    assert batch_counts(engine, "b1") == {"done": 3}


def test_an_entry_whose_owner_died_is_reconciled_once_its_window_passed(engine, clock):
    enqueue(engine, "b1", calls(2), plan="tag-sync")
    claim_by_another_drain(engine, "u/wm0", at=clock.now - dt.timedelta(seconds=WINDOW + 1))
    platform = Platform(clock)
    platform.landed["u/wm0"] = clock.now - dt.timedelta(seconds=WINDOW)
    report = run(engine, platform)
    assert report.reconciled == 1 and report.sent == 1
    assert platform.calls == ["u/wm1"]
    assert clock.slept == []


def test_refused_rows_fail_without_retry_and_the_rest_goes_on(engine, clock):
    enqueue(engine, "b1", calls(3), plan="tag-sync")
    platform = Platform(clock, refuse={"u/wm1"})
    refused: list[tuple[str, RowRefused]] = []
    report = run(engine, platform, on_row_failed=lambda s, e, exc: refused.append((e.target, exc)))
    assert report.failed == 1 and report.errors == {84061: 1} and report.sent == 2
    assert [(t, exc.code) for t, exc in refused] == [("u/wm1", 84061)]
    assert run(engine, platform).failed == 0
    assert platform.calls.count("u/wm1") == 1
    with Session(engine) as session:
        failed = session.scalars(sa.select(OutboxEntry).where(OutboxEntry.status == "failed")).one()
        assert failed.errcode == 84061 and "deleted the employee" in failed.error


def test_platform_down_stops_the_drain_and_keeps_the_entry_for_later(engine, clock):
    enqueue(engine, "b1", calls(2), plan="tag-sync")

    def down(entry):
        raise ConnectionError("the platform is down")

    with pytest.raises(ConnectionError):
        drain(
            engine,
            "b1",
            send=down,
            reconcile=lambda e: False,
            on_done=lambda s, e: None,
            clock=clock,
            sleep=clock.sleep,
        )
    assert batch_counts(engine, "b1") == {"sending": 1, "pending": 1}
    platform = Platform(clock)
    report = run(engine, platform)
    assert report.resent == 1 and report.sent == 1
    assert batch_counts(engine, "b1") == {"done": 2}


def test_a_newer_plan_supersedes_only_its_own_older_entries(engine):
    # Two cohorts of one path send the same kind of message: each keeps the other's entries.
    enqueue(engine, "cohort-a:1", calls(2, "cohort-a:1"), plan="path:P1:cohort-a")
    enqueue(engine, "cohort-b:1", calls(3, "cohort-b:1"), plan="path:P1:cohort-b")
    enqueue(engine, "cohort-a:2", calls(1, "cohort-a:2"), plan="path:P1:cohort-a")

    assert supersede(engine, "path:P1:cohort-a", "cohort-a:2") == 2

    assert batch_counts(engine, "cohort-a:1") == {"superseded": 2}
    assert batch_counts(engine, "cohort-a:2") == {"pending": 1}
    assert batch_counts(engine, "cohort-b:1") == {"pending": 3}


def test_enqueue_joins_the_callers_session_and_rolls_back_with_it(engine):
    with Session(engine) as session:
        session.begin()
        session.add(Export(file_name="quota.csv", checksum="0" * 64, status="received"))
        assert enqueue(session, "b1", calls(2), plan="path:P1") == 2
        session.rollback()
    assert batch_counts(engine, "b1") == {}

    with Session(engine) as session, session.begin():  # the reservation and its rows, together
        session.add(Export(file_name="quota.csv", checksum="0" * 64, status="received"))
        enqueue(session, "b1", calls(2), plan="path:P1")
    assert batch_counts(engine, "b1") == {"pending": 2}
    with Session(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Export)) == 1


def test_enqueue_joins_the_callers_connection_and_does_not_commit(engine):
    with engine.connect() as connection:
        enqueue(connection, "b1", calls(2), plan="path:P1")
        supersede(connection, "path:P1", "b0")
        connection.rollback()
    assert batch_counts(engine, "b1") == {}
    with engine.connect() as connection:
        enqueue(connection, "b1", calls(2), plan="path:P1")
        connection.commit()
    assert batch_counts(engine, "b1") == {"pending": 2}


def test_created_then_delivered(engine, clock):
    enqueue(engine, "b1", calls(3), plan="path:P1")
    run(engine, Platform(clock), done_status=CREATED)
    assert batch_counts(engine, "b1") == {"created": 3}

    with Session(engine) as session, session.begin():
        first, second, third = session.scalars(sa.select(OutboxEntry.id).order_by(OutboxEntry.id))
        mark(session, first, DELIVERED, result={"status": 1})
        mark(session, second, CANCELLED)
    with Session(engine) as session:
        assert session.get(OutboxEntry, first).result == {"status": 1}
    assert batch_counts(engine, "b1") == {"created": 1, "delivered": 1, "cancelled": 1}

    with Session(engine) as session:
        with pytest.raises(OutboxError, match="is delivered: it cannot become cancelled"):
            mark(session, first, CANCELLED)
        with pytest.raises(OutboxError, match="only the drain"):
            mark(session, third, "sending")
        with pytest.raises(OutboxError, match="no outbox entry"):
            mark(session, 999_999, DELIVERED)


def test_drains_started_together_in_threads_send_each_entry_once(database_url, engine):
    enqueue(engine, "b1", calls(40), plan="tag-sync")
    sent: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(2)
    reports: list[DrainReport] = []
    errors: list[BaseException] = []

    def send(entry):
        with lock:
            sent.append(entry.key)
        time.sleep(0.002)  # a call takes a moment: the two drains overlap

    def worker():
        own_engine = make_engine(database_url)  # each drain its own engine, as two runs have
        try:
            start.wait()
            reports.append(
                drain(own_engine, "b1", send=send, reconcile=lambda e: False, on_done=noop)
            )
        except BaseException as error:  # noqa: BLE001 - reported to the main thread below
            errors.append(error)
        finally:
            own_engine.dispose()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(sent) == 40 and max(Counter(sent).values()) == 1
    assert sum(r.sent for r in reports) == 40 and sum(r.attempts for r in reports) == 40
    assert batch_counts(engine, "b1") == {"done": 40}


DRAIN_SCRIPT = textwrap.dedent(
    """\
    import sys, time
    from pathlib import Path
    from siyu.schemas.database import make_engine
    from siyu.tasks.outbox import drain

    url, log, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    engine = make_engine(url)
    engine.connect().close()
    while not go.exists():
        time.sleep(0.005)

    def send(entry):
        with log.open("a") as out:
            out.write(entry.key + "\\n")
        time.sleep(0.002)

    report = drain(engine, "b1", send=send, reconcile=lambda e: False, on_done=lambda s, e: None)
    print(report.sent)
    """
)


def test_drains_started_together_in_processes_send_each_entry_once(
    database_url, engine, tmp_path: Path
):
    enqueue(engine, "b1", calls(40), plan="tag-sync")
    go = tmp_path / "go"
    logs = [tmp_path / f"sent-{i}.log" for i in range(2)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", DRAIN_SCRIPT, database_url, str(log), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for log in logs
    ]
    time.sleep(0.5)  # both have imported and connected; then they start together
    go.touch()
    outcomes = [worker.communicate(timeout=120) for worker in workers]

    assert [w.returncode for w in workers] == [0, 0], [err for _, err in outcomes]
    sent = [line for log in logs if log.exists() for line in log.read_text().split()]
    assert len(sent) == 40 and max(Counter(sent).values()) == 1
    assert sum(int(out) for out, _ in outcomes) == 40
    assert batch_counts(engine, "b1") == {"done": 40}


def test_drain_reports_add_up():
    one = DrainReport(sent=2, errors={84061: 1}, attempts=3, in_flight_elsewhere=1)
    two = DrainReport(resent=1, reconciled=4, failed=1, errors={84061: 2, 40096: 1}, attempts=2)
    assert one.merge(two) == DrainReport(
        sent=2,
        reconciled=4,
        resent=1,
        failed=1,
        errors={84061: 3, 40096: 1},
        attempts=5,
        in_flight_elsewhere=1,
    )


def test_the_outbox_knows_nothing_of_wecom():
    tree = ast.parse(inspect.getsource(outbox_module))
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {name for name in imported if name and name.startswith("siyu.blocks")}
    assert issubclass(RowRefused, OutboxError) and issubclass(OutcomeUnknown, OutboxError)
    refused = RowRefused(84061, "gone")
    assert (refused.code, refused.reason) == (84061, "gone")


def noop(session, entry) -> None:
    pass
