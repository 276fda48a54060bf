"""Tags in WeCom: the managed catalog, the synced state per pair, and the push through the outbox."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.wecom_client import (
    ContactUnreachable,
    InvalidExternalUser,
    WeComClient,
    WeComRowError,
)
from siyu.schemas.models import Contact, ContactMobile, ManagedTag, OutboxEntry, SyncedTag
from siyu.schemas.tag_rules import TagRuleSet
from siyu.schemas.wecom import NewTag
from siyu.tasks.outbox import DrainReport, PlannedCall, drain
from siyu.tasks.tagging import bits_to_positions

MARK_TAG = "mark_tag"


@dataclass
class Catalog:
    """Managed tags in rule order (the bit order): their WeCom ids, None where not created yet."""

    tags: list[tuple[str, str]]  # (group, tag)
    tag_ids: list[str | None]
    created: int = 0

    def position_of(self) -> dict[str, int]:
        """WeCom tag id -> bit position."""
        return {tag_id: i for i, tag_id in enumerate(self.tag_ids) if tag_id}


def ensure_catalog(
    client: WeComClient, engine: sa.Engine, rules: TagRuleSet, *, create: bool
) -> Catalog:
    """Find the managed tag groups and tags in WeCom by name; create the missing ones if `create`.

    Names are the natural key: a crash after a create is healed by the next run finding the tag.
    """
    wanted = rules.managed_tags()

    def current() -> tuple[dict[tuple[str, str], str], dict[str, str]]:
        by_name: dict[tuple[str, str], str] = {}
        group_ids: dict[str, str] = {}
        for group in client.get_corp_tag_list():
            if group.deleted or group.group_name not in rules.groups():
                continue
            group_ids[group.group_name] = group.group_id
            for tag in group.tag:
                if not tag.deleted:
                    by_name[(group.group_name, tag.name)] = tag.id
        return by_name, group_ids

    by_name, group_ids = current()
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
            by_name, group_ids = current()
    catalog = Catalog(tags=wanted, tag_ids=[by_name.get(t) for t in wanted], created=created)
    _store_catalog(engine, catalog, group_ids)
    return catalog


def _store_catalog(engine: sa.Engine, catalog: Catalog, group_ids: dict[str, str]) -> None:
    with Session(engine) as session, session.begin():
        session.execute(sa.delete(ManagedTag))
        rows = [
            {"group_name": g, "tag_name": t, "group_id": group_ids[g], "tag_id": tag_id}
            for (g, t), tag_id in zip(catalog.tags, catalog.tag_ids, strict=True)
            if tag_id is not None
        ]
        if rows:
            session.execute(sa.insert(ManagedTag), rows)


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


def plan_mark_tag_calls(changes: pd.DataFrame, catalog: Catalog) -> list[PlannedCall]:
    """One mark_tag per changed pair, with all its adds and removes."""
    ids = catalog.tag_ids
    calls = []
    for row in changes.itertuples(index=False):
        calls.append(
            PlannedCall(
                kind=MARK_TAG,
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


def push_tag_changes(
    client: WeComClient, engine: sa.Engine, batch: str, progress=None
) -> DrainReport:
    """Drain the batch's mark_tag entries: each change reaches WeCom once, and our state follows."""

    def send(entry: OutboxEntry) -> None:
        p = entry.payload
        # No blind resend after a transport error: the outbox reconciles instead.
        client.mark_tag(
            p["userid"],
            p["external_userid"],
            add_tag=p["add_tag"],
            remove_tag=p["remove_tag"],
            retry_transport_errors=False,
        )

    def reconcile(entry: OutboxEntry) -> bool:
        p = entry.payload
        try:
            tags = _tags_in_wecom(client, p["userid"], p["external_userid"])
        except WeComRowError:
            return False  # the send will meet the same refusal and record it
        return set(p["add_tag"]) <= tags and not (set(p["remove_tag"]) & tags)

    return drain(
        engine,
        batch,
        send=send,
        reconcile=reconcile,
        on_done=_apply_to_synced,
        on_row_failed=_record_row_failure,
        progress=progress,
    )


def _tags_in_wecom(client: WeComClient, userid: str, external_userid: str) -> set[str]:
    detail = client.get_contact(external_userid)
    for follow in detail.follow_user:
        if follow.userid == userid:
            return {t.tag_id for t in follow.tags if t.tag_id}
    raise ContactUnreachable(84061, "no follow relation", "externalcontact/get")


def _apply_to_synced(session: Session, entry: OutboxEntry) -> None:
    p = entry.payload
    pair = (SyncedTag.userid == p["userid"], SyncedTag.external_userid == p["external_userid"])
    if p["remove_tag"]:
        session.execute(sa.delete(SyncedTag).where(*pair, SyncedTag.tag_id.in_(p["remove_tag"])))
    if p["add_tag"]:
        session.execute(sa.delete(SyncedTag).where(*pair, SyncedTag.tag_id.in_(p["add_tag"])))
        now = datetime.now(UTC)
        session.execute(
            sa.insert(SyncedTag),
            [
                {
                    "userid": p["userid"],
                    "external_userid": p["external_userid"],
                    "tag_id": t,
                    "synced_at": now,
                }
                for t in p["add_tag"]
            ],
        )


def _record_row_failure(session: Session, entry: OutboxEntry, exc: WeComRowError) -> None:
    """A contact that deleted the employee, or an unknown contact, is unreachable from now on."""
    if isinstance(exc, ContactUnreachable | InvalidExternalUser):
        p = entry.payload
        session.execute(
            sa.update(Contact)
            .where(Contact.userid == p["userid"], Contact.external_userid == p["external_userid"])
            .values(reachable=False, unreachable_code=exc.errcode)
        )
