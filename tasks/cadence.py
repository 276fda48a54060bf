"""The weekly cadence's slots: which groups a slot serves, product rotation, and the sends to their owners.

A slot run serves every group on the template at once: the roster comes from one
`groupchat/list` per owner, products are picked for all groups in a few frame operations, and
the sends go through the send layer in one batch: by default one reminder (an app message) per
owner listing all their groups with each group's prepared content, a group mass template only
where the slot asks for it (the planner holds it to 4 a group a month). Every send is a ledger
row keyed (group, cadence, slot, week). A game slot also records its activity, whose winners
run is due the script's window and announcement delay later. A group ops paused gets its slot
recorded skipped with the reason, and nothing else.

Alerts to ops (dying groups, budgets) are Prefect events `siyu.*` that ops' automations post to
the robot. Each is an outbox entry under its business key (e.g. one per group and week), written
in the transaction that found it, so an alert goes once, also across a crash.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.group_cadence import (
    ActivityLibrary,
    ActivityScript,
    CadenceTemplate,
    ProductCalendar,
    Promotion,
    Slot,
)
from siyu.blocks.send_rules import SendRules
from siyu.blocks.wecom import WeComClient
from siyu.schemas.cadence import ASKED, Activity, ProductPlacement
from siyu.schemas.ledger import GROUP, GROUP_PAUSED, SKIPPED, Send
from siyu.schemas.models import OutboxEntry, insert_or_update
from siyu.tasks.delivery import MessageContent, SendReport, send_batch
from siyu.tasks.outbox import DrainReport, OutcomeUnknown, PlannedCall, drain, enqueue

CHINA = ZoneInfo("Asia/Shanghai")
ROSTER_COLUMNS = ["chat_id", "owner", "name"]
SendBatch = Callable[..., SendReport]
PAUSED_BY_OPS = GROUP_PAUSED  # the ledger reason of a paused group's slot


def programme_of(template: CadenceTemplate) -> str:
    return f"cadence:{template.name}"


def iso_week(day: dt.date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def week_monday(day: dt.date) -> dt.date:
    return day - dt.timedelta(days=day.weekday())


def slot_time(slot: Slot, day: dt.date, at: dt.time | None = None) -> dt.datetime:
    """The slot's local time in the week of `day`."""
    when = week_monday(day) + dt.timedelta(days=slot.weekday_index)
    return dt.datetime.combine(when, at or slot.time, tzinfo=CHINA)


def occurrences(
    template: CadenceTemplate, since: dt.datetime, until: dt.datetime
) -> list[tuple[dt.datetime, Slot]]:
    """Every (time, slot) of the template in (since, until], in time order."""
    found: list[tuple[dt.datetime, Slot]] = []
    day = week_monday(since.astimezone(CHINA).date())
    last = until.astimezone(CHINA).date()
    while day <= last:
        for slot in template.slots:
            at = slot_time(slot, day)
            if since < at <= until:
                found.append((at, slot))
        day += dt.timedelta(days=7)
    return sorted(found, key=lambda pair: (pair[0], pair[1].name))


# -- the roster: which groups follow the template ----------------------------------------------


def load_roster(client: WeComClient, template: CadenceTemplate) -> pd.DataFrame:
    """Groups on the template (chat_id, owner, name): one list call per owner, names if needed.

    Owners and tags choose without a call per group (WeCom lists no group tags: they are the
    template's `tagged_groups`); only a name pattern needs each group's name, one groupchat/get.
    """
    owners = template.owners or client.get_follow_user_list()
    rows = [
        (ref.chat_id, owner, "")
        for owner in owners
        for ref in client.iter_group_chats(owner_userids=[owner])
    ]
    roster = pd.DataFrame(rows, columns=ROSTER_COLUMNS).drop_duplicates("chat_id")
    roster["tags"] = [template.tags_of(c) for c in roster["chat_id"]]
    if template.group_tags:
        wanted = set(template.group_tags)
        roster = roster.loc[np.array([bool(t & wanted) for t in roster["tags"]], dtype=bool)]
    if template.name_patterns and len(roster):
        roster = roster.copy()
        roster["name"] = [client.get_group_chat(c, need_name=False).name for c in roster["chat_id"]]
    keep = np.array(
        [
            template.follows(o, n, t) if template.name_patterns else True
            for o, n, t in zip(roster["owner"], roster["name"], roster["tags"], strict=True)
        ],
        dtype=bool,
    )
    return roster.loc[keep, ROSTER_COLUMNS].reset_index(drop=True)


