"""Delivery: plan wanted sends, reserve and queue them in one transaction, then send them once.

The one entry point of the conversion path and the group cadence is `send_batch`. It asks the
quota planner, writes the ledger rows (reserve) and the outbox rows in ONE transaction, and
drains the outbox:

- `externalcontact/add_msg_template` per (sender, content variant): up to 10,000 customers a
  message (chat_type single) or the sender's groups (chat_type group). It drains to `created`:
  the message waits for the employee, and tracking (tasks/tracking.py) settles it later.
- `message/send` to the employee for the employee_reminder channel: the prepared text and
  material with a one-line instruction, listing the sender's targets. WeCom tracks it no
  further, so its ledger rows are delivered once the app message is sent.
- Deferred rows are held in the outbox (kind `sends/held`, never drained) with their content,
  so tracking can plan them again when their time comes.

Outbox keys carry the business identity (channel, target kind, programme, step, period,
sender, variant, chunk), never the text: a text edited between a crash and its rerun finds the
entry it already has, and `find_mass_message` finds the message by the key marked in its text.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from siyu.blocks.send_rules import SendRules
from siyu.blocks.wecom import (
    WeComClient,
    WeComConfigError,
    WeComError,
    WeComUnavailable,
)
from siyu.schemas.ledger import (
    CREATED,
    DELIVERED,
    EMPLOYEE_REMINDER,
    FAILED,
    GROUP,
    NOT_A_CONTACT,
    REFUSED,
    Send,
)
from siyu.schemas.models import OutboxEntry
from siyu.tasks.ledger import ledger_counts, reserve, settle
from siyu.tasks.outbox import (
    CREATED as OUTBOX_CREATED,
)
from siyu.tasks.outbox import (
    DONE,
    PENDING,
    SENDING,
    DrainReport,
    OutcomeUnknown,
    PlannedCall,
    RowRefused,
    drain,
    enqueue,
)
from siyu.tasks.quality import mask_customer_id
from siyu.tasks.quota import LedgerCounts, PlanResult, plan_sends

MASS_API = "externalcontact/add_msg_template"
APP_API = "message/send"
HELD_KIND = "sends/held"  # deferred rows and their content, waiting for their time
OUTBOX_PLAN = "sends"
VARIANT = "variant"
DEFAULT_VARIANT = "default"
MAX_SINGLE_TARGETS = 10_000  # WeCom's limit of external_userid per add_msg_template
# A reconcile looks for the message from this long before it was planned to this long after
# now: the platform's clock and ours may differ a little.
RECONCILE_MARGIN = dt.timedelta(hours=1)
DEFAULT_INSTRUCTION = "请将以下内容发送给列出的客户或客户群，发送后无需回复。"
_ID_CHUNK = 5_000


class MessageContent(BaseModel):
    """What one content variant says: the text, its attachments, and the employee's instruction."""

    text: str = Field(min_length=1, description="The message text customers read")
    attachments: list[dict[str, Any]] = Field(
        default_factory=list, description="WeCom attachments (image, link, miniprogram, ...)"
    )
    instruction: str = Field(
        default=DEFAULT_INSTRUCTION,
        description="One line for the employee when the content travels as a reminder",
    )


Contents = Mapping[str, MessageContent]


@dataclass
class SendReport:
    """What one send_batch did: counts only, never a customer id."""

    dry_run: bool
    wanted: int
    plan: dict[str, int]  # the planner's answer: fits, deferred:<reason>, skipped:<reason>
    ledger: dict[str, int] = field(default_factory=dict)  # the batch's fits now, status[:reason]
    calls: dict[str, int] = field(default_factory=dict)  # API -> calls made by the drains
    queued: int = 0  # outbox entries written
    reconciled: int = 0  # lost replies found on WeCom: settled without a second message
    calendar_warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _contents(content: MessageContent | Contents) -> dict[str, MessageContent]:
    if isinstance(content, MessageContent):
        return {DEFAULT_VARIANT: content}
    if not content:
        raise ValueError("send_batch needs at least one content variant")
    return {str(name): MessageContent.model_validate(c) for name, c in content.items()}


def _with_variant(wanted: pd.DataFrame, contents: Mapping[str, MessageContent]) -> pd.DataFrame:
    frame = wanted.copy()
    if VARIANT not in frame.columns:
        if len(contents) != 1:
            raise ValueError(
                "wanted sends need a `variant` column naming their content when there are "
                f"several variants ({', '.join(sorted(contents))})"
            )
        frame[VARIANT] = next(iter(contents))
    frame[VARIANT] = frame[VARIANT].fillna(DEFAULT_VARIANT).astype(str)
    unknown = sorted(set(frame[VARIANT]) - set(contents))
    if unknown:
        raise ValueError(
            f"wanted sends name content variants without content: {', '.join(unknown)}"
        )
    return frame


