"""The reward ledger and payouts: budgets before a win is granted, red packets paid once by bill number.

A win is one row per (activity, round, member). Its bill number is derived from that identity
and stored when the win is granted, before any attempt, so every retry, rerun or reconcile uses
the same number and WeChat Pay pays it once. Budgets (per group a week, per programme a month)
are checked when wins are granted: a win over budget is recorded unpaid with the budget that
stopped it, and ops are alerted (`siyu.rewards.over-budget`, once per activity); a group's week
or the programme's month passing the alert share (80 %) alerts once too
(`siyu.rewards.budget-80`). The alerts join the grant's transaction (tasks/cadence.py). A granted
win is paid on its pay day (N working days after the member played, where the script says so)
through the outbox, one entry per payout, committed call by call.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.group_cadence import ActivityLibrary, ActivityScript
from siyu.blocks.send_rules import SendRules
from siyu.blocks.wecom import WeComError, WeComUnavailable
from siyu.blocks.wecom_pay import PayClient, PayNotFound, PayOutcomeUnknown, PayRefused
from siyu.schemas.cadence import (
    FAILED,
    GRANTED,
    GROUP_WEEK,
    OVER_BUDGET,
    PAID,
    PROGRAMME_MONTH,
    RewardWin,
)
from siyu.schemas.models import OutboxEntry, insert_or_update
from siyu.tasks.cadence import CadenceAlert, iso_week, queue_alerts
from siyu.tasks.outbox import (
    PENDING,
    SENDING,
    DrainReport,
    OutcomeUnknown,
    PlannedCall,
    RowRefused,
    drain,
    enqueue,
)
from siyu.tasks.working_days import add_working_days

CHINA = ZoneInfo("Asia/Shanghai")
# The outbox kind of a payout (the column holds 32 characters: not the API path).
PAYOUT_KIND = "reward/redpack"
PAYOUT_PLAN = "rewards"
_CHUNK = 5_000


def bill_number(activity_key: str, round_: int, member: str) -> str:
    """The payout's bill number: 28 characters of 0-9a-zA-Z fixed by the win's identity."""
    digest = hashlib.sha256(f"{activity_key}|{round_}|{member}".encode()).hexdigest()
    return "R" + digest[:27]


@dataclass
class GrantReport:
    """What granting one activity's winners did (counts and fen, no member ids)."""

    winners: int = 0
    granted: int = 0
    over_budget: dict[str, int] = field(default_factory=dict)
    already: int = 0  # wins a rerun found in the ledger already
    granted_fen: int = 0
    once_only: int = 0  # winners of a once-per-member script who won it before
    alerts: int = 0  # alerts to ops queued (over budget, budget passed 80 %)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _spent(session: Session, chat_ids: list[str], week: str, month: str) -> tuple[pd.Series, int]:
    """Fen granted or paid per group this week, and the programme's this month."""
    counted = RewardWin.status.in_([GRANTED, PAID])
    per_group: dict[str, int] = {}
    for start in range(0, len(chat_ids), _CHUNK):
        rows = session.execute(
            sa.select(RewardWin.chat_id, sa.func.sum(RewardWin.amount_fen))
            .where(
                RewardWin.chat_id.in_(chat_ids[start : start + _CHUNK]),
                RewardWin.week == week,
                counted,
            )
            .group_by(RewardWin.chat_id)
        )
        per_group.update({chat: int(total or 0) for chat, total in rows})
    month_total = session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(RewardWin.amount_fen), 0)).where(
            RewardWin.month == month, counted
        )
    )
    return pd.Series(per_group, dtype="int64"), int(month_total or 0)


def budget_check(
    wins: pd.DataFrame,
    *,
    group_spent: pd.Series,
    month_spent: int,
    group_week_budget: int,
    month_budget: int,
) -> pd.Series:
    """Per win, None (within budget) or the budget it would exceed; wins taken in order given."""
    before = wins["chat_id"].map(group_spent).fillna(0).astype("int64")
    running = wins.groupby("chat_id")["amount_fen"].cumsum() + before
    reason = pd.Series([None] * len(wins), index=wins.index, dtype=object)
    reason[running > group_week_budget] = GROUP_WEEK
    fits = reason.isna()
    month_running = wins["amount_fen"].where(fits, 0).cumsum() + month_spent
    reason[fits & (month_running > month_budget)] = PROGRAMME_MONTH
    return reason