def served_groups(
    roster: pd.DataFrame, template: CadenceTemplate, slot: Slot, day: dt.date
) -> pd.DataFrame:
    """The roster minus groups that skip this slot or are paused, with each one's `wanted_at`."""
    skip = {o.chat_id for o in template.overrides if slot.name in o.skip} | template.paused()
    moved = {o.chat_id: o.times[slot.name] for o in template.overrides if slot.name in o.times}
    groups = roster[~roster["chat_id"].isin(skip)].copy()
    default = slot_time(slot, day)
    groups["wanted_at"] = [
        slot_time(slot, day, moved[c]) if c in moved else default for c in groups["chat_id"]
    ]
    return groups.reset_index(drop=True)


# -- products: the best in-window promotion each group has not seen lately -----------------------


def placement_history(session: Session, chat_ids: list[str], since: dt.date) -> pd.DataFrame:
    """(chat_id, promotion_id, day) placed since `since`."""
    rows: list[tuple[str, str, dt.date]] = []
    for start in range(0, len(chat_ids), 5_000):
        rows.extend(
            session.execute(
                sa.select(
                    ProductPlacement.chat_id, ProductPlacement.promotion_id, ProductPlacement.day
                ).where(
                    ProductPlacement.chat_id.in_(chat_ids[start : start + 5_000]),
                    ProductPlacement.day >= since,
                )
            ).tuples()
        )
    return pd.DataFrame(rows, columns=["chat_id", "promotion_id", "day"])


def pick_products(
    chat_ids: Iterable[str], calendar: ProductCalendar, day: dt.date, history: pd.DataFrame
) -> pd.Series:
    """Per group, the promotion to place: highest priority in window not seen in N days.

    When every in-window promotion was seen lately, the one seen longest ago goes again. A
    group no promotion targets gets none (missing).
    """
    chats = pd.DataFrame({"chat_id": list(dict.fromkeys(chat_ids))})
    live = [p for p in calendar.promotions if p.start <= day <= p.end]
    if chats.empty or not live:
        return pd.Series(index=pd.Index(chats["chat_id"]), dtype=object)
    promos = pd.DataFrame(
        {"promotion_id": [p.id for p in live], "priority": [p.priority for p in live]}
    )
    pairs = chats.merge(promos, how="cross")
    targeted = {p.id: p for p in live if p.groups}
    if targeted:
        aimed = pairs["promotion_id"].isin(list(targeted))
        ok = [
            targeted[pid].targets(chat)
            for chat, pid in zip(
                pairs.loc[aimed, "chat_id"], pairs.loc[aimed, "promotion_id"], strict=True
            )
        ]
        pairs = pd.concat([pairs[~aimed], pairs[aimed][ok]])
    last = (
        history.groupby(["chat_id", "promotion_id"])["day"].max().rename("last").reset_index()
        if not history.empty
        else pd.DataFrame(columns=["chat_id", "promotion_id", "last"])
    )
    pairs = pairs.merge(last, on=["chat_id", "promotion_id"], how="left")
    ordinal = pairs["last"].map(lambda d: d.toordinal() if isinstance(d, dt.date) else 0)
    recent = ordinal > (day - dt.timedelta(days=calendar.rotation_days)).toordinal()
    pairs["recent"] = recent.astype(int)
    # Fresh ones by priority; when all were seen lately, the longest unseen first.
    pairs["order"] = np.where(recent, ordinal, -pairs["priority"])
    pairs = pairs.sort_values(["chat_id", "recent", "order", "promotion_id"], kind="mergesort")
    chosen = pairs.drop_duplicates("chat_id")
    return chosen.set_index("chat_id")["promotion_id"].reindex(chats["chat_id"])


def _existing_placements(session: Session, cadence: str, slot: str, week: str) -> dict[str, str]:
    rows = session.execute(
        sa.select(ProductPlacement.chat_id, ProductPlacement.promotion_id).where(
            ProductPlacement.cadence == cadence,
            ProductPlacement.slot == slot,
            ProductPlacement.week == week,
        )
    )
    return dict(list(rows.tuples()))


