"""The sandbox's employees, external contacts and their relations (follows, tags on them, contact ways)."""

from __future__ import annotations

import secrets
from itertools import islice
from typing import Any

from siyu.sandbox.backend import Backend, Shared
from siyu.sandbox.platform import (
    INVALID_EXTERNAL_USERID,
    INVALID_PARAMETER,
    INVALID_TAG_ID,
    INVALID_USERID,
    NO_CONTACT_RELATION,
    WeComError,
    channel_state,
    decode_cursor,
    encode_cursor,
)
from siyu.sandbox.tags import TagBackend

FOLLOW_USERS_PER_PAGE = 500


def follow_key(userid: str, external_userid: str) -> str:
    return f"{userid}\x1f{external_userid}"


class ContactBackend(Backend):
    """Employees, contacts and follows (one per employee-contact pair, with its own tags)."""

    kinds = ("employee", "contact", "follow", "contact_way")

    def __init__(self, shared: Shared, tags: TagBackend) -> None:
        self.tags = tags
        super().__init__(shared)

    def clear(self) -> None:
        self.employees: dict[str, dict[str, Any]] = {}
        self.contacts: dict[str, dict[str, Any]] = {}
        self.follows: dict[tuple[str, str], dict[str, Any]] = {}
        # Indexes over live follows only, kept in insertion order (dicts as ordered sets).
        self.contacts_of: dict[str, dict[str, None]] = {}
        self.followers_of: dict[str, dict[str, None]] = {}
        self.contact_ways: dict[str, dict[str, Any]] = {}

    def load(self, kind: str, body: Any) -> None:
        if kind == "employee":
            self.employees[body["userid"]] = body
        elif kind == "contact":
            self.contacts[body["external_userid"]] = body
        elif kind == "follow":
            self._index_follow(body)
        else:
            self.contact_ways[body["config_id"]] = body

    def _index_follow(self, follow: dict[str, Any]) -> None:
        userid, ext = follow["userid"], follow["external_userid"]
        self.follows[(userid, ext)] = follow
        if follow["deleted"]:
            self.contacts_of.get(userid, {}).pop(ext, None)
            self.followers_of.get(ext, {}).pop(userid, None)
        else:
            self.contacts_of.setdefault(userid, {})[ext] = None
            self.followers_of.setdefault(ext, {})[userid] = None

    def is_contact_of(self, userid: str, external_userid: str) -> bool:
        return external_userid in self.contacts_of.get(userid, {})

    # ---- the contacts API ------------------------------------------------------------

    def follow_user_list(self) -> list[str]:
        return list(self.employees)

    def contact_list(self, userid: str) -> list[str]:
        if userid not in self.employees:
            raise WeComError(INVALID_USERID, "invalid userid")
        return list(self.contacts_of.get(userid, {}))

    def _contact_view(self, ext: str) -> dict[str, Any]:
        c = self.contacts[ext]
        return {
            "external_userid": ext,
            "name": c["name"],
            "type": c["type"],
            "gender": c["gender"],
            "unionid": c["unionid"],
        }

    def get_contact(self, ext: str, cursor: str | None) -> dict[str, Any]:
        if not ext:
            raise WeComError(INVALID_PARAMETER, "external_userid required")
        if ext not in self.contacts:
            raise WeComError(INVALID_EXTERNAL_USERID, "invalid external_userid")
        userids = list(self.followers_of.get(ext, {}))
        if not userids:
            raise WeComError(NO_CONTACT_RELATION, "not external contact")
        (start,) = decode_cursor(cursor)
        page = userids[start : start + FOLLOW_USERS_PER_PAGE]
        more = start + FOLLOW_USERS_PER_PAGE < len(userids)
        follow_user = []
        for userid in page:
            f = self.follows[(userid, ext)]
            follow_user.append(
                {
                    "userid": userid,
                    "remark": f["remark"],
                    "description": f["description"],
                    "createtime": f["createtime"],
                    "tags": self.tags.tag_refs(f["tag_ids"]),
                    "remark_mobiles": list(f["remark_mobiles"]),
                    "add_way": f["add_way"],
                    "state": f["state"],
                    "oper_userid": userid,
                }
            )
        return {
            "external_contact": self._contact_view(ext),
            "follow_user": follow_user,
            "next_cursor": encode_cursor(start + FOLLOW_USERS_PER_PAGE) if more else "",
        }

    def batch_get_by_user(
        self, userid_list: list[str], cursor: str | None, limit: int
    ) -> dict[str, Any]:
        """Contacts of up to 100 employees, one (employee, contact) pair per item."""
        if not userid_list or len(userid_list) > 100:
            raise WeComError(INVALID_PARAMETER, "userid_list must hold 1-100 userids")
        if not 1 <= limit <= 100:
            raise WeComError(INVALID_PARAMETER, "limit must be 1-100")
        userids = list(dict.fromkeys(userid_list))
        user_pos, ext_pos = decode_cursor(cursor, 2)
        items: list[dict[str, Any]] = []
        while user_pos < len(userids) and len(items) < limit:
            exts = self.contacts_of.get(userids[user_pos], {})
            take = list(islice(exts, ext_pos, ext_pos + limit - len(items)))
            for ext in take:
                f = self.follows[(userids[user_pos], ext)]
                items.append(
                    {
                        "external_contact": self._contact_view(ext),
                        "follow_info": {
                            "userid": f["userid"],
                            "remark": f["remark"],
                            "description": f["description"],
                            "createtime": f["createtime"],
                            "tag_id": list(f["tag_ids"]),
                            "remark_mobiles": list(f["remark_mobiles"]),
                            "add_way": f["add_way"],
                            "state": f["state"],
                            "oper_userid": f["userid"],
                        },
                    }
                )
            ext_pos += len(take)
            if ext_pos >= len(exts):
                user_pos, ext_pos = user_pos + 1, 0
        more = user_pos < len(userids) and any(
            len(self.contacts_of.get(u, {})) > (ext_pos if i == user_pos else 0)
            for i, u in enumerate(userids[user_pos:], start=user_pos)
        )
        return {
            "external_contact_list": items,
            "next_cursor": encode_cursor(user_pos, ext_pos) if more else "",
        }

    # ---- tags on relations -------------------------------------------------------------

    def mark_tag(
        self, userid: str, external_userid: str, add: list[str], remove: list[str]
    ) -> None:
        """Add and remove enterprise tags on one (employee, contact) relation."""
        if not userid or not external_userid:
            raise WeComError(INVALID_PARAMETER, "userid and external_userid are required")
        if not add and not remove:
            raise WeComError(INVALID_PARAMETER, "add_tag and remove_tag are both empty")
        if external_userid not in self.contacts:
            raise WeComError(INVALID_EXTERNAL_USERID, "invalid external_userid")
        follow = self.follows.get((userid, external_userid))
        if follow is None or follow["deleted"]:
            raise WeComError(NO_CONTACT_RELATION, "not external contact: no relation to userid")
        if any(self.tags.live_tag(t) is None for t in [*add, *remove]):
            raise WeComError(INVALID_TAG_ID, "invalid tag id")
        tag_ids: list[str] = follow["tag_ids"]
        for tag_id in add:
            if tag_id not in tag_ids:
                tag_ids.append(tag_id)
        for tag_id in remove:
            if tag_id in tag_ids:
                tag_ids.remove(tag_id)
        self.store.put("follow", follow_key(userid, external_userid), follow)

    def strip_tags(self, doomed: set[str]) -> None:
        """Deleted tags leave every relation that carried them."""
        changed = []
        for follow in self.follows.values():
            if doomed.intersection(follow["tag_ids"]):
                follow["tag_ids"] = [t for t in follow["tag_ids"] if t not in doomed]
                changed.append(follow)
        self.store.put_many(
            "follow", ((follow_key(f["userid"], f["external_userid"]), f) for f in changed)
        )

    def contact_tags(self, userid: str, external_userid: str) -> list[str] | None:
        follow = self.follows.get((userid, external_userid))
        return None if follow is None else list(follow["tag_ids"])

    def all_contact_tags(self) -> list[dict[str, Any]]:
        return [
            {
                "userid": f["userid"],
                "external_userid": f["external_userid"],
                "tag_ids": list(f["tag_ids"]),
                "deleted": f["deleted"],
            }
            for f in self.follows.values()
        ]

    def delete_follow(self, userid: str, external_userid: str) -> bool:
        """The customer deleted the employee: the relation and its tags are gone."""
        follow = self.follows.get((userid, external_userid))
        if follow is None:
            return False
        follow["deleted"] = True
        follow["tag_ids"] = []
        self._index_follow(follow)
        self.store.put("follow", follow_key(userid, external_userid), follow)
        return True

    # ---- contact ways ------------------------------------------------------------------

    def add_contact_way(self, spec: dict[str, Any]) -> dict[str, Any]:
        way_type, scene = spec.get("type"), spec.get("scene")
        if way_type not in (1, 2) or scene not in (1, 2):
            raise WeComError(INVALID_PARAMETER, "type and scene must be 1 or 2")
        users = spec.get("user") or []
        if not isinstance(users, list) or not users:
            raise WeComError(INVALID_PARAMETER, "user required")
        if way_type == 1 and len(users) != 1:
            raise WeComError(INVALID_PARAMETER, "a single contact way takes exactly one user")
        if any(u not in self.employees for u in users):
            raise WeComError(INVALID_USERID, "invalid userid")
        state = channel_state(spec)
        config_id = secrets.token_hex(16)
        qr_code = f"https://sandbox.wecom.invalid/qr/contact/{config_id}" if scene == 2 else ""
        way = {
            "config_id": config_id,
            "type": way_type,
            "scene": scene,
            "user": list(users),
            "state": state,
            "skip_verify": bool(spec.get("skip_verify", True)),
            "remark": str(spec.get("remark") or ""),
            "qr_code": qr_code,
        }
        self.contact_ways[config_id] = way
        self.store.put("contact_way", config_id, way)
        reply = {"config_id": config_id}
        if qr_code:
            reply["qr_code"] = qr_code
        return reply

    # ---- seeding -----------------------------------------------------------------------

    def import_tables(
        self,
        employees: list[dict[str, Any]],
        contacts: list[dict[str, Any]],
        follows: list[dict[str, Any]],
    ) -> None:
        """Upsert whole tables (the seed loader's path): one transaction per kind."""
        for e in employees:
            self.employees[e["userid"]] = e
        for c in contacts:
            self.contacts[c["external_userid"]] = c
        for f in follows:
            self._index_follow(f)
        self.store.put_many("employee", ((e["userid"], e) for e in employees))
        self.store.put_many("contact", ((c["external_userid"], c) for c in contacts))
        self.store.put_many(
            "follow", ((follow_key(f["userid"], f["external_userid"]), f) for f in follows)
        )
