"""The outbox: every call that changes the outside world is stored under a key and sent once.

Life of an entry: `pending` (planned, not attempted) -> `sending` (committed just before the
call) -> `done` (committed with its effect, right after the call) or `failed` (the platform
refused this row for good). A crash between the two commits leaves `sending`: the outcome is
unknown, so the next drain asks the platform (`reconcile`) before it sends anything again.
Planned entries of an older batch that a newer plan replaces become `superseded`.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.wecom_client import WeComOutcomeUnknown, WeComRowError
from siyu.schemas.models import OutboxEntry

PENDING, SENDING, DONE, FAILED, SUPERSEDED = "pending", "sending", "done", "failed", "superseded"


def outbox_key(kind: str, batch: str, target: str, payload: dict[str, Any]) -> str:
    """The idempotency key: the same change planned twice is the same entry."""
    canonical = json.dumps([kind, batch, target, payload], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class PlannedCall:
    """One call to make: what, for which target, with which payload."""

    kind: str
    target: str
    payload: dict[str, Any]


def enqueue(engine: sa.Engine, batch: str, calls: Iterable[PlannedCall]) -> int:
    """Store planned calls of `batch`; keys already stored are kept as they are. Returns new rows."""
    now = datetime.now(UTC)
    rows = [
        {
            "key": outbox_key(c.kind, batch, c.target, c.payload),
            "kind": c.kind,
            "batch": batch,
            "target": c.target,
            "payload": c.payload,
            "status": PENDING,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        for c in calls
    ]
    if not rows:
        return 0
    with Session(engine) as session, session.begin():
        existing: set[str] = set()
        keys = [r["key"] for r in rows]
        for start in range(0, len(keys), 5_000):
            chunk = keys[start : start + 5_000]
            existing.update(
                session.scalars(sa.select(OutboxEntry.key).where(OutboxEntry.key.in_(chunk)))
            )
        fresh = [r for r in rows if r["key"] not in existing]
        for start in range(0, len(fresh), 5_000):
            session.execute(sa.insert(OutboxEntry), fresh[start : start + 5_000])
    return len(fresh)


def supersede(engine: sa.Engine, kind: str, current_batch: str) -> int:
    """Retire pending entries of older batches of `kind`: the current plan replaces them."""
    with Session(engine) as session, session.begin():
        result = session.execute(
            sa.update(OutboxEntry)
            .where(
                OutboxEntry.kind == kind,
                OutboxEntry.batch != current_batch,
                OutboxEntry.status == PENDING,
            )
            .values(status=SUPERSEDED, updated_at=datetime.now(UTC))
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


@dataclass
class DrainReport:
    """What one drain did."""

    sent: int = 0  # calls made that succeeded
    reconciled: int = 0  # unknown outcomes found done on the platform: no call made
    resent: int = 0  # unknown outcomes found not done, sent again
    failed: int = 0  # rows the platform refused for good
    errors: dict[int, int] = field(default_factory=dict)  # errcode -> rows

    def merge(self, other: DrainReport) -> DrainReport:
        """Sum of two reports."""
        errors = dict(self.errors)
        for code, n in other.errors.items():
            errors[code] = errors.get(code, 0) + n
        return DrainReport(
            self.sent + other.sent,
            self.reconciled + other.reconciled,
            self.resent + other.resent,
            self.failed + other.failed,
            errors,
        )


Send = Callable[[OutboxEntry], dict[str, Any] | None]
Reconcile = Callable[[OutboxEntry], bool]
Effect = Callable[[Session, OutboxEntry], None]
RowFailed = Callable[[Session, OutboxEntry, WeComRowError], None]


def drain(
    engine: sa.Engine,
    batch: str,
    *,
    send: Send,
    reconcile: Reconcile,
    on_done: Effect,
    on_row_failed: RowFailed | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DrainReport:
    """Send every pending entry of `batch` once, settling unknown outcomes first.

    `send` makes the call (raising WeComRowError for a refused row); `reconcile` answers whether
    an entry's effect is already on the platform; `on_done` records the effect in our state in
    the same transaction that marks the entry done. A call that may have landed unanswered
    (WeComOutcomeUnknown) is reconciled at once and resent at most once; any other exception stops
    the drain with the entry left `sending`, to be reconciled by the next drain.
    """
    report = DrainReport()
    retry_ids: set[int] = set()
    for entry_id in _entry_ids(engine, batch, SENDING):
        if _settle_unknown(engine, entry_id, reconcile, on_done):
            report.reconciled += 1
        else:
            retry_ids.add(entry_id)
    queue = deque(_entry_ids(engine, batch, PENDING))
    total = len(queue)
    settled = 0
    while queue:
        entry_id = queue.popleft()
        entry = _begin_send(engine, entry_id)
        if entry is None:  # settled by someone else meanwhile
            continue
        try:
            result = send(entry)
        except WeComRowError as exc:
            _fail(engine, entry_id, exc, on_row_failed)
            report.failed += 1
            report.errors[exc.errcode] = report.errors.get(exc.errcode, 0) + 1
        except WeComOutcomeUnknown:
            # The call may have reached WeCom: ask before sending it again (once, in this drain).
            if _settle_unknown(engine, entry_id, reconcile, on_done):
                report.reconciled += 1
            elif entry_id in retry_ids:
                raise
            else:
                retry_ids.add(entry_id)
                queue.append(entry_id)
                continue
        else:
            _settle(engine, entry_id, DONE, on_done, result=result)
            if entry_id in retry_ids:
                report.resent += 1
            else:
                report.sent += 1
        settled += 1
        if progress is not None:
            progress(settled, total)
    return report


def _entry_ids(engine: sa.Engine, batch: str, status: str) -> list[int]:
    with Session(engine) as session:
        return list(
            session.scalars(
                sa.select(OutboxEntry.id)
                .where(OutboxEntry.batch == batch, OutboxEntry.status == status)
                .order_by(OutboxEntry.id)
            )
        )


def _settle_unknown(
    engine: sa.Engine, entry_id: int, reconcile: Reconcile, on_done: Effect
) -> bool:
    """An entry whose call may or may not have landed: done if WeCom shows it, else pending again."""
    with Session(engine, expire_on_commit=False) as session:
        entry = session.get(OutboxEntry, entry_id)
        session.expunge(entry)
    if reconcile(entry):
        _settle(engine, entry_id, DONE, on_done)
        return True
    _set_status(engine, entry_id, PENDING)
    return False


def _begin_send(engine: sa.Engine, entry_id: int) -> OutboxEntry | None:
    """Mark `sending` and commit before the call: a crash after this point is an unknown."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        entry = session.get(OutboxEntry, entry_id)
        if entry is None or entry.status != PENDING:
            return None
        entry.status = SENDING
        entry.attempts += 1
        entry.updated_at = datetime.now(UTC)
        session.flush()
        session.expunge(entry)
        return entry


