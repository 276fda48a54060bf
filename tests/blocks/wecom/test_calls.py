"""Every WeCom API the client calls is declared once: a read, or a write resent or never resent."""

from __future__ import annotations

import inspect

import pytest

from siyu.blocks.wecom import WeComClient, declared_calls
from siyu.blocks.wecom.calls import declared, write

# What the platform does with a second copy decides: a state set twice is the same state.
RESENDABLE_WRITES = {
    "externalcontact/mark_tag",
    "externalcontact/add_corp_tag",
    "externalcontact/edit_corp_tag",
    "externalcontact/del_corp_tag",
}
NEVER_RESENT = {
    "externalcontact/add_msg_template",
    "message/send",
    "externalcontact/send_welcome_msg",
    "externalcontact/add_moment_task",
    "externalcontact/remind_groupmsg_send",
    "externalcontact/cancel_groupmsg_send",
    "webhook/send",
    "externalcontact/add_contact_way",
    "externalcontact/groupchat/add_join_way",
}


def _api_methods() -> dict[str, str]:
    return {
        name: member.wecom_call.api
        for name, member in inspect.getmembers(WeComClient, inspect.isfunction)
        if hasattr(member, "wecom_call")
    }


def test_the_writes_say_whether_a_lost_reply_may_be_resent() -> None:
    calls = declared_calls()
    writes = {api for api, call in calls.items() if call.writes}
    assert writes == RESENDABLE_WRITES | NEVER_RESENT
    assert {api for api in writes if calls[api].resendable} == RESENDABLE_WRITES


def test_reads_are_declared_as_reads() -> None:
    calls = declared_calls()
    for api in (
        "externalcontact/groupchat/statistic",
        "externalcontact/convert_to_openid",
        "externalcontact/get_groupmsg_list_v2",
        "gettoken",
    ):
        assert not calls[api].writes
        assert calls[api].resendable


def test_every_api_method_declares_its_api_once() -> None:
    methods = _api_methods()
    assert len(methods) == len(declared_calls())  # one method per API, none forgotten
    assert set(methods.values()) == set(declared_calls())


def test_no_caller_chooses_the_resend_policy() -> None:
    for name, member in inspect.getmembers(WeComClient, inspect.isfunction):
        assert "retry_transport_errors" not in inspect.signature(member).parameters, name


def test_an_undeclared_api_cannot_be_called() -> None:
    with pytest.raises(LookupError, match="not declared"):
        declared("externalcontact/no_such_api")


def test_an_api_cannot_be_declared_two_ways() -> None:
    with pytest.raises(TypeError, match="declared twice"):
        write("externalcontact/mark_tag", resendable=False)(lambda: None)