# -- queueing: the ledger rows and the outbox rows of one plan, in the caller's transaction ------


def _next_free(session: Session, prefix: str) -> int:
    """The first chunk number no outbox key under `prefix` uses yet (a later plan's messages)."""
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ":%"
    keys = session.scalars(
        sa.select(OutboxEntry.key).where(OutboxEntry.key.like(pattern, escape="\\"))
    )
    used = [int(k.rsplit(":", 1)[1]) for k in keys if k.rsplit(":", 1)[1].isdigit()]
    return max(used, default=-1) + 1


def _checked_key(key: str) -> str:
    if len(key) > 255:
        raise ValueError(f"outbox key too long ({len(key)} > 255): shorten the programme or step")
    return key


_GROUP_BY = ["channel", "target_kind", "programme", "step", "period", "sender", VARIANT]


def _assign_keys(session: Session, frame: pd.DataFrame, head: str) -> pd.Series:
    """An outbox key per row: one per (channel, kind, programme, step, period, sender, variant)
    and chunk of at most 10,000 customers."""
    keys = pd.Series(index=frame.index, dtype=object)
    if frame.empty:
        return keys
    for group, rows in frame.sort_values("target_id").groupby(_GROUP_BY, sort=True):
        prefix = head + ":" + ":".join(str(part) for part in group)
        first = _next_free(session, prefix)
        size = MAX_SINGLE_TARGETS if group[1] != GROUP else len(rows)
        for number, start in enumerate(range(0, len(rows), max(size, 1))):
            chunk = rows.index[start : start + size]
            keys[chunk] = _checked_key(f"{prefix}:{first + number}")
    return keys


def _ids_by_key(session: Session, keys: list[str]) -> dict[str, list[tuple[int, str]]]:
    """(ledger id, target id) of the rows each outbox key sends, in target order."""
    found: dict[str, list[tuple[int, str]]] = {}
    for start in range(0, len(keys), _ID_CHUNK):
        rows = session.execute(
            sa.select(Send.outbox_key, Send.id, Send.target_id)
            .where(Send.outbox_key.in_(keys[start : start + _ID_CHUNK]))
            .order_by(Send.target_id)
        )
        for key, ledger_id, target in rows:
            found.setdefault(key, []).append((ledger_id, target))
    return found


def _reminder_text(content: MessageContent, target_kind: str, targets: list[str]) -> str:
    """The app message to the employee: instruction, the content, and whom to send it to."""
    if target_kind == GROUP:
        shown = "、".join(targets)
        whom = f"客户群（{len(targets)}个）：{shown}"
    else:
        # The employee reads this: customer ids masked, as everywhere people read.
        shown = "、".join(mask_customer_id(t) for t in targets[:50])
        more = f" 等{len(targets)}位" if len(targets) > 50 else f"（{len(targets)}位）"
        whom = f"客户{more}：{shown}"
    material = f"\n附件：{len(content.attachments)}个" if content.attachments else ""
    return f"{content.instruction}\n发送对象：{whom}\n—— 内容 ——\n{content.text}{material}"


@dataclass(frozen=True)
class Queued:
    """What queue_plan wrote: outbox entries, and the keys that send the plan's fits."""

    entries: int
    fit_keys: list[str]


