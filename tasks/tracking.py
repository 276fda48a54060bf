"""Tracking: settle created mass messages from WeCom, remind late employees, expire, plan again.

A mass message has two outcomes hours apart: created (msgid), then each target's send result
once the employee confirms. Every tracking run, at its as-of time:

1. held deferred rows whose time has come are planned again (the planner decides anew) and sent;
2. every created message's task and send results are read and each ledger row settled:
   status 1 delivered, 2 failed not_a_contact, 3 failed capped_by_wecom;
3. an employee who has not confirmed after `remind_after` is reminded (remind_groupmsg_send,
   never more than 3 a message in any 24 h, plus an app message); reminder times are stored in
   the outbox entry's result, written before the call, so a crash never spends a fourth;
4. a message past its send window is cancelled and its unconfirmed rows fail `expired`;
5. a message still unconfirmed `alert_after` (24 h) after creation tells ops once
   (`siyu.sends.unconfirmed-24h`, keyed by the message: the alert queue takes it once).

Nothing here reads the wall clock: the flow passes `as_of`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from siyu.blocks.send_rules import SendRules
from siyu.blocks.wecom import WeComClient, WeComError, WeComOutcomeUnknown
from siyu.schemas.ledger import (
    CANCELLED,
    CAPPED_BY_WECOM,
    CONFIRMED,
    CREATED,
    DEFERRED,
    DELIVERED,
    EXPIRED,
    FAILED,
    FINAL_STATUSES,
    GROUP,
    GROUP_PAUSED,
    MASS_TEMPLATE,
    NOT_A_CONTACT,
    PATH_PAUSED,
    SKIPPED,
    Send,
)
from siyu.schemas.models import OutboxEntry
from siyu.tasks.delivery import (
    HELD_KIND,
    VARIANT,
    MessageContent,
    drain_sends,
    queue_plan,
)
from siyu.tasks.ledger import ledger_counts, settle
from siyu.tasks.ops_alerts import emit_ops_event
from siyu.tasks.outbox import CANCELLED as OUTBOX_CANCELLED
from siyu.tasks.outbox import CREATED as OUTBOX_CREATED
from siyu.tasks.outbox import DELIVERED as OUTBOX_DELIVERED
from siyu.tasks.outbox import PENDING, mark
from siyu.tasks.quota import plan_sends

SENT, NOT_CONTACT, CAPPED = 1, 2, 3  # get_groupmsg_send_result status
TASK_SENT = 2  # get_groupmsg_task status once the employee confirmed
REMINDER_WINDOW = dt.timedelta(hours=24)
WECOM_REMINDERS_PER_DAY = 3
UNCONFIRMED_EVENT = "siyu.sends.unconfirmed-24h"
REMINDER_TEXT = "您有一条企业群发消息尚未确认发送，请在企业微信「客户联系 - 群发助手」中确认。"


class TrackSettings(BaseModel):
    """When to remind an employee who has not confirmed, and when a message expires."""

    remind_after: dt.timedelta = Field(
        default=dt.timedelta(hours=2), description="First reminder this long after creation"
    )
    remind_every: dt.timedelta = Field(
        default=dt.timedelta(hours=4), description="At least this long between two reminders"
    )
    reminders_per_day: int = Field(
        default=WECOM_REMINDERS_PER_DAY,
        ge=0,
        le=WECOM_REMINDERS_PER_DAY,
        description="Reminders a message in any 24 h (WeCom allows 3)",
    )
    send_window: dt.timedelta = Field(
        default=dt.timedelta(hours=48),
        description="A message not confirmed this long after creation is cancelled (expired)",
    )
    in_flight_seconds: float = Field(
        default=30.0, gt=0, description="The outbox's in-flight window for replanned sends"
    )
    alert_after: dt.timedelta = Field(
        default=dt.timedelta(hours=24),
        description="Ops are told once about a message still unconfirmed this long after creation",
    )


@dataclass
class TrackReport:
    """What one tracking run did: counts only."""

    messages: int = 0  # created messages looked at
    settled: dict[str, int] = field(default_factory=dict)  # rows moved, by status[:reason]
    reminders: int = 0  # remind_groupmsg_send calls made
    reminders_refused: int = 0  # WeCom said the reminder limit was reached
    cancelled: int = 0  # messages cancelled past their window
    unconfirmed_alerts: int = 0  # messages ops were told about (unconfirmed after alert_after)
    replanned: dict[str, int] = field(default_factory=dict)  # the planner's answer for due rows
    calls: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def _epoch(value: int | None, fallback: dt.datetime) -> dt.datetime:
    return dt.datetime.fromtimestamp(value, dt.UTC) if value else fallback


# -- 1. deferred rows whose time has come --------------------------------------------------------


@dataclass(frozen=True)
class Paused:
    """What ops paused: conversion paths (their ledger programmes) and customer groups."""

    programmes: frozenset[str] = frozenset()  # e.g. "path:payroll"
    groups: frozenset[str] = frozenset()  # chat ids, whatever the cadence

    def reasons(self, rows: pd.DataFrame) -> pd.Series:
        """Per ledger row, the reason it must not go (None: it may)."""
        reason = pd.Series(None, index=rows.index, dtype=object)
        reason[rows["programme"].isin(self.programmes)] = PATH_PAUSED
        group = (rows["target_kind"] == GROUP) & rows["target_id"].isin(self.groups)
        reason[group] = GROUP_PAUSED
        return reason


def replan_due(
    engine: sa.Engine,
    client: WeComClient,
    *,
    rules: SendRules,
    as_of: dt.datetime,
    in_flight_seconds: float = 30.0,
    paused: Paused | None = None,
) -> tuple[dict[str, int], Counter[str]]:
    """Plan again every held deferred row whose not_before has come, and send what fits.

    A deferred row of a path or a group ops paused since is settled skipped, paused by ops: the
    pause holds for what was waiting too, not only for the touches and slots still to run.
    """
    paused = paused or Paused()
    summary: Counter[str] = Counter()
    with Session(engine) as session:
        held = list(
            session.execute(
                sa.select(OutboxEntry.id, OutboxEntry.payload)
                .where(OutboxEntry.kind == HELD_KIND, OutboxEntry.status == PENDING)
                .order_by(OutboxEntry.id)
            )
        )
    for entry_id, payload in held:
        with Session(engine) as session:
            rows = pd.DataFrame(
                session.execute(
                    sa.select(
                        Send.id,
                        Send.target_kind,
                        Send.target_id,
                        Send.sender,
                        Send.channel,
                        Send.programme,
                        Send.step,
                        Send.period,
                        Send.priority,
                        Send.not_before,
                        Send.export_checksum,
                    ).where(Send.id.in_(payload["ledger_ids"]), Send.status == DEFERRED)
                ).all(),
                columns=[
                    "id",
                    "target_kind",
                    "target_id",
                    "sender",
                    "channel",
                    "programme",
                    "step",
                    "period",
                    "priority",
                    "not_before",
                    "export_checksum",
                ],
            )
            if rows.empty:
                mark(
                    session, entry_id, OUTBOX_CANCELLED, result={"replanned_at": as_of.isoformat()}
                )
                session.commit()
                continue
            due = pd.to_datetime(rows["not_before"], utc=True).min()
            if due > pd.Timestamp(as_of):
                continue
            reasons = paused.reasons(rows)
            for reason in reasons.dropna().unique():
                ids = [int(i) for i in rows.loc[reasons == reason, "id"]]
                moved = settle(session, ids, SKIPPED, at=as_of, reason=str(reason)).moved
                summary["skipped"] += moved
                summary[f"skipped:{reason}"] += moved
            rows = rows[reasons.isna()]
            if rows.empty:
                mark(
                    session, entry_id, OUTBOX_CANCELLED, result={"replanned_at": as_of.isoformat()}
                )
                session.commit()
                continue
            wanted = rows.drop(columns=["id", "not_before"]).assign(
                wanted_at=as_of, **{VARIANT: payload["variant"]}
            )
            counts = ledger_counts(session, wanted, as_of=as_of, rules=rules)
            plan = plan_sends(wanted, rules, as_of, counts)
            summary.update(plan.summary())
            content = MessageContent.model_validate(payload["content"])
            queue_plan(
                session,
                plan,
                lambda *_, content=content: content,
                playbook=payload["playbook"],
                version=payload["version"],
                export_checksum=None,
            )
            mark(session, entry_id, OUTBOX_CANCELLED, result={"replanned_at": as_of.isoformat()})
            session.commit()
    _, calls = drain_sends(engine, client, as_of=as_of, in_flight_seconds=in_flight_seconds)
    return dict(sorted(summary.items())), calls


# -- 2-4. created messages -----------------------------------------------------------------------


@dataclass
class _Message:
    msgid: str
    sender: str
    outbox_key: str | None
    created_at: dt.datetime
    rows: pd.DataFrame  # id, target_id, status of its unsettled ledger rows


def _open_messages(session: Session) -> list[_Message]:
    rows = pd.DataFrame(
        session.execute(
            sa.select(
                Send.id,
                Send.msgid,
                Send.sender,
                Send.outbox_key,
                Send.target_id,
                Send.status,
                Send.created_at,
            ).where(
                Send.channel == MASS_TEMPLATE,
                Send.status.in_([CREATED, CONFIRMED]),
                Send.msgid.is_not(None),
            )
        ).all(),
        columns=["id", "msgid", "sender", "outbox_key", "target_id", "status", "created_at"],
    )
    messages = []
    for (msgid, sender), group in rows.groupby(["msgid", "sender"], sort=True):
        messages.append(
            _Message(
                msgid=str(msgid),
                sender=str(sender),
                outbox_key=group["outbox_key"].iloc[0],
                created_at=_aware(pd.Timestamp(group["created_at"].min()).to_pydatetime()),
                rows=group[["id", "target_id", "status"]],
            )
        )
    return messages


class _Tracker:
    def __init__(
        self,
        engine: sa.Engine,
        client: WeComClient,
        as_of: dt.datetime,
        settings: TrackSettings,
    ) -> None:
        self.engine = engine
        self.client = client
        self.as_of = as_of
        self.settings = settings
        self.report = TrackReport()
        self.calls: Counter[str] = Counter()

    def _read(
        self, message: _Message
    ) -> tuple[bool, dict[str, tuple[int, dt.datetime]], dt.datetime]:
        """(confirmed, target -> (status, send time), confirmation time) of the sender."""
        self.calls["externalcontact/get_groupmsg_task"] += 1
        tasks = [
            t for t in self.client.iter_groupmsg_task(message.msgid) if t.userid == message.sender
        ]
        confirmed = any(t.status == TASK_SENT for t in tasks)
        confirmed_at = _epoch(next((t.send_time for t in tasks if t.send_time), None), self.as_of)
        results: dict[str, tuple[int, dt.datetime]] = {}
        if confirmed:
            self.calls["externalcontact/get_groupmsg_send_result"] += 1
            for r in self.client.iter_groupmsg_send_result(message.msgid, message.sender):
                target = r.chat_id or r.external_userid
                if target:
                    results[target] = (r.status, _epoch(r.send_time, confirmed_at))
        return confirmed, results, confirmed_at

    def _count(self, status: str, reason: str | None, moved: int) -> None:
        if moved:
            name = f"{status}:{reason}" if reason else status
            self.report.settled[name] = self.report.settled.get(name, 0) + moved

    def _settle(
        self,
        session: Session,
        message: _Message,
        confirmed: bool,
        results: dict[str, tuple[int, dt.datetime]],
        confirmed_at: dt.datetime,
    ) -> None:
        if not confirmed:
            return
        ids = message.rows["id"].astype(int).tolist()
        self._count(CONFIRMED, None, settle(session, ids, CONFIRMED, at=confirmed_at).moved)
        outcome: dict[tuple[str, str | None], list[int]] = {}
        for ledger_id, target in zip(message.rows["id"], message.rows["target_id"], strict=True):
            status, _ = results.get(str(target), (0, confirmed_at))
            if status == SENT:
                outcome.setdefault((DELIVERED, None), []).append(int(ledger_id))
            elif status == NOT_CONTACT:
                outcome.setdefault((FAILED, NOT_A_CONTACT), []).append(int(ledger_id))
            elif status == CAPPED:
                outcome.setdefault((FAILED, CAPPED_BY_WECOM), []).append(int(ledger_id))
        for (status, reason), chosen in outcome.items():
            at = max(results.get(str(t), (0, confirmed_at))[1] for t in message.rows["target_id"])
            moved = settle(session, chosen, status, at=at, reason=reason).moved
            self._count(status, reason, moved)

    def _entry(self, session: Session, message: _Message) -> OutboxEntry | None:
        if message.outbox_key is None:
            return None
        return session.scalar(sa.select(OutboxEntry).where(OutboxEntry.key == message.outbox_key))

    @staticmethod
    def _store_result(session: Session, entry: OutboxEntry, result: dict[str, Any]) -> bool:
        """Write the entry's result if nobody changed the entry since it was read (its
        `updated_at`, which every update moves): two tracking rounds at once (the deployment,
        `siyu sends track`, an ops rerun) never both remind, and neither loses the other's write.
        """
        stored = session.execute(
            sa.update(OutboxEntry)
            .where(OutboxEntry.id == entry.id, OutboxEntry.updated_at == entry.updated_at)
            .values(result=result)
            .execution_options(synchronize_session=False)
        )
        return stored.rowcount == 1

    def _remind(self, message: _Message) -> None:
        """Remind the sender if due and WeCom's 3 in 24 h allows; times stored before the call."""
        settings = self.settings
        if self.as_of - message.created_at < settings.remind_after:
            return
        with Session(self.engine) as session, session.begin():
            entry = self._entry(session, message)
            if entry is None:
                return
            result = dict(entry.result or {})
            times = [dt.datetime.fromisoformat(t) for t in result.get("reminders", [])]
            recent = [t for t in times if t > self.as_of - REMINDER_WINDOW]
            if len(recent) >= settings.reminders_per_day:
                return
            if recent and self.as_of - max(recent) < settings.remind_every:
                return
            result["reminders"] = [t.isoformat() for t in [*times, self.as_of]]
            if not self._store_result(session, entry, result):
                return  # another tracking round took this message meanwhile
        self.calls["externalcontact/remind_groupmsg_send"] += 1
        try:
            self.client.remind_groupmsg_send(message.msgid)
            self.report.reminders += 1
        except WeComOutcomeUnknown:
            self.report.reminders += 1  # it may have counted: it stays recorded
        except WeComError:
            self.report.reminders_refused += 1
            return
        self.calls["message/send"] += 1
        # The WeCom reminder went; the app message is a courtesy on top, its failure no error.
        with contextlib.suppress(WeComError):
            self.client.send_app_message(
                [message.sender], msgtype="text", content={"content": REMINDER_TEXT}
            )

    def _expire(self, session: Session, message: _Message) -> bool:
        """Cancel a message past its window; its unconfirmed rows fail expired."""
        if self.as_of - message.created_at < self.settings.send_window:
            return False
        self.calls["externalcontact/cancel_groupmsg_send"] += 1
        self.client.cancel_groupmsg_send(message.msgid)
        self.report.cancelled += 1
        confirmed, results, confirmed_at = self._read(message)
        if confirmed:  # the employee confirmed just before the cancel: settle as usual
            self._settle(session, message, confirmed, results, confirmed_at)
            return False
        ids = message.rows["id"].astype(int).tolist()
        moved = settle(session, ids, FAILED, at=self.as_of, reason=EXPIRED).moved
        self._count(FAILED, EXPIRED, moved)
        return True

    def _close_entry(self, session: Session, message: _Message, cancelled: bool) -> None:
        """Once every row of the message is final, its outbox entry is too."""
        left = session.scalar(
            sa.select(sa.func.count())
            .select_from(Send)
            .where(Send.msgid == message.msgid, Send.status.not_in(sorted(FINAL_STATUSES)))
        )
        entry = self._entry(session, message)
        if left or entry is None or entry.status != OUTBOX_CREATED:
            return
        mark(session, entry.id, OUTBOX_CANCELLED if cancelled else OUTBOX_DELIVERED)

    def _alert_unconfirmed(self, message: _Message) -> None:
        """Tell ops once that a manager has left a message unconfirmed for `alert_after`.

        The event goes before the mark: a crash between them emits it again next round, and
        the alert queue keeps one alert per key, so ops read it once either way.
        """
        waited = self.as_of - message.created_at
        if waited < self.settings.alert_after:
            return
        with Session(self.engine) as session:
            entry = self._entry(session, message)
            if entry is not None and (entry.result or {}).get("unconfirmed_alert"):
                return
        hours = int(waited.total_seconds() // 3600)
        expires = message.created_at + self.settings.send_window
        emit_ops_event(
            UNCONFIRMED_EVENT,
            subject=(
                f"manager {message.sender} has not confirmed mass message {message.msgid} for "
                f"{hours} h ({len(message.rows)} recipients)"
            ),
            next_step=(
                f"ask {message.sender} to confirm it in WeCom (客户联系 - 群发助手), or cancel it "
                f"(ops action message-cancel, msgid {message.msgid}); it expires at "
                f"{expires.astimezone(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}"
            ),
            key=f"{UNCONFIRMED_EVENT}:{message.msgid}:{message.sender}",
            resource_id=f"siyu.mass-message.{message.msgid}",
        )
        self.report.unconfirmed_alerts += 1
        with Session(self.engine) as session, session.begin():
            entry = self._entry(session, message)
            if entry is not None:
                result = dict(entry.result or {})
                result["unconfirmed_alert"] = self.as_of.isoformat()
                # Lost to a concurrent round: the next one emits again, the queue keeps one.
                self._store_result(session, entry, result)

    def track(self, message: _Message) -> None:
        self.report.messages += 1
        confirmed, results, confirmed_at = self._read(message)
        with Session(self.engine) as session, session.begin():
            self._settle(session, message, confirmed, results, confirmed_at)
            cancelled = False
            if not confirmed:
                cancelled = self._expire(session, message)
            elif self.as_of - message.created_at >= self.settings.send_window:
                # Confirmed, but these targets never got it (the employee deselected them).
                unsent = [
                    int(i)
                    for i, t in zip(message.rows["id"], message.rows["target_id"], strict=True)
                    if results.get(str(t), (0, None))[0] == 0
                ]
                moved = settle(session, unsent, FAILED, at=self.as_of, reason=EXPIRED).moved
                self._count(FAILED, EXPIRED, moved)
            self._close_entry(session, message, cancelled)
        if not confirmed and not cancelled:
            self._alert_unconfirmed(message)
            self._remind(message)


def track_sends(
    engine: sa.Engine,
    client: WeComClient,
    *,
    rules: SendRules,
    as_of: dt.datetime,
    settings: TrackSettings | None = None,
    paused: Paused | None = None,
) -> TrackReport:
    """One tracking round at `as_of`: plan due deferred rows, settle, remind, expire."""
    if as_of.tzinfo is None:
        raise ValueError("track_sends needs a timezone-aware as_of, e.g. now in Asia/Shanghai")
    settings = settings or TrackSettings()
    replanned, replan_calls = replan_due(
        engine,
        client,
        rules=rules,
        as_of=as_of,
        in_flight_seconds=settings.in_flight_seconds,
        paused=paused,
    )
    tracker = _Tracker(engine, client, as_of, settings)
    tracker.report.replanned = replanned
    with Session(engine) as session:
        messages = _open_messages(session)
    for message in messages:
        tracker.track(message)
    tracker.calls.update(replan_calls)
    tracker.report.calls = dict(sorted(tracker.calls.items()))
    return tracker.report


# -- the artifact -----------------------------------------------------------------------------

MANAGER_COLUMNS = [
    "manager",
    "planned",
    "created",
    "confirmed",
    "delivered",
    "capped",
    "failed",
    "deferred",
    "skipped",
    "median_lag_minutes",
]


def manager_summary(engine: sa.Engine, *, month: str | None = None) -> pd.DataFrame:
    """Per manager (sender): rows planned, created, confirmed, delivered, capped, failed,
    deferred, skipped, and the median confirmation lag; one month's sends, or all."""
    query = sa.select(
        Send.sender,
        Send.status,
        Send.reason,
        Send.created_at,
        Send.confirmed_at,
        Send.send_month,
        Send.channel,
    )
    if month is not None:
        query = query.where(sa.or_(Send.send_month == month, Send.send_month.is_(None)))
    with Session(engine) as session:
        rows = pd.DataFrame(
            session.execute(query).all(),
            columns=[
                "sender",
                "status",
                "reason",
                "created_at",
                "confirmed_at",
                "month",
                "channel",
            ],
        )
    if rows.empty:
        return pd.DataFrame(columns=MANAGER_COLUMNS)
    created = pd.to_datetime(rows["created_at"], utc=True)
    confirmed = pd.to_datetime(rows["confirmed_at"], utc=True)
    rows["lag"] = (confirmed - created).dt.total_seconds() / 60
    out = []
    for sender, group in rows.groupby("sender", sort=True):
        failed = group["status"] == FAILED
        out.append(
            {
                "manager": sender,
                "planned": int((~group["status"].isin([DEFERRED, SKIPPED])).sum()),
                "created": int(group["created_at"].notna().sum()),
                "confirmed": int(group["confirmed_at"].notna().sum()),
                "delivered": int((group["status"] == DELIVERED).sum()),
                "capped": int((failed & (group["reason"] == CAPPED_BY_WECOM)).sum()),
                "failed": int((failed & (group["reason"] != CAPPED_BY_WECOM)).sum()),
                "deferred": int((group["status"] == DEFERRED).sum()),
                "skipped": int((group["status"] == SKIPPED).sum()),
                "median_lag_minutes": (
                    round(float(group["lag"].median()), 1) if group["lag"].notna().any() else None
                ),
            }
        )
    return pd.DataFrame(out, columns=MANAGER_COLUMNS)


def manager_markdown(summary: pd.DataFrame, report: TrackReport, as_of: dt.datetime) -> str:
    """The tracking artifact: per manager figures (manager userids, no customer data)."""
    lines = [
        f"# Sends tracked at {as_of.isoformat(timespec='minutes')}",
        "",
        f"Messages looked at: {report.messages}; reminders: {report.reminders} "
        f"(refused by WeCom: {report.reminders_refused}); cancelled past their window: "
        f"{report.cancelled}.",
        "",
        "| manager | planned | created | confirmed | delivered | capped | failed | deferred "
        "| skipped | median confirmation lag (min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary.itertuples(index=False):
        lag = (
            "-"
            if row.median_lag_minutes is None or pd.isna(row.median_lag_minutes)
            else row.median_lag_minutes
        )
        lines.append(
            f"| {row.manager} | {row.planned} | {row.created} | {row.confirmed} | "
            f"{row.delivered} | {row.capped} | {row.failed} | {row.deferred} | "
            f"{row.skipped} | {lag} |"
        )
    return "\n".join(lines) + "\n"


# -- ops cancel a pending message ---------------------------------------------------------------


@dataclass
class CancelReport:
    """What cancelling one mass message did."""

    msgid: str | None
    found: int = 0  # ledger rows of the message
    cancelled: int = 0  # rows settled failed cancelled
    already_final: int = 0  # rows that had a final status already
    confirmed: bool = False  # the employee had confirmed: WeCom cannot take it back
    wecom_cancelled: bool = False  # cancel_groupmsg_send was called

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def message_rows(engine: sa.Engine, handle: str) -> tuple[str | None, pd.DataFrame]:
    """(msgid, rows) of the mass message `handle` names: its msgid or its outbox (ledger) key."""
    with Session(engine) as session:
        rows = pd.DataFrame(
            session.execute(
                sa.select(
                    Send.id, Send.msgid, Send.sender, Send.outbox_key, Send.status, Send.created_at
                ).where(
                    Send.channel == MASS_TEMPLATE,
                    sa.or_(Send.msgid == handle, Send.outbox_key == handle),
                )
            ).all(),
            columns=["id", "msgid", "sender", "outbox_key", "status", "created_at"],
        )
    msgids = set(rows["msgid"].dropna())
    if len(msgids) > 1:
        raise ValueError(
            f"{handle!r} names {len(msgids)} mass messages: cancel each by its msgid instead"
        )
    return (msgids.pop() if msgids else None), rows


def cancel_message(
    engine: sa.Engine, client: WeComClient, handle: str, *, as_of: dt.datetime
) -> CancelReport:
    """Cancel a mass message its employee has not confirmed, and fail its rows `cancelled`.

    `handle` is the msgid or the outbox key of its ledger rows. A message not created yet
    (its outbox entry pending) is cancelled in the outbox, so it is never sent; a confirmed one
    cannot be taken back and is left to the tracker. Safe to repeat: WeCom's cancel is, and
    final rows never move.
    """
    msgid, rows = message_rows(engine, handle)
    report = CancelReport(msgid=msgid, found=len(rows))
    if rows.empty:
        raise LookupError(
            f"no mass message with msgid or ledger key {handle!r}: copy the msgid from the "
            "sends-track artifact or the unconfirmed alert"
        )
    open_rows = rows[~rows["status"].isin(sorted(FINAL_STATUSES))]
    report.already_final = len(rows) - len(open_rows)
    if open_rows.empty:
        return report
    if msgid is not None:
        sender = str(open_rows["sender"].iloc[0])
        message = _Message(
            msgid=msgid,
            sender=sender,
            outbox_key=open_rows["outbox_key"].iloc[0],
            created_at=_aware(pd.Timestamp(open_rows["created_at"].min()).to_pydatetime()) or as_of,
            rows=open_rows[["id", "status"]].assign(target_id=""),
        )
        tracker = _Tracker(engine, client, as_of, TrackSettings())
        client.cancel_groupmsg_send(msgid)
        report.wecom_cancelled = True
        confirmed, _, _ = tracker._read(message)
        if confirmed or (open_rows["status"] == CONFIRMED).any():
            report.confirmed = True  # sent before the cancel: the tracker settles it
            return report
    with Session(engine) as session, session.begin():
        key = open_rows["outbox_key"].iloc[0]
        entry = (
            session.scalar(sa.select(OutboxEntry).where(OutboxEntry.key == key)) if key else None
        )
        if msgid is None and entry is not None and entry.status != PENDING:
            raise RuntimeError(
                f"the mass message of {handle!r} is being created right now ({entry.status}): "
                "run message-cancel again in a minute, with its msgid once it has one"
            )
        ids = open_rows["id"].astype(int).tolist()
        report.cancelled = settle(session, ids, FAILED, at=as_of, reason=CANCELLED).moved
        if entry is not None and entry.status in (PENDING, OUTBOX_CREATED):
            result = dict(entry.result or {})
            result["cancelled_by"] = "ops"
            mark(session, entry.id, OUTBOX_CANCELLED, result=result)
    return report
