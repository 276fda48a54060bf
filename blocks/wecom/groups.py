"""Customer groups through the WeCom API: the groups, their members, join QR codes, statistics."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

from siyu.blocks.wecom.calls import read, write
from siyu.blocks.wecom.errors import WeComError
from siyu.blocks.wecom.transport import Transport, without_none
from siyu.schemas.wecom import GroupChat, GroupChatRef, GroupChatStatistic, JoinWay

DAY_SECONDS = 86_400
STATISTIC_MAX_DAYS = 30  # WeCom's span for one groupchat/statistic request
STATISTIC_MAX_OWNERS = 100


class GroupsApi(Transport):
    """The customer group calls."""

    @read("externalcontact/groupchat/list")
    def iter_group_chats(
        self,
        *,
        status_filter: int = 0,
        owner_userids: Sequence[str] | None = None,
        limit: int = 1000,
    ) -> Iterator[GroupChatRef]:
        """Every customer group (optionally of these owners), paged."""
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        body: dict[str, Any] = {"status_filter": status_filter, "limit": limit}
        if owner_userids:
            body["owner_filter"] = {"userid_list": list(owner_userids)}
        for item in self._pages("externalcontact/groupchat/list", body, "group_chat_list"):
            yield GroupChatRef.model_validate(item)

    @read("externalcontact/groupchat/get")
    def get_group_chat(self, chat_id: str, *, need_name: bool = True) -> GroupChat:
        """A customer group with its members and admins."""
        data = self._call(
            "POST",
            "externalcontact/groupchat/get",
            body={"chat_id": chat_id, "need_name": int(need_name)},
        )
        return GroupChat.model_validate(data["group_chat"])

    # A second config is a second QR code: harmless but not the same state, so never resent.
    @write("externalcontact/groupchat/add_join_way", resendable=False)
    def add_join_way(
        self,
        *,
        chat_id_list: Sequence[str],
        scene: Literal[1, 2] = 2,
        auto_create_room: bool = False,
        room_base_name: str | None = None,
        room_base_id: int | None = None,
        state: str | None = None,
        remark: str | None = None,
    ) -> str:
        """Create a "join these groups" QR code / mini-program configuration; return config_id."""
        body = without_none(
            {
                "scene": scene,
                "chat_id_list": list(chat_id_list),
                "auto_create_room": int(auto_create_room),
                "room_base_name": room_base_name,
                "room_base_id": room_base_id,
                "state": state,
                "remark": remark,
            }
        )
        data = self._call("POST", "externalcontact/groupchat/add_join_way", body=body)
        return str(data["config_id"])

    @read("externalcontact/groupchat/get_join_way")
    def get_join_way(self, config_id: str) -> JoinWay:
        """A "join the group" configuration with its QR code."""
        data = self._call(
            "POST", "externalcontact/groupchat/get_join_way", body={"config_id": config_id}
        )
        return JoinWay.model_validate(data["join_way"])

    @read("externalcontact/groupchat/statistic")
    def iter_group_chat_statistics(
        self,
        *,
        owner_userids: Sequence[str],
        day_begin_time: int,
        day_end_time: int | None = None,
        order_by: int = 1,
        order_asc: bool = False,
        limit: int = 1000,
    ) -> Iterator[GroupChatStatistic]:
        """Per group owner, their groups' figures over the days given (midnights, epoch s).

        WeCom keeps 180 days and answers at most 30 days and 100 owners a request; items are
        paged by offset. `order_by` as WeCom's page lists it: 1 new groups, 2 groups, 3 new
        members, 4 members.
        """
        owners = list(owner_userids)
        if not 1 <= len(owners) <= STATISTIC_MAX_OWNERS:
            raise ValueError(f"owner_userids must hold 1 to {STATISTIC_MAX_OWNERS} userids")
        end = day_begin_time if day_end_time is None else day_end_time
        # At most 30 days counted inclusively: the last midnight is 29 days after the first.
        if not 0 <= end - day_begin_time <= (STATISTIC_MAX_DAYS - 1) * DAY_SECONDS:
            raise ValueError(
                f"day_begin_time to day_end_time spans at most {STATISTIC_MAX_DAYS} days"
            )
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        body: dict[str, Any] = {
            "day_begin_time": day_begin_time,
            "day_end_time": end,
            "owner_filter": {"userid_list": owners},
            "order_by": order_by,
            "order_asc": int(order_asc),
            "limit": limit,
        }
        offset = 0
        while True:
            data = self._call(
                "POST", "externalcontact/groupchat/statistic", body={**body, "offset": offset}
            )
            items = data.get("items") or []
            for item in items:
                yield GroupChatStatistic.model_validate(item)
            total = int(data.get("total") or 0)
            next_offset = int(data.get("next_offset") or offset + len(items))
            if not items or next_offset >= total:
                return
            if next_offset <= offset:  # a platform bug must not become an endless loop
                raise WeComError(
                    None, "offset did not advance", "externalcontact/groupchat/statistic"
                )
            offset = next_offset
