"""Contacts are upserted from WeCom's view, kept when gone, and tag changes made meanwhile hold."""

from __future__ import annotations

import dataclasses
import datetime as dt
from types import SimpleNamespace

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.schemas.models import Contact, ContactMobile, OutboxEntry, SyncedTag
from siyu.tasks.contacts import (
    CLOCK_SKEW,
    FOLLOW_COLUMNS,
    NO_RELATION,
    ContactPull,
    ContactsStored,
    bind_new_contacts,
    pull_contacts,
    store_contacts,
    store_pull,
)
from siyu.tasks.outbox import drain, enqueue
from siyu.tasks.tag_push import TAG_SYNC_PLAN, Catalog, apply_mark_tag, plan_mark_tag_calls

T0 = dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)


def pull(
    follows: list[tuple[str, str]],
    *,
    mobiles: list[tuple[str, str, str]] = (),
    tags: list[tuple[str, str, str]] = (),
    started_at: dt.datetime = T0,
) -> ContactPull:
    return ContactPull(
        follows=pd.DataFrame(
            [(u, x, "ch_app", 1, T0 - dt.timedelta(days=30)) for u, x in follows],
            columns=FOLLOW_COLUMNS,
        ),
        mobiles=pd.DataFrame(list(mobiles), columns=["userid", "external_userid", "mobile_hash"]),
        tags=pd.DataFrame(list(tags), columns=["userid", "external_userid", "tag_id"]),
        employees=len({u for u, _ in follows}),
        started_at=started_at,
    )


def contacts(engine) -> dict[tuple[str, str], Contact]:
    with Session(engine) as session:
        return {(c.userid, c.external_userid): c for c in session.scalars(sa.select(Contact))}


def rows(engine, model, *columns: str) -> set[tuple]:
    with engine.connect() as connection:
        selected = sa.select(*(getattr(model, c) for c in columns))
        return {tuple(r) for r in connection.execute(selected)}


def bind(engine, pair: tuple[str, str], customer_id: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.update(Contact)
            .where(Contact.userid == pair[0], Contact.external_userid == pair[1])
            .values(customer_id=customer_id)
        )


def test_the_counts_keep_their_fields():
    assert [f.name for f in dataclasses.fields(ContactsStored)] == [
        "employees",
        "pairs",
        "pairs_with_mobile",
        "new_pairs",
        "gone_pairs",
    ]


def test_a_gone_pair_is_kept_unreachable_and_comes_back_when_listed_again(engine):
    first = store_contacts(engine, pull([("u1", "wm1"), ("u1", "wm2"), ("u2", "wm1")]))
    assert (first.pairs, first.new_pairs, first.gone_pairs) == (3, 3, 0)
    bind(engine, ("u1", "wm2"), "C00000042")  # tag-sync bound the pair to its customer

    second = store_contacts(engine, pull([("u1", "wm1"), ("u2", "wm1"), ("u2", "wm3")]))

    assert (second.pairs, second.new_pairs, second.gone_pairs) == (3, 1, 1)
    stored = contacts(engine)
    assert set(stored) == {("u1", "wm1"), ("u1", "wm2"), ("u2", "wm1"), ("u2", "wm3")}
    gone = stored[("u1", "wm2")]
    assert (gone.reachable, gone.unreachable_code, gone.customer_id) == (
        False,
        NO_RELATION,
        "C00000042",
    )
    assert gone.left_at is not None and stored[("u1", "wm1")].left_at is None
    left_at = gone.left_at

    third = store_contacts(engine, pull([("u1", "wm1"), ("u2", "wm3")]))
    assert third.gone_pairs == 1  # only u2/wm1 is newly gone; u1/wm2 was gone already
    assert contacts(engine)[("u1", "wm2")].left_at == left_at  # when it first left

    back = store_contacts(engine, pull([("u1", "wm1"), ("u1", "wm2")]))
    assert back.new_pairs == 0
    returned = contacts(engine)[("u1", "wm2")]
    assert (returned.reachable, returned.unreachable_code, returned.left_at) == (True, None, None)
    assert returned.customer_id == "C00000042"


