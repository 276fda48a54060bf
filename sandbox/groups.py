"""The sandbox's customer groups: members, join ways, and what happens in them (joins, leaves, chat)."""

from __future__ import annotations

import secrets
from typing import Any

from siyu.sandbox.backend import Backend, Shared
from siyu.sandbox.contacts import ContactBackend
from siyu.sandbox.platform import (
    INVALID_CHAT_ID,
    INVALID_PARAMETER,
    WeComError,
    channel_state,
    china_midnight,
    decode_cursor,
    encode_cursor,
)

JOIN_BY_QR_CODE = 3


def chat_day_key(chat_id: str, day: int) -> str:
    return f"{chat_id}|{day}"


class GroupBackend(Backend):
    """Groups with their members (and who left, when), join ways, and chat activity per day.

    Chat activity is kept as one record per (group, Beijing day): the message count and who
    spoke, which is all `groupchat/statistic` reports.
    """

    kinds = ("group", "join_way", "chat_day")

    def __init__(self, shared: Shared, contacts: ContactBackend) -> None:
        self.contacts = contacts
        super().__init__(shared)

    def clear(self) -> None:
        self.groups: dict[str, dict[str, Any]] = {}
        self.join_ways: dict[str, dict[str, Any]] = {}
        self.chat_days: dict[tuple[str, int], dict[str, Any]] = {}

    def load(self, kind: str, body: Any) -> None:
        if kind == "group":
            self.groups[body["chat_id"]] = body
        elif kind == "join_way":
            self.join_ways[body["config_id"]] = body
        else:
            self.chat_days[(body["chat_id"], body["day"])] = body

    def group(self, chat_id: str) -> dict[str, Any]:
        group = self.groups.get(chat_id)
        if group is None:
            raise WeComError(INVALID_CHAT_ID, "invalid chatid")
        return group

    # ---- the groups API ----------------------------------------------------------------

    def groupchat_list(
        self, status_filter: int, owners: list[str], cursor: str | None, limit: int
    ) -> dict[str, Any]:
        if not 1 <= limit <= 1000:
            raise WeComError(INVALID_PARAMETER, "limit must be 1-1000")
        if status_filter not in (0, 1, 2, 3):
            raise WeComError(INVALID_PARAMETER, "invalid status_filter")
        owner_set = set(owners)
        # Every sandbox group is in normal state (0); 1-3 filter for resigned owners' groups.
        chats = [
            g["chat_id"]
            for g in self.groups.values()
            if (not owner_set or g["owner"] in owner_set) and status_filter == 0
        ]
        (start,) = decode_cursor(cursor)
        page = chats[start : start + limit]
        more = start + limit < len(chats)
        return {
            "group_chat_list": [{"chat_id": c, "status": 0} for c in page],
            "next_cursor": encode_cursor(start + limit) if more else "",
        }

    def groupchat_get(self, chat_id: str, need_name: bool) -> dict[str, Any]:
        group = self.group(chat_id)
        employees, contacts = self.contacts.employees, self.contacts.contacts
        members = []
        for m in group["members"]:
            member: dict[str, Any] = {
                "userid": m["userid"],
                "type": m["type"],
                "join_time": m["join_time"],
                "join_scene": m["join_scene"],
            }
            if m.get("invitor"):
                member["invitor"] = {"userid": m["invitor"]}
            if m["type"] == 2 and m["userid"] in contacts:
                member["unionid"] = contacts[m["userid"]]["unionid"]
            if need_name:
                person = employees.get(m["userid"]) or contacts.get(m["userid"]) or {}
                member["name"] = person.get("name", "")
                member["group_nickname"] = ""
            members.append(member)
        return {
            "chat_id": chat_id,
            "name": group["name"],
            "owner": group["owner"],
            "create_time": group["create_time"],
            "notice": group["notice"],
            "member_list": members,
            "admin_list": [],
        }

    def add_join_way(self, spec: dict[str, Any]) -> str:
        scene = spec.get("scene")
        chat_ids = spec.get("chat_id_list") or []
        if scene not in (1, 2):
            raise WeComError(INVALID_PARAMETER, "scene must be 1 or 2")
        if not isinstance(chat_ids, list) or not 1 <= len(chat_ids) <= 5:
            raise WeComError(INVALID_PARAMETER, "chat_id_list must hold 1-5 chat ids")
        if any(c not in self.groups for c in chat_ids):
            raise WeComError(INVALID_CHAT_ID, "invalid chatid")
        state = channel_state(spec)
        config_id = secrets.token_hex(16)
        way = {
            "config_id": config_id,
            "scene": scene,
            "remark": str(spec.get("remark") or ""),
            "auto_create_room": int(spec.get("auto_create_room") or 0),
            "room_base_name": str(spec.get("room_base_name") or ""),
            "room_base_id": int(spec.get("room_base_id") or 0),
            "chat_id_list": list(chat_ids),
            "qr_code": f"https://sandbox.wecom.invalid/qr/join/{config_id}" if scene == 2 else "",
            "state": state,
        }
        self.join_ways[config_id] = way
        self.store.put("join_way", config_id, way)
        return config_id

    def get_join_way(self, config_id: str) -> dict[str, Any]:
        way = self.join_ways.get(config_id)
        if way is None:
            raise WeComError(INVALID_PARAMETER, "invalid config_id")
        return dict(way)

    # ---- what happens in a group (the control API records it) ---------------------------

    def join(self, chat_id: str, userid: str, at: float, join_scene: int, invitor: str) -> str:
        """A member joins; 'joined', 'already' (a member) or 'full' (the group is at its size)."""
        group = self.group(chat_id)
        if any(m["userid"] == userid for m in group["members"]):
            return "already"
        if len(group["members"]) >= self.config.group_max_members:
            return "full"
        group["members"].append(
            {
                "userid": userid,
                "type": 1 if userid in self.contacts.employees else 2,
                "join_time": int(at),
                "join_scene": join_scene,
                "invitor": invitor,
            }
        )
        self.store.put("group", chat_id, group)
        return "joined"

    def leave(self, chat_id: str, userid: str, at: float, quit_scene: int) -> str:
        """A member leaves (0 left by themselves, 1 removed); 'left' or 'absent'."""
        group = self.group(chat_id)
        member = next((m for m in group["members"] if m["userid"] == userid), None)
        if member is None:
            return "absent"
        group["members"].remove(member)
        group.setdefault("departed", []).append(
            {**member, "leave_time": int(at), "quit_scene": quit_scene}
        )
        self.store.put("group", chat_id, group)
        return "left"

    def record_messages(self, chat_id: str, userid: str, at: float, count: int = 1) -> None:
        """`count` chat messages by `userid` in the group at `at` (counted per Beijing day)."""
        self.group(chat_id)
        day = china_midnight(at)
        record = self.chat_days.get((chat_id, day))
        if record is None:
            record = {"chat_id": chat_id, "day": day, "msg_total": 0, "senders": {}}
            self.chat_days[(chat_id, day)] = record
        record["msg_total"] += count
        record["senders"][userid] = record["senders"].get(userid, 0) + count
        self.store.put("chat_day", chat_day_key(chat_id, day), record)

    def external_members(self, chat_id: str) -> list[str]:
        """The customers (type 2) in a group now, in join order."""
        return [m["userid"] for m in self.group(chat_id)["members"] if m["type"] == 2]

    # ---- seeding -----------------------------------------------------------------------

    def import_tables(self, groups: list[dict[str, Any]]) -> None:
        """Upsert whole groups with their members (the seed loader's path)."""
        for g in groups:
            self.groups[g["chat_id"]] = g
        self.store.put_many("group", ((g["chat_id"], g) for g in groups))