def grant_wins(
    session: Session,
    winners: pd.DataFrame,
    script: ActivityScript,
    library: ActivityLibrary,
    rules: SendRules,
    *,
    activity_key: str,
    won_at: dt.datetime,
) -> GrantReport:
    """Record winners (chat_id, member, round, rank) in the reward ledger, budgets checked first.

    Idempotent: a win already in the ledger is kept as it is (its bill number never changes).
    Runs in the caller's transaction.
    """
    report = GrantReport(winners=len(winners))
    if winners.empty:
        return report
    day = won_at.astimezone(CHINA).date()
    week, month = iso_week(day), day.strftime("%Y-%m")
    wins = winners.sort_values(["round", "chat_id", "rank"], kind="mergesort")
    # One win a member a round, whichever group they won it in first.
    wins = wins.drop_duplicates(["round", "member"], keep="first").reset_index(drop=True)
    wins["billno"] = [
        bill_number(activity_key, int(r), m)
        for r, m in zip(wins["round"], wins["member"], strict=True)
    ]
    known: set[str] = set()
    bills = wins["billno"].tolist()
    for start in range(0, len(bills), _CHUNK):
        known.update(
            session.scalars(
                sa.select(RewardWin.billno).where(
                    RewardWin.billno.in_(bills[start : start + _CHUNK])
                )
            )
        )
    report.already = int(wins["billno"].isin(known).sum())
    wins = wins[~wins["billno"].isin(known)].reset_index(drop=True)
    if script.once_per_member and not wins.empty:
        before = _won_before(session, script.name, wins["member"].tolist())
        report.once_only = int(wins["member"].isin(before).sum())
        wins = wins[~wins["member"].isin(before)].reset_index(drop=True)
    if wins.empty:
        return report
    wins["amount_fen"] = script.reward_fen
    group_spent, month_spent = _spent(session, sorted(set(wins["chat_id"])), week, month)
    reason = budget_check(
        wins,
        group_spent=group_spent,
        month_spent=month_spent,
        group_week_budget=library.group_week_budget_fen,
        month_budget=library.programme_month_budget_fen,
    )
    pay_due = _pay_days(wins, day, script, rules)
    records = [
        {
            "activity_key": activity_key,
            "round": int(row.round),
            "member": row.member,
            "chat_id": row.chat_id,
            "script": script.name,
            "amount_fen": int(row.amount_fen),
            "billno": row.billno,
            "status": GRANTED if why is None else OVER_BUDGET,
            "reason": why,
            "week": week,
            "month": month,
            "won_at": won_at,
            "pay_due": due,
        }
        for row, why, due in zip(
            wins.itertuples(index=False), reason.tolist(), pay_due, strict=True
        )
    ]
    insert = insert_or_update(session.connection().dialect.name, RewardWin).on_conflict_do_nothing()
    for start in range(0, len(records), _CHUNK):
        session.execute(insert, records[start : start + _CHUNK])
    over = Counter(r["reason"] for r in records if r["reason"])
    report.over_budget = dict(sorted(over.items()))
    report.granted = len(records) - sum(over.values())
    report.granted_fen = sum(r["amount_fen"] for r in records if r["reason"] is None)
    alerts = budget_alerts(
        session, library, records, activity_key=activity_key, week=week, month=month
    )
    report.alerts = queue_alerts(session, alerts)
    return report


def _won_before(session: Session, script: str, members: list[str]) -> set[str]:
    """Members who hold a win of `script` already (any activity, any status)."""
    found: set[str] = set()
    for start in range(0, len(members), _CHUNK):
        found.update(
            session.scalars(
                sa.select(RewardWin.member).where(
                    RewardWin.script == script,
                    RewardWin.member.in_(members[start : start + _CHUNK]),
                )
            )
        )
    return found


def _pay_days(
    wins: pd.DataFrame, won_day: dt.date, script: ActivityScript, rules: SendRules
) -> list[dt.date]:
    """Each win's pay day: N working days after the day the member played (else the win's day).

    A join hook drawn the morning after pays five working days after the day of the play.
    """
    if script.pay_after_working_days == 0 or "answered_at" not in wins.columns:
        return [add_working_days(won_day, script.pay_after_working_days, rules)] * len(wins)
    played = pd.to_datetime(wins["answered_at"], utc=True)
    days = [won_day if pd.isna(at) else at.tz_convert(CHINA).date() for at in played.tolist()]
    cache: dict[dt.date, dt.date] = {}
    for d in set(days):
        cache[d] = add_working_days(min(d, won_day), script.pay_after_working_days, rules)
    return [cache[d] for d in days]