# -- contents: one reminder per owner listing every group's item ----------------------------------


def _promotion_line(promotion: Promotion | None) -> str:
    return f"【{promotion.title}】{promotion.content}" if promotion is not None else ""


def _announcement(template: CadenceTemplate, slot: Slot, library: ActivityLibrary) -> str:
    """The next day's games, announced in advance (the template's announce_days_before)."""
    if template.announce_days_before <= 0:
        return ""
    ahead = (slot.weekday_index + template.announce_days_before) % 7
    lines = []
    for other in template.slots:
        if (
            other.weekday_index == ahead
            and other.kind in ("game", "big_activity")
            and other.activity
        ):
            script = library.script(other.activity)
            lines.append(f"预告：{other.weekday} {other.time:%H:%M} {script.theme or script.name}")
    return "\n".join(lines)


def slot_sends(
    groups: pd.DataFrame,
    template: CadenceTemplate,
    slot: Slot,
    library: ActivityLibrary,
    promotions: dict[str, Promotion],
    products: pd.Series,
    week: str,
) -> tuple[pd.DataFrame, dict[str, MessageContent]]:
    """The wanted sends of one slot (planner columns + variant) and the content of each variant."""
    announcement = _announcement(template, slot, library)
    placed = groups["chat_id"].map(products) if len(groups) else pd.Series(dtype=object)
    head = "\n".join(part for part in (slot.text, announcement) if part) or slot.name
    contents: dict[str, MessageContent] = {}
    if slot.delivery == "mass_template":
        variants = placed.fillna("none").map(lambda pid: f"product:{pid}")
        for pid in sorted(set(placed.dropna())) + ([None] if placed.isna().any() else []):
            line = _promotion_line(promotions.get(pid)) if pid else ""
            contents[f"product:{pid or 'none'}"] = MessageContent(
                text="\n".join(p for p in (head, line) if p)
            )
    else:
        variants = "owner:" + groups["owner"].astype(str)
        frame = pd.DataFrame(
            {"owner": groups["owner"], "chat_id": groups["chat_id"], "pid": placed}
        )
        for owner, rows in frame.groupby("owner", sort=True):
            lines = [
                f"{chat}：{_promotion_line(promotions.get(pid)) if isinstance(pid, str) else slot.name}"
                for chat, pid in zip(rows["chat_id"], rows["pid"], strict=True)
            ]
            contents[f"owner:{owner}"] = MessageContent(
                text=head + "\n" + "\n".join(lines),
                instruction=f"请在各群发布本时段内容（{slot.name}），每群一条，发送后无需回复。",
            )
    wanted = pd.DataFrame(
        {
            "target_kind": GROUP,
            "target_id": groups["chat_id"].to_numpy(),
            "sender": groups["owner"].to_numpy(),
            "channel": slot.delivery,
            "programme": programme_of(template),
            "step": slot.name,
            "period": week,
            "priority": pd.Series([None] * len(groups), dtype=object),
            "wanted_at": groups["wanted_at"].to_numpy(),
            "variant": np.asarray(variants, dtype=object),
        }
    )
    return wanted, contents