def queue_plan(
    session: Session,
    plan: PlanResult,
    content_of: Callable[[str, str, str, str], MessageContent],
    *,
    playbook: str,
    version: str,
    export_checksum: str | None,
) -> Queued:
    """Reserve `plan` in the ledger and write its outbox rows, in the caller's transaction.

    `content_of(programme, step, period, variant)` gives each group's content. Raises when another plan took one of the keys meanwhile (the
    caller's transaction must then roll back and plan again).
    """
    fits = plan.fits.copy()
    deferred = plan.deferred.copy()
    fits["outbox_key"] = _assign_keys(session, fits, "sends")
    deferred["outbox_key"] = _assign_keys(session, deferred, "held")
    stored = PlanResult(
        fits=fits,
        deferred=deferred,
        skipped=plan.skipped,
        as_of=plan.as_of,
        calendar_warnings=plan.calendar_warnings,
    )
    reserve(session, stored, playbook=playbook, version=version, export_checksum=export_checksum)

    keys = sorted(set(fits["outbox_key"].dropna()) | set(deferred["outbox_key"].dropna()))
    ids = _ids_by_key(session, keys)
    stamp = plan.as_of.strftime("%Y%m%dT%H%M%S%z")
    calls: dict[str, list[PlannedCall]] = {}
    for frame, held in ((fits, False), (deferred, True)):
        if frame.empty:
            continue
        for key, rows in frame.groupby("outbox_key", sort=True):
            first = rows.iloc[0]
            content = content_of(first["programme"], first["step"], first["period"], first[VARIANT])
            pairs = ids.get(key, [])
            payload: dict[str, Any] = {
                "ledger_ids": [i for i, _ in pairs],
                "targets": [t for _, t in pairs],
                "sender": first["sender"],
                "channel": first["channel"],
                "target_kind": first["target_kind"],
                "chat_type": "group" if first["target_kind"] == GROUP else "single",
                "planned_at": plan.as_of.isoformat(),
            }
            if held:
                kind, batch = HELD_KIND, "sends:held"
                payload.update(
                    variant=first[VARIANT],
                    content=content.model_dump(),
                    playbook=playbook,
                    version=version,
                )
            elif first["channel"] == EMPLOYEE_REMINDER:
                kind, batch = APP_API, f"sends:app:{stamp}"
                payload["text"] = _reminder_text(content, first["target_kind"], payload["targets"])
            else:
                kind, batch = MASS_API, f"sends:mass:{stamp}"
                payload.update(text=content.text, attachments=content.attachments)
            calls.setdefault(batch, []).append(
                PlannedCall(kind=kind, key=key, target=first["sender"], payload=payload)
            )
    written = 0
    for batch, planned in calls.items():
        fresh = enqueue(session, batch, planned, plan=OUTBOX_PLAN)
        if fresh != len(planned):
            raise RuntimeError(
                f"another plan wrote {len(planned) - fresh} of these outbox keys first: "
                "roll back and plan again"
            )
        written += fresh
    return Queued(entries=written, fit_keys=sorted(set(fits["outbox_key"].dropna())))


# -- sending: drain every open batch of sends -----------------------------------------------------


def _refusal(exc: WeComError) -> Exception:
    """A WeCom error as the outbox understands it."""
    if isinstance(exc, WeComConfigError):
        return exc  # fix the block: stop the drain, the entry is reconciled next time
    if isinstance(exc, WeComUnavailable):
        # Busy past the retries or no answer: it may have landed, so reconcile, never resend blind.
        return OutcomeUnknown(str(exc))
    return RowRefused(exc.errcode, exc.errmsg)


@dataclass
class _Sender:
    """The drain callbacks of the sends' outbox entries for one client and as-of time."""

    client: WeComClient
    as_of: dt.datetime
    calls: Counter[str] = field(default_factory=Counter)

    def send(self, entry: OutboxEntry) -> dict[str, Any] | None:
        p = entry.payload
        self.calls[entry.kind] += 1
        try:
            if entry.kind == APP_API:
                reply = self.client.send_app_message(
                    [p["sender"]], msgtype="text", content={"content": p["text"]}
                )
                return {"msgid": reply.msgid, "invalid": reply.invalid_users()}
            single = p["chat_type"] == "single"
            result = self.client.add_msg_template(
                sender=p["sender"],
                chat_type=p["chat_type"],
                external_userid=p["targets"] if single else (),
                chat_id_list=() if single else p["targets"],
                text=p["text"],
                attachments=p.get("attachments") or (),
                key=entry.key,
            )
        except WeComError as exc:
            raise _refusal(exc) from exc
        return {"msgid": result.msgid, "fail_list": list(result.fail_list)}

    def reconcile(self, entry: OutboxEntry) -> dict[str, Any] | bool | None:
        if entry.kind == APP_API:
            # WeCom has no lookup of app messages: a lost reply is sent again (the employee may
            # read it twice; it spends no customer's quota).
            return None
        p = entry.payload
        planned = dt.datetime.fromisoformat(p["planned_at"])
        self.calls["externalcontact/get_groupmsg_list_v2"] += 1
        found = self.client.find_mass_message(
            p["sender"],
            (planned - RECONCILE_MARGIN).timestamp(),
            (max(planned, self.as_of) + RECONCILE_MARGIN).timestamp(),
            entry.key,
            chat_type=p["chat_type"],
        )
        if found is None:
            return None
        # WeCom's fail_list is gone with the reply; tracking reads status 2 from the results.
        return {"msgid": found.msgid, "fail_list": [], "reconciled": True}

    def on_done(self, session: Session, entry: OutboxEntry) -> None:
        p, result = entry.payload, entry.result or {}
        by_target = dict(zip(p["targets"], p["ledger_ids"], strict=True))
        if entry.kind == APP_API:
            msgid = result.get("msgid") or f"app:{entry.id}"
            invalid = p["sender"] in set(result.get("invalid") or [])
            ids = p["ledger_ids"]
            settle(session, ids, CREATED, at=self.as_of, msgid=msgid)
            if invalid:
                settle(session, ids, FAILED, at=self.as_of, reason=REFUSED)
            else:
                settle(session, ids, DELIVERED, at=self.as_of)
            return
        failed = [by_target[t] for t in result.get("fail_list") or [] if t in by_target]
        if failed:
            settle(session, failed, FAILED, at=self.as_of, reason=NOT_A_CONTACT)
        others = sorted(set(p["ledger_ids"]) - set(failed))
        settle(session, others, CREATED, at=self.as_of, msgid=result["msgid"])

    def on_row_failed(self, session: Session, entry: OutboxEntry, exc: RowRefused) -> None:
        settle(session, entry.payload["ledger_ids"], FAILED, at=self.as_of, reason=REFUSED)


