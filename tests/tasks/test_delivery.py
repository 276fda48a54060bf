"""send_batch over real HTTP against the sandbox: one message per sender and variant, ledger following."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from siyu.blocks.send_rules import SendRules
from siyu.blocks.wecom import WeComClient, carries_key
from siyu.schemas.ledger import Send
from siyu.schemas.models import OutboxEntry
from siyu.tasks.delivery import HELD_KIND, MASS_API, MessageContent, send_batch
from tests.fixtures.sandbox import SEED_CHAT_IDS, SEED_CONTACT_IDS

ZONE = ZoneInfo("Asia/Shanghai")
TUESDAY_10 = dt.datetime(2026, 12, 1, 10, 0, tzinfo=ZONE)
SATURDAY_10 = dt.datetime(2026, 12, 5, 10, 0, tzinfo=ZONE)
# The seed: contact i follows mgr00((i-1)%3+1); contacts 1 and 2 follow a second manager.
MGR001 = [SEED_CONTACT_IDS[i - 1] for i in range(1, 19) if (i - 1) % 3 == 0]


@pytest.fixture
def wecom(sandbox, seed_dir) -> Iterator[WeComClient]:
    sandbox.seed(seed_dir)
    with WeComClient(
        sandbox.api_base, sandbox.corp_id, sandbox.secret, agent_id=sandbox.agent_id
    ) as client:
        yield client


def wanted(
    targets: list[str],
    *,
    sender: str = "mgr001",
    kind: str = "customer",
    channel: str = "mass_template",
    programme: str = "path:welcome",
    step: str = "touch-1",
    period: str = "2026-12",
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "target_kind": kind,
            "target_id": targets,
            "sender": sender,
            "channel": channel,
            "programme": programme,
            "step": step,
            "period": period,
            "wanted_at": None,
        }
    )


def ledger(engine) -> pd.DataFrame:
    with Session(engine) as session:
        return pd.DataFrame(
            session.execute(
                sa.select(Send.target_id, Send.status, Send.reason, Send.msgid, Send.outbox_key)
            ).all(),
            columns=["target_id", "status", "reason", "msgid", "outbox_key"],
        )


def send(engine, client, frame, as_of=TUESDAY_10, text="欢迎了解我们的理财服务", **kwargs):
    return send_batch(
        engine,
        client,
        frame,
        MessageContent(text=text),
        rules=SendRules(),
        as_of=as_of,
        playbook="welcome",
        version="v1",
        export_checksum="abc123",
        **kwargs,
    )


def test_one_message_per_sender_rows_created_and_fail_list_failed(engine, wecom, sandbox) -> None:
    sandbox.set_clock(TUESDAY_10.timestamp(), frozen=True)
    targets = [*MGR001[:3], "wmNotAContact0001"]
    report = send(engine, wecom, wanted(targets))

    messages = sandbox.mass_messages()
    assert len(messages) == 1
    rows = ledger(engine)
    key = rows["outbox_key"].iloc[0]
    assert carries_key(messages[0]["text"]["content"], key)
    assert sorted(rows.loc[rows["status"] == "created", "target_id"]) == sorted(MGR001[:3])
    assert rows.loc[rows["target_id"] == "wmNotAContact0001", "reason"].item() == "not_a_contact"
    assert set(rows.loc[rows["status"] == "created", "msgid"]) == {messages[0]["msgid"]}
    assert report.ledger == {"created": 3, "failed:not_a_contact": 1}
    assert report.calls == {MASS_API: 1}
    assert "wmSeed" not in str(report.as_dict())  # no customer id in what people read


def test_dry_run_asks_the_same_question_and_writes_nothing(engine, wecom, sandbox) -> None:
    sandbox.set_clock(TUESDAY_10.timestamp(), frozen=True)
    report = send(engine, wecom, wanted(MGR001[:3]), dry_run=True)
    assert report.plan["fits"] == 3
    assert ledger(engine).empty
    assert sandbox.mass_messages() == []


def test_rerun_with_an_edited_text_sends_nothing_new(engine, wecom, sandbox) -> None:
    sandbox.set_clock(TUESDAY_10.timestamp(), frozen=True)
    send(engine, wecom, wanted(MGR001[:3]))
    again = send(engine, wecom, wanted(MGR001[:3]), text="改过的文案")
    assert again.plan["skipped:already_planned"] == 3
    assert again.calls == {}
    assert len(sandbox.mass_messages()) == 1


def test_groups_travel_as_one_group_message_per_sender(engine, wecom, sandbox) -> None:
    sandbox.set_clock(TUESDAY_10.timestamp(), frozen=True)
    frame = pd.concat(
        [
            wanted([SEED_CHAT_IDS[0]], kind="group", programme="cadence:weekly", step="tue"),
            wanted(
                [SEED_CHAT_IDS[1]],
                sender="mgr002",
                kind="group",
                programme="cadence:weekly",
                step="tue",
            ),
        ]
    )
    send(engine, wecom, frame)
    messages = sandbox.mass_messages()
    assert sorted((m["chat_type"], m["creator"]) for m in messages) == [
        ("group", "mgr001"),
        ("group", "mgr002"),
    ]
    assert set(ledger(engine)["status"]) == {"created"}


def test_employee_reminder_is_an_app_message_and_delivered(engine, wecom, sandbox) -> None:
    sandbox.set_clock(TUESDAY_10.timestamp(), frozen=True)
    frame = wanted(
        SEED_CHAT_IDS[:1],
        kind="group",
        channel="employee_reminder",
        programme="cadence:weekly",
        step="tue-game",
        period="2026-W49",
    )
    report = send(engine, wecom, frame)
    assert report.ledger == {"delivered": 1}
    posts = sandbox.app_messages("mgr001")
    assert len(posts) == 1
    assert SEED_CHAT_IDS[0] in str(posts[0]) and "欢迎了解" in str(posts[0])
    assert sandbox.mass_messages() == []


def test_a_weekend_send_is_deferred_and_held_with_its_content(engine, wecom, sandbox) -> None:
    sandbox.set_clock(SATURDAY_10.timestamp(), frozen=True)
    report = send(engine, wecom, wanted(MGR001[:2]), as_of=SATURDAY_10)
    assert report.plan["deferred:non_working_day"] == 2
    assert set(ledger(engine)["status"]) == {"deferred"}
    with Session(engine) as session:
        held = session.scalars(sa.select(OutboxEntry).where(OutboxEntry.kind == HELD_KIND)).all()
    assert len(held) == 1 and held[0].payload["content"]["text"] == "欢迎了解我们的理财服务"
    assert sandbox.mass_messages() == []
