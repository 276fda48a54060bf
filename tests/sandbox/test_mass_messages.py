"""Mass messages over real HTTP on the movable clock: confirmation habits, caps, reminders, cancel."""

from __future__ import annotations

from datetime import datetime

import pytest
import requests

from siyu.sandbox.config import SandboxConfig
from siyu.sandbox.mass_messages import confirm_habit
from siyu.sandbox.platform import CHINA
from tests.fixtures.sandbox import SEED_CHAT_IDS, SEED_CONTACT_IDS, SandboxHandle
from tests.sandbox.bare_client import WeCom, send_results, send_single, task_statuses

C1, C2, C4 = SEED_CONTACT_IDS[0], SEED_CONTACT_IDS[1], SEED_CONTACT_IDS[3]  # C1, C4: mgr001's
DELAY = 600


def beijing(*parts: int) -> float:
    return datetime(*parts, tzinfo=CHINA).timestamp()


@pytest.fixture
def frozen(wecom: WeCom) -> WeCom:
    """The seeded sandbox on a stopped clock at 2026-12-01 10:00 Beijing, a 10-minute delay.

    Tokens last a sandbox month here, so that tests can jump days without refetching.
    """
    wecom.handle.set_clock(beijing(2026, 12, 1, 10, 0), frozen=True)
    wecom.handle.config(confirm_delay_seconds=DELAY, token_ttl_seconds=30 * 86_400)
    wecom.token = wecom.handle.token()  # issued on the sandbox clock
    return wecom


# ---- the clock ---------------------------------------------------------------------------


def test_clock_is_real_until_moved_and_reset_brings_it_back(sandbox: SandboxHandle) -> None:
    assert sandbox.clock()["real"] is True
    start = beijing(2026, 10, 1, 9, 0)
    moved = sandbox.set_clock(start, frozen=True)
    assert moved["now"] == start and moved["frozen"] is True
    assert moved["china_time"] == "2026-10-01T09:00:00+08:00"
    assert sandbox.advance_clock(86_400)["now"] == start + 86_400
    running = sandbox.freeze_clock(False)
    assert running["frozen"] is False and running["now"] >= start + 86_400
    assert sandbox.clock()["now"] >= running["now"]  # it runs on from where it was
    with pytest.raises(requests.HTTPError):
        sandbox.control("POST", "clock", json={"now": start, "advance": 1})
    with pytest.raises(requests.HTTPError):
        sandbox.control("POST", "clock", json={"advance": -5})
    sandbox.reset()
    assert sandbox.clock()["real"] is True


def test_tokens_expire_on_the_sandbox_clock(frozen: WeCom) -> None:
    frozen.handle.config(token_ttl_seconds=7200)
    frozen.token = frozen.handle.token()
    assert frozen.get("externalcontact/get_follow_user_list")["errcode"] == 0
    frozen.handle.advance_clock(7200)
    assert frozen.get("externalcontact/get_follow_user_list")["errcode"] == 42001


# ---- confirmation ------------------------------------------------------------------------


def test_an_employee_confirms_after_the_delay_of_sandbox_time(frozen: WeCom) -> None:
    msgid = send_single(frozen, "mgr001", [C1, C4])["msgid"]
    frozen.handle.advance_clock(DELAY - 1)
    assert task_statuses(frozen, msgid) == {"mgr001": 0}
    assert send_results(frozen, msgid, "mgr001") == {C1: 0, C4: 0}
    frozen.handle.advance_clock(1)
    [task] = frozen.post("externalcontact/get_groupmsg_task", {"msgid": msgid})["task_list"]
    assert task == {"userid": "mgr001", "status": 2, "send_time": int(beijing(2026, 12, 1, 10, 10))}
    assert send_results(frozen, msgid, "mgr001") == {C1: 1, C4: 1}


def test_late_and_never_habits_per_employee(frozen: WeCom) -> None:
    frozen.handle.config(late_factor=6, employee_confirm={"mgr001": "late", "mgr002": "never"})
    # No sender: each follower of C1 (mgr001, mgr002) confirms on their own habit.
    body = {"chat_type": "single", "external_userid": [C1], "text": {"content": "x"}}
    msgid = frozen.post("externalcontact/add_msg_template", body)["msgid"]
    frozen.handle.advance_clock(DELAY)
    assert task_statuses(frozen, msgid) == {"mgr001": 0, "mgr002": 0}
    frozen.handle.advance_clock(5 * DELAY)
    assert task_statuses(frozen, msgid) == {"mgr001": 2, "mgr002": 0}
    frozen.handle.advance_clock(20 * 86_400)
    frozen.token = frozen.handle.token()  # the old one expired 20 sandbox days ago
    assert task_statuses(frozen, msgid) == {"mgr001": 2, "mgr002": 0}
    [described] = frozen.handle.mass_messages()
    assert {t["userid"]: t["habit"] for t in described["tasks"]} == {
        "mgr001": "late",
        "mgr002": "never",
    }
    # The control API makes a never-confirming employee confirm, now.
    assert frozen.handle.confirm(msgid, "mgr002") == 1
    assert send_results(frozen, msgid, "mgr002") == {C1: 1}
    assert frozen.handle.confirm(msgid) == 0