def open_send_batches(engine: sa.Engine) -> list[tuple[str, str]]:
    """(batch, kind) of sends with entries pending or in flight, oldest first."""
    with Session(engine) as session:
        rows = session.execute(
            sa.select(OutboxEntry.batch, OutboxEntry.kind, sa.func.min(OutboxEntry.id))
            .where(
                OutboxEntry.plan == OUTBOX_PLAN,
                OutboxEntry.kind.in_([MASS_API, APP_API]),
                OutboxEntry.status.in_([PENDING, SENDING]),
            )
            .group_by(OutboxEntry.batch, OutboxEntry.kind)
            .order_by(sa.func.min(OutboxEntry.id))
        )
        return [(batch, kind) for batch, kind, _ in rows]


def drain_sends(
    engine: sa.Engine,
    client: WeComClient,
    *,
    as_of: dt.datetime,
    in_flight_seconds: float = 30.0,
) -> tuple[DrainReport, Counter[str]]:
    """Send every open entry of the sends (this run's and any a crash left); report and calls."""
    sender = _Sender(client, as_of)
    report = DrainReport()
    for batch, kind in open_send_batches(engine):
        report = report.merge(
            drain(
                engine,
                batch,
                send=sender.send,
                reconcile=sender.reconcile,
                on_done=sender.on_done,
                on_row_failed=sender.on_row_failed,
                in_flight_seconds=in_flight_seconds,
                done_status=OUTBOX_CREATED if kind == MASS_API else DONE,
            )
        )
    return report, sender.calls


def _fits_outcome(engine: sa.Engine, keys: list[str]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    with Session(engine) as session:
        for start in range(0, len(keys), _ID_CHUNK):
            rows = session.execute(
                sa.select(Send.status, Send.reason, sa.func.count())
                .where(Send.outbox_key.in_(keys[start : start + _ID_CHUNK]))
                .group_by(Send.status, Send.reason)
            )
            for status, reason, n in rows:
                counts[f"{status}:{reason}" if reason else status] += n
    return dict(sorted(counts.items()))


def send_batch(
    engine: sa.Engine,
    client: WeComClient,
    wanted: pd.DataFrame,
    content: MessageContent | Contents,
    *,
    rules: SendRules,
    as_of: dt.datetime,
    playbook: str,
    version: str,
    export_checksum: str | None = None,
    dry_run: bool = False,
    in_flight_seconds: float = 30.0,
) -> SendReport:
    """Plan `wanted` at `as_of`, reserve and queue what fits in one transaction, and send it.

    `wanted` has the planner's columns (tasks/quota.py WANTED_COLUMNS) and, with several
    content variants, a `variant` column naming each row's. A dry run asks the planner the
    same question and writes nothing. Whatever an earlier, interrupted run left in the outbox
    is sent (or reconciled) too.
    """
    contents = _contents(content)
    frame = _with_variant(wanted, contents)
    with Session(engine) as session:
        counts = ledger_counts(session, frame, as_of=as_of, rules=rules) if len(frame) else None
        plan = plan_sends(frame, rules, as_of, counts or LedgerCounts.empty())
        report = SendReport(
            dry_run=dry_run,
            wanted=len(frame),
            plan=plan.summary(),
            calendar_warnings=list(plan.calendar_warnings),
        )
        if dry_run:
            session.rollback()
            return report
        queued = queue_plan(
            session,
            plan,
            lambda _p, _s, _per, variant: contents[variant],
            playbook=playbook,
            version=version,
            export_checksum=export_checksum,
        )
        session.commit()
    report.queued = queued.entries
    drained, calls = drain_sends(engine, client, as_of=as_of, in_flight_seconds=in_flight_seconds)
    report.calls = dict(sorted(calls.items()))
    report.reconciled = drained.reconciled
    report.ledger = _fits_outcome(engine, queued.fit_keys)
    return report
