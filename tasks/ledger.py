"""The send ledger's work: counts for the planner, reserving a plan, settling rows with guards.

Everything runs in the caller's session and transaction: the ledger rows a plan reserves
commit together with the outbox rows the caller writes for them, or not at all.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.send_rules import SendRules
from siyu.schemas.ledger import (
    ALREADY_PLANNED,
    CONFIRMED,
    COUNTED_STATUSES,
    CREATED,
    DEFERRED,
    DELIVERED,
    DUPLICATE,
    FINAL_STATUSES,
    KEY_COLUMNS,
    PLANNED,
    REASONS_BY_STATUS,
    SKIPPED,
    STATUSES,
    Send,
    allowed_predecessors,
)
from siyu.tasks.quota import (
    DAY_COUNT_COLUMNS,
    EXISTING_COLUMNS,
    MONTH_COUNT_COLUMNS,
    LedgerCounts,
    PlanResult,
)

SENDS = Send.__table__
# Ids per statement: well under SQLite's and psycopg2's limits on bound parameters.
ID_CHUNK = 5_000
# Skipped rows the ledger already holds (or holds once, for a duplicate) are not written.
_NOT_WRITTEN = {ALREADY_PLANNED, DUPLICATE}
# When each status is reached, this column records it.
_STAMP_COLUMN = {CREATED: "created_at", CONFIRMED: "confirmed_at", DELIVERED: "delivered_at"}


def _rows(result: sa.CursorResult[Any], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(result.all(), columns=columns)


def _fill_keys(connection: sa.Connection, table: sa.Table, keys: pd.DataFrame) -> None:
    """Put the batch's keys (plain strings) into the temporary table, fast on both databases."""
    columns = [keys[c].astype(str).tolist() for c in KEY_COLUMNS]
    names = ", ".join(KEY_COLUMNS)
    if connection.dialect.name == "postgresql":
        # One statement with five arrays: psycopg2 would otherwise send a row at a time.
        arrays = ", ".join(f"CAST(:c{i} AS text[])" for i in range(len(columns)))
        connection.execute(
            sa.text(f"INSERT INTO {table.name} ({names}) SELECT * FROM unnest({arrays})"),
            {f"c{i}": values for i, values in enumerate(columns)},
        )
        # Autovacuum never sees temporary tables: without statistics the planner guesses a
        # handful of rows and picks nested loops over 100,000.
        connection.exec_driver_sql(f"ANALYZE {table.name}")
        return
    # Plain strings need no type processing: the driver's executemany with tuples is enough.
    marks = ", ".join("?" * len(columns))
    connection.exec_driver_sql(
        f"INSERT INTO {table.name} ({names}) VALUES ({marks})", list(zip(*columns, strict=True))
    )


def ledger_counts(
    session: Session, wanted: pd.DataFrame, *, as_of: dt.datetime, rules: SendRules
) -> LedgerCounts:
    """What the ledger holds for the targets of `wanted` on `as_of`'s local day and month.

    The batch's keys go into a temporary table once; each count is then one grouped query
    joined to it, so only the affected targets are read, through the ledger's indexes.
    """
    local = as_of.astimezone(rules.zone)
    day, month = local.date(), f"{local.year:04d}-{local.month:02d}"
    keys = wanted.loc[:, list(KEY_COLUMNS)].astype(str).drop_duplicates()
    if keys.empty:
        return LedgerCounts.empty()

    temp = sa.Table(
        f"siyu_wanted_{secrets.token_hex(4)}",
        sa.MetaData(),
        *(sa.Column(c, sa.String(160)) for c in KEY_COLUMNS),
        prefixes=["TEMPORARY"],
    )
    connection = session.connection()
    temp.create(connection)
    try:
        _fill_keys(connection, temp, keys)
        s = SENDS.c
        targets = sa.select(temp.c.target_kind, temp.c.target_id).distinct().subquery()
        on_target = sa.and_(
            s.target_kind == targets.c.target_kind, s.target_id == targets.c.target_id
        )
        counted = s.status.in_(sorted(COUNTED_STATUSES))

        month_query = (
            sa.select(s.target_kind, s.target_id, s.channel, s.send_month, sa.func.count())
            .join(targets, on_target)
            .where(counted, s.send_month == month)
            .group_by(s.target_kind, s.target_id, s.channel, s.send_month)
        )
        day_query = (
            sa.select(s.target_kind, s.target_id, s.sender, s.channel, s.send_day, sa.func.count())
            .join(targets, on_target)
            .where(counted, s.send_day == day)
            .group_by(s.target_kind, s.target_id, s.sender, s.channel, s.send_day)
        )
        existing_query = sa.select(*(s[c] for c in KEY_COLUMNS), s.id, s.status).join(
            temp, sa.and_(*(s[c] == temp.c[c] for c in KEY_COLUMNS))
        )
        result = LedgerCounts(
            month=_rows(connection.execute(month_query), MONTH_COUNT_COLUMNS),
            day=_rows(connection.execute(day_query), DAY_COUNT_COLUMNS),
            existing=_rows(connection.execute(existing_query), EXISTING_COLUMNS),
        )
    finally:
        temp.drop(connection)
    return result


