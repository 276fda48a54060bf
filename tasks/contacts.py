"""Contacts: pull every employee's external contacts from WeCom and store them, mobiles hashed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pandas as pd
import sqlalchemy as sa
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from sqlalchemy.orm import Session

from siyu.blocks.database import SiyuDatabase
from siyu.blocks.export_source import ExportSource
from siyu.blocks.wecom import WeComApp, WeComClient
from siyu.schemas.export import MOBILE_PATTERN
from siyu.schemas.models import Contact, ContactMobile, SyncedTag, UtcDateTime, insert_or_update
from siyu.tasks.matching import hash_mobiles
from siyu.tasks.tag_push import reapply_tag_changes_since

NO_RELATION = 84061  # WeCom's code for "the customer deleted the employee"
FOLLOW_COLUMNS = ["userid", "external_userid", "state", "add_way", "added_at"]
# Tag changes settled this long before a pull began are re-applied too: the pull and the push may
# run on machines whose clocks differ a little, and re-applying a change WeCom shows is harmless.
CLOCK_SKEW = timedelta(minutes=2)
_CHUNK = 5_000


@dataclass
class ContactPull:
    """What WeCom holds now: one row per (employee, contact), hashed mobiles, tags per pair."""

    follows: pd.DataFrame  # FOLLOW_COLUMNS
    mobiles: pd.DataFrame  # userid, external_userid, mobile_hash
    tags: pd.DataFrame  # userid, external_userid, tag_id
    employees: int
    started_at: datetime  # when the pull began: WeCom's view may predate anything settled since


def pull_contacts(client: WeComClient, salt: bytes) -> ContactPull:
    """Read every follow relation, hashing remark mobiles as they arrive (raw ones are not kept)."""
    started_at = datetime.now(UTC)
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
        started_at=started_at,
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
    """Make our view of contacts, their mobile hashes and their tags what WeCom says now.

    Contacts are upserted, never deleted: a pair WeCom no longer lists is kept, unreachable, with
    the time it left, so later tables can go on referring to it, and its customer binding stays.
    Mobiles and synced tags change only where WeCom's view differs. Tag changes the outbox
    settled while the pull ran are applied again on top of WeCom's view, which may predate them.
    """
    now = datetime.now(UTC)
    listed = pull.follows
    with Session(engine) as session, session.begin():
        connection = session.connection()
        dialect = connection.dialect.name
        was_reachable = {
            (u, x): reachable
            for u, x, reachable in connection.execute(
                sa.select(Contact.userid, Contact.external_userid, Contact.reachable)
            )
        }
        listed_keys = set(zip(listed["userid"], listed["external_userid"], strict=True))
        _upsert_listed(connection, dialect, listed, now)
        gone = [key for key in was_reachable if key not in listed_keys]
        _mark_gone(connection, gone, now)
        _replace_rows(
            connection,
            dialect,
            ContactMobile,
            pull.mobiles[["userid", "external_userid", "mobile_hash"]],
            keys=["userid", "external_userid", "mobile_hash"],
        )
        _replace_rows(
            connection,
            dialect,
            SyncedTag,
            pull.tags[["userid", "external_userid", "tag_id"]].assign(synced_at=now),
            keys=["userid", "external_userid", "tag_id"],
        )
        reapply_tag_changes_since(session, pull.started_at - CLOCK_SKEW)
    return ContactsStored(
        employees=pull.employees,
        pairs=len(pull.follows),
        pairs_with_mobile=len(pull.mobiles[["userid", "external_userid"]].drop_duplicates()),
        new_pairs=len(listed_keys - set(was_reachable)),
        gone_pairs=sum(1 for key in gone if was_reachable[key]),
    )


def _upsert_listed(
    connection: sa.Connection, dialect: str, listed: pd.DataFrame, now: datetime
) -> None:
    """Insert new pairs, refresh known ones; a pair listed again is reachable again."""
    rows = [
        {
            "userid": r.userid,
            "external_userid": r.external_userid,
            "state": r.state,
            "add_way": None if pd.isna(r.add_way) else int(r.add_way),
            "added_at": None if pd.isna(r.added_at) else r.added_at,
            "reachable": True,
            "unreachable_code": None,
            "seen_at": now,
            "left_at": None,
        }
        for r in listed.itertuples(index=False)
    ]
    insert = insert_or_update(dialect, Contact)
    # customer_id is not in the update: the binding tag-sync made stays with the pair.
    upsert = insert.on_conflict_do_update(
        index_elements=["userid", "external_userid"],
        set_={
            name: insert.excluded[name]
            for name in (
                "state",
                "add_way",
                "added_at",
                "reachable",
                "unreachable_code",
                "seen_at",
                "left_at",
            )
        },
    )
    for start in range(0, len(rows), _CHUNK):
        connection.execute(upsert, rows[start : start + _CHUNK])


def _mark_gone(connection: sa.Connection, gone: list[tuple[str, str]], now: datetime) -> None:
    """Pairs WeCom no longer lists: the customer deleted the employee. Kept, unreachable."""
    if not gone:
        return
    mark = (
        sa.update(Contact)
        .where(Contact.userid == sa.bindparam("u"), Contact.external_userid == sa.bindparam("x"))
        .values(
            reachable=False,
            unreachable_code=sa.func.coalesce(Contact.unreachable_code, NO_RELATION),
            left_at=sa.func.coalesce(Contact.left_at, sa.bindparam("now", type_=UtcDateTime())),
        )
    )
    params = [{"u": u, "x": x, "now": now} for u, x in gone]
    for start in range(0, len(params), _CHUNK):
        connection.execute(mark, params[start : start + _CHUNK])


def _replace_rows(
    connection: sa.Connection, dialect: str, model, wanted: pd.DataFrame, *, keys: list[str]
) -> None:
    """Make `model`'s table hold exactly `wanted` (by `keys`), touching only the rows that differ."""
    table = model.__table__
    current = pd.DataFrame(
        connection.execute(sa.select(*(table.c[k] for k in keys))).all(), columns=keys
    )
    wanted = wanted.drop_duplicates(keys)
    both = current.merge(wanted[keys], on=keys, how="outer", indicator=True)
    stale = both.loc[both["_merge"] == "left_only", keys]
    if not stale.empty:
        delete = sa.delete(table).where(*(table.c[k] == sa.bindparam(f"k_{k}") for k in keys))
        params = [
            {f"k_{k}": v for k, v in zip(keys, row, strict=True)}
            for row in stale.itertuples(index=False)
        ]
        for start in range(0, len(params), _CHUNK):
            connection.execute(delete, params[start : start + _CHUNK])
    fresh = wanted.merge(both.loc[both["_merge"] == "right_only", keys], on=keys)
    if not fresh.empty:
        # A tag push may add the same row at this moment: that is agreement, not a conflict.
        insert = insert_or_update(dialect, model).on_conflict_do_nothing(index_elements=keys)
        rows = fresh.to_dict("records")
        for start in range(0, len(rows), _CHUNK):
            connection.execute(insert, rows[start : start + _CHUNK])


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
