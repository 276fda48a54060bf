"""Contacts: pull every employee's external contacts from WeCom and store them, mobiles hashed."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

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
from siyu.schemas.models import (
    Contact,
    ContactMobile,
    Export,
    QuarantinedRow,
    SyncedTag,
    UtcDateTime,
    insert_or_update,
)
from siyu.tasks.export import ExportRefused, load_export, resolve_export_path
from siyu.tasks.export_registry import COMMITTED
from siyu.tasks.matching import bind_contacts, hash_mobiles, match_mobiles
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


@dataclass
class StoredPull:
    """A stored pull's counts, and the pairs that are new to us or carry a new remark mobile."""

    counts: ContactsStored
    fresh_pairs: pd.DataFrame  # userid, external_userid: what a binding should look at


def store_contacts(engine: sa.Engine, pull: ContactPull) -> ContactsStored:
    """Make our view of contacts, their mobile hashes and their tags what WeCom says now."""
    return store_pull(engine, pull).counts


def store_pull(engine: sa.Engine, pull: ContactPull) -> StoredPull:
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
        new_mobiles = _replace_rows(
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
    new_keys = listed_keys - set(was_reachable)
    fresh = pd.concat(
        [
            pd.DataFrame(sorted(new_keys), columns=["userid", "external_userid"]),
            new_mobiles[["userid", "external_userid"]],
        ]
    ).drop_duplicates()
    counts = ContactsStored(
        employees=pull.employees,
        pairs=len(pull.follows),
        pairs_with_mobile=len(pull.mobiles[["userid", "external_userid"]].drop_duplicates()),
        new_pairs=len(new_keys),
        gone_pairs=sum(1 for key in gone if was_reachable[key]),
    )
    return StoredPull(counts=counts, fresh_pairs=fresh.reset_index(drop=True))


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
) -> pd.DataFrame:
    """Make `model`'s table hold exactly `wanted` (by `keys`), touching only the rows that differ.

    Returns the rows it added."""
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
    return fresh


# -- binding new contacts as soon as they are seen --------------------------------------------------


@dataclass
class NewBindings:
    """What a contacts sync bound to customers for the first time.

    `customers` (the ids of the customers just bound) stays in memory: it is never logged,
    put in an artifact or handed to Prefect as a parameter.
    """

    candidates: int = 0  # unbound pairs, new or with a new remark mobile, that have a mobile
    pairs: int = 0  # of them bound now to a customer of the newest accepted export
    export_date: date | None = None  # the export they were bound against
    problem: str | None = None  # why none could be bound (ops read it in the artifact)
    customers: list[str] = field(default_factory=list, repr=False)


def _newest_accepted(session: Session, day: date) -> Export | None:
    return session.scalars(
        sa.select(Export)
        .where(Export.status.in_(COMMITTED), Export.export_date <= day)
        .order_by(Export.export_date.desc(), Export.id.desc())
        .limit(1)
    ).first()


