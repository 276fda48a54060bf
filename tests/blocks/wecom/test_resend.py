"""After no answer, a write that creates or sends is never resent; one that sets a state is."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from siyu.blocks.wecom import WeComClient, WeComOutcomeUnknown, WeComUnavailable
from siyu.schemas.wecom import NewTag

MARK_TAG = "externalcontact/mark_tag"
ADD_MSG = "externalcontact/add_msg_template"


def _pair(client: WeComClient) -> tuple[str, str]:
    for userid in client.get_follow_user_list():
        contacts = client.list_contacts(userid)
        if contacts:
            return userid, contacts[0]
    raise AssertionError("the seed has no follow relation")


def test_a_lost_reply_on_add_msg_template_is_one_request(seeded, make_client) -> None:
    client = make_client(max_attempts=6)
    userid, external_userid = _pair(client)
    seeded.fault(api=ADD_MSG, drop_connection=True, after_effect=True, times=3)

    with pytest.raises(WeComOutcomeUnknown) as caught:
        client.add_msg_template(sender=userid, external_userid=[external_userid], text="您好")

    assert caught.value.attempts == 1
    assert len(seeded.requests(ADD_MSG)) == 1  # WeCom holds one message, made by one request
    assert "reconcile" in str(caught.value)


def test_a_slow_reply_on_add_msg_template_is_not_resent(seeded, make_client) -> None:
    client = make_client(timeout=0.3, max_attempts=6)
    userid, external_userid = _pair(client)
    seeded.fault(api=ADD_MSG, latency_ms=800, times=3)

    with pytest.raises(WeComOutcomeUnknown) as caught:
        client.add_msg_template(sender=userid, external_userid=[external_userid], text="您好")

    assert caught.value.attempts == 1
    assert client.calls[ADD_MSG] == 1


def test_mark_tag_after_a_lost_reply_is_resent_and_lands_once(seeded, make_client) -> None:
    client = make_client(max_attempts=6)
    userid, external_userid = _pair(client)
    tag_id = client.add_corp_tag(group_name="siyu测试", tags=[NewTag(name="戊")]).tag[0].id
    seeded.fault(api=MARK_TAG, drop_connection=True, after_effect=True, times=2)

    client.mark_tag(userid, external_userid, add_tag=[tag_id])

    assert client.calls[MARK_TAG] == 3
    assert seeded.contact_tags(userid, external_userid).count(tag_id) == 1


NEVER_RESENT: dict[str, tuple[str, Callable[[WeComClient, str, str], object]]] = {
    "app-message": (
        "message/send",
        lambda c, u, x: c.send_app_message([u], msgtype="text", content={"content": "请跟进"}),
    ),
    "welcome": ("externalcontact/send_welcome_msg", lambda c, u, x: c.send_welcome_msg("w1")),
    "moment": (
        "externalcontact/add_moment_task",
        lambda c, u, x: c.add_moment_task(text="周末沙龙", sender_userids=[u]),
    ),
    "robot": (
        "webhook/send",
        lambda c, u, x: c.send_webhook("robot-1", {"msgtype": "text", "text": {"content": "x"}}),
    ),
}


@pytest.mark.parametrize("case", NEVER_RESENT.values(), ids=NEVER_RESENT.keys())
def test_messages_are_never_resent_after_a_lost_reply(seeded, make_client, case) -> None:
    api, send = case
    client = make_client(max_attempts=6)
    userid, external_userid = _pair(client)
    seeded.fault(api=api, drop_connection=True, after_effect=True, times=3)

    with pytest.raises(WeComOutcomeUnknown):
        send(client, userid, external_userid)

    assert client.calls[api] == 1


@pytest.mark.parametrize("api", ["remind_groupmsg_send", "cancel_groupmsg_send"])
def test_remind_and_cancel_are_never_resent(seeded, make_client, api) -> None:
    client = make_client(max_attempts=6)
    userid, external_userid = _pair(client)
    msgid = client.add_msg_template(sender=userid, external_userid=[external_userid], text="x")
    seeded.fault(api=f"externalcontact/{api}", drop_connection=True, times=3)

    with pytest.raises(WeComOutcomeUnknown):
        getattr(client, api)(msgid.msgid)

    assert client.calls[f"externalcontact/{api}"] == 1


def test_a_write_that_never_left_is_retried(make_client) -> None:
    with socket.socket() as s:  # a port nobody listens on: the request cannot have landed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = make_client(base_url=f"http://127.0.0.1:{port}/cgi-bin/", max_attempts=3)
    with pytest.raises(WeComUnavailable) as caught:
        client.send_webhook("robot-1", {"msgtype": "text", "text": {"content": "x"}})
    assert not isinstance(caught.value, WeComOutcomeUnknown)
    assert client.calls["webhook/send"] == 3
