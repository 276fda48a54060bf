"""Contacts: pull every employee's external contacts from WeCom and store them, mobiles hashed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
import sqlalchemy as sa
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from sqlalchemy.orm import Session

from siyu.blocks.database import SiyuDatabase
from siyu.blocks.export_source import ExportSource
from siyu.blocks.wecom import WeComApp
from siyu.blocks.wecom_client import WeComClient
from siyu.schemas.export import MOBILE_PATTERN
from siyu.schemas.models import Contact, ContactMobile, SyncedTag
from siyu.tasks.matching import hash_mobiles

# contacts-sync rewrites the stored view of contacts and their tags; a tag push updates it call by
# call. The two must not interleave: both flows hold this Prefect global concurrency limit (1 slot).
CONTACT_STATE_LIMIT = "siyu-contact-state"
NO_RELATION = 84061  # WeCom's code for "the customer deleted the employee"
FOLLOW_COLUMNS = ["userid", "external_userid", "state", "add_way", "added_at"]


@dataclass
class ContactPull:
    """What WeCom holds now: one row per (employee, contact), hashed mobiles, tags per pair."""

    follows: pd.DataFrame  # FOLLOW_COLUMNS
    mobiles: pd.DataFrame  # userid, external_userid, mobile_hash
    tags: pd.DataFrame  # userid, external_userid, tag_id
    employees: int


def pull_contacts(client: WeComClient, salt: bytes) -> ContactPull:
    """Read every follow relation, hashing remark mobiles as they arrive (raw ones are not kept)."""
    userids = client.get_follow_user_list()
    follows: list[tuple] = []
    mobile_pairs: list[tuple[str, str]] = []
    raw_mobiles: list[str] = []
    tags: list[tuple[str, str, str]] = []
    for item in client.iter_contacts_by_user(userids):
        external_userid = item.external_contact.external_userid
        info = item.follow_info
        follows.append(
            (
                info.userid,
                external_userid,
                info.state or None,
                info.add_way,
                datetime.fromtimestamp(info.createtime, UTC) if info.createtime else None,
            )
        )
        for mobile in info.remark_mobiles or []:
            mobile_pairs.append((info.userid, external_userid))
            raw_mobiles.append(mobile.strip())
        for tag_id in info.tag_id or []:
            tags.append((info.userid, external_userid, tag_id))
    mobiles = pd.DataFrame(mobile_pairs, columns=["userid", "external_userid"])
    valid = pd.Series(raw_mobiles, dtype="string").str.fullmatch(MOBILE_PATTERN).fillna(False)
    mobiles["mobile_hash"] = hash_mobiles(raw_mobiles, salt)
    del raw_mobiles
    mobiles = mobiles[valid.to_numpy(dtype=bool)].drop_duplicates()
    return ContactPull(
        follows=pd.DataFrame(follows, columns=FOLLOW_COLUMNS).drop_duplicates(
            ["userid", "external_userid"]
        ),
        mobiles=mobiles.reset_index(drop=True),
        tags=pd.DataFrame(tags, columns=["userid", "external_userid", "tag_id"]).drop_duplicates(),
        employees=len(userids),
    )


@dataclass
class ContactsStored:
    """Counts of one contacts sync."""

    employees: int
    pairs: int
    pairs_with_mobile: int
    new_pairs: int
    gone_pairs: int  # pairs we knew that WeCom no longer lists: now unreachable


def store_contacts(engine: sa.Engine, pull: ContactPull) -> ContactsStored:
    """Make our view of contacts, their mobile hashes and their tags what WeCom says now."""
    now = datetime.now(UTC)
    listed = pull.follows
    with Session(engine) as session, session.begin():
        known = {(c.userid, c.external_userid): c for c in session.scalars(sa.select(Contact))}
        session.expunge_all()
        listed_keys = set(zip(listed["userid"], listed["external_userid"], strict=True))
        rows = [
            {
                "userid": r.userid,
                "external_userid": r.external_userid,
                "state": r.state,
                "add_way": None if pd.isna(r.add_way) else int(r.add_way),
                "added_at": None if pd.isna(r.added_at) else r.added_at,
                "reachable": True,
                "unreachable_code": None,
                "customer_id": getattr(
                    known.get((r.userid, r.external_userid)), "customer_id", None
                ),
                "seen_at": now,
            }
            for r in listed.itertuples(index=False)
        ]
        # Pairs WeCom no longer lists: the customer deleted the employee. Kept, unreachable.
        gone = [c for key, c in known.items() if key not in listed_keys]
        rows += [
            {
                "userid": c.userid,
                "external_userid": c.external_userid,
                "state": c.state,
                "add_way": c.add_way,
                "added_at": c.added_at,
                "reachable": False,
                "unreachable_code": c.unreachable_code or NO_RELATION,
                "customer_id": c.customer_id,
                "seen_at": c.seen_at,
            }
            for c in gone
        ]
        session.execute(sa.delete(Contact))
        _insert(session, Contact, rows)
        session.execute(sa.delete(ContactMobile))
        _insert(session, ContactMobile, pull.mobiles.to_dict("records"))
        session.execute(sa.delete(SyncedTag))
        _insert(session, SyncedTag, pull.tags.assign(synced_at=now).to_dict("records"))
    new_pairs = len(listed_keys - set(known))
    gone_pairs = sum(1 for c in gone if c.reachable)
    return ContactsStored(
        employees=pull.employees,
        pairs=len(pull.follows),
        pairs_with_mobile=len(pull.mobiles[["userid", "external_userid"]].drop_duplicates()),
        new_pairs=new_pairs,
        gone_pairs=gone_pairs,
    )


def _insert(session: Session, model, rows: list[dict]) -> None:
    for start in range(0, len(rows), 5_000):
        session.execute(sa.insert(model), rows[start : start + 5_000])


@task(name="pull and store contacts", persist_result=False, cache_policy=NO_CACHE)
def pull_and_store_contacts(
    wecom: WeComApp, database: SiyuDatabase, source: ExportSource
) -> ContactsStored:
    """Read all contacts from WeCom and make our stored view match, then report the counts."""
    client = wecom.get_client()
    engine = database.get_engine()
    try:
        stored = store_contacts(engine, pull_contacts(client, source.salt()))
    finally:
        client.close()
        engine.dispose()
    create_markdown_artifact(
        "\n".join(
            [
                "# Contacts sync",
                "",
                "| | count |",
                "|---|---:|",
                f"| employees with external contacts | {stored.employees:,} |",
                f"| (employee, contact) pairs | {stored.pairs:,} |",
                f"| pairs with a remark mobile (hashed) | {stored.pairs_with_mobile:,} |",
                f"| new pairs since the last sync | {stored.new_pairs:,} |",
                f"| pairs gone (customer deleted the employee) | {stored.gone_pairs:,} |",
            ]
        ),
        key="contacts-sync-report",
        description="WeCom contacts pulled and bound",
    )
    get_run_logger().info("%s contact pairs stored", stored.pairs)
    return stored