@dataclass(frozen=True)
class Reserved:
    """What reserve() wrote: new rows by status, and deferred rows planned again."""

    planned: int = 0
    deferred: int = 0
    skipped: int = 0
    replanned: int = 0
    not_written: int = 0  # skipped as already planned or duplicate: the ledger holds them

    @property
    def written(self) -> int:
        return self.planned + self.deferred + self.skipped


def _ledger_records(
    frame: pd.DataFrame,
    *,
    playbook: str,
    version: str,
    export_checksum: str | None,
    planned_at: dt.datetime,
) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            **{c: frame[c].astype(str) for c in KEY_COLUMNS},
            "sender": frame["sender"].astype(str),
            "channel": frame["channel"].astype(str),
            "priority": frame["priority"].astype("int64"),
            "status": frame["status"],
            "reason": frame["reason"],
            "not_before": frame["not_before"],
            "send_day": frame["send_day"],
            "send_month": frame["send_month"],
            "playbook": playbook,
            "playbook_version": version,
            "export_checksum": (
                frame["export_checksum"] if "export_checksum" in frame.columns else export_checksum
            ),
            "outbox_key": frame["outbox_key"] if "outbox_key" in frame.columns else None,
            "planned_at": planned_at,
        },
        index=frame.index,
    )
    return out


