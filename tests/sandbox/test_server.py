"""The WeCom sandbox over real HTTP: the API's semantics, its control API, faults and persistence."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from siyu.sandbox.faults import RateLimiter
from siyu.sandbox.server import SandboxServer
from tests.fixtures.sandbox import (
    SEED_CHAT_IDS,
    SEED_CONTACT_IDS,
    SEED_INTENT_GROUP,
    SEED_INTENT_TAGS,
    SEED_INTEREST_TAGS,
    SandboxHandle,
    seed_mobile,
)
from tests.sandbox.bare_client import WeCom, send_results, send_single

HIGH, LOW = SEED_INTENT_TAGS[0][0], SEED_INTENT_TAGS[1][0]
WEALTH, FUND = SEED_INTEREST_TAGS[0][0], SEED_INTEREST_TAGS[1][0]
C1, C2, C3 = SEED_CONTACT_IDS[:3]  # C1: mgr001 + mgr002; C2: mgr002 + mgr003; C3: mgr003


def gettoken(handle: SandboxHandle, corpid: str, secret: str) -> dict[str, Any]:
    params = {"corpid": corpid, "corpsecret": secret}
    return requests.get(handle.api_base + "gettoken", params=params).json()


# ---- tokens ------------------------------------------------------------------------------


def test_token_flow_issues_a_token_with_configurable_lifetime(sandbox: SandboxHandle) -> None:
    reply = gettoken(sandbox, sandbox.corp_id, sandbox.secret)
    assert reply["errcode"] == 0 and reply["expires_in"] == 7200 and reply["access_token"]
    sandbox.config(token_ttl_seconds=600)
    assert gettoken(sandbox, sandbox.corp_id, sandbox.secret)["expires_in"] == 600
    params = {"access_token": reply["access_token"]}
    listed = requests.get(sandbox.api_base + "externalcontact/get_follow_user_list", params=params)
    assert listed.json() == {"errcode": 0, "errmsg": "ok", "follow_user": []}


def test_token_errors_use_the_platform_codes(sandbox: SandboxHandle) -> None:
    assert gettoken(sandbox, sandbox.corp_id, "wrong-secret")["errcode"] == 40001
    assert gettoken(sandbox, "ww-other-corp", sandbox.secret)["errcode"] == 40013
    api = sandbox.api_base + "externalcontact/get_follow_user_list"
    assert requests.get(api).json()["errcode"] == 41001
    assert requests.get(api, params={"access_token": "forged"}).json()["errcode"] == 40014
    token = sandbox.token()
    sandbox.expire_tokens()
    assert requests.get(api, params={"access_token": token}).json()["errcode"] == 42001
    fresh = sandbox.token()
    assert requests.get(api, params={"access_token": fresh}).json()["errcode"] == 0


def test_secrets_never_reach_the_request_log_or_errmsg(sandbox: SandboxHandle) -> None:
    reply = gettoken(sandbox, sandbox.corp_id, "wrong-secret-value")
    assert "wrong-secret-value" not in reply["errmsg"]
    token = sandbox.token()
    requests.get(
        sandbox.api_base + "externalcontact/get_follow_user_list", params={"access_token": token}
    )
    requests.post(sandbox.api_base + "webhook/send", params={"key": "robot-key-1"}, json={})
    logged = str(sandbox.requests())
    for secret in (sandbox.secret, "wrong-secret-value", token, "robot-key-1"):
        assert secret not in logged


# ---- corp tags -------------------------------------------------------------------------------


def test_corp_tag_crud(wecom: WeCom) -> None:
    created = wecom.post(
        "externalcontact/add_corp_tag",
        {"group_name": "资产等级", "order": 1, "tag": [{"name": "AUM 5万+"}, {"name": "AUM 0"}]},
    )
    assert created["errcode"] == 0
    group = created["tag_group"]
    assert group["group_id"].startswith("et") and [t["name"] for t in group["tag"]] == [
        "AUM 5万+",
        "AUM 0",
    ]
    assert all(t["id"].startswith("et") for t in group["tag"])

    # An existing group name adds to that group; the reply lists only the new tags.
    more = wecom.post(
        "externalcontact/add_corp_tag", {"group_name": "资产等级", "tag": [{"name": "AUM 50万+"}]}
    )
    assert more["tag_group"]["group_id"] == group["group_id"]
    assert [t["name"] for t in more["tag_group"]["tag"]] == ["AUM 50万+"]

    dup = wecom.post(
        "externalcontact/add_corp_tag", {"group_id": group["group_id"], "tag": [{"name": "AUM 0"}]}
    )
    assert dup["errcode"] == 40071
    too_long = wecom.post(
        "externalcontact/add_corp_tag", {"group_name": "资产等级", "tag": [{"name": "x" * 31}]}
    )
    assert too_long["errcode"] == 40058

    listed = wecom.post("externalcontact/get_corp_tag_list")["tag_group"]
    assert {g["group_name"] for g in listed} == {"客户意向", "兴趣偏好", "资产等级"}
    by_group = wecom.post("externalcontact/get_corp_tag_list", {"group_id": [group["group_id"]]})
    assert [len(g["tag"]) for g in by_group["tag_group"]] == [3]
    aum0 = group["tag"][1]["id"]
    by_tag = wecom.post("externalcontact/get_corp_tag_list", {"tag_id": [aum0]})["tag_group"]
    assert [[t["id"] for t in g["tag"]] for g in by_tag] == [[aum0]]

    assert (
        wecom.post("externalcontact/edit_corp_tag", {"id": aum0, "name": "零资产"})["errcode"] == 0
    )
    renamed = wecom.post("externalcontact/edit_corp_tag", {"id": aum0, "name": "AUM 5万+"})
    assert renamed["errcode"] == 40071
    assert wecom.post("externalcontact/edit_corp_tag", {"id": "etnope", "name": "x"})[
        "errcode"
    ] == (40068)
    listed = wecom.post("externalcontact/get_corp_tag_list", {"tag_id": [aum0]})["tag_group"]
    assert listed[0]["tag"][0]["name"] == "零资产"

    # Deleting a tag takes it off contacts; deleting a group's last tags deletes the group.
    assert wecom.mark("mgr001", C1, add=[aum0]) == 0
    assert wecom.post("externalcontact/del_corp_tag", {"tag_id": [aum0]})["errcode"] == 0
    assert aum0 not in wecom.handle.contact_tags("mgr001", C1)
    assert wecom.post("externalcontact/del_corp_tag", {"tag_id": [aum0]})["errcode"] == 40068
    rest = [t["id"] for t in group["tag"][:1]] + [more["tag_group"]["tag"][0]["id"]]
    assert wecom.post("externalcontact/del_corp_tag", {"tag_id": rest})["errcode"] == 0
    names = {g["group_name"] for g in wecom.post("externalcontact/get_corp_tag_list")["tag_group"]}
    assert names == {"客户意向", "兴趣偏好"}
    assert wecom.post("externalcontact/del_corp_tag", {})["errcode"] == 40058
    # A deleted name may be used again.
    again = wecom.post(
        "externalcontact/add_corp_tag", {"group_name": "资产等级", "tag": [{"name": "AUM 0"}]}
    )
    assert again["errcode"] == 0 and again["tag_group"]["group_id"] != group["group_id"]


def test_deleting_a_group_removes_its_tags_from_contacts(wecom: WeCom) -> None:
    assert HIGH in wecom.handle.contact_tags("mgr002", SEED_CONTACT_IDS[4])
    reply = wecom.post("externalcontact/del_corp_tag", {"group_id": [SEED_INTENT_GROUP[0]]})
    assert reply["errcode"] == 0
    pairs = wecom.handle.all_contact_tags()
    assert not any({HIGH, LOW} & set(p["tag_ids"]) for p in pairs)


# ---- mark_tag ----------------------------------------------------------------------------------


def test_mark_tag_adds_and_removes_per_relation(wecom: WeCom) -> None:
    assert wecom.mark("mgr001", C1, add=[WEALTH, FUND]) == 0
    assert wecom.handle.contact_tags("mgr001", C1) == [WEALTH, FUND]
    # The same contact's relation with another manager has its own tags.
    assert wecom.handle.contact_tags("mgr002", C1) == []
    # Adding a present tag or removing an absent one is a no-op, as on the platform.
    assert wecom.mark("mgr001", C1, add=[WEALTH], remove=[HIGH]) == 0
    assert wecom.handle.contact_tags("mgr001", C1) == [WEALTH, FUND]
    assert wecom.mark("mgr001", C1, remove=[WEALTH]) == 0
    assert wecom.handle.contact_tags("mgr001", C1) == [FUND]
    assert wecom.handle.stats()["tag_changes"] == 3

    contact = wecom.get("externalcontact/get", external_userid=C1)
    mine = next(f for f in contact["follow_user"] if f["userid"] == "mgr001")
    assert mine["tags"] == [
        {"group_name": "兴趣偏好", "tag_name": "基金", "tag_id": FUND, "type": 1}
    ]


def test_mark_tag_errors(wecom: WeCom) -> None:
    assert wecom.mark("mgr001", "wmNobodyAtAll", add=[WEALTH]) == 40096
    assert wecom.mark("mgr003", C1, add=[WEALTH]) == 84061  # never a relation
    assert wecom.mark("mgr001", C1, add=["etNoSuchTag"]) == 40068
    assert wecom.mark("mgr001", C1) == 40058
    wecom.post("externalcontact/del_corp_tag", {"tag_id": [FUND]})
    assert wecom.mark("mgr001", C1, add=[FUND]) == 40068
    assert wecom.mark("mgr001", C1, add=[WEALTH]) == 0
    wecom.handle.delete_follow("mgr001", C1)
    assert wecom.mark("mgr001", C1, add=[WEALTH]) == 84061
    assert wecom.mark("mgr002", C1, add=[WEALTH]) == 0  # the other relation lives on
    stats = wecom.handle.stats()
    assert stats["tag_changes"] == 2
    errors = stats["errors"]["externalcontact/mark_tag"]
    assert errors == {"40096": 1, "84061": 2, "40068": 2, "40058": 1}


# ---- contacts -------------------------------------------------------------------------------


def test_contacts_calls(wecom: WeCom) -> None:
    users = wecom.get("externalcontact/get_follow_user_list")["follow_user"]
    assert users == ["mgr001", "mgr002", "mgr003"]
    mine = wecom.get("externalcontact/list", userid="mgr001")["external_userid"]
    assert mine == SEED_CONTACT_IDS[0::3]
    assert wecom.get("externalcontact/list", userid="nobody")["errcode"] == 60111

    contact = wecom.get("externalcontact/get", external_userid=C1)
    assert contact["external_contact"]["external_userid"] == C1
    assert contact["external_contact"]["type"] == 1
    follow = contact["follow_user"][0]
    assert follow["userid"] == "mgr001" and follow["remark_mobiles"] == [seed_mobile(1)]
    assert follow["state"] and follow["createtime"] > 0 and "add_way" in follow
    assert [f["userid"] for f in contact["follow_user"]] == ["mgr001", "mgr002"]
    assert contact["next_cursor"] == ""
    assert wecom.get("externalcontact/get", external_userid="wmNobody")["errcode"] == 40096

    wecom.handle.delete_follow("mgr003", C3)
    assert wecom.get("externalcontact/get", external_userid=C3)["errcode"] == 84061
    assert C3 not in wecom.get("externalcontact/list", userid="mgr003")["external_userid"]


def test_batch_get_by_user_pages_through_every_relation(wecom: WeCom) -> None:
    seen: list[tuple[str, str]] = []
    cursor = ""
    pages = 0
    while True:
        reply = wecom.post(
            "externalcontact/batch/get_by_user",
            {"userid_list": ["mgr001", "mgr002", "mgr003"], "cursor": cursor, "limit": 3},
        )
        assert reply["errcode"] == 0 and len(reply["external_contact_list"]) <= 3
        for item in reply["external_contact_list"]:
            seen.append(
                (item["follow_info"]["userid"], item["external_contact"]["external_userid"])
            )
            assert "tag_id" in item["follow_info"] and "remark_mobiles" in item["follow_info"]
        pages += 1
        cursor = reply["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 20 and len(set(seen)) == 20 and pages == 7

    too_many = wecom.post(
        "externalcontact/batch/get_by_user", {"userid_list": [f"u{i}" for i in range(101)]}
    )
    assert too_many["errcode"] == 40058
    too_big = wecom.post(
        "externalcontact/batch/get_by_user", {"userid_list": ["mgr001"], "limit": 101}
    )
    assert too_big["errcode"] == 40058


# ---- customer groups ---------------------------------------------------------------------------


def test_groupchat_list_get_and_join_ways(wecom: WeCom) -> None:
    first = wecom.post("externalcontact/groupchat/list", {"limit": 1})
    assert len(first["group_chat_list"]) == 1 and first["next_cursor"]
    second = wecom.post(
        "externalcontact/groupchat/list", {"limit": 1, "cursor": first["next_cursor"]}
    )
    assert second["next_cursor"] == ""
    chat_ids = [c["chat_id"] for c in first["group_chat_list"] + second["group_chat_list"]]
    assert chat_ids == SEED_CHAT_IDS
    owned = wecom.post(
        "externalcontact/groupchat/list", {"limit": 10, "owner_filter": {"userid_list": ["mgr002"]}}
    )
    assert [c["chat_id"] for c in owned["group_chat_list"]] == [SEED_CHAT_IDS[1]]
    assert wecom.post("externalcontact/groupchat/list", {"limit": 1001})["errcode"] == 40058

    chat = wecom.post(
        "externalcontact/groupchat/get", {"chat_id": SEED_CHAT_IDS[0], "need_name": 1}
    )["group_chat"]
    assert chat["owner"] == "mgr001" and chat["chat_id"].startswith("wr")
    types = [m["type"] for m in chat["member_list"]]
    assert types[0] == 1 and set(types[1:]) == {2} and len(types) == 7
    assert all("name" in m for m in chat["member_list"])
    assert wecom.post("externalcontact/groupchat/get", {"chat_id": "wrNope"})["errcode"] == 40050

    way = wecom.post(
        "externalcontact/groupchat/add_join_way",
        {"scene": 2, "chat_id_list": SEED_CHAT_IDS, "state": "ch_menu", "remark": "menu"},
    )
    assert way["errcode"] == 0
    got = wecom.post("externalcontact/groupchat/get_join_way", {"config_id": way["config_id"]})
    assert got["join_way"]["qr_code"] and got["join_way"]["state"] == "ch_menu"
    assert got["join_way"]["chat_id_list"] == SEED_CHAT_IDS
    six = wecom.post(
        "externalcontact/groupchat/add_join_way", {"scene": 2, "chat_id_list": ["wr"] * 6}
    )
    assert six["errcode"] == 40058


# ---- mass messages ---------------------------------------------------------------------------


def test_mass_message_waits_for_the_employee_then_sends(wecom: WeCom) -> None:
    sent = send_single(wecom, "mgr001", [C1, SEED_CONTACT_IDS[3], C3])
    assert sent["msgid"] and sent["fail_list"] == [C3]  # C3 is not mgr001's contact
    tasks = wecom.post("externalcontact/get_groupmsg_task", {"msgid": sent["msgid"]})["task_list"]
    assert [(t["userid"], t["status"]) for t in tasks] == [("mgr001", 0)]
    assert send_results(wecom, sent["msgid"], "mgr001") == {C1: 0, SEED_CONTACT_IDS[3]: 0, C3: 2}

    # The employee confirms after the configured delay (read lazily): no sleeping needed.
    wecom.handle.config(confirm_delay_seconds=0)
    tasks = wecom.post("externalcontact/get_groupmsg_task", {"msgid": sent["msgid"]})["task_list"]
    assert tasks[0]["status"] == 2 and tasks[0]["send_time"] > 0
    assert send_results(wecom, sent["msgid"], "mgr001") == {C1: 1, SEED_CONTACT_IDS[3]: 1, C3: 2}

    listed = wecom.post(
        "externalcontact/get_groupmsg_list_v2",
        {"chat_type": "single", "start_time": 0, "end_time": 2**31, "creator": "mgr001"},
    )["group_msg_list"]
    assert [(m["msgid"], m["text"]["content"]) for m in listed] == [(sent["msgid"], "hi")]

    for _ in range(3):
        assert (
            wecom.post("externalcontact/remind_groupmsg_send", {"msgid": sent["msgid"]})["errcode"]
            == 0
        )
    over = wecom.post("externalcontact/remind_groupmsg_send", {"msgid": sent["msgid"]})
    assert over["errcode"] == 41050  # not 45009: a client must not back off and retry it
    assert wecom.post("externalcontact/get_groupmsg_task", {"msgid": "nope"})["errcode"] == 40058


def test_cancelled_mass_message_is_never_sent(wecom: WeCom) -> None:
    sent = send_single(wecom, "mgr001", [C1])
    assert wecom.post("externalcontact/cancel_groupmsg_send", {"msgid": sent["msgid"]})[
        "errcode"
    ] == (0)
    wecom.handle.config(confirm_delay_seconds=0)
    assert send_results(wecom, sent["msgid"], "mgr001") == {C1: 0}


def test_mass_message_caps_show_as_status_3(wecom: WeCom) -> None:
    wecom.handle.config(confirm_delay_seconds=0)
    first = send_single(wecom, "mgr001", [C1])
    second = send_single(wecom, "mgr001", [C1])  # the same manager, the same day
    assert send_results(wecom, first["msgid"], "mgr001") == {C1: 1}
    assert send_results(wecom, second["msgid"], "mgr001") == {C1: 3}

    # Four a month per customer, across managers.
    wecom.handle.config(daily_per_employee_cap=100)
    statuses = [
        send_results(wecom, send_single(wecom, "mgr002", [C1])["msgid"], "mgr002")[C1]
        for _ in range(4)
    ]
    assert statuses == [1, 1, 1, 3]

    # Group sends count per group.
    wecom.handle.config(monthly_cap=1)
    body = {"chat_type": "group", "sender": "mgr001", "text": {"content": "周五活动"}}
    first_group = wecom.post("externalcontact/add_msg_template", body)
    second_group = wecom.post("externalcontact/add_msg_template", body)
    assert send_results(wecom, first_group["msgid"], "mgr001") == {SEED_CHAT_IDS[0]: 1}
    assert send_results(wecom, second_group["msgid"], "mgr001") == {SEED_CHAT_IDS[0]: 3}


def test_mass_message_without_sender_reaches_every_follower(wecom: WeCom) -> None:
    body = {"chat_type": "single", "external_userid": [C1, "wmGone"], "text": {"content": "x"}}
    sent = wecom.post("externalcontact/add_msg_template", body)
    assert sent["fail_list"] == ["wmGone"]
    tasks = wecom.post("externalcontact/get_groupmsg_task", {"msgid": sent["msgid"]})["task_list"]
    assert [t["userid"] for t in tasks] == ["mgr001", "mgr002"]
    empty = {"chat_type": "single", "sender": "mgr001", "text": {}}
    assert wecom.post("externalcontact/add_msg_template", empty)["errcode"] == 40058


# ---- messages, welcome, contact ways, moments ---------------------------------------------------


def test_app_messages_and_robot_posts_are_recorded(wecom: WeCom) -> None:
    body = {
        "touser": "mgr001|ghost",
        "msgtype": "text",
        "agentid": wecom.handle.agent_id,
        "text": {"content": "请在群里发布今天的内容"},
    }
    reply = wecom.post("message/send", body)
    assert reply["errcode"] == 0 and reply["invaliduser"] == "ghost" and reply["msgid"]
    [posted] = wecom.handle.app_messages()
    assert posted["touser"] == ["mgr001"] and posted["text"]["content"] == "请在群里发布今天的内容"
    assert wecom.post("message/send", {**body, "agentid": 1})["errcode"] == 40056
    assert wecom.post("message/send", {**body, "touser": "ghost"})["errcode"] == 81013

    robot = requests.post(
        wecom.base + "webhook/send",
        params={"key": "ops-robot"},
        json={"msgtype": "markdown", "markdown": {"content": "**tag-sync failed**"}},
    ).json()
    assert robot == {"errcode": 0, "errmsg": "ok"}
    [hook] = wecom.handle.webhook_posts()
    assert hook["key"] == "ops-robot" and hook["body"]["markdown"]["content"].startswith("**")
    no_key = requests.post(wecom.base + "webhook/send", json={"msgtype": "text"}).json()
    assert no_key["errcode"] == 93000


def test_welcome_contact_way_and_moments(wecom: WeCom) -> None:
    welcome = {"welcome_code": "wc-1", "text": {"content": "欢迎"}}
    assert wecom.post("externalcontact/send_welcome_msg", welcome)["errcode"] == 0
    assert wecom.post("externalcontact/send_welcome_msg", {"text": {"content": "x"}})[
        "errcode"
    ] == (40058)

    way = wecom.post(
        "externalcontact/add_contact_way",
        {"type": 1, "scene": 2, "user": ["mgr001"], "state": "ch_call"},
    )
    assert way["errcode"] == 0 and way["config_id"] and way["qr_code"]
    long_state = {"type": 1, "scene": 2, "user": ["mgr001"], "state": "s" * 31}
    assert wecom.post("externalcontact/add_contact_way", long_state)["errcode"] == 40058

    job = wecom.post(
        "externalcontact/add_moment_task",
        {
            "text": {"content": "本周理财早知道"},
            "visible_range": {"sender_list": {"user_list": ["mgr001", "ghost"]}},
        },
    )
    assert job["errcode"] == 0 and job["jobid"]
    running = wecom.get("externalcontact/get_moment_task_result", jobid=job["jobid"])
    assert running["status"] == 1
    wecom.handle.config(confirm_delay_seconds=0)
    done = wecom.get("externalcontact/get_moment_task_result", jobid=job["jobid"])
    assert done["status"] == 2 and done["result"]["moment_id"]
    assert done["result"]["invalid_sender_list"]["user_list"] == ["ghost"]


# ---- rate limits ---------------------------------------------------------------------------------


def test_per_api_rate_limit_answers_45009(wecom: WeCom) -> None:
    config = wecom.handle.config(rate_limits={"externalcontact/get_follow_user_list": 3})
    assert config["rate_limits"] == {"*": 10_000, "externalcontact/get_follow_user_list": 3}
    codes = [wecom.get("externalcontact/get_follow_user_list")["errcode"] for _ in range(5)]
    assert codes == [0, 0, 0, 45009, 45009]
    assert wecom.get("externalcontact/list", userid="mgr001")["errcode"] == 0
    wecom.handle.config(rate_limits={"*": 2})
    codes = [wecom.get("externalcontact/list", userid="mgr001")["errcode"] for _ in range(2)]
    assert codes == [0, 45009]  # one call was already made above
    assert wecom.handle.stats()["errors"]["externalcontact/list"] == {"45009": 1}


def test_rate_limiter_window_slides() -> None:
    limiter = RateLimiter({"*": 2, "a": 1})
    assert [limiter.admit("a", now=t) for t in (0.0, 30.0, 59.9, 60.0)] == [
        True,
        False,
        False,
        True,
    ]
    assert [limiter.admit("b", now=t) for t in (0.0, 1.0, 2.0, 60.5)] == [True, True, False, True]


# ---- faults -----------------------------------------------------------------------------------


def test_errcode_fault_for_the_first_n_calls(wecom: WeCom) -> None:
    wecom.handle.fault(api="externalcontact/mark_tag", errcode=-1, times=2)
    assert [wecom.mark("mgr001", C1, add=[WEALTH]) for _ in range(3)] == [-1, -1, 0]
    # Only the last one took effect; other APIs never saw the fault.
    assert wecom.handle.stats()["tag_changes"] == 1
    assert wecom.get("externalcontact/get_follow_user_list")["errcode"] == 0
    log = wecom.handle.requests(api="externalcontact/mark_tag")
    assert [(e["errcode"], e["fault"]) for e in log] == [
        (-1, "errcode"),
        (-1, "errcode"),
        (0, None),
    ]


def test_rate_fault_is_repeatable_for_a_seed(wecom: WeCom) -> None:
    def pattern() -> list[int]:
        wecom.handle.clear_faults()
        wecom.handle.fault(api="externalcontact/get_follow_user_list", errcode=45033, rate=0.5)
        return [wecom.get("externalcontact/get_follow_user_list")["errcode"] for _ in range(30)]

    first, second = pattern(), pattern()
    assert first == second
    assert 0 < first.count(45033) < 30 and set(first) == {0, 45033}


def test_fault_match_targets_one_contact(wecom: WeCom) -> None:
    wecom.handle.fault(api="*", errcode=84061, match={"external_userid": C1})
    assert wecom.mark("mgr001", C1, add=[WEALTH]) == 84061
    assert wecom.mark("mgr001", SEED_CONTACT_IDS[3], add=[WEALTH]) == 0
    assert wecom.get("externalcontact/get", external_userid=C1)["errcode"] == 84061


def test_latency_fault_delays_one_call_without_blocking_others(wecom: WeCom) -> None:
    slow_api = "externalcontact/get_follow_user_list"
    wecom.handle.fault(api=slow_api, latency_ms=1000, times=2)
    with pytest.raises(requests.Timeout):
        requests.get(wecom.base + slow_api, params={"access_token": wecom.token}, timeout=0.2)
    slow_reply: list[dict[str, Any]] = []
    slow = threading.Thread(target=lambda: slow_reply.append(wecom.get(slow_api)))
    slow.start()
    for _ in range(10_000):  # until the slow call has arrived and is sleeping
        if wecom.handle.control("GET", "faults")[0]["fired"] == 2:
            break
    assert wecom.get("externalcontact/list", userid="mgr001")["errcode"] == 0
    slow.join(timeout=30)
    assert slow_reply[0]["errcode"] == 0
    # The fast call was answered while the slow one slept: it is logged first.
    log = [e["api"] for e in wecom.handle.requests() if e["api"] != "gettoken"]
    assert log[-1] == slow_api and "externalcontact/list" in log[:-1]


def test_drop_connection_fault_gives_a_connection_error(wecom: WeCom) -> None:
    wecom.handle.fault(api="externalcontact/mark_tag", drop_connection=True, times=1)
    with pytest.raises(requests.ConnectionError):
        wecom.mark("mgr001", C1, add=[WEALTH])
    assert wecom.handle.contact_tags("mgr001", C1) == []  # dropped before it took effect
    assert wecom.mark("mgr001", C1, add=[WEALTH]) == 0
    [dropped, ok] = wecom.handle.requests(api="externalcontact/mark_tag")
    assert dropped["fault"] == "drop_connection" and dropped["errcode"] is None
    assert ok["errcode"] == 0


def test_http_502_fault(wecom: WeCom) -> None:
    wecom.handle.fault(api="externalcontact/get_follow_user_list", http_status=502, times=1)
    api = wecom.base + "externalcontact/get_follow_user_list"
    first = requests.get(api, params={"access_token": wecom.token})
    assert first.status_code == 502
    assert requests.get(api, params={"access_token": wecom.token}).json()["errcode"] == 0


def test_after_effect_fault_applies_the_call_then_drops(wecom: WeCom) -> None:
    wecom.handle.fault(
        api="externalcontact/mark_tag", drop_connection=True, after_effect=True, times=1
    )
    with pytest.raises(requests.ConnectionError):
        wecom.mark("mgr001", C1, add=[WEALTH])
    # WeCom did it, the client never heard back.
    assert wecom.handle.contact_tags("mgr001", C1) == [WEALTH]
    assert wecom.handle.stats()["tag_changes"] == 1
    wecom.handle.fault(api="externalcontact/mark_tag", errcode=-1, after_effect=True, times=1)
    assert wecom.mark("mgr001", C1, add=[FUND]) == -1
    assert wecom.handle.contact_tags("mgr001", C1) == [WEALTH, FUND]


def test_faults_can_be_cleared_and_must_do_something(wecom: WeCom) -> None:
    wecom.handle.fault(api="*", errcode=-1)
    assert wecom.get("externalcontact/get_follow_user_list")["errcode"] == -1
    wecom.handle.clear_faults()
    assert wecom.get("externalcontact/get_follow_user_list")["errcode"] == 0
    with pytest.raises(requests.HTTPError):
        wecom.handle.fault(api="*")
    with pytest.raises(requests.HTTPError):
        wecom.handle.fault(api="*", errcode=-1, tmies=2)


# ---- the control API ---------------------------------------------------------------------------


def test_seed_reports_counts(sandbox: SandboxHandle, seed_dir: Path) -> None:
    counts = sandbox.seed(seed_dir)
    assert counts == {
        "employees": 3,
        "contacts": 18,
        "follows": 20,
        "tags": 4,
        "groups": 2,
        "members": 15,
    }
    assert sandbox.stats()["corp"]["follows"] == 20
    with pytest.raises(requests.HTTPError):
        sandbox.seed(seed_dir / "missing")


def test_request_log_and_stats(wecom: WeCom) -> None:
    start = wecom.handle.requests()[-1]["seq"]
    wecom.mark("mgr001", C1, add=[WEALTH])
    wecom.mark("mgr001", "wmNobody", add=[WEALTH])
    wecom.get("externalcontact/list", userid="mgr001")
    log = wecom.handle.requests(since=start)
    assert [e["api"] for e in log] == [
        "externalcontact/mark_tag",
        "externalcontact/mark_tag",
        "externalcontact/list",
    ]
    assert log[0]["params"] == {
        "userid": "mgr001",
        "external_userid": C1,
        "add_tag": [WEALTH],
        "remove_tag": [],
    }
    assert [e["errcode"] for e in log] == [0, 40096, 0]
    assert all("access_token" not in e["params"] for e in log)
    assert wecom.handle.requests(api="externalcontact/list", since=start)[0]["seq"] == log[2]["seq"]
    stats = wecom.handle.stats()
    assert stats["calls"]["externalcontact/mark_tag"] == 2
    assert stats["errors"] == {"externalcontact/mark_tag": {"40096": 1}}
    assert stats["tag_changes"] == 1


def test_contact_tags_of_every_pair(wecom: WeCom) -> None:
    wecom.mark("mgr001", C1, add=[WEALTH])
    pairs = wecom.handle.all_contact_tags()
    assert len(pairs) == 20
    assert {"userid": "mgr001", "external_userid": C1, "tag_ids": [WEALTH]}.items() <= next(
        p for p in pairs if (p["userid"], p["external_userid"]) == ("mgr001", C1)
    ).items()
    with pytest.raises(requests.HTTPError):
        wecom.handle.contact_tags("mgr003", C1)


def test_reset_empties_everything_but_credentials(wecom: WeCom) -> None:
    handle = wecom.handle
    wecom.mark("mgr001", C1, add=[WEALTH])
    handle.fault(api="externalcontact/get_follow_user_list", errcode=-1)
    handle.config(monthly_cap=1, rate_limits={"externalcontact/list": 1})
    handle.reset()
    assert handle.requests() == [] and handle.stats()["tag_changes"] == 0
    assert handle.stats()["corp"]["contacts"] == 0
    assert handle.control("GET", "config")["monthly_cap"] == 4
    token = handle.token()
    reply = requests.get(
        handle.api_base + "externalcontact/get_follow_user_list", params={"access_token": token}
    )
    assert reply.json()["follow_user"] == []
    assert handle.all_contact_tags() == []
    assert handle.control("GET", "faults") == []


def test_health(sandbox: SandboxHandle) -> None:
    assert sandbox.control("GET", "health") == {"ok": True}


def test_request_lines_are_logged_without_personal_data(
    wecom: WeCom, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="siyu.sandbox")
    contact = wecom.get("externalcontact/get", external_userid=C1)
    assert contact["follow_user"][0]["remark_mobiles"] == [seed_mobile(1)]
    lines = [r.getMessage() for r in caplog.records if r.name == "siyu.sandbox"]
    assert any("externalcontact/get" in line for line in lines)
    text = "\n".join(lines)
    assert seed_mobile(1) not in text and wecom.token not in text and "客户01" not in text


# ---- persistence -------------------------------------------------------------------------------


def test_state_survives_a_restart(tmp_path: Path, seed_dir: Path) -> None:
    state_file = tmp_path / "sandbox" / "state.db"
    with SandboxServer(state_path=state_file) as server:
        handle = SandboxHandle(server)
        handle.seed(seed_dir)
        handle.config(confirm_delay_seconds=0, monthly_cap=2)
        wecom = WeCom(handle)
        assert wecom.mark("mgr001", C1, add=[WEALTH]) == 0
        created = wecom.post(
            "externalcontact/add_corp_tag", {"group_name": "资产等级", "tag": [{"name": "AUM 0"}]}
        )
        msgid = send_single(wecom, "mgr001", [C1])["msgid"]
        handle.delete_follow("mgr003", C3)
        requests.post(
            server.api_base + "webhook/send",
            params={"key": "ops"},
            json={"msgtype": "text", "text": {"content": "done"}},
        )
        token = wecom.token
    with SandboxServer(state_path=state_file) as server:
        handle = SandboxHandle(server)
        wecom = WeCom(handle)
        assert handle.contact_tags("mgr001", C1) == [WEALTH]
        names = {
            g["group_name"] for g in wecom.post("externalcontact/get_corp_tag_list")["tag_group"]
        }
        assert names == {"客户意向", "兴趣偏好", "资产等级"}
        assert created["tag_group"]["group_id"] in {
            g["group_id"] for g in wecom.post("externalcontact/get_corp_tag_list")["tag_group"]
        }
        assert send_results(wecom, msgid, "mgr001") == {C1: 1}
        assert handle.control("GET", "config")["monthly_cap"] == 2
        assert wecom.mark("mgr003", C3, add=[WEALTH]) == 84061
        assert [p["body"]["text"]["content"] for p in handle.webhook_posts()] == ["done"]
        # A token issued before the restart is still good.
        old = requests.get(
            server.api_base + "externalcontact/get_follow_user_list",
            params={"access_token": token},
        ).json()
        assert old["errcode"] == 0 and len(old["follow_user"]) == 3