@dataclass
class SlotReport:
    """What one slot run did (counts only; no customer data)."""

    slot: str
    week: str
    dry_run: bool
    groups: int = 0
    owners: int = 0
    products: dict[str, int] = field(default_factory=dict)
    sends: dict[str, Any] = field(default_factory=dict)
    activity: str | None = None
    announce_at: str | None = None
    paused: int = 0  # groups ops paused: their slot recorded skipped

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_paused(
    engine: sa.Engine,
    template: CadenceTemplate,
    slot: Slot,
    paused: pd.DataFrame,
    *,
    day: dt.date,
    as_of: dt.datetime,
) -> int:
    """Ledger rows `skipped` (group paused by ops) for paused groups' slot; returns rows new.

    Keyed like every send of the slot, so a rerun writes nothing twice and a slot already
    planned for a group before its pause keeps its row.
    """
    if paused.empty:
        return 0
    when = slot_time(slot, day)
    rows = [
        {
            "target_kind": GROUP, "target_id": chat, "programme": programme_of(template),
            "step": slot.name, "period": iso_week(day), "sender": owner,
            "channel": slot.delivery, "priority": 0, "status": SKIPPED, "reason": PAUSED_BY_OPS,
            "playbook": programme_of(template), "playbook_version": template.version,
            "planned_at": as_of, "settled_at": as_of, "send_day": when.date(),
            "send_month": when.strftime("%Y-%m"),
        }
        for chat, owner in zip(paused["chat_id"], paused["owner"], strict=True)
    ]  # fmt: skip
    with Session(engine) as session, session.begin():
        done = set(
            session.scalars(
                sa.select(Send.target_id).where(
                    Send.target_kind == GROUP,
                    Send.programme == programme_of(template),
                    Send.step == slot.name,
                    Send.period == iso_week(day),
                    Send.target_id.in_([r["target_id"] for r in rows]),
                )
            )
        )
        fresh = [r for r in rows if r["target_id"] not in done]
        if fresh:
            session.execute(
                insert_or_update(engine.dialect.name, Send).on_conflict_do_nothing(), fresh
            )
    return len(fresh)


def activity_key(template: CadenceTemplate, slot: Slot, week: str) -> str:
    return f"{template.name}:{slot.name}:{week}"


def run_slot(
    engine: sa.Engine,
    client: WeComClient,
    *,
    template: CadenceTemplate,
    calendar: ProductCalendar,
    library: ActivityLibrary,
    rules: SendRules,
    slot_name: str,
    as_of: dt.datetime,
    chat_ids: list[str] | None = None,
    dry_run: bool = False,
    roster: pd.DataFrame | None = None,
    send: SendBatch = send_batch,
) -> SlotReport:
    """Serve one slot (in as-of's week) to every group on the template, or to `chat_ids`."""
    slot = template.slot(slot_name)
    day = as_of.astimezone(CHINA).date()
    week = iso_week(day)
    report = SlotReport(slot=slot.name, week=week, dry_run=dry_run)
    roster = load_roster(client, template) if roster is None else roster
    if chat_ids:
        roster = roster[roster["chat_id"].isin(chat_ids)]
    groups = served_groups(roster, template, slot, day)
    report.groups, report.owners = len(groups), int(groups["owner"].nunique())
    paused = roster[roster["chat_id"].isin(template.paused())]
    report.paused = len(paused)
    if not dry_run:
        record_paused(engine, template, slot, paused, day=day, as_of=as_of)
    promotions = {p.id: p for p in calendar.promotions}
    products = pd.Series(dtype=object)
    cadence = template.name
    wants_product = slot.kind == "product_post" or slot.place_product
    with Session(engine) as session:
        if wants_product and len(groups):
            done = _existing_placements(session, cadence, slot.name, week)
            fresh = [c for c in groups["chat_id"] if c not in done]
            since = day - dt.timedelta(days=max(calendar.rotation_days, 1) * 4)
            history = placement_history(session, fresh, since)
            picked = pick_products(fresh, calendar, slot_time(slot, day).date(), history)
            products = pd.concat([pd.Series(done, dtype=object), picked.dropna()])
            report.products = dict(sorted(Counter(products.tolist()).items()))
            if not dry_run and len(picked.dropna()):
                rows = [
                    {"chat_id": c, "cadence": cadence, "slot": slot.name, "week": week,
                     "day": slot_time(slot, day).date(), "promotion_id": pid}
                    for c, pid in picked.dropna().items()
                ]  # fmt: skip
                insert = insert_or_update(engine.dialect.name, ProductPlacement)
                session.execute(insert.on_conflict_do_nothing(), rows)
                session.commit()
    wanted, contents = slot_sends(groups, template, slot, library, promotions, products, week)
    if len(wanted):
        sent = send(
            engine,
            client,
            wanted,
            contents,
            rules=rules,
            as_of=as_of,
            playbook=programme_of(template),
            version=template.version,
            dry_run=dry_run,
        )
        report.sends = sent.as_dict()
    if slot.kind in ("game", "big_activity") and slot.activity and len(groups):
        script = library.script(slot.activity)
        asked = slot_time(slot, day)
        announce = announce_time(script, asked)
        report.activity = activity_key(template, slot, week)
        if not dry_run:
            announce = open_activity(
                engine, report.activity, script, sorted(groups["chat_id"]), asked_at=asked,
                cadence=cadence, slot=slot.name, week=week,
            )  # fmt: skip
        report.announce_at = announce.isoformat()
    return report