def bind_new_contacts(
    engine: sa.Engine,
    source: ExportSource,
    fresh_pairs: pd.DataFrame,
    mobiles: pd.DataFrame,
    day: date,
) -> NewBindings:
    """Bind the fresh pairs no customer owns yet, by remark mobile, to the newest accepted export.

    The daily tag sync binds every pair against its export; this binds only what appeared since
    the last contacts sync, so a customer who adds a manager is known (and can enter a path)
    within the hour. The export is read only when such a pair exists. A pair already bound
    keeps its customer (tag-sync alone moves a binding), so rebinding binds nobody again.
    """
    if fresh_pairs.empty or mobiles.empty:
        return NewBindings()
    with Session(engine) as session:
        unbound = pd.DataFrame(
            session.execute(
                sa.select(Contact.userid, Contact.external_userid).where(
                    Contact.customer_id.is_(None), Contact.reachable.is_(True)
                )
            ).all(),
            columns=["userid", "external_userid"],
        )
        keys = ["userid", "external_userid"]
        candidates = mobiles.merge(fresh_pairs[keys].drop_duplicates(), on=keys).merge(
            unbound, on=keys
        )
        if candidates.empty:
            return NewBindings()
        found = NewBindings(candidates=len(candidates[keys].drop_duplicates()))
        record = _newest_accepted(session, day)
        if record is None:
            found.problem = "no accepted export yet: the next tag-sync binds them"
            return found
        held = set(
            session.scalars(
                sa.select(QuarantinedRow.customer_id).where(QuarantinedRow.export_id == record.id)
            )
        )
        file_name, checksum, export_date = record.file_name, record.checksum, record.export_date
    found.export_date = export_date
    try:
        path = resolve_export_path(source.landing_path(), file_name)
    except ExportRefused as error:
        found.problem = f"{error} (the next tag-sync binds them)"
        return found
    loaded = load_export(path, source.layout, completeness="stable_size", timezone=source.timezone)
    if loaded.checksum != checksum or "mobile" not in loaded.frame.columns:
        found.problem = (
            f"{file_name} changed after the gate accepted it - rerun tag-sync on it; "
            "until then new contacts stay unbound"
        )
        return found
    frame = loaded.frame
    positions, hashes = match_mobiles(
        frame["mobile"].tolist(), source.salt(), set(candidates["mobile_hash"])
    )
    matched = pd.DataFrame(
        {"customer_id": frame["customer_id"].iloc[positions].to_numpy(), "mobile_hash": hashes}
    )
    del frame, loaded  # the mobiles leave memory with the file's frame
    matched = matched[~matched["customer_id"].isin(held)].drop_duplicates()
    binding = bind_contacts(matched, candidates)
    if binding.pairs.empty:
        return found
    with Session(engine) as session, session.begin():
        result = session.connection().execute(
            sa.update(Contact)
            .where(
                Contact.userid == sa.bindparam("u"),
                Contact.external_userid == sa.bindparam("x"),
                # Guarded: a binding tag-sync wrote meanwhile stays.
                Contact.customer_id.is_(None),
            )
            .values(customer_id=sa.bindparam("c")),
            [
                {"u": r.userid, "x": r.external_userid, "c": r.customer_id}
                for r in binding.pairs.itertuples(index=False)
            ],
        )
    found.pairs = max(result.rowcount, 0) if result.rowcount is not None else len(binding.pairs)
    found.customers = sorted(set(binding.pairs["customer_id"]))
    return found


@task(name="pull and store contacts", persist_result=False, cache_policy=NO_CACHE)
def pull_and_store_contacts(
    wecom: WeComApp, database: SiyuDatabase, source: ExportSource, day: date | None = None
) -> tuple[ContactsStored, NewBindings]:
    """Read all contacts from WeCom, make our stored view match, bind the new ones, report.

    `day`: the sync's local day, whose newest accepted export new contacts are bound against
    (empty: today in UTC).
    """
    client = wecom.get_client()
    engine = database.get_engine()
    salt = source.salt()
    try:
        pull = pull_contacts(client, salt)
        stored = store_pull(engine, pull)
        bound = bind_new_contacts(
            engine, source, stored.fresh_pairs, pull.mobiles, day or datetime.now(UTC).date()
        )
    finally:
        client.close()
        engine.dispose()
    counts = stored.counts
    lines = [
        "# Contacts sync",
        "",
        "| | count |",
        "|---|---:|",
        f"| employees with external contacts | {counts.employees:,} |",
        f"| (employee, contact) pairs | {counts.pairs:,} |",
        f"| pairs with a remark mobile (hashed) | {counts.pairs_with_mobile:,} |",
        f"| new pairs since the last sync | {counts.new_pairs:,} |",
        f"| pairs gone (customer deleted the employee) | {counts.gone_pairs:,} |",
        f"| new unbound pairs with a remark mobile | {bound.candidates:,} |",
        f"| of them bound to a customer now | {bound.pairs:,} |",
    ]
    if bound.export_date is not None:
        lines += ["", f"New contacts were bound against the export of {bound.export_date}."]
    if bound.problem:
        lines += ["", f"**Not bound:** {bound.problem}"]
    create_markdown_artifact(
        "\n".join(lines),
        key="contacts-sync-report",
        description="WeCom contacts pulled and bound",
    )
    get_run_logger().info(
        "%s contact pairs stored, %s new ones bound to a customer", counts.pairs, bound.pairs
    )
    return counts, bound
