"""The outbox: each call that changes the outside world is stored under its business key, sent once.

Life of an entry: `pending` (planned, not attempted) -> `sending` (claimed and committed just
before the call) -> `done` (committed with its effect, right after the call), or `created` for a
call with a second outcome later (a mass message is created, then delivered: `mark` moves it on),
or `failed` (the platform refused this row for good). Planned entries of an older batch of the
same plan become `superseded`; a planned entry can be `cancelled`.

Claiming is one conditional UPDATE whose row count is checked, so two drains of one batch (two
runs, two workers) never both send an entry. A crash, or a reply that never came, leaves an
entry `sending`: its outcome is unknown. It is reconciled (the platform is asked) only once its
claim is older than the in-flight window, because a slow reply is not a lost one: asking while the
first request is still on its way would find nothing and send it a second time.

The outbox knows nothing of WeCom: callers translate their platform's errors into `RowRefused`
and `OutcomeUnknown`.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.schemas.models import OutboxEntry, insert_or_update, utc_now

PENDING = "pending"
SENDING = "sending"
DONE = "done"
CREATED = "created"
DELIVERED = "delivered"
FAILED = "failed"
SUPERSEDED = "superseded"
CANCELLED = "cancelled"

# What `mark` may do after a drain: track a created message to its end, or cancel a planned one.
LATER_TRANSITIONS: dict[str, frozenset[str]] = {
    DELIVERED: frozenset({CREATED}),
    FAILED: frozenset({CREATED}),
    CANCELLED: frozenset({CREATED, PENDING}),
}
# An entry whose call may have landed is asked about at most this often in one drain; after that
# it is left `sending` for the next drain (the platform is probably down).
UNKNOWN_ROUNDS = 3
# How often a drain looks again at an entry another drain is sending (it may settle it early).
POLL_SECONDS = 1.0
_CHUNK = 5_000


class OutboxError(Exception):
    """The root of the outbox's own errors."""


class RowRefused(OutboxError):
    """The platform refused this call for good (raised by `send`): the entry fails, others go on."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"refused ({code}): {reason}" if code is not None else reason)
        self.code = code
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.reason))


class OutcomeUnknown(OutboxError):
    """The call may have landed without an answer (raised by `send`): reconcile, never resend blind."""


@dataclass(frozen=True)
class PlannedCall:
    """One call to make: its business identity, what it is, for which target, with which payload.

    `key` names what is sent to whom for which step (e.g. "mark_tag:tag-sync:export:12:u1/wm1",
    "msg:customer:C1:path:P1:touch:2:2026-12"), never the payload, so an edited text finds the
    entry it already has.
    """

    kind: str
    key: str
    target: str
    payload: dict[str, Any]


Db = sa.Engine | sa.Connection | Session


@contextmanager
def _joined(db: Db) -> Iterator[sa.Connection]:
    """A connection in the caller's transaction (Connection, Session), or a new one (Engine)."""
    if isinstance(db, Session):
        yield db.connection()
    elif isinstance(db, sa.Connection):
        yield db
    else:
        with db.begin() as connection:
            yield connection


def enqueue(db: Db, batch: str, calls: Iterable[PlannedCall], *, plan: str) -> int:
    """Store planned calls of `batch` of `plan`; returns how many entries are new.

    An existing key is kept as it is (the first plan wins: an edited payload makes no second
    entry). With a Connection or Session the rows join the caller's transaction and are not
    committed here, so a quota reservation and its outbox rows commit (or roll back) together.
    """
    now = utc_now()
    rows: dict[str, dict[str, Any]] = {}
    for call in calls:
        rows.setdefault(
            call.key,
            {
                "key": call.key,
                "kind": call.kind,
                "plan": plan,
                "batch": batch,
                "target": call.target,
                "payload": call.payload,
                "status": PENDING,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            },
        )
    if not rows:
        return 0
    with _joined(db) as connection:
        keys = list(rows)
        existing: set[str] = set()
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            existing.update(
                connection.scalars(sa.select(OutboxEntry.key).where(OutboxEntry.key.in_(chunk)))
            )
        fresh = [row for key, row in rows.items() if key not in existing]
        # A concurrent enqueue of the same keys keeps its rows, and ours are skipped, not an error.
        insert = insert_or_update(connection.dialect.name, OutboxEntry).on_conflict_do_nothing(
            index_elements=["key"]
        )
        for start in range(0, len(fresh), _CHUNK):
            connection.execute(insert, fresh[start : start + _CHUNK])
    return len(fresh)