def _settle(
    engine: sa.Engine,
    entry_id: int,
    status: str,
    on_done: Effect,
    *,
    result: dict[str, Any] | None = None,
) -> None:
    with Session(engine) as session, session.begin():
        entry = session.get(OutboxEntry, entry_id)
        now = datetime.now(UTC)
        entry.status = status
        entry.updated_at = now
        entry.sent_at = now
        if result is not None:
            entry.result = result
        on_done(session, entry)


def _set_status(engine: sa.Engine, entry_id: int, status: str) -> None:
    with Session(engine) as session, session.begin():
        session.execute(
            sa.update(OutboxEntry)
            .where(OutboxEntry.id == entry_id)
            .values(status=status, updated_at=datetime.now(UTC))
        )


def _fail(
    engine: sa.Engine, entry_id: int, exc: WeComRowError, on_row_failed: RowFailed | None
) -> None:
    with Session(engine) as session, session.begin():
        entry = session.get(OutboxEntry, entry_id)
        entry.status = FAILED
        entry.errcode = exc.errcode
        entry.error = str(exc)[:255]
        entry.updated_at = datetime.now(UTC)
        if on_row_failed is not None:
            on_row_failed(session, entry, exc)


def batch_counts(engine: sa.Engine, batch: str) -> dict[str, int]:
    """Entries of a batch by status."""
    with Session(engine) as session:
        rows = session.execute(
            sa.select(OutboxEntry.status, sa.func.count())
            .where(OutboxEntry.batch == batch)
            .group_by(OutboxEntry.status)
        )
        return {status: n for status, n in rows}