def budget_alerts(
    session: Session,
    library: ActivityLibrary,
    records: list[dict[str, Any]],
    *,
    activity_key: str,
    week: str,
    month: str,
) -> list[CadenceAlert]:
    """Alerts for what this grant did: wins over budget, a week or month past the alert share.

    Keyed once per activity (over budget), per group and week, and per month (past 80 %).
    """
    alerts: list[CadenceAlert] = []
    share = library.budget_alert_share
    over = [r for r in records if r["reason"]]
    if over:
        counts = Counter(r["reason"] for r in over)
        groups = sorted({r["chat_id"] for r in over})
        alerts.append(
            CadenceAlert(
                key=f"over-budget:{activity_key}",
                event="siyu.rewards.over-budget",
                resource=f"siyu.group-cadence.activity.{activity_key}",
                subject=(
                    f"{len(over)} wins of {activity_key} ({week}) over budget, recorded unpaid "
                    f"({sum(r['amount_fen'] for r in over) / 100:.2f} yuan)"
                ),
                next_step=(
                    "raise group_week_budget_fen or programme_month_budget_fen in the Activity "
                    "Library block before the next activity; these wins stay unpaid unless "
                    "paid by hand"
                ),
                details={
                    "activity": activity_key,
                    "week": week,
                    "month": month,
                    "wins_over_budget": len(over),
                    "by_budget": dict(sorted(counts.items())),
                    "unpaid_fen": sum(r["amount_fen"] for r in over),
                    "groups": len(groups),
                    "groups_masked": [mask_chat_id(c) for c in groups[:50]],
                },
            )  # fmt: skip
        )
    chats = sorted({r["chat_id"] for r in records})
    group_spent, month_spent = _spent(session, chats, week, month)
    group_line = share * library.group_week_budget_fen
    for chat, spent in group_spent.items():
        if library.group_week_budget_fen and spent >= group_line:
            alerts.append(
                CadenceAlert(
                    key=f"budget-80:group:{chat}:{week}",
                    event="siyu.rewards.budget-80",
                    resource=f"siyu.group-cadence.budget.group.{chat}.{week}",
                    subject=(
                        f"group {mask_chat_id(chat)} has spent {spent / 100:.2f} of its "
                        f"{library.group_week_budget_fen / 100:.2f} yuan budget for {week}"
                    ),
                    next_step=(
                        "further wins this week beyond the budget are recorded unpaid: raise "
                        "group_week_budget_fen in the Activity Library block if they should be paid"
                    ),
                    details={
                        "scope": "group_week",
                        "group": mask_chat_id(chat),
                        "week": week,
                        "spent_fen": int(spent),
                        "budget_fen": library.group_week_budget_fen,
                        "share": round(spent / library.group_week_budget_fen, 3),
                        "activity": activity_key,
                    },
                )  # fmt: skip
            )
    month_budget = library.programme_month_budget_fen
    if month_budget and month_spent >= share * month_budget:
        alerts.append(
            CadenceAlert(
                key=f"budget-80:month:{month}",
                event="siyu.rewards.budget-80",
                resource=f"siyu.group-cadence.budget.month.{month}",
                subject=(
                    f"the rewards programme has spent {month_spent / 100:.2f} of its "
                    f"{month_budget / 100:.2f} yuan budget for {month}"
                ),
                next_step=(
                    "wins beyond the month's budget are recorded unpaid: raise "
                    "programme_month_budget_fen in the Activity Library block, or plan fewer prizes"
                ),
                details={
                    "scope": "programme_month",
                    "month": month,
                    "spent_fen": month_spent,
                    "budget_fen": month_budget,
                    "share": round(month_spent / month_budget, 3),
                    "activity": activity_key,
                },
            )  # fmt: skip
        )
    return alerts


def mask_chat_id(chat_id: str) -> str:
    """A group's id as people read it in alerts: "wrSeedChat0001" -> "wrSe****0001"."""
    text = str(chat_id)
    return text if len(text) <= 8 else f"{text[:4]}****{text[-4:]}"


# -- settlement: granted wins whose pay day has come, paid through the outbox ---------------------


@dataclass
class SettleReport:
    """What one settlement did: payouts by outcome (counts and fen only)."""

    due: int = 0
    queued: int = 0
    paid: int = 0
    paid_fen: int = 0
    reconciled: int = 0
    resent: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # err_code -> wins
    later: dict[str, int] = field(default_factory=dict)  # limits of the day: paid another day
    calls: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _open_keys(session: Session) -> set[str]:
    return set(
        session.scalars(
            sa.select(OutboxEntry.key).where(
                OutboxEntry.kind == PAYOUT_KIND, OutboxEntry.status.in_([PENDING, SENDING])
            )
        )
    )