def test_habits_are_drawn_per_employee_from_the_seed() -> None:
    config = SandboxConfig(late_share=0.3, never_share=0.1, confirm_seed=7)
    users = [f"mgr{i:04d}" for i in range(2000)]
    habits = [confirm_habit(config, u) for u in users]
    assert habits == [confirm_habit(config, u) for u in users]  # the same on every call
    assert 0.25 < habits.count("late") / 2000 < 0.35
    assert 0.07 < habits.count("never") / 2000 < 0.13
    reseeded = [confirm_habit(config.model_copy(update={"confirm_seed": 8}), u) for u in users]
    assert reseeded != habits
    assert {confirm_habit(SandboxConfig(), u) for u in users} == {"on_time"}


def test_seeded_habits_hold_over_http_across_resets(sandbox: SandboxHandle, seed_dir) -> None:
    def habits() -> dict[str, str]:
        sandbox.reset()
        sandbox.seed(seed_dir)
        sandbox.config(late_share=0.5, never_share=0.2, confirm_seed=3)
        wecom = WeCom(sandbox)
        for sender in ("mgr001", "mgr002", "mgr003"):
            body = {"chat_type": "single", "sender": sender, "text": {"content": "x"}}
            assert wecom.post("externalcontact/add_msg_template", body)["errcode"] == 0
        return {m["creator"]: m["tasks"][0]["habit"] for m in sandbox.mass_messages()}

    assert habits() == habits()


# ---- caps at confirmation ----------------------------------------------------------------


def test_caps_count_the_beijing_day_and_month_of_confirmation(wecom: WeCom) -> None:
    handle = wecom.handle
    handle.set_clock(beijing(2026, 12, 31, 23, 0), frozen=True)
    handle.config(confirm_delay_seconds=0)
    wecom.token = handle.token()
    first = send_single(wecom, "mgr001", [C1])["msgid"]
    second = send_single(wecom, "mgr001", [C1])["msgid"]
    assert send_results(wecom, first, "mgr001") == {C1: 1}
    assert send_results(wecom, second, "mgr001") == {C1: 3}  # one a day from one employee
    assert send_results(wecom, send_single(wecom, "mgr002", [C1])["msgid"], "mgr002") == {C1: 1}

    # Four a calendar month from the enterprise: two more, then capped.
    handle.config(daily_per_employee_cap=100)
    statuses = [send_results(wecom, send_single(wecom, "mgr001", [C1])["msgid"], "mgr001")[C1]]
    statuses += [send_results(wecom, send_single(wecom, "mgr002", [C1])["msgid"], "mgr002")[C1]]
    statuses += [send_results(wecom, send_single(wecom, "mgr001", [C1])["msgid"], "mgr001")[C1]]
    assert statuses == [1, 1, 3]

    # Created in a full December, confirmed in January: it counts in January and goes out.
    handle.config(confirm_delay_seconds=3600)
    late = send_single(wecom, "mgr001", [C1])["msgid"]
    handle.advance_clock(3600)  # 2027-01-01 00:00 Beijing
    assert send_results(wecom, late, "mgr001") == {C1: 1}
    [message] = [m for m in handle.mass_messages() if m["msgid"] == late]
    assert message["results"][0]["send_time"] == int(beijing(2027, 1, 1, 0, 0))


def test_a_group_gets_at_most_four_mass_messages_a_month(frozen: WeCom) -> None:
    frozen.handle.config(confirm_delay_seconds=0)
    body = {"chat_type": "group", "sender": "mgr001", "text": {"content": "周五活动"}}
    statuses = []
    for _ in range(5):
        msgid = frozen.post("externalcontact/add_msg_template", body)["msgid"]
        statuses.append(send_results(frozen, msgid, "mgr001")[SEED_CHAT_IDS[0]])
        frozen.handle.advance_clock(3 * 3600)
    assert statuses == [1, 1, 1, 1, 3]
    frozen.handle.set_clock(beijing(2027, 1, 2, 10, 0))
    frozen.token = frozen.handle.token()
    msgid = frozen.post("externalcontact/add_msg_template", body)["msgid"]
    assert send_results(frozen, msgid, "mgr001") == {SEED_CHAT_IDS[0]: 1}


