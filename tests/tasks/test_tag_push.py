"""The tag push: business keys per pair, WeCom's errors translated, our synced state following."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.wecom import ContactUnreachable, WeComOutcomeUnknown, WeComUnavailable
from siyu.schemas.models import Contact, OutboxEntry, SyncedTag
from siyu.tasks.outbox import OutcomeUnknown, RowRefused, batch_counts, enqueue
from siyu.tasks.tag_push import (
    MARK_TAG,
    TAG_SYNC_PLAN,
    Catalog,
    mark_tag_calls,
    mark_tag_key,
    plan_mark_tag_calls,
    push_tag_changes,
    reapply_tag_changes_since,
)

API = "externalcontact/mark_tag"
CATALOG = Catalog(
    tags=[("资产等级", "高净值"), ("资产等级", "大众"), ("产品", "基金")],
    tag_ids=["et1", "et2", "et3"],
)


class FakeWeCom:
    """Just enough of WeComClient for the push: mark_tag and externalcontact/get."""

    def __init__(self, tags: dict[tuple[str, str], set[str]]) -> None:
        self.tags = tags
        self.calls: list[tuple[str, str]] = []
        self.lose_reply_once: set[tuple[str, str]] = set()
        self.down = False

    def mark_tag(self, userid, external_userid, *, add_tag=(), remove_tag=()):
        pair = (userid, external_userid)
        self.calls.append(pair)
        if self.down:
            raise WeComUnavailable(-1, "system busy", API)
        if pair not in self.tags:
            raise ContactUnreachable(84061, "not external contact", API)
        self.tags[pair] = (self.tags[pair] | set(add_tag)) - set(remove_tag)
        if pair in self.lose_reply_once:
            self.lose_reply_once.discard(pair)
            raise WeComOutcomeUnknown(None, "read timed out", API)

    def get_contact(self, external_userid):
        return SimpleNamespace(
            follow_user=[
                SimpleNamespace(userid=u, tags=[SimpleNamespace(tag_id=t) for t in sorted(tags)])
                for (u, x), tags in self.tags.items()
                if x == external_userid
            ]
        )


def changes(*rows: tuple[str, str, int, int]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["userid", "external_userid", "add_bits", "remove_bits"])
    return frame.astype({"add_bits": np.uint64, "remove_bits": np.uint64})


def entry(payload: dict) -> OutboxEntry:
    return OutboxEntry(
        key="k", kind=MARK_TAG, plan=TAG_SYNC_PLAN, batch="b", target="t", payload=payload
    )


def synced(engine) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    with Session(engine) as session:
        for row in session.scalars(sa.select(SyncedTag)):
            out.setdefault((row.userid, row.external_userid), set()).add(row.tag_id)
    return out


def test_a_pairs_change_is_keyed_by_batch_and_pair_not_by_its_tags():
    first = plan_mark_tag_calls(changes(("u1", "wm1", 0b001, 0b010)), CATALOG, "tag-sync:export:12")
    edited = plan_mark_tag_calls(changes(("u1", "wm1", 0b100, 0)), CATALOG, "tag-sync:export:12")

    assert first[0].key == edited[0].key == "mark_tag:tag-sync:export:12:u1/wm1"
    assert first[0].key == mark_tag_key("tag-sync:export:12", "u1", "wm1")
    assert first[0].payload == {
        "userid": "u1",
        "external_userid": "wm1",
        "add_tag": ["et1"],
        "remove_tag": ["et2"],
    }
    assert edited[0].payload["add_tag"] == ["et3"]
    other_export = plan_mark_tag_calls(changes(("u1", "wm1", 1, 0)), CATALOG, "tag-sync:export:13")
    assert other_export[0].key != first[0].key


def test_send_translates_wecoms_errors_into_the_outboxs():
    client = FakeWeCom({("u1", "wm1"): set()})
    send, _ = mark_tag_calls(client)

    with pytest.raises(RowRefused) as refused:
        send(
            entry({"userid": "u9", "external_userid": "wm9", "add_tag": ["et1"], "remove_tag": []})
        )
    assert refused.value.code == 84061
    assert isinstance(refused.value.__cause__, ContactUnreachable)

    client.lose_reply_once.add(("u1", "wm1"))
    with pytest.raises(OutcomeUnknown):
        send(
            entry({"userid": "u1", "external_userid": "wm1", "add_tag": ["et1"], "remove_tag": []})
        )


def test_reconcile_asks_wecom_whether_the_change_is_there():
    client = FakeWeCom({("u1", "wm1"): {"et1"}, ("u2", "wm1"): set()})
    _, reconcile = mark_tag_calls(client)
    change = {"userid": "u1", "external_userid": "wm1", "add_tag": ["et1"], "remove_tag": ["et2"]}

    assert reconcile(entry(change)) is True
    assert reconcile(entry({**change, "userid": "u2"})) is False  # not applied yet
    assert reconcile(entry({**change, "userid": "u3"})) is False  # no relation: send will say


def seed(engine, pairs: dict[tuple[str, str], set[str]]) -> None:
    with Session(engine) as session, session.begin():
        for (u, x), tags in pairs.items():
            session.add(Contact(userid=u, external_userid=x))
            session.add_all(SyncedTag(userid=u, external_userid=x, tag_id=t) for t in tags)


def test_push_sends_each_change_once_and_our_synced_tags_follow(engine):
    wecom_state = {("u1", "wm1"): {"et2"}, ("u1", "wm2"): set(), ("u2", "wm3"): {"et1"}}
    seed(engine, {pair: set(tags) for pair, tags in wecom_state.items()})
    seed(engine, {("u3", "wm4"): set()})  # the customer has deleted u3 since the last pull
    client = FakeWeCom(wecom_state)
    client.lose_reply_once.add(("u1", "wm2"))
    batch = "tag-sync:export:7"
    calls = plan_mark_tag_calls(
        changes(
            ("u1", "wm1", 0b001, 0b010),
            ("u1", "wm2", 0b100, 0),
            ("u2", "wm3", 0, 0b001),
            ("u3", "wm4", 0b001, 0),
        ),
        CATALOG,
        batch,
    )
    enqueue(engine, batch, calls, plan=TAG_SYNC_PLAN)

    report = push_tag_changes(client, engine, batch, in_flight_seconds=0.0)

    assert (report.sent, report.reconciled, report.failed, report.attempts) == (2, 1, 1, 4)
    assert report.errors == {84061: 1}
    assert client.calls.count(("u1", "wm2")) == 1  # the lost reply was reconciled, not resent
    assert synced(engine) == {("u1", "wm1"): {"et1"}, ("u1", "wm2"): {"et3"}}
    with Session(engine) as session:
        gone = session.get(Contact, ("u3", "wm4"))
        assert (gone.reachable, gone.unreachable_code) == (False, 84061)
    assert batch_counts(engine, batch) == {"done": 3, "failed": 1}


def test_an_unavailable_wecom_stops_the_push_with_the_entry_kept(engine):
    seed(engine, {("u1", "wm1"): set()})
    client = FakeWeCom({("u1", "wm1"): set()})
    client.down = True
    batch = "tag-sync:export:8"
    enqueue(
        engine,
        batch,
        plan_mark_tag_calls(changes(("u1", "wm1", 1, 0)), CATALOG, batch),
        plan=TAG_SYNC_PLAN,
    )

    with pytest.raises(WeComUnavailable):
        push_tag_changes(client, engine, batch)
    assert batch_counts(engine, batch) == {"sending": 1}

    client.down = False
    report = push_tag_changes(client, engine, batch, in_flight_seconds=0.0)
    assert (report.resent, report.sent) == (1, 0)
    assert synced(engine) == {("u1", "wm1"): {"et1"}}


def test_changes_settled_since_a_moment_are_reapplied_over_an_older_view(engine):
    since = dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.UTC)
    enqueue(
        engine,
        "b",
        plan_mark_tag_calls(
            changes(("u1", "wm1", 0b001, 0b010), ("u1", "wm2", 0b100, 0)), CATALOG, "b"
        ),
        plan=TAG_SYNC_PLAN,
    )
    with engine.begin() as connection:
        for target, sent_at in (
            ("u1/wm1", since + dt.timedelta(seconds=5)),
            ("u1/wm2", since - dt.timedelta(hours=1)),
        ):
            connection.execute(
                sa.update(OutboxEntry)
                .where(OutboxEntry.target == target)
                .values(status="done", sent_at=sent_at)
            )
    seed(engine, {("u1", "wm1"): {"et2"}, ("u1", "wm2"): set()})  # the view of a pull at `since`

    with Session(engine) as session, session.begin():
        assert reapply_tag_changes_since(session, since) == 1

    assert synced(engine) == {("u1", "wm1"): {"et1"}}