def test_a_table_that_refers_to_contacts_keeps_its_rows(engine):
    # Later tables (cohorts, sends) point at contacts: an hourly delete-and-reinsert would
    # cascade through them (or be refused by them).
    metadata = sa.MetaData()
    Contact.__table__.to_metadata(metadata)
    referrer = sa.Table(
        "test_contact_referrer",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("userid", sa.String(64)),
        sa.Column("external_userid", sa.String(64)),
        sa.ForeignKeyConstraint(
            ["userid", "external_userid"],
            ["contacts.userid", "contacts.external_userid"],
            ondelete="CASCADE",
        ),
    )
    referrer.create(engine)
    try:
        store_contacts(engine, pull([("u1", "wm1"), ("u1", "wm2")]))
        with engine.begin() as connection:
            connection.execute(
                referrer.insert(),
                [
                    {"userid": "u1", "external_userid": "wm1"},
                    {"userid": "u1", "external_userid": "wm2"},
                ],
            )

        store_contacts(engine, pull([("u1", "wm1")]))
        store_contacts(engine, pull([("u1", "wm1"), ("u1", "wm3")]))

        with engine.connect() as connection:
            assert (
                connection.execute(sa.select(sa.func.count()).select_from(referrer)).scalar() == 2
            )
    finally:
        referrer.drop(engine)


def test_mobiles_and_tags_become_wecoms_view_pair_by_pair(engine):
    store_contacts(
        engine,
        pull(
            [("u1", "wm1"), ("u1", "wm2")],
            mobiles=[("u1", "wm1", "h-old"), ("u1", "wm2", "h2")],
            tags=[("u1", "wm1", "et1"), ("u1", "wm1", "et2"), ("u1", "wm2", "et1")],
        ),
    )
    stored = store_contacts(
        engine,
        pull(
            [("u1", "wm1"), ("u1", "wm2")],
            mobiles=[("u1", "wm1", "h-new"), ("u1", "wm2", "h2"), ("u1", "wm2", "h3")],
            tags=[("u1", "wm1", "et2"), ("u1", "wm1", "et3"), ("u1", "wm2", "et1")],
            started_at=T0 + dt.timedelta(hours=1),
        ),
    )
    assert stored.pairs_with_mobile == 2
    assert rows(engine, ContactMobile, "userid", "external_userid", "mobile_hash") == {
        ("u1", "wm1", "h-new"),
        ("u1", "wm2", "h2"),
        ("u1", "wm2", "h3"),
    }
    assert rows(engine, SyncedTag, "userid", "external_userid", "tag_id") == {
        ("u1", "wm1", "et2"),
        ("u1", "wm1", "et3"),
        ("u1", "wm2", "et1"),
    }

    store_contacts(engine, pull([("u1", "wm1")], mobiles=[("u1", "wm1", "h-new")]))
    assert rows(engine, ContactMobile, "external_userid", "mobile_hash") == {("wm1", "h-new")}
    assert rows(engine, SyncedTag, "tag_id") == set()


def test_a_tag_change_that_lands_during_the_pull_is_not_lost(engine):
    # Issue 11.7: contacts-sync reads WeCom while a push runs; a change the push settles after
    # the pull read the pair must survive the pull's older view of that pair.
    catalog = Catalog(tags=[("资产等级", "高净值"), ("资产等级", "大众")], tag_ids=["et1", "et2"])
    store_contacts(engine, pull([("u1", "wm1"), ("u1", "wm2")], tags=[("u1", "wm1", "et2")]))
    before_pull = dt.datetime.now(dt.UTC)
    # The pull reads WeCom now: u1/wm1 still carries et2, u1/wm2 nothing.
    old_view = pull(
        [("u1", "wm1"), ("u1", "wm2")], tags=[("u1", "wm1", "et2")], started_at=before_pull
    )
    changes = pd.DataFrame(
        [("u1", "wm1", 0b01, 0b10)],
        columns=["userid", "external_userid", "add_bits", "remove_bits"],
    ).astype({"add_bits": np.uint64, "remove_bits": np.uint64})
    batch = "tag-sync:export:3"
    enqueue(engine, batch, plan_mark_tag_calls(changes, catalog, batch), plan=TAG_SYNC_PLAN)
    applied: list[str] = []

    def on_done(session, entry):  # what the tag push records, as tag_push does it
        apply_mark_tag(session, entry.payload, dt.datetime.now(dt.UTC))
        applied.append(entry.target)

    drain(engine, batch, send=lambda e: None, reconcile=lambda e: False, on_done=on_done)
    assert applied == ["u1/wm1"]

    store_contacts(engine, old_view)  # the pull finishes after the change was settled

    assert rows(engine, SyncedTag, "userid", "external_userid", "tag_id") == {("u1", "wm1", "et1")}