def supersede(db: Db, plan: str, current_batch: str) -> int:
    """Retire pending entries of `plan`'s older batches: its current batch replaces them.

    Other plans of the same kind (another cohort, another programme) keep their entries.
    """
    with _joined(db) as connection:
        result = connection.execute(
            sa.update(OutboxEntry)
            .where(
                OutboxEntry.plan == plan,
                OutboxEntry.batch != current_batch,
                OutboxEntry.status == PENDING,
            )
            .values(status=SUPERSEDED, updated_at=utc_now())
        )
        return result.rowcount or 0


def unsettled_batches(engine: sa.Engine, kind: str) -> list[str]:
    """Batches of `kind` with entries whose outcome is unknown (`sending`)."""
    with Session(engine) as session:
        return list(
            session.scalars(
                sa.select(OutboxEntry.batch)
                .where(OutboxEntry.kind == kind, OutboxEntry.status == SENDING)
                .distinct()
            )
        )


def mark(
    session: Session,
    entry_id: int,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    """Move an entry on after its drain (e.g. created -> delivered), in the caller's transaction.

    Only the moves in LATER_TRANSITIONS are allowed; the check and the change are one statement,
    so two trackers cannot both move one entry from the same state.
    """
    sources = LATER_TRANSITIONS.get(status)
    if sources is None:
        raise OutboxError(f"an outbox entry cannot be marked {status!r}: only the drain sets it")
    values: dict[str, Any] = {"status": status, "updated_at": utc_now()}
    if result is not None:
        values["result"] = result
    if error is not None:
        values["error"] = error[:255]
    moved = session.execute(
        sa.update(OutboxEntry)
        .where(OutboxEntry.id == entry_id, OutboxEntry.status.in_(sources))
        .values(**values)
    )
    if moved.rowcount != 1:
        now = session.scalar(sa.select(OutboxEntry.status).where(OutboxEntry.id == entry_id))
        if now is None:
            raise OutboxError(f"no outbox entry {entry_id}")
        raise OutboxError(f"outbox entry {entry_id} is {now}: it cannot become {status}")


def batch_counts(engine: sa.Engine, batch: str) -> dict[str, int]:
    """Entries of a batch by status."""
    with Session(engine) as session:
        rows = session.execute(
            sa.select(OutboxEntry.status, sa.func.count())
            .where(OutboxEntry.batch == batch)
            .group_by(OutboxEntry.status)
        )
        return {status: n for status, n in rows}


@dataclass
class DrainReport:
    """What one drain did."""

    sent: int = 0  # entries sent and settled by this drain
    reconciled: int = 0  # unknown outcomes found on the platform: settled without a call
    resent: int = 0  # unknown outcomes the platform had no trace of, sent again
    failed: int = 0  # entries the platform refused for good
    errors: dict[int, int] = field(default_factory=dict)  # refusal code -> entries
    attempts: int = 0  # every send() call made, retries and resumed entries included
    in_flight_elsewhere: int = 0  # entries found in flight in another drain, left to it a while

    def merge(self, other: DrainReport) -> DrainReport:
        """Sum of two reports."""
        errors = Counter(self.errors)
        errors.update(other.errors)
        summed = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in fields(self)
            if f.name != "errors"
        }
        return DrainReport(errors=dict(errors), **summed)


Send = Callable[[OutboxEntry], dict[str, Any] | None]
Reconcile = Callable[[OutboxEntry], dict[str, Any] | bool | None]
Effect = Callable[[Session, OutboxEntry], None]
RowFailed = Callable[[Session, OutboxEntry, RowRefused], None]


def drain(
    engine: sa.Engine,
    batch: str,
    *,
    send: Send,
    reconcile: Reconcile,
    on_done: Effect,
    on_row_failed: RowFailed | None = None,
    progress: Callable[[int, int], None] | None = None,
    in_flight_seconds: float = 30.0,
    done_status: str = DONE,
    clock: Callable[[], datetime] = utc_now,
    sleep: Callable[[float], None] = time.sleep,
) -> DrainReport:
    """Send every entry of `batch` once, across crashes, reruns and drains running side by side.

    `send(entry)` makes the call and returns what to store as its result (or None); it raises
    RowRefused for a refused row and OutcomeUnknown when the call may have landed unanswered.
    `reconcile(entry)` says whether an entry's effect is on the platform (a dict is stored as its
    result). `on_done(session, entry)` records the effect in our state in the transaction that
    settles the entry (`done_status`: DONE, or CREATED when a later outcome follows);
    `on_row_failed(session, entry, exc)` likewise for a refusal.

    An entry left `sending` by a dead drain is reconciled first; one another drain is sending now
    is left to it until its claim is older than `in_flight_seconds`; an OutcomeUnknown of our own
    is reconciled once that window has passed, waiting for it at the end with `sleep`. The drain
    returns when no entry of the batch is pending or in flight. Any other exception stops it with
    the entry left `sending`, for a later drain to reconcile.
    """
    return _Drain(
        engine,
        batch,
        send=send,
        reconcile=reconcile,
        on_done=on_done,
        on_row_failed=on_row_failed,
        progress=progress,
        window=timedelta(seconds=in_flight_seconds),
        done_status=done_status,
        clock=clock,
        sleep=sleep,
    ).run()


