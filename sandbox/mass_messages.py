"""The sandbox's enterprise mass messages: created, confirmed by each employee in time, capped as WeCom caps them."""

from __future__ import annotations

import hashlib
from typing import Any

from siyu.sandbox.backend import Backend, Shared
from siyu.sandbox.config import ConfirmHabit, SandboxConfig
from siyu.sandbox.contacts import ContactBackend
from siyu.sandbox.groups import GroupBackend
from siyu.sandbox.platform import (
    DAY_SECONDS,
    INVALID_PARAMETER,
    INVALID_USERID,
    WeComError,
    check_content,
    china_day,
    china_month,
    decode_cursor,
    encode_cursor,
    new_id,
    page_limit,
)

MAX_SINGLE_TARGETS = 10_000
NOT_SENT, SENT, NOT_A_CONTACT, CAPPED = 0, 1, 2, 3  # send_result status
TASK_SENT = 2  # get_groupmsg_task status once the employee confirmed


def confirm_habit(config: SandboxConfig, userid: str) -> ConfirmHabit:
    """Whether an employee confirms on time, late or never: set per employee, else drawn.

    The draw hashes (seed, userid), so the same employee behaves the same on every run and
    in every process, and changing the seed deals the habits out again.
    """
    habit = config.employee_confirm.get(userid)
    if habit is not None:
        return habit
    digest = hashlib.sha256(f"{config.confirm_seed}:{userid}".encode()).digest()
    draw = int.from_bytes(digest[:8], "big") / 2**64
    if draw < config.never_share:
        return "never"
    if draw < config.never_share + config.late_share:
        return "late"
    return "on_time"