def announce_time(script: ActivityScript, asked_at: dt.datetime) -> dt.datetime:
    """When winners are chosen and announced: after every round's window and the delay."""
    rounds = max(len(script.questions), 1)
    return asked_at + dt.timedelta(
        minutes=script.window_minutes * rounds + script.announce_delay_minutes
    )


def open_activity(
    engine: sa.Engine,
    key: str,
    script: ActivityScript,
    chat_ids: list[str],
    *,
    asked_at: dt.datetime,
    cadence: str = "weekly",
    slot: str = "",
    week: str | None = None,
) -> dt.datetime:
    """Record an activity asked to `chat_ids` (a slot's game, or a join hook); its announce time.

    Idempotent by key: a rerun keeps the activity as first recorded.
    """
    announce = announce_time(script, asked_at)
    row = {
        "key": key, "cadence": cadence, "slot": slot or script.name,
        "week": week or iso_week(asked_at.astimezone(CHINA).date()), "script": script.name,
        "chat_ids": {"chat_ids": list(chat_ids)}, "asked_at": asked_at, "announce_at": announce,
        "status": ASKED, "entries": 0, "correct": 0, "winners": 0,
    }  # fmt: skip
    with Session(engine) as session, session.begin():
        insert = insert_or_update(engine.dialect.name, Activity).on_conflict_do_nothing(
            index_elements=["key"]
        )
        session.execute(insert, [row])
        # A slot run by hand for one group, then for all: the activity holds every group asked,
        # until its winners are chosen.
        existing = session.scalar(sa.select(Activity).where(Activity.key == key))
        if existing is not None and existing.status == ASKED:
            merged = sorted(set(existing.chat_ids["chat_ids"]) | set(chat_ids))
            if merged != sorted(existing.chat_ids["chat_ids"]):
                existing.chat_ids = {"chat_ids": merged}
    return announce


def slot_has_run(
    engine: sa.Engine, template: CadenceTemplate, slot: Slot, week: str, chat_ids: Iterable[str]
) -> bool:
    """Whether the ledger holds this slot's send of this week for every group in `chat_ids`.

    A slot run by hand for one group has not run for the others: the catch-up serves them.
    """
    with Session(engine) as session:
        sent = set(
            session.scalars(
                sa.select(Send.target_id).where(
                    Send.target_kind == GROUP,
                    Send.programme == programme_of(template),
                    Send.step == slot.name,
                    Send.period == week,
                )
            )
        )
    return set(chat_ids) <= sent


def due_activities(
    engine: sa.Engine, until: dt.datetime, *, script: str | None = None
) -> list[tuple[str, dt.datetime]]:
    """Activities asked (of `script`, or any) whose announcement time has passed by `until`."""
    with Session(engine) as session:
        query = sa.select(Activity.key, Activity.announce_at).where(
            Activity.status == ASKED, Activity.announce_at <= until
        )
        if script is not None:
            query = query.where(Activity.script == script)
        rows = session.execute(query.order_by(Activity.announce_at, Activity.key))
        return [(key, at) for key, at in rows.tuples()]


def join_hook_key(template: CadenceTemplate, script: ActivityScript, day: dt.date) -> str:
    """The join hook's activity of one local day, e.g. weekly:join-hook:2026-12-14."""
    return f"{template.name}:{script.name}:{day.isoformat()}"


def open_join_hooks(
    engine: sa.Engine,
    template: CadenceTemplate,
    script: ActivityScript,
    chat_ids: list[str],
    *,
    as_of: dt.datetime,
    days_back: int = 7,
) -> list[str]:
    """Open the join hook of as-of's day and of the `days_back` days before; their keys.

    A day's hook is asked at local midnight to every group and takes the day's plays (its entries
    file); opening is idempotent, so a run after an outage opens the days it missed.
    """
    today = as_of.astimezone(CHINA).date()
    keys = []
    for back in range(days_back, -1, -1):
        day = today - dt.timedelta(days=back)
        key = join_hook_key(template, script, day)
        asked = dt.datetime.combine(day, dt.time(), tzinfo=CHINA)
        if chat_ids:
            open_activity(engine, key, script, chat_ids, asked_at=asked, cadence=template.name,
                          slot=script.name, week=iso_week(day))  # fmt: skip
            keys.append(key)
    return keys


