"""The sandbox's WeCom corp (employees, contacts, tags, groups, messages, moments) and its state file."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from siyu.sandbox.faults import DEFAULT_PER_MINUTE
from siyu.schemas.settings import SANDBOX_AGENT_ID, SANDBOX_CORP_ID, SANDBOX_SECRET

# The platform's calendar is China's: "this month" and "today" for the caps are Beijing time.
CHINA = timezone(timedelta(hours=8))
MAX_NAME_CHARS = 30
MAX_STATE_CHARS = 30
FOLLOW_USERS_PER_PAGE = 500
REMINDERS_PER_DAY = 3
MAX_ATTACHMENTS = 9
MAX_SINGLE_TARGETS = 10_000
ATTACHMENT_TYPES = {"image", "link", "miniprogram", "video", "file"}
APP_MESSAGE_TYPES = {"text", "textcard", "news", "markdown"}
ROBOT_MESSAGE_TYPES = {"text", "markdown", "markdown_v2", "news", "image", "file"}

# The platform's own error codes (errmsg texts are ours: short, and never carry a secret).
SYSTEM_BUSY = -1
INVALID_CREDENTIAL = 40001
INVALID_MESSAGE_TYPE = 40008
INVALID_CORPID = 40013
INVALID_TOKEN = 40014
INVALID_CHAT_ID = 40050
INVALID_AGENT_ID = 40056
INVALID_PARAMETER = 40058
INVALID_TAG_ID = 40068
TAG_NAME_EXISTS = 40071
INVALID_EXTERNAL_USERID = 40096
MISSING_TOKEN = 41001
MISSING_CORPID = 41002
MISSING_SECRET = 41004
TOKEN_EXPIRED = 42001
OUT_OF_LIMIT = 45009
DATA_FORMAT_ERROR = 47001
INVALID_USERID = 60111
ALL_RECEIVERS_INVALID = 81013
NO_CONTACT_RELATION = 84061
INVALID_WEBHOOK_KEY = 93000


class WeComError(Exception):
    """A call the platform refuses: the errcode and errmsg WeCom would answer with."""

    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"{errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg


class SandboxConfig(BaseModel):
    """The sandbox's knobs: token lifetime, how fast employees confirm, the platform's caps."""

    token_ttl_seconds: int = Field(7200, ge=1, description="expires_in of new tokens")
    confirm_delay_seconds: float = Field(2.0, ge=0, description="Until an employee confirms")
    monthly_cap: int = Field(4, ge=0, description="Mass messages per customer/group a month")
    daily_per_employee_cap: int = Field(1, ge=0, description="Per customer per employee a day")
    rate_limits: dict[str, int] = Field(
        default_factory=lambda: {"*": DEFAULT_PER_MINUTE},
        description="Calls a minute per API path; * is the default for every API",
    )


class ConfigUpdate(BaseModel):
    """A partial change of the config; rate_limits are merged key by key."""

    model_config = ConfigDict(extra="forbid")

    token_ttl_seconds: int | None = Field(None, ge=1)
    confirm_delay_seconds: float | None = Field(None, ge=0)
    monthly_cap: int | None = Field(None, ge=0)
    daily_per_employee_cap: int | None = Field(None, ge=0)
    rate_limits: dict[str, int] | None = None


class StateStore:
    """Where state goes between restarts: nowhere. The SQLite store below keeps it."""

    def records(self) -> Iterator[tuple[str, Any]]:
        return iter(())

    def put(self, kind: str, key: str, value: Any) -> None:
        """Save one record (insert or replace)."""

    def put_many(self, kind: str, items: Iterable[tuple[str, Any]]) -> None:
        """Save many records in one transaction."""

    def delete(self, kind: str, key: str) -> None:
        """Forget one record."""

    def clear(self) -> None:
        """Forget everything."""

    def close(self) -> None:
        """Release the file."""


class SQLiteStateStore(StateStore):
    """One SQLite table of JSON records keyed by (kind, key), in first-written order.

    The sandbox plays WeCom, so its file holds customers' mobiles: they stay in this binary
    file. WAL with synchronous=NORMAL keeps one write per mutation in the tens of microseconds.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS record ("
            " kind TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL, UNIQUE (kind, key))"
        )
        self._lock = threading.Lock()

    # An upsert keeps the rowid of the first write, so "ORDER BY rowid" is creation order.
    _UPSERT = (
        "INSERT INTO record (kind, key, body) VALUES (?, ?, ?)"
        " ON CONFLICT (kind, key) DO UPDATE SET body = excluded.body"
    )

    def records(self) -> Iterator[tuple[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT kind, body FROM record ORDER BY rowid").fetchall()
        for kind, body in rows:
            yield kind, json.loads(body)

    def put(self, kind: str, key: str, value: Any) -> None:
        body = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self._db.execute(self._UPSERT, (kind, key, body))

    def put_many(self, kind: str, items: Iterable[tuple[str, Any]]) -> None:
        rows = [
            (kind, key, json.dumps(value, ensure_ascii=False, separators=(",", ":")))
            for key, value in items
        ]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(self._UPSERT, rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def delete(self, kind: str, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM record WHERE kind = ? AND key = ?", (kind, key))

    def clear(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM record")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def new_id(prefix: str, nbytes: int = 10) -> str:
    """Ids shaped like the platform's: `et...` tags, `wm...` contacts, `wr...` chats."""
    return prefix + secrets.token_hex(nbytes)


def encode_cursor(*positions: int) -> str:
    return base64.urlsafe_b64encode(":".join(map(str, positions)).encode()).decode()


def decode_cursor(cursor: str | None, width: int = 1) -> tuple[int, ...]:
    """An opaque cursor back to its positions; empty means the start."""
    if not cursor:
        return (0,) * width
    try:
        parts = tuple(int(p) for p in base64.urlsafe_b64decode(cursor.encode()).decode().split(":"))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise WeComError(INVALID_PARAMETER, "invalid cursor") from None
    if len(parts) != width or min(parts) < 0:
        raise WeComError(INVALID_PARAMETER, "invalid cursor")
    return parts


def follow_key(userid: str, external_userid: str) -> str:
    return f"{userid}\x1f{external_userid}"


def _seq_key(n: int) -> str:
    return f"{n:012d}"


def _check_name(name: Any, what: str) -> str:
    text = str(name or "").strip()
    if not text or len(text) > MAX_NAME_CHARS:
        raise WeComError(INVALID_PARAMETER, f"{what} name must be 1-{MAX_NAME_CHARS} characters")
    return text


def _check_content(text: Any, attachments: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A message needs text or attachments; attachments are at most nine, of known types."""
    text = text if isinstance(text, dict) else {}
    attachments = attachments if isinstance(attachments, list) else []
    if not str(text.get("content") or "") and not attachments:
        raise WeComError(INVALID_PARAMETER, "text.content or attachments required")
    if len(attachments) > MAX_ATTACHMENTS:
        raise WeComError(INVALID_PARAMETER, f"at most {MAX_ATTACHMENTS} attachments")
    for item in attachments:
        if not isinstance(item, dict) or item.get("msgtype") not in ATTACHMENT_TYPES:
            raise WeComError(INVALID_PARAMETER, "invalid attachment msgtype")
    return text, attachments


class SandboxState:
    """The corp as WeCom would hold it: plain dicts, indexes over them, and a store behind.

    Every mutation writes the records it touched to the store at once, so a restart on the
    same state file finds the corp as it was. Callers hold `lock` around a call.
    """

    def __init__(
        self, store: StateStore | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store or StateStore()
        self.clock = clock
        self.lock = threading.RLock()
        self.tokens: dict[str, float] = {}
        self._clear()
        self._load()

    # ---- lifecycle -------------------------------------------------------------------

    def _clear(self) -> None:
        self.config = SandboxConfig()
        self.employees: dict[str, dict[str, Any]] = {}
        self.contacts: dict[str, dict[str, Any]] = {}
        self.follows: dict[tuple[str, str], dict[str, Any]] = {}
        # Indexes over live follows only, kept in insertion order (dicts as ordered sets).
        self.contacts_of: dict[str, dict[str, None]] = {}
        self.followers_of: dict[str, dict[str, None]] = {}
        self.tag_groups: dict[str, dict[str, Any]] = {}
        self.tags: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, dict[str, Any]] = {}
        self.pending_messages: list[str] = []
        self.received: dict[tuple[str, ...], int] = {}
        self.moments: dict[str, dict[str, Any]] = {}
        self.join_ways: dict[str, dict[str, Any]] = {}
        self.contact_ways: dict[str, dict[str, Any]] = {}
        self.webhook_posts: list[dict[str, Any]] = []
        self.app_messages: list[dict[str, Any]] = []
        self.welcome_messages: list[dict[str, Any]] = []

    def _load(self) -> None:
        simple = {
            "employee": (self.employees, "userid"),
            "contact": (self.contacts, "external_userid"),
            "tag_group": (self.tag_groups, "group_id"),
            "tag": (self.tags, "id"),
            "group": (self.groups, "chat_id"),
            "message": (self.messages, "msgid"),
            "moment": (self.moments, "jobid"),
            "join_way": (self.join_ways, "config_id"),
            "contact_way": (self.contact_ways, "config_id"),
        }
        logs = {
            "webhook_post": self.webhook_posts,
            "app_message": self.app_messages,
            "welcome_message": self.welcome_messages,
        }
        for kind, body in self.store.records():
            if kind in simple:
                table, key = simple[kind]
                table[body[key]] = body
            elif kind in logs:
                logs[kind].append(body)
            elif kind == "follow":
                self._index_follow(body)
            elif kind == "token":
                self.tokens[body["token"]] = body["expires_at"]
            elif kind == "config":
                self.config = SandboxConfig(**body)
        for message in self.messages.values():
            if message["confirmed"]:
                self._count_received(message)
            elif not message["cancelled"]:
                self.pending_messages.append(message["msgid"])

    def reset(self) -> None:
        """Empty the corp and restore the default config; issued tokens stay valid."""
        with self.lock:
            self.store.clear()
            self._clear()
            self.store.put_many(
                "token",
                ((t, {"token": t, "expires_at": exp}) for t, exp in self.tokens.items()),
            )

    def close(self) -> None:
        self.store.close()

    def update_config(self, update: ConfigUpdate) -> SandboxConfig:
        with self.lock:
            data = self.config.model_dump()
            for name, value in update.model_dump(exclude_none=True).items():
                if name == "rate_limits":
                    data["rate_limits"] = {**data["rate_limits"], **value}
                else:
                    data[name] = value
            self.config = SandboxConfig(**data)
            self.store.put("config", "config", self.config.model_dump())
            return self.config

    def now(self) -> float:
        return self.clock()

    # ---- tokens ----------------------------------------------------------------------

    def issue_token(self, corpid: str | None, secret: str | None) -> dict[str, Any]:
        if not corpid:
            raise WeComError(MISSING_CORPID, "missing corpid")
        if not secret:
            raise WeComError(MISSING_SECRET, "missing corpsecret")
        if corpid != SANDBOX_CORP_ID:
            raise WeComError(INVALID_CORPID, "invalid corpid")
        if not secrets.compare_digest(secret, SANDBOX_SECRET):
            raise WeComError(INVALID_CREDENTIAL, "invalid credential: check the corp secret")
        now = self.now()
        # Forget tokens long dead so the table does not grow without end.
        stale = [t for t, exp in self.tokens.items() if exp < now - 3600]
        for token in stale:
            del self.tokens[token]
            self.store.delete("token", token)
        ttl = self.config.token_ttl_seconds
        token = secrets.token_urlsafe(48)
        self.tokens[token] = now + ttl
        self.store.put("token", token, {"token": token, "expires_at": now + ttl})
        return {"access_token": token, "expires_in": ttl}

    def check_token(self, token: str | None) -> None:
        if not token:
            raise WeComError(MISSING_TOKEN, "access_token missing")
        expires_at = self.tokens.get(token)
        if expires_at is None:
            raise WeComError(INVALID_TOKEN, "invalid access_token")
        if expires_at <= self.now():
            raise WeComError(TOKEN_EXPIRED, "access_token expired")

    def expire_tokens(self) -> int:
        now = self.now()
        for token in self.tokens:
            self.tokens[token] = now
        self.store.put_many("token", ((t, {"token": t, "expires_at": now}) for t in self.tokens))
        return len(self.tokens)

    # ---- corp tags -------------------------------------------------------------------

    def _live_tag(self, tag_id: Any) -> dict[str, Any] | None:
        tag = self.tags.get(str(tag_id))
        return tag if tag is not None and not tag["deleted"] else None

    def _live_group(self, group_id: Any) -> dict[str, Any] | None:
        group = self.tag_groups.get(str(group_id))
        return group if group is not None and not group["deleted"] else None

    def _tag_group_view(
        self, group: dict[str, Any], only: set[str] | None = None
    ) -> dict[str, Any]:
        tags = [
            {
                "id": tag["id"],
                "name": tag["name"],
                "create_time": tag["create_time"],
                "order": tag["order"],
                "deleted": False,
            }
            for tag in (self.tags[t] for t in group["tag_ids"])
            if not tag["deleted"] and (only is None or tag["id"] in only)
        ]
        return {
            "group_id": group["group_id"],
            "group_name": group["group_name"],
            "create_time": group["create_time"],
            "order": group["order"],
            "deleted": False,
            "tag": tags,
        }

    def corp_tag_list(self, tag_ids: list[str], group_ids: list[str]) -> list[dict[str, Any]]:
        """All live groups; or the named groups; or the groups holding the named tags.

        As on the platform, group_id wins when both filters are given.
        """
        if group_ids:
            groups = [g for g in (self._live_group(i) for i in group_ids) if g is not None]
            return [self._tag_group_view(g) for g in groups]
        live = [g for g in self.tag_groups.values() if not g["deleted"]]
        if tag_ids:
            wanted = set(tag_ids)
            return [
                self._tag_group_view(g, wanted) for g in live if wanted.intersection(g["tag_ids"])
            ]
        return [self._tag_group_view(g) for g in live]

    def add_corp_tag(
        self,
        group_id: str | None,
        group_name: str | None,
        order: int,
        tags: list[dict[str, Any]],
    ) -> dict[str, Any]:
        if not tags:
            raise WeComError(INVALID_PARAMETER, "tag list is empty")
        names = [_check_name(t.get("name") if isinstance(t, dict) else None, "tag") for t in tags]
        if len(set(names)) != len(names):
            raise WeComError(TAG_NAME_EXISTS, "tag name exists")
        name = ""
        if group_id:
            group = self._live_group(group_id)
            if group is None:
                raise WeComError(INVALID_TAG_ID, "invalid group_id")
        elif group_name is not None:
            name = _check_name(group_name, "group")
            group = next(
                (
                    g
                    for g in self.tag_groups.values()
                    if not g["deleted"] and g["group_name"] == name
                ),
                None,
            )
        else:
            raise WeComError(INVALID_PARAMETER, "group_id or group_name required")
        now = int(self.now())
        if group is None:
            group = {
                "group_id": new_id("et"),
                "group_name": name,
                "create_time": now,
                "order": order,
                "deleted": False,
                "tag_ids": [],
            }
            self.tag_groups[group["group_id"]] = group
        taken = {self.tags[t]["name"] for t in group["tag_ids"] if not self.tags[t]["deleted"]}
        if taken.intersection(names):
            raise WeComError(TAG_NAME_EXISTS, "tag name exists")
        created: list[dict[str, Any]] = []
        for spec, tag_name in zip(tags, names, strict=True):
            tag = {
                "id": new_id("et"),
                "name": tag_name,
                "create_time": now,
                "order": int(spec.get("order") or 0),
                "deleted": False,
                "group_id": group["group_id"],
            }
            self.tags[tag["id"]] = tag
            group["tag_ids"].append(tag["id"])
            created.append(tag)
        self.store.put("tag_group", group["group_id"], group)
        self.store.put_many("tag", ((t["id"], t) for t in created))
        return self._tag_group_view(group, {t["id"] for t in created})

    def edit_corp_tag(self, item_id: str, name: str | None, order: int | None) -> None:
        tag, group = self._live_tag(item_id), self._live_group(item_id)
        if tag is not None:
            if name is not None:
                name = _check_name(name, "tag")
                siblings = self.tag_groups[tag["group_id"]]["tag_ids"]
                if any(
                    t != tag["id"] and not self.tags[t]["deleted"] and self.tags[t]["name"] == name
                    for t in siblings
                ):
                    raise WeComError(TAG_NAME_EXISTS, "tag name exists")
                tag["name"] = name
            if order is not None:
                tag["order"] = order
            self.store.put("tag", tag["id"], tag)
        elif group is not None:
            if name is not None:
                name = _check_name(name, "group")
                if any(
                    g is not group and not g["deleted"] and g["group_name"] == name
                    for g in self.tag_groups.values()
                ):
                    raise WeComError(TAG_NAME_EXISTS, "tag group name exists")
                group["group_name"] = name
            if order is not None:
                group["order"] = order
            self.store.put("tag_group", group["group_id"], group)
        else:
            raise WeComError(INVALID_TAG_ID, "invalid tag id")

    def del_corp_tag(self, tag_ids: list[str], group_ids: list[str]) -> None:
        """Mark tags (and whole groups) deleted and take them off every contact."""
        if not tag_ids and not group_ids:
            raise WeComError(INVALID_PARAMETER, "tag_id and group_id are both empty")
        if any(self._live_tag(t) is None for t in tag_ids) or any(
            self._live_group(g) is None for g in group_ids
        ):
            raise WeComError(INVALID_TAG_ID, "invalid tag id")
        doomed = set(tag_ids)
        for group_id in group_ids:
            doomed.update(self.tag_groups[group_id]["tag_ids"])
        for tag_id in doomed:
            self.tags[tag_id]["deleted"] = True
        touched_groups = {self.tags[t]["group_id"] for t in doomed} | set(group_ids)
        for group_id in touched_groups:
            group = self.tag_groups[group_id]
            # A group whose last tag goes is gone too, as on the platform.
            if all(self.tags[t]["deleted"] for t in group["tag_ids"]):
                group["deleted"] = True
        changed = []
        for follow in self.follows.values():
            if doomed.intersection(follow["tag_ids"]):
                follow["tag_ids"] = [t for t in follow["tag_ids"] if t not in doomed]
                changed.append(follow)
        self.store.put_many("tag", ((t, self.tags[t]) for t in doomed))
        self.store.put_many("tag_group", ((g, self.tag_groups[g]) for g in touched_groups))
        self.store.put_many(
            "follow", ((follow_key(f["userid"], f["external_userid"]), f) for f in changed)
        )

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
        if any(self._live_tag(t) is None for t in [*add, *remove]):
            raise WeComError(INVALID_TAG_ID, "invalid tag id")
        tag_ids: list[str] = follow["tag_ids"]
        for tag_id in add:
            if tag_id not in tag_ids:
                tag_ids.append(tag_id)
        for tag_id in remove:
            if tag_id in tag_ids:
                tag_ids.remove(tag_id)
        self.store.put("follow", follow_key(userid, external_userid), follow)

    # ---- contacts --------------------------------------------------------------------

    def _index_follow(self, follow: dict[str, Any]) -> None:
        userid, ext = follow["userid"], follow["external_userid"]
        self.follows[(userid, ext)] = follow
        if follow["deleted"]:
            self.contacts_of.get(userid, {}).pop(ext, None)
            self.followers_of.get(ext, {}).pop(userid, None)
        else:
            self.contacts_of.setdefault(userid, {})[ext] = None
            self.followers_of.setdefault(ext, {})[userid] = None

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

    def _tag_refs(self, tag_ids: list[str]) -> list[dict[str, Any]]:
        refs = []
        for tag_id in tag_ids:
            tag = self._live_tag(tag_id)
            if tag is not None:
                group = self.tag_groups[tag["group_id"]]
                refs.append(
                    {
                        "group_name": group["group_name"],
                        "tag_name": tag["name"],
                        "tag_id": tag_id,
                        "type": 1,
                    }
                )
        return refs

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
                    "tags": self._tag_refs(f["tag_ids"]),
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

    def delete_follow(self, userid: str, external_userid: str) -> bool:
        """The customer deleted the employee: the relation and its tags are gone."""
        with self.lock:
            follow = self.follows.get((userid, external_userid))
            if follow is None:
                return False
            follow["deleted"] = True
            follow["tag_ids"] = []
            self._index_follow(follow)
            self.store.put("follow", follow_key(userid, external_userid), follow)
            return True

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

    # ---- customer groups -------------------------------------------------------------

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
        group = self.groups.get(chat_id)
        if group is None:
            raise WeComError(INVALID_CHAT_ID, "invalid chatid")
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
            if m["type"] == 2 and m["userid"] in self.contacts:
                member["unionid"] = self.contacts[m["userid"]]["unionid"]
            if need_name:
                person = self.employees.get(m["userid"]) or self.contacts.get(m["userid"]) or {}
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
        state = _channel_state(spec)
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

    # ---- mass messages ---------------------------------------------------------------

    def add_msg_template(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Create a mass message: one task per sending employee, one result per target."""
        self.settle_messages()
        chat_type = spec.get("chat_type") or "single"
        if chat_type not in ("single", "group"):
            raise WeComError(INVALID_PARAMETER, "chat_type must be single or group")
        text, attachments = _check_content(spec.get("text"), spec.get("attachments"))
        sender = str(spec.get("sender") or "")
        if sender and sender not in self.employees:
            raise WeComError(INVALID_USERID, "invalid sender")
        results: list[dict[str, Any]] = []
        fail_list: list[str] = []
        if chat_type == "single":
            targets = spec.get("external_userid") or []
            if not isinstance(targets, list) or len(targets) > MAX_SINGLE_TARGETS:
                raise WeComError(INVALID_PARAMETER, "external_userid holds at most 10,000 ids")
            if not targets and not sender:
                raise WeComError(INVALID_PARAMETER, "external_userid and sender both empty")
            if sender:
                mine = self.contacts_of.get(sender, {})
                for ext in dict.fromkeys(targets or list(mine)):
                    reachable = ext in mine
                    if not reachable:
                        fail_list.append(ext)
                    results.append(
                        {"external_userid": ext, "userid": sender, "status": 0 if reachable else 2}
                    )
            else:
                for ext in dict.fromkeys(targets):
                    followers = list(self.followers_of.get(ext, {}))
                    if not followers:
                        fail_list.append(ext)
                    results.extend(
                        {"external_userid": ext, "userid": u, "status": 0} for u in followers
                    )
        else:
            if not sender:
                raise WeComError(INVALID_PARAMETER, "sender is required for group messages")
            chat_ids = spec.get("chat_id_list") or [
                g["chat_id"] for g in self.groups.values() if g["owner"] == sender
            ]
            for chat_id in dict.fromkeys(chat_ids):
                group = self.groups.get(chat_id)
                owned = group is not None and group["owner"] == sender
                results.append({"chat_id": chat_id, "userid": sender, "status": 0 if owned else 2})
        for result in results:
            result["send_time"] = 0
        senders = [sender] if sender else list(dict.fromkeys(r["userid"] for r in results))
        now = self.now()
        message = {
            "msgid": new_id("msg", 12),
            "chat_type": chat_type,
            "creator": sender,
            "create_time": int(now),
            "created_at": now,
            "create_type": 0,
            "allow_select": bool(spec.get("allow_select")),
            "text": text,
            "attachments": attachments,
            "tasks": {u: {"userid": u, "status": 0, "send_time": 0} for u in senders},
            "results": results,
            "confirmed": False,
            "cancelled": False,
            "reminders": [],
        }
        self.messages[message["msgid"]] = message
        self.pending_messages.append(message["msgid"])
        self.store.put("message", message["msgid"], message)
        return {"msgid": message["msgid"], "fail_list": fail_list}

    def _month_and_day(self, ts: float) -> tuple[str, str]:
        moment = datetime.fromtimestamp(ts, CHINA)
        return moment.strftime("%Y-%m"), moment.strftime("%Y-%m-%d")

    def _count_received(self, message: dict[str, Any]) -> None:
        for r in message["results"]:
            if r["status"] == 1:
                for key in self._cap_keys(r):
                    self.received[key] = self.received.get(key, 0) + 1

    def _cap_keys(self, result: dict[str, Any]) -> list[tuple[str, ...]]:
        month, day = self._month_and_day(result["send_time"])
        if result.get("chat_id"):
            return [("group-month", month, result["chat_id"])]
        ext = result["external_userid"]
        return [("customer-month", month, ext), ("employee-day", day, result["userid"], ext)]

    def settle_messages(self) -> None:
        """Employees confirm due messages, oldest first; the platform's caps decide each target.

        Computed lazily on read: a message is due `confirm_delay_seconds` after it was made
        (the current setting, so a test can shorten the wait instead of sleeping).
        """
        now = self.now()
        delay = self.config.confirm_delay_seconds
        while self.pending_messages:
            message = self.messages[self.pending_messages[0]]
            if message["created_at"] + delay > now:
                break
            self.pending_messages.pop(0)
            send_time = int(message["created_at"] + delay)
            for task in message["tasks"].values():
                task.update(status=2, send_time=send_time)
            for result in message["results"]:
                if result["status"] != 0:
                    continue
                result["send_time"] = send_time
                keys = self._cap_keys(result)
                over = any(
                    self.received.get(k, 0)
                    >= (
                        self.config.daily_per_employee_cap
                        if k[0] == "employee-day"
                        else self.config.monthly_cap
                    )
                    for k in keys
                )
                result["status"] = 3 if over else 1
                if not over:
                    for k in keys:
                        self.received[k] = self.received.get(k, 0) + 1
            message["confirmed"] = True
            self.store.put("message", message["msgid"], message)

    def _message(self, msgid: Any) -> dict[str, Any]:
        self.settle_messages()
        message = self.messages.get(str(msgid or ""))
        if message is None:
            raise WeComError(INVALID_PARAMETER, "invalid msgid")
        return message

    def groupmsg_list(self, spec: dict[str, Any]) -> dict[str, Any]:
        self.settle_messages()
        chat_type = spec.get("chat_type")
        if chat_type not in ("single", "group"):
            raise WeComError(INVALID_PARAMETER, "chat_type must be single or group")
        try:
            start, end = int(spec["start_time"]), int(spec["end_time"])
            limit = int(spec.get("limit") or 50)
            filter_type = int(spec.get("filter_type", 2))
        except (KeyError, TypeError, ValueError):
            raise WeComError(INVALID_PARAMETER, "start_time and end_time are required") from None
        if not 1 <= limit <= 100:
            raise WeComError(INVALID_PARAMETER, "limit must be 1-100")
        creator = spec.get("creator")
        found = [
            m
            for m in self.messages.values()
            if m["chat_type"] == chat_type
            and start <= m["create_time"] <= end
            and (not creator or m["creator"] == creator)
            and (filter_type == 2 or m["create_type"] == filter_type)
        ]
        (offset,) = decode_cursor(spec.get("cursor"))
        page = found[offset : offset + limit]
        return {
            "group_msg_list": [
                {
                    "msgid": m["msgid"],
                    "creator": m["creator"],
                    "create_time": m["create_time"],
                    "create_type": m["create_type"],
                    "text": m["text"],
                    "attachments": m["attachments"],
                }
                for m in page
            ],
            "next_cursor": encode_cursor(offset + limit) if offset + limit < len(found) else "",
        }

    @staticmethod
    def _page_limit(value: Any, default: int = 500, most: int = 1000) -> int:
        try:
            limit = int(value) if value not in (None, "") else default
        except (TypeError, ValueError):
            raise WeComError(INVALID_PARAMETER, "invalid limit") from None
        if not 1 <= limit <= most:
            raise WeComError(INVALID_PARAMETER, f"limit must be 1-{most}")
        return limit

    def groupmsg_task(self, msgid: Any, limit: Any, cursor: str | None) -> dict[str, Any]:
        message = self._message(msgid)
        size = self._page_limit(limit)
        tasks = list(message["tasks"].values())
        (offset,) = decode_cursor(cursor)
        return {
            "task_list": [dict(t) for t in tasks[offset : offset + size]],
            "next_cursor": encode_cursor(offset + size) if offset + size < len(tasks) else "",
        }

    def groupmsg_send_result(
        self, msgid: Any, userid: str, limit: Any, cursor: str | None
    ) -> dict[str, Any]:
        message = self._message(msgid)
        if not userid:
            raise WeComError(INVALID_PARAMETER, "userid required")
        size = self._page_limit(limit)
        rows = [r for r in message["results"] if r["userid"] == userid]
        (offset,) = decode_cursor(cursor)
        return {
            "send_list": [dict(r) for r in rows[offset : offset + size]],
            "next_cursor": encode_cursor(offset + size) if offset + size < len(rows) else "",
        }

    def remind_groupmsg(self, msgid: Any) -> None:
        message = self._message(msgid)
        now = self.now()
        recent = [t for t in message["reminders"] if t > now - 86400]
        if len(recent) >= REMINDERS_PER_DAY:
            raise WeComError(OUT_OF_LIMIT, "remind limit: at most 3 reminders a message a day")
        message["reminders"] = [*recent, now]
        self.store.put("message", message["msgid"], message)

    def cancel_groupmsg(self, msgid: Any) -> None:
        """Stop a message employees have not confirmed yet; a sent one stays sent."""
        message = self._message(msgid)
        if not message["confirmed"] and not message["cancelled"]:
            message["cancelled"] = True
            self.pending_messages.remove(message["msgid"])
            self.store.put("message", message["msgid"], message)

    # ---- messages to employees and ops -------------------------------------------------

    def send_app_message(self, spec: dict[str, Any]) -> dict[str, Any]:
        try:
            agentid = int(spec.get("agentid"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            agentid = None
        if agentid != SANDBOX_AGENT_ID:
            raise WeComError(INVALID_AGENT_ID, "invalid agentid")
        msgtype = spec.get("msgtype")
        if msgtype not in APP_MESSAGE_TYPES:
            raise WeComError(INVALID_MESSAGE_TYPE, "invalid message type")
        content = spec.get(msgtype)
        if not isinstance(content, dict) or not content:
            raise WeComError(INVALID_PARAMETER, f"missing {msgtype} object")
        touser = str(spec.get("touser") or "")
        users = list(self.employees) if touser == "@all" else [u for u in touser.split("|") if u]
        valid = [u for u in users if u in self.employees]
        invalid = [u for u in users if u not in self.employees]
        if not valid:
            raise WeComError(ALL_RECEIVERS_INVALID, "all touser invalid")
        msgid = new_id("app", 12)
        record = {
            "seq": len(self.app_messages) + 1,
            "msgid": msgid,
            "touser": valid,
            "msgtype": msgtype,
            "agentid": agentid,
            msgtype: content,
            "content": content,
            "invaliduser": invalid,
            "at": self.now(),
        }
        self.app_messages.append(record)
        self.store.put("app_message", _seq_key(record["seq"]), record)
        return {"invaliduser": "|".join(invalid), "msgid": msgid}

    def post_webhook(self, key: str | None, spec: dict[str, Any]) -> None:
        if not key:
            raise WeComError(INVALID_WEBHOOK_KEY, "invalid webhook url")
        msgtype = spec.get("msgtype")
        if msgtype not in ROBOT_MESSAGE_TYPES:
            raise WeComError(INVALID_MESSAGE_TYPE, "invalid message type")
        content = spec.get(msgtype)
        if not isinstance(content, dict):
            raise WeComError(INVALID_PARAMETER, f"missing {msgtype} object")
        if msgtype in ("text", "markdown", "markdown_v2") and not content.get("content"):
            raise WeComError(INVALID_PARAMETER, "content is empty")
        record = {
            "seq": len(self.webhook_posts) + 1,
            "key": key,
            "msgtype": msgtype,
            "body": spec,
            "at": self.now(),
        }
        self.webhook_posts.append(record)
        self.store.put("webhook_post", _seq_key(record["seq"]), record)

    # ---- welcome, contact ways, moments ------------------------------------------------

    def send_welcome_msg(self, spec: dict[str, Any]) -> None:
        code = str(spec.get("welcome_code") or "")
        if not code:
            raise WeComError(INVALID_PARAMETER, "welcome_code required")
        text, attachments = _check_content(spec.get("text"), spec.get("attachments"))
        record = {
            "seq": len(self.welcome_messages) + 1,
            "welcome_code": code,
            "text": text,
            "attachments": attachments,
            "at": self.now(),
        }
        self.welcome_messages.append(record)
        self.store.put("welcome_message", _seq_key(record["seq"]), record)

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
        state = _channel_state(spec)
        config_id = secrets.token_hex(16)
        way = {
            "config_id": config_id,
            "type": way_type,
            "scene": scene,
            "user": list(users),
            "state": state,
            "skip_verify": bool(spec.get("skip_verify", True)),
            "remark": str(spec.get("remark") or ""),
            "qr_code": f"https://sandbox.wecom.invalid/qr/contact/{config_id}"
            if scene == 2
            else "",
        }
        self.contact_ways[config_id] = way
        self.store.put("contact_way", config_id, way)
        reply = {"config_id": config_id}
        if way["qr_code"]:
            reply["qr_code"] = way["qr_code"]
        return reply

    def add_moment_task(self, spec: dict[str, Any]) -> str:
        text, attachments = _check_content(spec.get("text"), spec.get("attachments"))
        visible = spec.get("visible_range") if isinstance(spec.get("visible_range"), dict) else {}
        senders = ((visible.get("sender_list") or {}).get("user_list")) or []
        tag_list = ((visible.get("external_contact_list") or {}).get("tag_list")) or []
        now = self.now()
        moment = {
            "jobid": new_id("job", 12),
            "created_at": now,
            "text": text,
            "attachments": attachments,
            "sender_list": list(senders),
            "tag_list": list(tag_list),
            "invalid_sender_list": [u for u in senders if u not in self.employees],
            "invalid_tag_list": [t for t in tag_list if self._live_tag(t) is None],
            "moment_id": new_id("mom", 12),
        }
        self.moments[moment["jobid"]] = moment
        self.store.put("moment", moment["jobid"], moment)
        return moment["jobid"]

    def moment_task_result(self, jobid: str) -> dict[str, Any]:
        moment = self.moments.get(jobid)
        if moment is None:
            raise WeComError(INVALID_PARAMETER, "invalid jobid")
        if moment["created_at"] + self.config.confirm_delay_seconds > self.now():
            return {"status": 1, "type": "add_moment_task"}
        return {
            "status": 2,
            "type": "add_moment_task",
            "result": {
                "errcode": 0,
                "errmsg": "ok",
                "moment_id": moment["moment_id"],
                "invalid_sender_list": {"user_list": moment["invalid_sender_list"]},
                "invalid_external_contact_list": {"tag_list": moment["invalid_tag_list"]},
            },
        }

    def corp_counts(self) -> dict[str, int]:
        """How big the corp is: lets a caller see whether it was seeded yet."""
        return {
            "employees": len(self.employees),
            "contacts": len(self.contacts),
            "follows": sum(1 for f in self.follows.values() if not f["deleted"]),
            "tag_groups": sum(1 for g in self.tag_groups.values() if not g["deleted"]),
            "tags": sum(1 for t in self.tags.values() if not t["deleted"]),
            "groups": len(self.groups),
            "messages": len(self.messages),
        }

    # ---- seeding ---------------------------------------------------------------------

    def import_corp(
        self,
        employees: list[dict[str, Any]],
        contacts: list[dict[str, Any]],
        follows: list[dict[str, Any]],
        tag_groups: list[dict[str, Any]],
        tags: list[dict[str, Any]],
        groups: list[dict[str, Any]],
    ) -> None:
        """Upsert whole tables at once (the seed loader's path): one transaction per kind."""
        with self.lock:
            for e in employees:
                self.employees[e["userid"]] = e
            for c in contacts:
                self.contacts[c["external_userid"]] = c
            for f in follows:
                self._index_follow(f)
            for g in tag_groups:
                self.tag_groups[g["group_id"]] = g
            for t in tags:
                self.tags[t["id"]] = t
            for g in groups:
                self.groups[g["chat_id"]] = g
            self.store.put_many("employee", ((e["userid"], e) for e in employees))
            self.store.put_many("contact", ((c["external_userid"], c) for c in contacts))
            self.store.put_many(
                "follow", ((follow_key(f["userid"], f["external_userid"]), f) for f in follows)
            )
            self.store.put_many("tag_group", ((g["group_id"], g) for g in tag_groups))
            self.store.put_many("tag", ((t["id"], t) for t in tags))
            self.store.put_many("group", ((g["chat_id"], g) for g in groups))


def _channel_state(spec: dict[str, Any]) -> str:
    """The `state` (channel code) of a contact or join way, checked as the platform does."""
    state = str(spec.get("state") or "")
    if len(state) > MAX_STATE_CHARS:
        raise WeComError(INVALID_PARAMETER, f"state is at most {MAX_STATE_CHARS} characters")
    return state