class _Drain:
    """One drain's state: its claim token, the entries it waits for, its report."""

    def __init__(
        self,
        engine: sa.Engine,
        batch: str,
        *,
        send: Send,
        reconcile: Reconcile,
        on_done: Effect,
        on_row_failed: RowFailed | None,
        progress: Callable[[int, int], None] | None,
        window: timedelta,
        done_status: str,
        clock: Callable[[], datetime],
        sleep: Callable[[float], None],
    ) -> None:
        if done_status not in (DONE, CREATED):
            raise ValueError(f"a drain settles entries as {DONE} or {CREATED}, not {done_status}")
        self.engine = engine
        self.batch = batch
        self.send = send
        self.reconcile = reconcile
        self.on_done = on_done
        self.on_row_failed = on_row_failed
        self.progress = progress
        self.window = window
        self.done_status = done_status
        self.clock = clock
        self.sleep = sleep
        self.token = uuid.uuid4().hex
        self.report = DrainReport()
        self.unknown_rounds: Counter[int] = Counter()
        self.given_up: set[int] = set()
        self.elsewhere: set[int] = set()
        self.settled = 0
        self.total = 0

    def run(self) -> DrainReport:
        open_rows = self._open_entries()
        self.total = len(open_rows)
        stale_before = self.clock() - self.window
        # Unknown outcomes a dead drain left behind are settled before anything new is sent.
        for row in open_rows:
            if row.status == SENDING:
                if _is_stale(row, stale_before):
                    self._take_over(row.id)
                else:
                    self.elsewhere.add(row.id)
        for row in open_rows:
            if row.status == PENDING:
                self._claim_and_send(row.id)
        self._wait_for_in_flight()
        self.report.in_flight_elsewhere = len(self.elsewhere)
        if self.total and self.progress is not None:
            self.progress(self.total, self.total)
        if self.given_up:
            raise OutcomeUnknown(
                f"{len(self.given_up)} entries of {self.batch} got no answer {UNKNOWN_ROUNDS} "
                "times in a row: left in flight, the next run reconciles them"
            )
        return self.report

    def _open_entries(self) -> list[sa.Row[Any]]:
        with self.engine.connect() as connection:
            return list(
                connection.execute(
                    sa.select(
                        OutboxEntry.id,
                        OutboxEntry.status,
                        OutboxEntry.claimed_at,
                        OutboxEntry.claimed_by,
                    )
                    .where(
                        OutboxEntry.batch == self.batch,
                        OutboxEntry.status.in_([PENDING, SENDING]),
                    )
                    .order_by(OutboxEntry.id)
                )
            )

    def _wait_for_in_flight(self) -> None:
        """Until nothing of the batch is pending or in flight: send, reconcile or wait."""
        while True:
            rows = [row for row in self._open_entries() if row.id not in self.given_up]
            if not rows:
                return
            now = self.clock()
            stale_before = now - self.window
            waiting = []
            for row in rows:
                if row.status == PENDING:
                    self._claim_and_send(row.id)
                elif _is_stale(row, stale_before):
                    self._take_over(row.id)
                else:
                    waiting.append(row)
            if len(waiting) < len(rows):
                continue  # something moved: look again before waiting
            due = min(row.claimed_at for row in waiting) + self.window
            seconds = (due - now).total_seconds()
            foreign = [row for row in waiting if row.claimed_by != self.token]
            self.elsewhere.update(row.id for row in foreign)
            if foreign:
                # Its owner may settle it any moment: look again soon rather than at the deadline.
                seconds = min(seconds, POLL_SECONDS)
            self.sleep(max(seconds, 0.0))

    def _claim_and_send(self, entry_id: int) -> None:
        entry = self._claim(entry_id)
        if entry is not None:  # else another drain claimed it first
            self._send(entry, resend=False)

    def _claim(self, entry_id: int) -> OutboxEntry | None:
        """pending -> sending in one conditional UPDATE, committed before the call."""
        now = self.clock()
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            claimed = session.execute(
                sa.update(OutboxEntry)
                .where(OutboxEntry.id == entry_id, OutboxEntry.status == PENDING)
                .values(
                    status=SENDING,
                    attempts=OutboxEntry.attempts + 1,
                    claimed_at=now,
                    claimed_by=self.token,
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            if claimed.rowcount != 1:
                return None
            return _detached(session, entry_id)

    def _take_over(self, entry_id: int) -> None:
        """Claim an entry whose outcome is unknown and whose window has passed; ask, then act."""
        now = self.clock()
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            taken = session.execute(
                sa.update(OutboxEntry)
                .where(
                    OutboxEntry.id == entry_id,
                    OutboxEntry.status == SENDING,
                    _stale_claim(now - self.window),
                )
                .values(claimed_at=now, claimed_by=self.token, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount != 1:
                return  # settled or taken over by another drain meanwhile
            entry = _detached(session, entry_id)
        found = self.reconcile(entry)
        if found:
            if self._settle(entry_id, found if isinstance(found, dict) else None):
                self.report.reconciled += 1
            return
        if self._refresh_claim(entry_id, attempt=True):
            self._send(entry, resend=True)

    def _send(self, entry: OutboxEntry, *, resend: bool) -> None:
        self.report.attempts += 1
        try:
            result = self.send(entry)
        except RowRefused as exc:
            if self._fail(entry.id, exc):
                self.report.failed += 1
                if exc.code is not None:
                    self.report.errors[exc.code] = self.report.errors.get(exc.code, 0) + 1
        except OutcomeUnknown:
            # The call may still land: the window starts now, when we stopped listening.
            self._refresh_claim(entry.id, attempt=False)
            self.unknown_rounds[entry.id] += 1
            if self.unknown_rounds[entry.id] >= UNKNOWN_ROUNDS:
                self.given_up.add(entry.id)
        else:
            if self._settle(entry.id, result):
                if resend:
                    self.report.resent += 1
                else:
                    self.report.sent += 1

    def _refresh_claim(self, entry_id: int, *, attempt: bool) -> bool:
        now = self.clock()
        values: dict[str, Any] = {"claimed_at": now, "updated_at": now}
        if attempt:
            values["attempts"] = OutboxEntry.attempts + 1
        with self.engine.begin() as connection:
            refreshed = connection.execute(
                sa.update(OutboxEntry).where(*self._ours(entry_id)).values(**values)
            )
        return refreshed.rowcount == 1

    def _ours(self, entry_id: int) -> tuple[sa.ColumnElement[bool], ...]:
        return (
            OutboxEntry.id == entry_id,
            OutboxEntry.status == SENDING,
            OutboxEntry.claimed_by == self.token,
        )

    def _settle(self, entry_id: int, result: dict[str, Any] | None) -> bool:
        """sending -> done (or created) with its effect, if the claim is still ours."""
        now = self.clock()
        values: dict[str, Any] = {"status": self.done_status, "updated_at": now, "sent_at": now}
        if result is not None:
            values["result"] = result
        with Session(self.engine) as session, session.begin():
            settled = session.execute(
                sa.update(OutboxEntry)
                .where(*self._ours(entry_id))
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if settled.rowcount != 1:
                # Our claim outlived the window and another drain took the entry over: it settles.
                return False
            self.on_done(session, session.get(OutboxEntry, entry_id))
        self._step()
        return True

    def _fail(self, entry_id: int, exc: RowRefused) -> bool:
        now = self.clock()
        with Session(self.engine) as session, session.begin():
            failed = session.execute(
                sa.update(OutboxEntry)
                .where(*self._ours(entry_id))
                .values(status=FAILED, errcode=exc.code, error=exc.reason[:255], updated_at=now)
                .execution_options(synchronize_session=False)
            )
            if failed.rowcount != 1:
                return False
            if self.on_row_failed is not None:
                self.on_row_failed(session, session.get(OutboxEntry, entry_id), exc)
        self._step()
        return True

    def _step(self) -> None:
        self.settled += 1
        if self.progress is not None and self.settled < self.total:
            self.progress(self.settled, self.total)


def _is_stale(row: sa.Row[Any], stale_before: datetime) -> bool:
    return row.claimed_at is None or row.claimed_at <= stale_before


def _stale_claim(stale_before: datetime) -> sa.ColumnElement[bool]:
    # No claim at all: left `sending` before claims were recorded; treat it as long gone.
    return sa.or_(OutboxEntry.claimed_at.is_(None), OutboxEntry.claimed_at <= stale_before)


def _detached(session: Session, entry_id: int) -> OutboxEntry:
    entry = session.get(OutboxEntry, entry_id)
    session.flush()
    session.expunge(entry)
    return entry