# -- alerts to ops: Prefect events, each sent once by its key through the outbox -----------------

ALERT_KIND = "cadence/alert"  # the outbox kind (32 characters at most)
ALERT_PLAN = ALERT_BATCH = "cadence-alerts"
# Event ids derived from the alert's key: a resend after a crash carries the same id, which
# Prefect's automations have seen already.
_ALERT_NAMESPACE = uuid.UUID("6f1d2c3a-61e5-4c55-9a8e-2f0b1c7d9e41")


@dataclass(frozen=True)
class CadenceAlert:
    """An alert for ops' robot: a `siyu.*` event with `subject` and `next_step` (one line each).

    `key` is the alert's identity (e.g. budget-80:group:wr1:2026-W49): it is sent once. The
    details are counts, weeks and masked ids only, never a customer's id, mobile or name.
    """

    key: str
    event: str
    resource: str  # the Prefect resource id, siyu.group-cadence.<...>
    subject: str
    next_step: str
    details: dict[str, Any] = field(default_factory=dict)
    link: str | None = None

    def payload(self) -> dict[str, Any]:
        """The event's payload: the details, and the one-line fields ops' robot posts."""
        body: dict[str, Any] = {
            **self.details,
            "subject": " ".join(self.subject.split()),
            "next_step": " ".join(self.next_step.split()),
            "key": f"group-cadence:{self.key}"[:255],  # ops' queue keeps one alert per key
        }
        if self.link:
            body["link"] = self.link
        return body


def queue_alerts(db: sa.Engine | Session, alerts: Iterable[CadenceAlert]) -> int:
    """Store alerts in the outbox (in the caller's transaction with a Session); returns new ones."""
    calls = [
        PlannedCall(
            kind=ALERT_KIND,
            key=f"alert:{alert.key}",
            target=alert.resource[:160],
            payload={"event": alert.event, "resource": alert.resource, "body": alert.payload()},
        )
        for alert in alerts
    ]
    return enqueue(db, ALERT_BATCH, calls, plan=ALERT_PLAN) if calls else 0


Emit = Callable[..., Any]


def emit_ops_event(
    *, event: str, resource: dict[str, str], payload: dict[str, Any], id: uuid.UUID
) -> bool:
    """Emit one event to Prefect and wait until it has left this process.

    False when no Prefect API is configured (a plain script): Prefect would start an ephemeral
    server no ops-alerts run reads, so the alert waits in the outbox for a run that has one.
    """
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return False
    if emit_event(event=event, resource=resource, payload=payload, id=id) is None:
        return False
    EventsWorker.instance().wait_until_empty()
    return True


def send_alerts(
    engine: sa.Engine, *, emit: Emit = emit_ops_event, in_flight_seconds: float = 0.0
) -> DrainReport:
    """Emit every queued alert not yet sent (and any an interrupted run left)."""

    def send(entry: OutboxEntry) -> dict[str, Any]:
        p = entry.payload
        emitted = emit(
            event=p["event"],
            resource={"prefect.resource.id": p["resource"]},
            payload=p["body"],
            id=uuid.uuid5(_ALERT_NAMESPACE, entry.key),
        )
        if not emitted:
            raise OutcomeUnknown("no Prefect API to emit to: the alert waits for the next run")
        return {"emitted": True}

    try:
        return drain(
            engine,
            ALERT_BATCH,
            send=send,
            reconcile=lambda _entry: None,  # not found: emit again under the same event id
            on_done=lambda _session, _entry: None,
            in_flight_seconds=in_flight_seconds,
        )
    except OutcomeUnknown as exc:
        # Nothing to emit to now: the alerts stay in the outbox and the next run sends them;
        # the run that found them goes on.
        logging.getLogger(__name__).warning("ops alerts not sent yet: %s", exc)
        return DrainReport()