def test_a_change_settled_well_before_the_pull_gives_way_to_wecoms_view(engine):
    catalog = Catalog(tags=[("资产等级", "高净值")], tag_ids=["et1"])
    store_contacts(engine, pull([("u1", "wm1")]))
    changes = pd.DataFrame(
        [("u1", "wm1", 1, 0)], columns=["userid", "external_userid", "add_bits", "remove_bits"]
    ).astype({"add_bits": np.uint64, "remove_bits": np.uint64})
    enqueue(engine, "b", plan_mark_tag_calls(changes, catalog, "b"), plan=TAG_SYNC_PLAN)
    with engine.begin() as connection:
        connection.execute(
            sa.update(OutboxEntry).values(
                status="done", sent_at=T0 - CLOCK_SKEW - dt.timedelta(minutes=1)
            )
        )

    # Since then someone took the tag off in WeCom by hand: the pull's view is the truth.
    store_contacts(engine, pull([("u1", "wm1")], started_at=T0))

    assert rows(engine, SyncedTag, "tag_id") == set()


class FakeContactsClient:
    """WeCom's contact listing, noting when it was first asked."""

    def __init__(self) -> None:
        self.first_call: dt.datetime | None = None

    def get_follow_user_list(self):
        self.first_call = self.first_call or dt.datetime.now(dt.UTC)
        return ["u1"]

    def iter_contacts_by_user(self, userids):
        yield SimpleNamespace(
            external_contact=SimpleNamespace(external_userid="wm1"),
            follow_info=SimpleNamespace(
                userid="u1",
                state="ch_app",
                add_way=1,
                createtime=1_760_000_000,
                remark_mobiles=["13800000001", "not-a-mobile"],
                tag_id=["et1"],
            ),
        )


def test_a_pull_knows_when_it_began(engine):
    client = FakeContactsClient()
    pulled = pull_contacts(client, b"salt")
    assert pulled.started_at <= client.first_call
    assert len(pulled.mobiles) == 1  # the invalid remark is not kept
    stored = store_contacts(engine, pulled)
    assert (stored.pairs, stored.pairs_with_mobile, stored.employees) == (1, 1, 1)
    assert rows(engine, SyncedTag, "tag_id") == {("et1",)}


def fresh(stored) -> set[tuple[str, str]]:
    return set(stored.fresh_pairs.itertuples(index=False, name=None))


def test_a_pull_names_the_pairs_new_to_us_or_with_a_new_remark_mobile(engine):
    first = store_pull(engine, pull([("u1", "wm1"), ("u1", "wm2")], mobiles=[("u1", "wm1", "h1")]))
    assert fresh(first) == {("u1", "wm1"), ("u1", "wm2")}
    # The manager types wm2's mobile into its remark; wm3 adds u2; wm1 is as it was.
    second = store_pull(
        engine,
        pull(
            [("u1", "wm1"), ("u1", "wm2"), ("u2", "wm3")],
            mobiles=[("u1", "wm1", "h1"), ("u1", "wm2", "h2")],
        ),
    )
    assert fresh(second) == {("u1", "wm2"), ("u2", "wm3")}
    assert (second.counts.new_pairs, second.counts.pairs_with_mobile) == (1, 2)
    again = store_pull(
        engine,
        pull(
            [("u1", "wm1"), ("u1", "wm2"), ("u2", "wm3")],
            mobiles=[("u1", "wm1", "h1"), ("u1", "wm2", "h2")],
        ),
    )
    assert fresh(again) == set()


def test_no_accepted_export_binds_nobody_and_says_tag_sync_will(engine):
    listed = pull([("u1", "wm1")], mobiles=[("u1", "wm1", "h1")])
    stored = store_pull(engine, listed)
    source = SimpleNamespace()  # never read: there is no export to read
    bound = bind_new_contacts(engine, source, stored.fresh_pairs, listed.mobiles, T0.date())
    assert (bound.candidates, bound.pairs, bound.customers) == (1, 0, [])
    assert "no accepted export yet" in bound.problem
    assert contacts(engine)[("u1", "wm1")].customer_id is None


def test_a_pair_already_bound_is_never_bound_again(engine):
    listed = pull([("u1", "wm1")], mobiles=[("u1", "wm1", "h1")])
    stored = store_pull(engine, listed)
    bind(engine, ("u1", "wm1"), "C000001")
    bound = bind_new_contacts(
        engine, SimpleNamespace(), stored.fresh_pairs, listed.mobiles, T0.date()
    )
    assert (bound.candidates, bound.pairs, bound.customers, bound.problem) == (0, 0, [], None)
    assert contacts(engine)[("u1", "wm1")].customer_id == "C000001"
