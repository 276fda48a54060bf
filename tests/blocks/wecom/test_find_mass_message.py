"""A mass message carries its key invisibly, so a lost reply is reconciled by asking WeCom."""

from __future__ import annotations

import time
import unicodedata

import pytest

from siyu.blocks.wecom import WeComClient, WeComOutcomeUnknown, carries_key, mark_text

ADD_MSG = "externalcontact/add_msg_template"
KEY = "customer:wmSeedContact0001/path:onboarding/touch:2/period:2026-12"


def _pair(client: WeComClient) -> tuple[str, str]:
    for userid in client.get_follow_user_list():
        contacts = client.list_contacts(userid)
        if contacts:
            return userid, contacts[0]
    raise AssertionError("the seed has no follow relation")


def test_the_mark_is_invisible_short_and_reveals_nothing() -> None:
    marked = mark_text("您好,本周理财沙龙周六见", KEY)
    mark = marked.removeprefix("您好,本周理财沙龙周六见")
    assert len(mark) == 33
    assert all(unicodedata.category(ch) == "Cf" for ch in mark)  # format chars: not shown
    assert "wmSeedContact0001" not in marked
    assert carries_key(marked, KEY)


def test_marking_is_idempotent_and_keys_differ() -> None:
    once = mark_text("hello", KEY)
    assert mark_text(once, KEY) == once
    assert not carries_key(once, KEY + "x")
    assert not carries_key("hello", KEY)
    assert not carries_key(None, KEY)
    with pytest.raises(ValueError):
        mark_text("hello", "")


def test_find_mass_message_finds_the_message_by_its_key(seeded, make_client) -> None:
    client = make_client()
    userid, external_userid = _pair(client)
    since = time.time() - 1
    client.add_msg_template(sender=userid, external_userid=[external_userid], text="别的消息")
    made = client.add_msg_template(
        sender=userid, external_userid=[external_userid], text="您好", key=KEY
    )

    found = client.find_mass_message(userid, since, time.time() + 1, KEY)

    assert found is not None
    assert found.msgid == made.msgid
    assert client.find_mass_message(userid, since, time.time() + 1, KEY + "-other") is None
    other = next(u for u in client.get_follow_user_list() if u != userid)
    assert client.find_mass_message(other, since, time.time() + 1, KEY) is None


def test_a_lost_reply_is_reconciled_not_resent(seeded, make_client) -> None:
    client = make_client()
    userid, external_userid = _pair(client)
    seeded.fault(api=ADD_MSG, drop_connection=True, after_effect=True, times=1)

    with pytest.raises(WeComOutcomeUnknown) as caught:
        client.add_msg_template(
            sender=userid, external_userid=[external_userid], text="您好", key=KEY
        )
    sent_at = caught.value.sent_at
    assert sent_at is not None

    found = client.find_mass_message(userid, sent_at - 5, time.time() + 5, KEY)

    assert found is not None  # WeCom holds it: record its msgid, do not send again
    assert client.calls[ADD_MSG] == 1
    assert [s.external_userid for s in client.iter_groupmsg_send_result(found.msgid, userid)] == [
        external_userid
    ]


def test_group_messages_are_searched_too(seeded, make_client) -> None:
    client = make_client()
    owner = "mgr001"  # owns a seed group
    since = time.time() - 1
    made = client.add_msg_template(sender=owner, chat_type="group", text="群公告", key=KEY)

    assert client.find_mass_message(owner, since, time.time() + 1, KEY).msgid == made.msgid
    assert client.find_mass_message(owner, since, time.time() + 1, KEY, chat_type="single") is None


def test_a_keyed_message_needs_a_text() -> None:
    client = WeComClient("http://wecom.invalid/cgi-bin/", "ww1", "s")
    with pytest.raises(ValueError, match="text"):
        client.add_msg_template(sender="u", attachments=[{"msgtype": "image"}], key=KEY)
    assert client.calls == {}
