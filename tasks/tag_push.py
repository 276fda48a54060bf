"""Tags in WeCom: the managed catalog, the synced state per pair, and the push through the outbox."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.wecom import (
    ContactUnreachable,
    InvalidExternalUser,
    WeComClient,
    WeComOutcomeUnknown,
    WeComRowError,
)
from siyu.schemas.models import (
    Contact,
    ContactMobile,
    ManagedTag,
    OutboxEntry,
    SyncedTag,
    insert_or_update,
)
from siyu.schemas.tag_rules import MAX_MANAGED_TAGS, TagRuleSet
from siyu.schemas.wecom import NewTag
from siyu.tasks.outbox import DONE, DrainReport, OutcomeUnknown, PlannedCall, RowRefused, drain
from siyu.tasks.tagging import bits_to_positions

MARK_TAG = "mark_tag"
# The tag sync's plan: a newer export's batch supersedes the older batches' pending changes.
TAG_SYNC_PLAN = "tag-sync"
# A mark_tag is one request of at most the client's timeout; past this window an entry another
# drain is sending is taken for lost and reconciled.
IN_FLIGHT_SECONDS = 30.0


@dataclass
class Catalog:
    """Managed tags in bit order: their WeCom ids, None where not created yet.

    The first `wanted` tags are the ones the rules name, in rule order; after them come the
    retired tags that are given a bit in this run: siyu managed them, the rules no longer name
    them, so no pair desires them and the diff removes them wherever they are carried.
    """

    tags: list[tuple[str, str]]  # (group, tag)
    tag_ids: list[str | None]
    created: int = 0
    wanted: int | None = None  # None: every tag is wanted (no retired ones)
    # Every retired tag still in WeCom, (group, tag, tag_id): those in `tags` and those waiting
    # for a free bit (at most MAX_MANAGED_TAGS bits per run).
    retired: list[tuple[str, str, str]] = field(default_factory=list)

    def position_of(self) -> dict[str, int]:
        """WeCom tag id -> bit position."""
        return {tag_id: i for i, tag_id in enumerate(self.tag_ids) if tag_id}

    @property
    def retired_bits(self) -> int:
        """The bit set of the retired tags that have a position in this run."""
        first = len(self.tags) if self.wanted is None else self.wanted
        return sum(1 << i for i in range(first, len(self.tags)) if self.tag_ids[i])


def ensure_catalog(
    client: WeComClient, engine: sa.Engine, rules: TagRuleSet, *, create: bool
) -> Catalog:
    """Find the managed tag groups and tags in WeCom by name; create the missing ones if `create`.

    Names are the natural key: a crash after a create is healed by the next run finding the tag.
    Tags siyu managed before (table managed_tags) that the rules no longer name are kept as
    retired until `retire_unused_tags` deletes them. Only `create` (a real run) stores anything.
    """
    wanted = rules.managed_tags()
    wanted_set = set(wanted)
    with Session(engine) as session:
        stored = session.execute(
            sa.select(
                ManagedTag.group_name, ManagedTag.tag_name, ManagedTag.group_id, ManagedTag.tag_id
            ).order_by(ManagedTag.id)
        ).all()
    stored_group_ids = {row.group_id for row in stored}

    def current() -> tuple[dict[tuple[str, str], str], dict[str, str], set[str]]:
        by_name: dict[tuple[str, str], str] = {}
        group_ids: dict[str, str] = {}
        alive: set[str] = set()
        for group in client.get_corp_tag_list():
            if group.deleted:
                continue
            named = group.group_name in rules.groups()
            if not named and group.group_id not in stored_group_ids:
                continue
            group_ids[group.group_name] = group.group_id
            for tag in group.tag:
                if not tag.deleted:
                    alive.add(tag.id)
                    if named:
                        by_name[(group.group_name, tag.name)] = tag.id
        return by_name, group_ids, alive

    by_name, group_ids, alive = current()
    created = 0
    if create:
        for group in rules.groups():
            missing = [t for g, t in wanted if g == group and (g, t) not in by_name]
            if not missing:
                continue
            new = [NewTag(name=name, order=0) for name in missing]
            if group in group_ids:
                client.add_corp_tag(group_id=group_ids[group], tags=new)
            else:
                client.add_corp_tag(group_name=group, tags=new)
            created += len(missing)
        if created:
            by_name, group_ids, alive = current()
    wanted_ids = {by_name[t] for t in wanted if t in by_name}
    retired = [
        (row.group_name, row.tag_name, row.tag_id)
        for row in stored
        if (row.group_name, row.tag_name) not in wanted_set
        and row.tag_id in alive
        and row.tag_id not in wanted_ids
    ]
    # Bits are 64: the rules' tags first, then as many retired ones as fit; the rest wait.
    positioned = retired[: max(0, MAX_MANAGED_TAGS - len(wanted))]
    catalog = Catalog(
        tags=wanted + [(g, t) for g, t, _ in positioned],
        tag_ids=[by_name.get(t) for t in wanted] + [tag_id for _, _, tag_id in positioned],
        created=created,
        wanted=len(wanted),
        retired=retired,
    )
    if create:
        _store_catalog(engine, catalog, group_ids, stored)
    return catalog


def _store_catalog(
    engine: sa.Engine, catalog: Catalog, group_ids: dict[str, str], stored: list
) -> None:
    """managed_tags := the rules' tags found in WeCom, plus every retired tag not deleted yet."""
    stored_group = {row.tag_id: row.group_id for row in stored}
    n_wanted = len(catalog.tags) if catalog.wanted is None else catalog.wanted
    rows = [
        {"group_name": g, "tag_name": t, "group_id": group_ids[g], "tag_id": tag_id}
        for (g, t), tag_id in zip(catalog.tags[:n_wanted], catalog.tag_ids[:n_wanted], strict=True)
        if tag_id is not None
    ]
    rows += [
        {"group_name": g, "tag_name": t, "group_id": stored_group[tag_id], "tag_id": tag_id}
        for g, t, tag_id in catalog.retired
    ]
    with Session(engine) as session, session.begin():
        session.execute(sa.delete(ManagedTag))
        if rows:
            session.execute(sa.insert(ManagedTag), rows)


