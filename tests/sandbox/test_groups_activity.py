"""Customer groups over real HTTP: joins, leaves and chat recorded, group statistics, simulated game answers."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

import pytest
import requests

from siyu.sandbox.platform import CHINA
from tests.fixtures.sandbox import SEED_CHAT_IDS, SandboxHandle
from tests.sandbox.bare_client import WeCom

CHAT1, CHAT2 = SEED_CHAT_IDS  # mgr001's (6 customers + owner), mgr002's (7 customers + owner)
DAY = 86_400


def midnight(*parts: int) -> int:
    return int(datetime(*parts, tzinfo=CHINA).timestamp())


@pytest.fixture
def december(wecom: WeCom) -> WeCom:
    """The seeded sandbox on a stopped clock at 2026-12-10 09:00 Beijing."""
    wecom.handle.set_clock(midnight(2026, 12, 10) + 9 * 3600, frozen=True)
    wecom.handle.config(token_ttl_seconds=60 * DAY)
    wecom.token = wecom.handle.token()
    return wecom


def members(wecom: WeCom, chat_id: str) -> list[str]:
    chat = wecom.post("externalcontact/groupchat/get", {"chat_id": chat_id})["group_chat"]
    return [m["userid"] for m in chat["member_list"]]


def fill(handle: SandboxHandle, chat_id: str, n: int, at: float, prefix: str = "wmFill") -> None:
    events = [
        {"chat_id": chat_id, "kind": "join", "userid": f"{prefix}{i:04d}", "at": at}
        for i in range(n)
    ]
    assert handle.group_activity(events)["joined"] == n


# ---- activity ----------------------------------------------------------------------------


def test_joins_leaves_and_messages_are_recorded(december: WeCom) -> None:
    before = members(december, CHAT1)
    day = midnight(2026, 12, 9)
    counts = december.handle.group_activity(
        [
            {"chat_id": CHAT1, "kind": "join", "userid": "wmNewcomer01", "at": day + 3600},
            {"chat_id": CHAT1, "kind": "join", "userid": before[1], "at": day + 3600},
            {"chat_id": CHAT1, "kind": "leave", "userid": before[2], "at": day + 7200},
            {"chat_id": CHAT1, "kind": "leave", "userid": "wmNeverThere", "at": day + 7200},
            {"chat_id": CHAT1, "kind": "message", "userid": "wmNewcomer01", "count": 3},
        ]
    )
    assert counts == {"joined": 1, "already": 1, "full": 0, "left": 1, "absent": 1, "messages": 3}
    chat = december.post("externalcontact/groupchat/get", {"chat_id": CHAT1})["group_chat"]
    newcomer = next(m for m in chat["member_list"] if m["userid"] == "wmNewcomer01")
    assert newcomer == {
        "userid": "wmNewcomer01",
        "type": 2,
        "join_time": day + 3600,
        "join_scene": 3,
    }
    assert before[2] not in [m["userid"] for m in chat["member_list"]]

    with pytest.raises(requests.HTTPError) as unknown:
        december.handle.group_activity(
            [
                {"chat_id": CHAT1, "kind": "message", "userid": "wmNewcomer01"},
                {"chat_id": "wrNoSuchChat", "kind": "join", "userid": "wmX"},
            ]
        )
    assert unknown.value.response.status_code == 404
    assert december.handle.group_activity([])["messages"] == 0

    december.handle.config(group_max_members=len(chat["member_list"]))
    full = december.handle.group_activity([{"chat_id": CHAT1, "kind": "join", "userid": "wmLate"}])
    assert full["full"] == 1


# ---- statistics --------------------------------------------------------------------------


def test_statistics_by_day_follow_joins_leaves_and_chat(december: WeCom) -> None:
    handle = december.handle
    d8, d9 = midnight(2026, 12, 8), midnight(2026, 12, 9)
    chat1 = members(december, CHAT1)
    handle.group_activity(
        [
            {"chat_id": CHAT1, "kind": "join", "userid": "wmJoin1", "at": d8 + 100},
            {"chat_id": CHAT1, "kind": "join", "userid": "wmJoin2", "at": d9 + 100},
            {"chat_id": CHAT1, "kind": "leave", "userid": chat1[1], "at": d9 + 200},
            {"chat_id": CHAT1, "kind": "message", "userid": "wmJoin1", "at": d9 + 300, "count": 4},
            {"chat_id": CHAT1, "kind": "message", "userid": chat1[2], "at": d9 + 400},
            {"chat_id": CHAT2, "kind": "message", "userid": "mgr002", "at": d8 + 500, "count": 2},
        ]
    )
    body = {
        "day_begin_time": d8,
        "day_end_time": d9 + 5000,
        "owner_filter": {"userid_list": ["mgr001"]},
    }
    reply = december.post("externalcontact/groupchat/statistic_group_by_day", body)
    assert reply["errcode"] == 0
    assert [i["stat_time"] for i in reply["items"]] == [d8, d9]
    day8, day9 = (i["data"] for i in reply["items"])
    assert day8 == {
        "new_chat_cnt": 0,
        "chat_total": 1,
        "chat_has_msg": 0,
        "new_member_cnt": 1,
        "member_total": 8,  # owner + 6 seed customers + wmJoin1
        "member_has_msg": 0,
        "msg_total": 0,
        "migrate_trainee_chat_cnt": 0,
    }
    assert day9["new_member_cnt"] == 1 and day9["member_total"] == 8  # one in, one out
    assert (day9["msg_total"], day9["member_has_msg"], day9["chat_has_msg"]) == (5, 2, 1)

    everyone = december.post(
        "externalcontact/groupchat/statistic_group_by_day", {"day_begin_time": d8}
    )["items"]
    assert everyone[0]["data"]["chat_total"] == 2 and everyone[0]["data"]["msg_total"] == 2


def test_statistics_by_owner_sum_the_span_and_sort(december: WeCom) -> None:
    handle = december.handle
    d1 = midnight(2026, 12, 1)
    fill(handle, CHAT2, 5, d1 + 60)
    handle.group_activity(
        [
            {"chat_id": CHAT1, "kind": "message", "userid": "mgr001", "at": d1 + DAY * i}
            for i in range(3)
        ]
    )
    body = {"day_begin_time": d1, "day_end_time": d1 + 8 * DAY, "order_by": 4}
    reply = december.post("externalcontact/groupchat/statistic", body)
    assert reply["total"] == 2 and reply["next_offset"] == 2
    assert [i["owner"] for i in reply["items"]] == ["mgr002", "mgr001"]  # most members first
    mgr002, mgr001 = (i["data"] for i in reply["items"])
    assert (mgr002["new_member_cnt"], mgr002["member_total"]) == (5, 13)
    assert (mgr001["msg_total"], mgr001["member_has_msg"], mgr001["chat_has_msg"]) == (3, 1, 1)
    ascending = december.post(
        "externalcontact/groupchat/statistic", {**body, "order_asc": 1, "limit": 1}
    )
    assert [i["owner"] for i in ascending["items"]] == ["mgr001"] and ascending["next_offset"] == 1


def test_statistics_windows_are_checked(december: WeCom) -> None:
    today = midnight(2026, 12, 10)

    def errcode(api: str, **body: object) -> int:
        return december.post(f"externalcontact/groupchat/{api}", body)["errcode"]

    for api in ("statistic", "statistic_group_by_day"):
        assert errcode(api, day_begin_time=today) == 40058  # no figures for today yet
        assert errcode(api, day_begin_time=today - DAY + 4000) == 0  # floored to midnight
        assert errcode(api, day_begin_time=today - 31 * DAY, day_end_time=today - DAY) == 40058
        assert errcode(api, day_begin_time=today - 30 * DAY, day_end_time=today - DAY) == 0
        assert errcode(api, day_begin_time=today - 181 * DAY) == 40058
        assert errcode(api, day_begin_time=today - 2 * DAY, day_end_time=today - 3 * DAY) == 40058
        assert errcode(api) == 40058
    many = {"userid_list": [f"u{i}" for i in range(101)]}
    assert errcode("statistic", day_begin_time=today - DAY, owner_filter=many) == 40058


# ---- simulated game answers --------------------------------------------------------------


def read_entries(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as source:
        return list(csv.DictReader(source))


def test_members_answer_at_the_reported_participation(december: WeCom, tmp_path: Path) -> None:
    handle = december.handle
    fill(handle, CHAT1, 194, midnight(2026, 12, 1))  # 200 customers with the seed's six
    asked = midnight(2026, 12, 10) + 20 * 3600
    request = {
        "chat_ids": [CHAT1],
        "question_id": "dice-w50-tue",
        "correct_answer": "b",
        "start_at": asked,
        "seed": 11,
    }
    reply = handle.group_answers(**request, path=str(tmp_path / "entries.csv"))
    stats = reply["chats"][CHAT1]
    assert stats["members"] == 200 and 70 <= stats["answered"] <= 100
    assert reply["entries"] == stats["answered"] and reply["correct"] == stats["correct"]
    entries = read_entries(tmp_path / "entries.csv")
    assert list(entries[0]) == ["external_userid", "chat_id", "answer", "time"]
    assert len(entries) == stats["answered"]
    assert len({e["external_userid"] for e in entries}) == len(entries)  # one answer each
    assert set(members(december, CHAT1)) >= {e["external_userid"] for e in entries}
    assert sum(e["answer"] == "b" for e in entries) == stats["correct"]
    assert {e["answer"] for e in entries} <= {"a", "b", "c"}
    times = [datetime.fromisoformat(e["time"]).timestamp() for e in entries]
    assert times == sorted(times) and asked <= times[0] and times[-1] < asked + 3600
    assert entries[0]["time"].endswith("+08:00")

    # The same request draws the same answers; another question draws others.
    again = handle.group_answers(**request, path=str(tmp_path / "again.csv"), record_messages=False)
    assert again == {**reply, "path": str(tmp_path / "again.csv")}
    assert read_entries(tmp_path / "again.csv") == entries
    other = handle.group_answers(
        **{**request, "question_id": "dice-w50-thu"}, path=str(tmp_path / "thu.csv")
    )
    assert read_entries(tmp_path / "thu.csv") != entries and other["entries"] > 0


def test_answers_for_several_groups_count_as_chat(december: WeCom, tmp_path: Path) -> None:
    handle = december.handle
    yesterday = midnight(2026, 12, 9)
    path = tmp_path / "landing" / "entries.csv"
    reply = handle.group_answers(
        chat_ids=[CHAT1, CHAT2],
        question_id="quiz-1",
        correct_answer="a",
        participation=0.5,
        correct_share=1.0,
        start_at=yesterday + 20 * 3600,
        window_seconds=600,
        path=str(path),
    )
    assert {c: s["answered"] for c, s in reply["chats"].items()} == {CHAT1: 3, CHAT2: 4}
    assert reply["correct"] == 7 and {e["answer"] for e in read_entries(path)} == {"a"}
    appended = handle.group_answers(
        chat_ids=[CHAT2],
        question_id="quiz-2",
        correct_answer="c",
        participation=0.0,
        path=str(path),
        append=True,
    )
    assert appended["entries"] == 0 and len(read_entries(path)) == 7
    figures = december.post(
        "externalcontact/groupchat/statistic_group_by_day", {"day_begin_time": yesterday}
    )["items"][0]["data"]
    assert (figures["msg_total"], figures["member_has_msg"], figures["chat_has_msg"]) == (7, 7, 2)
    with pytest.raises(requests.HTTPError):
        handle.group_answers(
            chat_ids=["wrNope"], question_id="q", correct_answer="a", path=str(tmp_path / "x.csv")
        )
    assert not (tmp_path / "x.csv").exists()