def queue_due_payouts(session: Session, as_of: dt.datetime) -> tuple[int, int]:
    """Outbox entries for granted wins due by as-of's local day; returns (due, queued).

    The entry key is the bill number and the day: a win refused for a day's limit is tried
    again another day under a new entry, with the same bill number (re-entrant at WeChat Pay).
    """
    day = as_of.astimezone(CHINA).date()
    due = session.execute(
        sa.select(
            RewardWin.id, RewardWin.billno, RewardWin.member, RewardWin.amount_fen, RewardWin.script
        )
        .where(RewardWin.status == GRANTED, RewardWin.pay_due <= day)
        .order_by(RewardWin.id)
    ).all()
    open_bills = {key.split(":")[1] for key in _open_keys(session)}
    calls = [
        PlannedCall(
            kind=PAYOUT_KIND,
            key=f"redpack:{billno}:{day.isoformat()}",
            target=billno,
            payload={
                "win_id": win_id,
                "billno": billno,
                "member": member,
                "amount_fen": amount,
                "act_name": script,
            },
        )  # fmt: skip
        for win_id, billno, member, amount, script in due
        if billno not in open_bills
    ]
    queued = enqueue(session, f"rewards:{day.isoformat()}", calls, plan=PAYOUT_PLAN)
    return len(due), queued


def open_payout_batches(engine: sa.Engine) -> list[str]:
    with Session(engine) as session:
        rows = session.execute(
            sa.select(OutboxEntry.batch, sa.func.min(OutboxEntry.id))
            .where(OutboxEntry.kind == PAYOUT_KIND, OutboxEntry.status.in_([PENDING, SENDING]))
            .group_by(OutboxEntry.batch)
            .order_by(sa.func.min(OutboxEntry.id))
        )
        return [batch for batch, _ in rows]


OpenId = Callable[[str], str]


@dataclass
class _Payer:
    """The drain callbacks of payouts: pay, ask, and record in the reward ledger."""

    pay: PayClient
    openid_of: OpenId
    as_of: dt.datetime
    report: SettleReport

    def drain(self, engine: sa.Engine, batch: str, **options: Any) -> DrainReport:
        """Drain one payout batch of the outbox through these callbacks."""
        return drain(
            engine,
            batch,
            send=self.send,
            reconcile=self.reconcile,
            on_done=self.on_done,
            on_row_failed=self.on_row_failed,
            **options,
        )

    def send(self, entry: OutboxEntry) -> dict[str, Any]:
        p = entry.payload
        try:
            openid = self.openid_of(p["member"])
        except WeComUnavailable as exc:
            raise OutcomeUnknown(str(exc)) from exc  # nothing paid yet: the reconcile finds none
        except WeComError as exc:
            raise RowRefused(exc.errcode, "OPENID_ERROR: no WeChat openid for this member") from exc
        try:
            paid = self.pay.send_redpack(
                billno=p["billno"],
                openid=openid,
                amount_fen=p["amount_fen"],
                act_name=p["act_name"],
            )
        except PayOutcomeUnknown as exc:
            raise OutcomeUnknown(str(exc)) from exc
        except PayRefused as exc:
            raise RowRefused(None, f"{exc.err_code}: {exc.err_code_des}") from exc
        return {"send_listid": paid.send_listid, "total_amount": paid.total_amount}

    def reconcile(self, entry: OutboxEntry) -> dict[str, Any] | None:
        try:
            found = self.pay.query_redpack(entry.payload["billno"])
        except (PayNotFound, PayOutcomeUnknown, PayRefused):
            # Not found (or cannot tell): sending again under the same bill number pays at most once.
            return None
        return {
            "send_listid": found.send_listid,
            "total_amount": found.total_amount,
            "reconciled": True,
        }

    def on_done(self, session: Session, entry: OutboxEntry) -> None:
        result = entry.result or {}
        moved = session.execute(
            sa.update(RewardWin)
            .where(RewardWin.id == entry.payload["win_id"], RewardWin.status == GRANTED)
            .values(
                status=PAID, paid_at=self.as_of, send_listid=result.get("send_listid"), reason=None
            )
        )
        if moved.rowcount:
            self.report.paid += 1
            self.report.paid_fen += int(entry.payload["amount_fen"])

    def on_row_failed(self, session: Session, entry: OutboxEntry, exc: RowRefused) -> None:
        code = exc.reason.split(":", 1)[0]
        refused = PayRefused(code, "")
        if refused.later:
            # A limit of the day: the win stays granted and is tried again another day.
            session.execute(
                sa.update(RewardWin)
                .where(RewardWin.id == entry.payload["win_id"])
                .values(reason=code)
            )
            self.report.later[code] = self.report.later.get(code, 0) + 1
            return
        session.execute(
            sa.update(RewardWin)
            .where(RewardWin.id == entry.payload["win_id"], RewardWin.status == GRANTED)
            .values(status=FAILED, reason=code[:64])
        )
        self.report.failed[code] = self.report.failed.get(code, 0) + 1