def retire_unused_tags(client: WeComClient, engine: sa.Engine, catalog: Catalog) -> list[str]:
    """Delete from WeCom the retired tags no reachable contact carries any more; return their names.

    Run after the push has removed them: a tag still carried (a refused row, a pair the next
    contacts-sync will show) waits for a later run. Deleting a group's last tag deletes the group.
    """
    if not catalog.retired:
        return []
    ids = [tag_id for _, _, tag_id in catalog.retired]
    with Session(engine) as session:
        carried = set(
            session.scalars(
                sa.select(SyncedTag.tag_id)
                .join(
                    Contact,
                    sa.and_(
                        Contact.userid == SyncedTag.userid,
                        Contact.external_userid == SyncedTag.external_userid,
                    ),
                )
                .where(SyncedTag.tag_id.in_(ids), Contact.reachable.is_(True))
                .distinct()
            )
        )
    unused = [(g, t, tag_id) for g, t, tag_id in catalog.retired if tag_id not in carried]
    if not unused:
        return []
    unused_ids = [tag_id for _, _, tag_id in unused]
    client.del_corp_tag(tag_ids=unused_ids)
    with Session(engine) as session, session.begin():
        session.execute(sa.delete(SyncedTag).where(SyncedTag.tag_id.in_(unused_ids)))
        session.execute(sa.delete(ManagedTag).where(ManagedTag.tag_id.in_(unused_ids)))
    return [f"{g}/{t}" for g, t, _ in unused]


def reachable_contact_mobiles(engine: sa.Engine) -> pd.DataFrame:
    """userid, external_userid, mobile_hash of every pair a message can still reach."""
    query = (
        sa.select(ContactMobile.userid, ContactMobile.external_userid, ContactMobile.mobile_hash)
        .join(
            Contact,
            sa.and_(
                Contact.userid == ContactMobile.userid,
                Contact.external_userid == ContactMobile.external_userid,
            ),
        )
        .where(Contact.reachable.is_(True))
    )
    with engine.connect() as conn:
        return pd.DataFrame(
            conn.execute(query).all(), columns=["userid", "external_userid", "mobile_hash"]
        )


def synced_bits(engine: sa.Engine, catalog: Catalog) -> pd.DataFrame:
    """userid, external_userid, bits: the managed tags last known on each pair, as bit sets."""
    positions = catalog.position_of()
    columns = ["userid", "external_userid", "bits"]
    if not positions:
        return pd.DataFrame(columns=columns)
    query = sa.select(SyncedTag.userid, SyncedTag.external_userid, SyncedTag.tag_id).where(
        SyncedTag.tag_id.in_(list(positions))
    )
    with engine.connect() as conn:
        rows = pd.DataFrame(
            conn.execute(query).all(), columns=["userid", "external_userid", "tag_id"]
        )
    if rows.empty:
        return pd.DataFrame(columns=columns)
    pos = rows["tag_id"].map(positions).to_numpy(dtype=np.uint64)
    rows["bits"] = np.left_shift(np.uint64(1), pos)
    # Each tag is one distinct bit, so summing a pair's bits is OR-ing them.
    return rows.groupby(["userid", "external_userid"], as_index=False, sort=False)["bits"].sum()


def mark_tag_key(batch: str, userid: str, external_userid: str) -> str:
    """The business identity of a batch's change on one pair: one entry per pair and batch."""
    return f"{MARK_TAG}:{batch}:{userid}/{external_userid}"


