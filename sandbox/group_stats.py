"""groupchat/statistic and statistic_group_by_day computed from the sandbox's groups, joins and chat."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

from siyu.sandbox.groups import GroupBackend
from siyu.sandbox.platform import DAY_SECONDS, INVALID_PARAMETER, WeComError, china_midnight

MAX_SPAN_DAYS = 30
KEPT_DAYS = 180
MAX_OWNERS = 100
# order_by of groupchat/statistic: 1 new chats, 2 chats, 3 new members, 4 members.
ORDER_FIELDS = {1: "new_chat_cnt", 2: "chat_total", 3: "new_member_cnt", 4: "member_total"}


@dataclass
class _Figures:
    """One owner's (or one day's) figures; `speakers` are distinct (chat, member) pairs."""

    new_chat_cnt: int = 0
    chat_total: int = 0
    chats_with_msg: set[str] = field(default_factory=set)
    new_member_cnt: int = 0
    member_total: int = 0
    speakers: set[tuple[str, str]] = field(default_factory=set)
    msg_total: int = 0

    def data(self) -> dict[str, int]:
        return {
            "new_chat_cnt": self.new_chat_cnt,
            "chat_total": self.chat_total,
            "chat_has_msg": len(self.chats_with_msg),
            "new_member_cnt": self.new_member_cnt,
            "member_total": self.member_total,
            "member_has_msg": len(self.speakers),
            "msg_total": self.msg_total,
            "migrate_trainee_chat_cnt": 0,
        }


class _Timeline:
    """A group's joins and leaves as sorted times, so 'members at t' is two bisections."""

    def __init__(self, group: dict[str, Any]) -> None:
        departed = group.get("departed") or []
        self.joins = sorted(m["join_time"] for m in [*group["members"], *departed])
        self.leaves = sorted(m["leave_time"] for m in departed)

    def members_at(self, t: int) -> int:
        return bisect_left(self.joins, t) - bisect_left(self.leaves, t)

    def joins_between(self, start: int, end: int) -> int:
        return bisect_left(self.joins, end) - bisect_left(self.joins, start)


def _days(spec: dict[str, Any], now: float) -> list[int]:
    """The Beijing midnights asked for, checked as the platform does.

    Times are floored to their midnight; the span is at most 30 days, from yesterday back
    180 days (the platform has no figures for today). Past those bounds we answer 40058
    (the platform's code for them is unconfirmed).
    """
    try:
        begin = china_midnight(int(spec["day_begin_time"]))
        end_raw = spec.get("day_end_time")
        end = begin if end_raw in (None, "", 0) else china_midnight(int(end_raw))
    except (KeyError, TypeError, ValueError):
        raise WeComError(INVALID_PARAMETER, "day_begin_time is required") from None
    today = china_midnight(now)
    if end < begin:
        raise WeComError(INVALID_PARAMETER, "day_end_time is before day_begin_time")
    if (end - begin) // DAY_SECONDS + 1 > MAX_SPAN_DAYS:
        raise WeComError(INVALID_PARAMETER, f"at most {MAX_SPAN_DAYS} days at once")
    if end >= today:
        raise WeComError(INVALID_PARAMETER, "figures exist up to yesterday")
    if begin < today - KEPT_DAYS * DAY_SECONDS:
        raise WeComError(INVALID_PARAMETER, f"figures are kept {KEPT_DAYS} days")
    return list(range(begin, end + 1, DAY_SECONDS))


def _owners(spec: dict[str, Any]) -> list[str]:
    owner_filter = spec.get("owner_filter") or {}
    if not isinstance(owner_filter, dict):
        raise WeComError(INVALID_PARAMETER, "owner_filter must be an object")
    owners = owner_filter.get("userid_list") or []
    if not isinstance(owners, list) or len(owners) > MAX_OWNERS:
        raise WeComError(INVALID_PARAMETER, f"owner_filter holds at most {MAX_OWNERS} userids")
    return [str(o) for o in dict.fromkeys(owners)]


def _add_day(
    figures: _Figures, groups: GroupBackend, group: dict[str, Any], timeline: _Timeline, day: int
) -> None:
    """One group's day into `figures`: what was new and what was said."""
    end = day + DAY_SECONDS
    if group["create_time"] >= end:
        return
    figures.new_chat_cnt += int(group["create_time"] >= day)
    figures.new_member_cnt += timeline.joins_between(day, end)
    chat = groups.chat_days.get((group["chat_id"], day))
    if chat and chat["msg_total"]:
        figures.msg_total += chat["msg_total"]
        figures.chats_with_msg.add(group["chat_id"])
        figures.speakers.update((group["chat_id"], u) for u in chat["senders"])


def _add_totals(figures: _Figures, group: dict[str, Any], timeline: _Timeline, day: int) -> None:
    """One group's size as at the end of `day`."""
    end = day + DAY_SECONDS
    if group["create_time"] < end:
        figures.chat_total += 1
        figures.member_total += timeline.members_at(end)


def statistic(groups: GroupBackend, spec: dict[str, Any], now: float) -> dict[str, Any]:
    """Figures per group owner over the days asked for.

    Counts of new chats, new members and messages add up over the days; chat and member
    totals are as at the end of the last day; chats and members with messages are distinct
    over the span (our reading of a span; the platform's page shows one day).
    """
    days = _days(spec, now)
    owners = _owners(spec)
    if not owners:
        owners = list(dict.fromkeys(g["owner"] for g in groups.groups.values()))
    per_owner = {owner: _Figures() for owner in owners}
    for group in groups.groups.values():
        figures = per_owner.get(group["owner"])
        if figures is None:
            continue
        timeline = _Timeline(group)
        for day in days:
            _add_day(figures, groups, group, timeline, day)
        _add_totals(figures, group, timeline, days[-1])
    try:
        order = ORDER_FIELDS[int(spec.get("order_by") or 1)]
        descending = not int(spec.get("order_asc") or 0)
        offset = int(spec.get("offset") or 0)
        limit = int(spec.get("limit") or 500)
    except (KeyError, TypeError, ValueError):
        raise WeComError(INVALID_PARAMETER, "invalid order_by, offset or limit") from None
    if not 1 <= limit <= 1000 or offset < 0:
        raise WeComError(INVALID_PARAMETER, "limit must be 1-1000")
    items = [{"owner": owner, "data": f.data()} for owner, f in per_owner.items()]
    # Ties keep owner order, so a page is the same on every call.
    items.sort(key=lambda i: i["owner"])
    items.sort(key=lambda i: i["data"][order], reverse=descending)
    page = items[offset : offset + limit]
    return {
        "total": len(items),
        "next_offset": min(offset + limit, len(items)),
        "items": page,
    }


def statistic_group_by_day(
    groups: GroupBackend, spec: dict[str, Any], now: float
) -> dict[str, Any]:
    """Figures per Beijing day over the owners' groups (all groups without a filter)."""
    days = _days(spec, now)
    owners = set(_owners(spec))
    chosen = [
        (g, _Timeline(g)) for g in groups.groups.values() if not owners or g["owner"] in owners
    ]
    items = []
    for day in days:
        figures = _Figures()
        for group, timeline in chosen:
            _add_day(figures, groups, group, timeline, day)
            _add_totals(figures, group, timeline, day)
        items.append({"stat_time": day, "data": figures.data()})
    return {"items": items}
