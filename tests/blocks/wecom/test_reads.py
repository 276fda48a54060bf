"""Group statistics and openid conversion: the requests WeCom documents, the replies as models."""

from __future__ import annotations

from typing import Any

import pytest

from siyu.schemas.wecom import GroupChatStatistic
from tests.blocks.wecom.conftest import scripted_client

STATISTIC = "externalcontact/groupchat/statistic"
DAY = 86_400
BEGIN = 1_764_518_400  # 2025-12-01 00:00 Asia/Shanghai


def _statistics(owners: int, page: int):
    items = [
        {"owner": f"mgr{i:03d}", "data": {"chat_total": i, "member_total": 10 * i, "msg_total": 3}}
        for i in range(owners)
    ]

    def wecom(api: str, body: dict[str, Any]) -> dict[str, Any]:
        assert api == STATISTIC
        offset, limit = body["offset"], min(body["limit"], page)
        chunk = items[offset : offset + limit]
        return {
            "errcode": 0,
            "total": len(items),
            "next_offset": offset + len(chunk),
            "items": chunk,
        }

    return wecom


def test_group_statistics_are_paged_by_offset() -> None:
    client, session = scripted_client(_statistics(owners=5, page=2))
    owners = [f"mgr{i:03d}" for i in range(5)]

    stats = list(
        client.iter_group_chat_statistics(
            owner_userids=owners, day_begin_time=BEGIN, day_end_time=BEGIN + 6 * DAY
        )
    )

    assert [s.owner for s in stats] == owners
    assert all(isinstance(s, GroupChatStatistic) for s in stats)
    assert stats[3].data.member_total == 30 and stats[3].data.new_chat_cnt == 0
    sent = session.calls(STATISTIC)
    assert [b["offset"] for b in sent] == [0, 2, 4]
    assert sent[0]["owner_filter"] == {"userid_list": owners}
    assert (sent[0]["day_begin_time"], sent[0]["day_end_time"]) == (BEGIN, BEGIN + 6 * DAY)


def test_one_day_statistics_default_the_end_to_the_begin() -> None:
    client, session = scripted_client(_statistics(owners=1, page=10))
    list(client.iter_group_chat_statistics(owner_userids=["mgr000"], day_begin_time=BEGIN))
    assert session.calls(STATISTIC)[0]["day_end_time"] == BEGIN


@pytest.mark.parametrize(
    "arguments",
    [
        {"owner_userids": [], "day_begin_time": BEGIN},
        {"owner_userids": [f"u{i}" for i in range(101)], "day_begin_time": BEGIN},
        {"owner_userids": ["u"], "day_begin_time": BEGIN, "day_end_time": BEGIN + 31 * DAY},
        {"owner_userids": ["u"], "day_begin_time": BEGIN, "day_end_time": BEGIN - DAY},
    ],
)
def test_statistics_outside_what_wecom_answers_are_refused_before_calling(arguments) -> None:
    client, session = scripted_client(_statistics(owners=1, page=10))
    with pytest.raises(ValueError):
        list(client.iter_group_chat_statistics(**arguments))
    assert session.sent == []


def test_convert_to_openid() -> None:
    def wecom(api: str, body: dict[str, Any]) -> dict[str, Any]:
        assert api == "externalcontact/convert_to_openid"
        return {"errcode": 0, "errmsg": "ok", "openid": f"oOpen-{body['external_userid']}"}

    client, session = scripted_client(wecom)
    assert client.convert_to_openid("wmSeedContact0001") == "oOpen-wmSeedContact0001"
    assert session.calls("externalcontact/convert_to_openid") == [
        {"external_userid": "wmSeedContact0001"}
    ]