def plan_mark_tag_calls(changes: pd.DataFrame, catalog: Catalog, batch: str) -> list[PlannedCall]:
    """One mark_tag per changed pair of `batch`, with all its adds and removes."""
    ids = catalog.tag_ids
    calls = []
    for row in changes.itertuples(index=False):
        calls.append(
            PlannedCall(
                kind=MARK_TAG,
                key=mark_tag_key(batch, row.userid, row.external_userid),
                target=f"{row.userid}/{row.external_userid}",
                payload={
                    "userid": row.userid,
                    "external_userid": row.external_userid,
                    "add_tag": [ids[i] for i in bits_to_positions(row.add_bits)],
                    "remove_tag": [ids[i] for i in bits_to_positions(row.remove_bits)],
                },
            )
        )
    return calls


def mark_tag_calls(
    client: WeComClient,
) -> tuple[Callable[[OutboxEntry], None], Callable[[OutboxEntry], bool]]:
    """The outbox's `send` and `reconcile` for mark_tag entries, WeCom's errors translated."""

    def send(entry: OutboxEntry) -> None:
        p = entry.payload
        try:
            client.mark_tag(
                p["userid"], p["external_userid"], add_tag=p["add_tag"], remove_tag=p["remove_tag"]
            )
        except WeComRowError as exc:
            raise RowRefused(exc.errcode, str(exc)) from exc
        except WeComOutcomeUnknown as exc:
            raise OutcomeUnknown(str(exc)) from exc

    def reconcile(entry: OutboxEntry) -> bool:
        p = entry.payload
        try:
            tags = _tags_in_wecom(client, p["userid"], p["external_userid"])
        except WeComRowError:
            return False  # the send will meet the same refusal and record it
        return set(p["add_tag"]) <= tags and not (set(p["remove_tag"]) & tags)

    return send, reconcile


def push_tag_changes(
    client: WeComClient,
    engine: sa.Engine,
    batch: str,
    progress: Callable[[int, int], None] | None = None,
    *,
    in_flight_seconds: float = IN_FLIGHT_SECONDS,
) -> DrainReport:
    """Drain the batch's mark_tag entries: each change reaches WeCom once, and our state follows."""
    send, reconcile = mark_tag_calls(client)
    return drain(
        engine,
        batch,
        send=send,
        reconcile=reconcile,
        on_done=_apply_to_synced,
        on_row_failed=_record_row_failure,
        progress=progress,
        in_flight_seconds=in_flight_seconds,
    )


def _tags_in_wecom(client: WeComClient, userid: str, external_userid: str) -> set[str]:
    detail = client.get_contact(external_userid)
    for follow in detail.follow_user:
        if follow.userid == userid:
            return {t.tag_id for t in follow.tags if t.tag_id}
    raise ContactUnreachable(84061, "no follow relation", "externalcontact/get")


def apply_mark_tag(session: Session, payload: dict[str, Any], synced_at: datetime) -> None:
    """Make siyu's record of a pair's synced tags carry one mark_tag's adds and removes."""
    pair = (
        SyncedTag.userid == payload["userid"],
        SyncedTag.external_userid == payload["external_userid"],
    )
    if payload["remove_tag"]:
        session.execute(
            sa.delete(SyncedTag).where(*pair, SyncedTag.tag_id.in_(payload["remove_tag"]))
        )
    if payload["add_tag"]:
        # An upsert: a contacts sync storing the same pair's tags at this moment is no conflict.
        insert = insert_or_update(session.get_bind().dialect.name, SyncedTag)
        session.execute(
            insert.on_conflict_do_update(
                index_elements=["userid", "external_userid", "tag_id"],
                set_={"synced_at": insert.excluded.synced_at},
            ),
            [
                {
                    "userid": payload["userid"],
                    "external_userid": payload["external_userid"],
                    "tag_id": t,
                    "synced_at": synced_at,
                }
                for t in payload["add_tag"]
            ],
        )


def reapply_tag_changes_since(session: Session, since: datetime) -> int:
    """Re-apply every mark_tag settled since `since` to the synced tags; returns how many.

    A contacts sync replaces synced tags with what WeCom listed while it pulled: a change that
    landed during the pull may be missing from that view although siyu recorded it. Re-applying
    the changes settled since the pull began keeps siyu's record true (a change the view already
    shows is applied again to the same effect).
    """
    entries = session.scalars(
        sa.select(OutboxEntry)
        .where(
            OutboxEntry.kind == MARK_TAG,
            OutboxEntry.status == DONE,
            OutboxEntry.sent_at >= since,
        )
        .order_by(OutboxEntry.sent_at, OutboxEntry.id)
    ).all()
    for entry in entries:
        apply_mark_tag(session, entry.payload, entry.sent_at)
    return len(entries)


def _apply_to_synced(session: Session, entry: OutboxEntry) -> None:
    apply_mark_tag(session, entry.payload, datetime.now(UTC))


def _record_row_failure(session: Session, entry: OutboxEntry, exc: RowRefused) -> None:
    """A contact that deleted the employee, or an unknown contact, is unreachable from now on."""
    if isinstance(exc.__cause__, ContactUnreachable | InvalidExternalUser):
        p = entry.payload
        session.execute(
            sa.update(Contact)
            .where(Contact.userid == p["userid"], Contact.external_userid == p["external_userid"])
            .values(reachable=False, unreachable_code=exc.code)
        )