def cap_keys(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """The platform counters one delivered target counts against (Beijing month and day)."""
    month, day = china_month(result["send_time"]), china_day(result["send_time"])
    if result.get("chat_id"):
        return [("group-month", month, result["chat_id"])]
    ext = result["external_userid"]
    return [("customer-month", month, ext), ("employee-day", day, result["userid"], ext)]


class MassMessageBackend(Backend):
    """Mass messages: a task per sending employee, a result per target, settled lazily.

    Nothing runs in the background: every call first settles the tasks whose employee has
    confirmed by now (sandbox clock), oldest first, so moving the clock or shortening the
    delay is all a test needs instead of sleeping. The caps apply at confirmation, as on the
    platform: over them a target gets status 3, and no error is raised.
    """

    kinds = ("message",)

    def __init__(self, shared: Shared, contacts: ContactBackend, groups: GroupBackend) -> None:
        self.contacts = contacts
        self.groups = groups
        super().__init__(shared)

    def clear(self) -> None:
        self.messages: dict[str, dict[str, Any]] = {}
        # (msgid, userid) of tasks not confirmed and not cancelled, in creation order.
        self.pending: dict[tuple[str, str], None] = {}
        self.received: dict[tuple[str, ...], int] = {}
        # Habits drawn for the current config (it is replaced whole when it changes).
        self._habits: dict[str, ConfirmHabit] = {}
        self._habits_of: SandboxConfig | None = None

    def habit(self, userid: str) -> ConfirmHabit:
        if self._habits_of is not self.config:
            self._habits, self._habits_of = {}, self.config
        if userid not in self._habits:
            self._habits[userid] = confirm_habit(self.config, userid)
        return self._habits[userid]

    def load(self, kind: str, body: Any) -> None:
        body.setdefault("cancelled", False)
        body.setdefault("reminders", [])
        self.messages[body["msgid"]] = body

    def loaded(self) -> None:
        for message in self.messages.values():
            for result in message["results"]:
                if result["status"] == SENT:
                    self._count(result)
            if not message["cancelled"]:
                for userid, task in message["tasks"].items():
                    if task["status"] != TASK_SENT:
                        self.pending[(message["msgid"], userid)] = None

    def _count(self, result: dict[str, Any]) -> None:
        for key in cap_keys(result):
            self.received[key] = self.received.get(key, 0) + 1

    # ---- confirmation --------------------------------------------------------------------

    def due_at(self, message: dict[str, Any], userid: str) -> float | None:
        """When the employee confirms, by the current config; None for never."""
        habit = self.habit(userid)
        if habit == "never":
            return None
        factor = self.config.late_factor if habit == "late" else 1.0
        return message["created_at"] + self.config.confirm_delay_seconds * factor

    def settle(self) -> None:
        """Every task due by now is confirmed, in the order the employees confirmed."""
        if not self.pending:
            return
        now = self.now()
        due = []
        for order, (msgid, userid) in enumerate(self.pending):
            at = self.due_at(self.messages[msgid], userid)
            if at is not None and at <= now:
                due.append((at, order, msgid, userid))
        for at, _, msgid, userid in sorted(due):
            self._confirm(self.messages[msgid], userid, at)

    def _reachable(self, result: dict[str, Any]) -> bool:
        """Whether the target is still the sender's contact (or group) when they confirm."""
        if result.get("chat_id"):
            group = self.groups.groups.get(result["chat_id"])
            return group is not None and group["owner"] == result["userid"]
        return self.contacts.is_contact_of(result["userid"], result["external_userid"])

    def _over_cap(self, keys: list[tuple[str, ...]]) -> bool:
        config = self.config
        return any(
            self.received.get(k, 0)
            >= (config.daily_per_employee_cap if k[0] == "employee-day" else config.monthly_cap)
            for k in keys
        )

    def _confirm(self, message: dict[str, Any], userid: str, at: float) -> None:
        send_time = int(at)
        self.pending.pop((message["msgid"], userid), None)
        message["tasks"][userid].update(status=TASK_SENT, send_time=send_time)
        for result in message["results"]:
            if result["userid"] != userid or result["status"] != NOT_SENT:
                continue
            result["send_time"] = send_time
            if not self._reachable(result):
                result["status"] = NOT_A_CONTACT
                continue
            keys = cap_keys(result)
            if self._over_cap(keys):
                result["status"] = CAPPED
            else:
                result["status"] = SENT
                for key in keys:
                    self.received[key] = self.received.get(key, 0) + 1
        message["confirmed"] = all(t["status"] == TASK_SENT for t in message["tasks"].values())
        self.store.put("message", message["msgid"], message)

    def confirm_now(self, msgid: str, userid: str | None) -> int:
        """The employee (or every sender) confirms now, whatever their habit (control API)."""
        message = self.message(msgid)
        now = self.now()
        waiting = [
            u
            for u in message["tasks"]
            if (msgid, u) in self.pending and (userid is None or u == userid)
        ]
        for u in waiting:
            self._confirm(message, u, now)
        return len(waiting)

    def message(self, msgid: Any) -> dict[str, Any]:
        self.settle()
        message = self.messages.get(str(msgid or ""))
        if message is None:
            raise WeComError(INVALID_PARAMETER, "invalid msgid")
        return message

    # ---- the mass message API ------------------------------------------------------------

    def _single_results(
        self, sender: str, targets: Any, fail_list: list[str]
    ) -> list[dict[str, Any]]:
        if not isinstance(targets, list) or len(targets) > MAX_SINGLE_TARGETS:
            raise WeComError(INVALID_PARAMETER, "external_userid holds at most 10,000 ids")
        if not targets and not sender:
            raise WeComError(INVALID_PARAMETER, "external_userid and sender both empty")
        results: list[dict[str, Any]] = []
        if sender:
            mine = self.contacts.contacts_of.get(sender, {})
            for ext in dict.fromkeys(targets or list(mine)):
                reachable = ext in mine
                if not reachable:
                    fail_list.append(ext)
                results.append(
                    {
                        "external_userid": ext,
                        "userid": sender,
                        "status": NOT_SENT if reachable else NOT_A_CONTACT,
                    }
                )
            return results
        for ext in dict.fromkeys(targets):
            followers = list(self.contacts.followers_of.get(ext, {}))
            if not followers:
                fail_list.append(ext)
            results.extend(
                {"external_userid": ext, "userid": u, "status": NOT_SENT} for u in followers
            )
        return results

    def _group_results(self, sender: str, chat_ids: Any) -> list[dict[str, Any]]:
        if not sender:
            raise WeComError(INVALID_PARAMETER, "sender is required for group messages")
        chat_ids = chat_ids or [
            g["chat_id"] for g in self.groups.groups.values() if g["owner"] == sender
        ]
        results = []
        for chat_id in dict.fromkeys(chat_ids):
            group = self.groups.groups.get(chat_id)
            owned = group is not None and group["owner"] == sender
            results.append(
                {"chat_id": chat_id, "userid": sender, "status": NOT_SENT if owned else 2}
            )
        return results

    def create(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Create a mass message: one task per sending employee, one result per target."""
        self.settle()
        chat_type = spec.get("chat_type") or "single"
        if chat_type not in ("single", "group"):
            raise WeComError(INVALID_PARAMETER, "chat_type must be single or group")
        text, attachments = check_content(spec.get("text"), spec.get("attachments"))
        sender = str(spec.get("sender") or "")
        if sender and sender not in self.contacts.employees:
            raise WeComError(INVALID_USERID, "invalid sender")
        fail_list: list[str] = []
        if chat_type == "single":
            results = self._single_results(sender, spec.get("external_userid") or [], fail_list)
        else:
            results = self._group_results(sender, spec.get("chat_id_list"))
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
            "tasks": {u: {"userid": u, "status": NOT_SENT, "send_time": 0} for u in senders},
            "results": results,
            "confirmed": False,
            "cancelled": False,
            "reminders": [],
        }
        self.messages[message["msgid"]] = message
        for userid in senders:
            self.pending[(message["msgid"], userid)] = None
        self.store.put("message", message["msgid"], message)
        return {"msgid": message["msgid"], "fail_list": fail_list}

    def groupmsg_list(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Messages of a chat type created in [start_time, end_time], by one creator or all."""
        self.settle()
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

    def groupmsg_task(self, msgid: Any, limit: Any, cursor: str | None) -> dict[str, Any]:
        message = self.message(msgid)
        size = page_limit(limit)
        tasks = list(message["tasks"].values())
        (offset,) = decode_cursor(cursor)
        return {
            "task_list": [dict(t) for t in tasks[offset : offset + size]],
            "next_cursor": encode_cursor(offset + size) if offset + size < len(tasks) else "",
        }

    def groupmsg_send_result(
        self, msgid: Any, userid: str, limit: Any, cursor: str | None
    ) -> dict[str, Any]:
        message = self.message(msgid)
        if not userid:
            raise WeComError(INVALID_PARAMETER, "userid required")
        size = page_limit(limit)
        rows = [r for r in message["results"] if r["userid"] == userid]
        (offset,) = decode_cursor(cursor)
        return {
            "send_list": [dict(r) for r in rows[offset : offset + size]],
            "next_cursor": encode_cursor(offset + size) if offset + size < len(rows) else "",
        }

    def remind(self, msgid: Any) -> None:
        """Remind the senders again: at most `reminders_per_day` a message in any 24 h."""
        message = self.message(msgid)
        now = self.now()
        recent = [t for t in message["reminders"] if t > now - DAY_SECONDS]
        if len(recent) >= self.config.reminders_per_day:
            raise WeComError(
                self.config.remind_limit_errcode,
                f"remind limit: at most {self.config.reminders_per_day} a message in 24 h",
            )
        message["reminders"] = [*recent, now]
        self.store.put("message", message["msgid"], message)

    def cancel(self, msgid: Any) -> None:
        """Stop a message for the employees who have not confirmed; their targets stay 0."""
        message = self.message(msgid)
        if message["cancelled"] or message["confirmed"]:
            return
        message["cancelled"] = True
        for userid in message["tasks"]:
            self.pending.pop((message["msgid"], userid), None)
        self.store.put("message", message["msgid"], message)

    def describe(self) -> list[dict[str, Any]]:
        """Every mass message with its tasks and results, settled (control API)."""
        self.settle()
        return [
            {
                "msgid": m["msgid"],
                "chat_type": m["chat_type"],
                "creator": m["creator"],
                "create_time": m["create_time"],
                "text": m["text"],
                "attachments": m["attachments"],
                "confirmed": m["confirmed"],
                "cancelled": m["cancelled"],
                "reminders": len(m["reminders"]),
                "tasks": [{**t, "habit": self.habit(t["userid"])} for t in m["tasks"].values()],
                "results": [dict(r) for r in m["results"]],
            }
            for m in self.messages.values()
        ]