def _as_python(records: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts of plain Python values (None for NaT/NaN/NA): what both drivers accept.

    Built column by column (`tolist`), because DataFrame.to_dict boxes every cell one by one
    and costs seconds at 100,000 rows.
    """
    names = [str(name) for name in records.columns]
    columns: list[list[Any]] = []
    for _, column in records.items():
        if isinstance(column.dtype, pd.DatetimeTZDtype):
            values = list(column.dt.to_pydatetime())
        else:
            values = column.astype(object).tolist()
        missing = column.isna().to_numpy()
        if missing.any():
            values = [None if gone else v for v, gone in zip(values, missing, strict=True)]
        columns.append(values)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _insert_sends(connection: sa.Connection, records: pd.DataFrame) -> None:
    """Insert new ledger rows: one array statement on PostgreSQL, executemany elsewhere."""
    if connection.dialect.name != "postgresql":
        connection.execute(SENDS.insert(), _as_python(records))
        return
    # Batched VALUES lists cost PostgreSQL ~0.25 s per 1,000 rows here; a single INSERT over
    # unnest'ed arrays sends and parses each column once. Times are aware (UTC), as UtcDateTime
    # would have stored them.
    names = [str(c) for c in records.columns]
    rows = _as_python(records)
    arrays = ", ".join(
        f"CAST(:{name} AS {SENDS.c[name].type.compile(dialect=connection.dialect)}[])"
        for name in names
    )
    connection.execute(
        sa.text(f"INSERT INTO sends ({', '.join(names)}) SELECT * FROM unnest({arrays})"),
        {name: [row[name] for row in rows] for name in names},
    )


def reserve(
    session: Session,
    plan: PlanResult,
    *,
    playbook: str,
    version: str,
    export_checksum: str | None = None,
) -> Reserved:
    """Store a plan in the ledger, inside the caller's transaction (the caller commits).

    Fits become `planned` rows, deferred and skipped rows keep their reasons; a deferred key
    planned again updates its row; keys the ledger holds already are not written. A concurrent
    plan that wrote the same key first makes the insert fail as a whole (unique key): roll back
    and plan again.
    """
    frames = [plan.fits, plan.deferred, plan.skipped[~plan.skipped["reason"].isin(_NOT_WRITTEN)]]
    rows = pd.concat([f for f in frames if len(f)]) if any(len(f) for f in frames) else None
    not_written = int(plan.skipped["reason"].isin(_NOT_WRITTEN).sum())
    if rows is None:
        return Reserved(not_written=not_written)
    records = _ledger_records(
        rows,
        playbook=playbook,
        version=version,
        export_checksum=export_checksum,
        planned_at=plan.as_of,
    )
    again = rows["ledger_id"].notna().to_numpy()
    fresh = records[~again]
    connection = session.connection()
    if len(fresh):
        _insert_sends(connection, fresh)
    if again.any():
        updates = (
            records[again]
            .drop(columns=list(KEY_COLUMNS))
            .assign(b_id=rows.loc[again, "ledger_id"].astype("int64").to_numpy())
        )
        values = {c: sa.bindparam(c) for c in updates.columns if c != "b_id"}
        # Guarded: a row someone else moved on since the counts were read is left alone.
        connection.execute(
            SENDS.update()
            .where(SENDS.c.id == sa.bindparam("b_id"), SENDS.c.status == DEFERRED)
            .values(**values),
            _as_python(updates),
        )
    # The ORM must not serve stale Send objects of this session after the bulk writes.
    session.expire_all()
    status = fresh["status"].value_counts()
    return Reserved(
        planned=int(status.get(PLANNED, 0)),
        deferred=int(status.get(DEFERRED, 0)),
        skipped=int(status.get(SKIPPED, 0)),
        replanned=int(again.sum()),
        not_written=not_written,
    )


@dataclass(frozen=True)
class Settled:
    """What settle() did: rows moved, and rows it refused (final, missing or out of order)."""

    moved: int = 0
    refused: list[int] = field(default_factory=list)


def _chunks(ids: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def settle(
    session: Session,
    ids: Sequence[int],
    status: str,
    *,
    at: dt.datetime,
    reason: str | None = None,
    msgid: str | None = None,
    not_before: dt.datetime | None = None,
) -> Settled:
    """Move ledger rows to `status` where their life allows it; a final row never moves.

    `at` is when it happened (created, confirmed, delivered, or the final settlement); failed,
    skipped and deferred need their reason; deferred needs `not_before`; created needs the
    msgid. Runs in the caller's transaction.
    """
    if status not in STATUSES:
        raise ValueError(f"unknown send status {status!r}: expected one of {', '.join(STATUSES)}")
    allowed_reasons = REASONS_BY_STATUS.get(status)
    if allowed_reasons is not None and reason not in allowed_reasons:
        raise ValueError(
            f"a {status} send needs a reason among {', '.join(sorted(allowed_reasons))}, not {reason!r}"
        )
    if allowed_reasons is None and reason is not None:
        raise ValueError(f"a {status} send carries no reason (got {reason!r})")
    if status == CREATED and not msgid:
        raise ValueError("a created send needs the msgid WeCom returned")
    if status == DEFERRED and not_before is None:
        raise ValueError("a deferred send needs not_before, its next allowed time")
    if at.tzinfo is None:
        raise ValueError("settle needs a timezone-aware `at`")

    values: dict[str, Any] = {"status": status, "reason": reason}
    if status in _STAMP_COLUMN:
        values[_STAMP_COLUMN[status]] = at
    if status in FINAL_STATUSES:
        values["settled_at"] = at
    if msgid is not None:
        values["msgid"] = msgid
    if status == DEFERRED:
        values["not_before"] = not_before
    predecessors = sorted(allowed_predecessors(status))

    connection = session.connection()
    moved = 0
    refused: list[int] = []
    for chunk in _chunks(sorted(set(ids)), ID_CHUNK):
        current = dict(
            connection.execute(
                sa.select(SENDS.c.id, SENDS.c.status).where(SENDS.c.id.in_(chunk))
            ).all()
        )
        movable = [i for i in chunk if current.get(i) in predecessors]
        refused.extend(i for i in chunk if current.get(i) not in predecessors)
        if movable:
            result = connection.execute(
                SENDS.update()
                .where(SENDS.c.id.in_(movable), SENDS.c.status.in_(predecessors))
                .values(**values)
            )
            moved += result.rowcount
    session.expire_all()
    return Settled(moved=moved, refused=refused)