def test_a_customer_gone_before_confirmation_is_status_2(frozen: WeCom) -> None:
    msgid = send_single(frozen, "mgr001", [C1, C4])["msgid"]
    frozen.handle.delete_follow("mgr001", C4)
    frozen.handle.advance_clock(DELAY)
    assert send_results(frozen, msgid, "mgr001") == {C1: 1, C4: 2}


# ---- reminders, cancel, listing ----------------------------------------------------------


def test_three_reminders_in_any_24_hours(frozen: WeCom) -> None:
    msgid = send_single(frozen, "mgr001", [C1])["msgid"]
    remind = {"msgid": msgid}
    codes = []
    for _ in range(4):
        codes.append(frozen.post("externalcontact/remind_groupmsg_send", remind)["errcode"])
        frozen.handle.advance_clock(3600)
    assert codes == [0, 0, 0, 41050]
    frozen.handle.advance_clock(20 * 3600)  # the first reminder is now 24 h old
    assert frozen.post("externalcontact/remind_groupmsg_send", remind)["errcode"] == 0
    assert frozen.post("externalcontact/remind_groupmsg_send", remind)["errcode"] == 41050
    frozen.handle.config(remind_limit_errcode=45009)
    assert frozen.post("externalcontact/remind_groupmsg_send", remind)["errcode"] == 45009


def test_cancel_stops_the_senders_who_have_not_confirmed(frozen: WeCom) -> None:
    frozen.handle.config(employee_confirm={"mgr002": "never"})
    body = {"chat_type": "single", "external_userid": [C1], "text": {"content": "x"}}
    msgid = frozen.post("externalcontact/add_msg_template", body)["msgid"]
    frozen.handle.advance_clock(DELAY)
    assert frozen.post("externalcontact/cancel_groupmsg_send", {"msgid": msgid})["errcode"] == 0
    frozen.handle.config(employee_confirm={"mgr002": "on_time"})
    frozen.handle.advance_clock(DELAY)
    assert task_statuses(frozen, msgid) == {"mgr001": 2, "mgr002": 0}
    assert send_results(frozen, msgid, "mgr001") == {C1: 1}
    assert send_results(frozen, msgid, "mgr002") == {C1: 0}
    [message] = frozen.handle.mass_messages()
    assert message["cancelled"] is True and message["confirmed"] is False
    assert frozen.handle.confirm(msgid, "mgr002") == 0  # a cancelled task stays unsent


def test_messages_are_listed_by_creator_and_creation_time(frozen: WeCom) -> None:
    t0 = int(frozen.handle.clock()["now"])
    first = send_single(frozen, "mgr001", [C1], text="一")["msgid"]
    frozen.handle.advance_clock(3600)
    second = send_single(frozen, "mgr002", [C2], text="二")["msgid"]
    frozen.handle.advance_clock(3600)
    third = send_single(frozen, "mgr001", [C4], text="三")["msgid"]

    def listed(**spec: object) -> list[str]:
        body = {"chat_type": "single", "start_time": t0, "end_time": t0 + 7200, **spec}
        reply = frozen.post("externalcontact/get_groupmsg_list_v2", body)
        return [m["msgid"] for m in reply["group_msg_list"]]

    assert listed() == [first, second, third]
    assert listed(creator="mgr001") == [first, third]
    assert listed(start_time=t0 + 1) == [second, third]
    assert listed(end_time=t0 + 3599) == [first]


def test_app_messages_read_back_by_employee(frozen: WeCom) -> None:
    for touser, text in (("mgr001", "请发布周二游戏"), ("mgr001|mgr002", "周五大活动")):
        body = {
            "touser": touser,
            "msgtype": "text",
            "agentid": frozen.handle.agent_id,
            "text": {"content": text},
        }
        assert frozen.post("message/send", body)["errcode"] == 0
    mine = frozen.handle.app_messages(touser="mgr002")
    assert [m["text"]["content"] for m in mine] == ["周五大活动"]
    assert len(frozen.handle.app_messages()) == 2
    assert mine[0]["at"] == frozen.handle.clock()["now"]  # stamped on the sandbox clock