def settle_rewards(
    engine: sa.Engine,
    pay: PayClient,
    openid_of: OpenId,
    *,
    as_of: dt.datetime,
    in_flight_seconds: float = 30.0,
) -> SettleReport:
    """Pay every granted win due by as-of, and finish what an interrupted settlement left."""
    report = SettleReport()
    with Session(engine) as session, session.begin():
        report.due, report.queued = queue_due_payouts(session, as_of)
    payer = _Payer(pay, openid_of, as_of, report)
    drained = DrainReport()
    for batch in open_payout_batches(engine):
        drained = drained.merge(payer.drain(engine, batch, in_flight_seconds=in_flight_seconds))
    report.reconciled, report.resent = drained.reconciled, drained.resent
    report.calls = dict(sorted(pay.calls.items()))
    return report


def reward_totals(engine: sa.Engine) -> dict[str, int]:
    """Wins by status across the ledger (for artifacts and tests)."""
    with Session(engine) as session:
        rows = session.execute(
            sa.select(RewardWin.status, sa.func.count()).group_by(RewardWin.status)
        )
        return {status: n for status, n in rows}


# -- ops' resend of one failed payout -------------------------------------------------------------

RESENT_BY_OPS = "resent by ops"


@dataclass
class Resend:
    """What a resend of one payout came to: the win's status after it, and why."""

    status: str
    reason: str | None
    reconciled: int  # 1: WeChat Pay had it already (recorded paid, not sent again)
    report: SettleReport


def _resend_entry(session: Session, win: RewardWin) -> str:
    """The outbox batch of this bill's resend: the open one, or a new entry left `sending`.

    The bill number is the payout's identity at WeChat Pay: every resend reuses it, so it is
    paid at most once however often ops press the button. A new entry is `sending` without a
    claim, as a payout a crash interrupted: the drain asks WeChat Pay about it before sending.
    """
    prefix = f"redpack:{win.billno}:resend:"
    entries = list(
        session.scalars(
            sa.select(OutboxEntry).where(
                OutboxEntry.kind == PAYOUT_KIND, OutboxEntry.key.startswith(prefix)
            )
        )
    )
    for entry in entries:
        if entry.status in (PENDING, SENDING):
            return entry.batch
    batch = f"rewards:resend:{win.billno}"
    key = f"{prefix}{len(entries) + 1}"
    call = PlannedCall(
        kind=PAYOUT_KIND,
        key=key,
        target=win.billno,
        payload={
            "win_id": win.id,
            "billno": win.billno,
            "member": win.member,
            "amount_fen": win.amount_fen,
            "act_name": win.script,
        },
    )
    enqueue(session, batch, [call], plan=PAYOUT_PLAN)
    session.execute(
        sa.update(OutboxEntry)
        .where(OutboxEntry.key == key, OutboxEntry.status == PENDING)
        .values(status=SENDING, claimed_at=None)
    )
    return batch


def resend_payout(
    engine: sa.Engine, billno: str, pay: PayClient, openid_of: OpenId, as_of: dt.datetime
) -> Resend:
    """Resend the failed (or granted) payout `billno`, asking WeChat Pay about it first.

    Its entry waits `sending` without a claim, as a crashed payout's would: the drain asks
    WeChat Pay about it first (rewards-settle's reconcile), and sends only if it has none.
    """
    report = SettleReport()
    payer = _Payer(pay, openid_of, as_of, report)
    with Session(engine) as session, session.begin():
        win = session.scalar(sa.select(RewardWin).where(RewardWin.billno == billno))
        win.status, win.reason = GRANTED, RESENT_BY_OPS
        batch = _resend_entry(session, win)
    drained = payer.drain(engine, batch)
    with Session(engine) as session:
        win = session.scalar(sa.select(RewardWin).where(RewardWin.billno == billno))
        return Resend(win.status, win.reason, drained.reconciled, report)
